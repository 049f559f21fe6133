//! Thin service implementations: authorise, convert, call the node, convert back.

mod audit;
mod clone;
mod crypto;
mod crypto_signing;
mod diagnostics;
mod exchange;
mod keys;
mod peer;
mod policies;
mod properties;
mod rekey;

use std::sync::Arc;

pub use audit::AuditService;
pub use clone::{CloneSourceService, ClonesService};
pub use crypto::CryptoService;
pub use exchange::ResourceExchangeService;
pub use keys::{InstanceService, KeyManagementService};
pub use peer::KeyExchangeService;
pub use policies::PoliciesService;
pub use properties::PropertiesService;
pub use rekey::RekeysService;

use crate::node::Node;
use crate::rpc::health::HealthPublisher;

/// Builds every service around one node.
pub struct Services {
    pub instance: InstanceService,
    pub keys: KeyManagementService,
    pub crypto: CryptoService,
    pub exchange: ResourceExchangeService,
    pub peer: KeyExchangeService,
    pub audit: AuditService,
    pub properties: PropertiesService,
    pub policies: PoliciesService,
    pub clones: ClonesService,
    pub clone_source: CloneSourceService,
    pub rekeys: RekeysService,
}

impl Services {
    /// `health` receives every diagnosis `Instance.Diagnose` runs.
    pub fn new(node: Arc<Node>, health: Arc<HealthPublisher>) -> Self {
        Services {
            instance: InstanceService { node: node.clone(), health },
            keys: KeyManagementService(node.clone()),
            crypto: CryptoService(node.clone()),
            exchange: ResourceExchangeService(node.clone()),
            peer: KeyExchangeService(node.clone()),
            audit: AuditService(node.clone()),
            properties: PropertiesService(node.clone()),
            policies: PoliciesService(node.clone()),
            clones: ClonesService(node.clone()),
            clone_source: CloneSourceService(node.clone()),
            rekeys: RekeysService(node),
        }
    }
}
