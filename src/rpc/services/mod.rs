//! Thin service implementations: authorise, convert, call the node, convert back.

mod audit;
mod diagnostics;
mod exchange;
mod keys;
mod peer;

use std::sync::Arc;

pub use audit::AuditService;
pub use exchange::ResourceExchangeService;
pub use keys::{CryptoService, InstanceService, KeyManagementService};
pub use peer::KeyExchangeService;

use crate::node::Node;

/// Builds every service around one node.
pub struct Services {
    pub instance: InstanceService,
    pub keys: KeyManagementService,
    pub crypto: CryptoService,
    pub exchange: ResourceExchangeService,
    pub peer: KeyExchangeService,
    pub audit: AuditService,
}

impl Services {
    pub fn new(node: Arc<Node>) -> Self {
        Services {
            instance: InstanceService(node.clone()),
            keys: KeyManagementService(node.clone()),
            crypto: CryptoService(node.clone()),
            exchange: ResourceExchangeService(node.clone()),
            peer: KeyExchangeService(node.clone()),
            audit: AuditService(node),
        }
    }
}
