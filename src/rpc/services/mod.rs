//! Thin service implementations: authorise, convert, call the use-case
//! service each one serves, convert back.

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

use crate::node::Services;
use crate::rpc::health::HealthPublisher;

/// Every RPC service, each holding the use-case services it serves and the
/// access check.
pub struct RpcServices {
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

impl RpcServices {
    /// `health` receives every diagnosis `Instance.Diagnose` runs.
    pub fn new(s: &Services, health: Arc<HealthPublisher>) -> Self {
        let access = || Arc::clone(&s.access);
        RpcServices {
            instance: InstanceService {
                access: access(),
                info: s.info(),
                diagnostics: Arc::clone(&s.diagnostics),
                health,
            },
            keys: KeyManagementService { access: access(), catalog: Arc::clone(&s.catalog), byok: Arc::clone(&s.byok) },
            crypto: CryptoService { access: access(), crypto: Arc::clone(&s.crypto) },
            exchange: ResourceExchangeService {
                access: access(),
                exchange: Arc::clone(&s.exchange),
                clone: Arc::clone(&s.clone),
            },
            peer: KeyExchangeService { access: access(), exchange: Arc::clone(&s.exchange) },
            audit: AuditService { access: access(), audit: Arc::clone(&s.audit) },
            properties: PropertiesService { access: access(), catalog: Arc::clone(&s.catalog) },
            policies: PoliciesService { access: access(), catalog: Arc::clone(&s.catalog) },
            clones: ClonesService { access: access(), clone: Arc::clone(&s.clone) },
            clone_source: CloneSourceService { access: access(), clone: Arc::clone(&s.clone) },
            rekeys: RekeysService { access: access(), rekey: Arc::clone(&s.rekey) },
        }
    }
}
