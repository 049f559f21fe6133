//! The use cases of one instance (`Node`): the catalog (modules, specs, keys,
//! lifecycle, policies, properties), crypto and records, both sides of an
//! exchange, clone (source, target, schedules, One Time / Recurring Clone),
//! rekey, BYOK, audit and diagnostics, and the job runner that carries out
//! their effects. It wires the pure domain to the store, the signer and the
//! peer link; the RPC services only convert and call in here.

pub mod audit;
mod byok;
mod clone_exchange;
pub mod clone_schedule;
pub mod clone_source;
mod clone_target;
pub mod crypto;
mod crypto_session;
pub mod diagnostics;
mod exchange_source;
mod exchange_target;
mod hot_cache;
pub mod jobs;
mod keys;
pub mod policies;
pub mod ports;
mod proof;
pub mod properties;
mod records;
mod refusals;
mod rekey;

use std::sync::Arc;

use crate::clock::Clock;
use crate::domain::ids::{Host, SysId};
use crate::error::{AppError, AppResult};
use crate::signer::Signer;
use crate::signer::instance_key::InstanceKey;
use crate::store::Store;
use ports::PeerLink;

/// What `Instance.Info` reports.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    pub sys_id: SysId,
    pub host: Host,
    pub version: &'static str,
    pub signer_kind: &'static str,
}

pub struct Node {
    sys_id: SysId,
    host: Host,
    store: Arc<Store>,
    signer: Arc<dyn Signer>,
    instance_key: InstanceKey,
    peers: Arc<dyn PeerLink>,
    clock: Arc<dyn Clock>,
    /// Wakes the job runner and tells waiters that requests moved on.
    jobs: jobs::JobSignals,
    job_settings: jobs::JobSettings,
    /// Targets that did not answer, and until when their deliveries wait.
    peer_backoff: jobs::PeerBackoff,
    hot: hot_cache::HotCache,
    /// Set by `with_diagnostics`; without it the certificate and peer checks are Disabled.
    diagnostics: Option<diagnostics::DiagnosticsSetup>,
    /// The latest diagnosis (periodic or asked for), for the metrics.
    latest_diagnosis: std::sync::Mutex<Option<diagnostics::Diagnosis>>,
    /// Open windows of coalesced access refusals (`node::refusals`).
    refusals: std::sync::Mutex<crate::domain::refusals::RefusalWindows>,
    /// Open windows of coalesced refused calls (role, certificate; `node::refusals`).
    call_refusals: std::sync::Mutex<crate::domain::refusals::RefusalWindows<crate::domain::refusals::CallRefusal>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("sys_id", &self.sys_id).field("host", &self.host).finish_non_exhaustive()
    }
}

impl Node {
    pub fn new(
        store: Arc<Store>,
        signer: Arc<dyn Signer>,
        instance_key: InstanceKey,
        peers: Arc<dyn PeerLink>,
        clock: Arc<dyn Clock>,
        advertised_host: Host,
    ) -> AppResult<Self> {
        let sys_id = store.sys_id()?;
        Ok(Node {
            sys_id,
            host: advertised_host,
            store,
            signer,
            instance_key,
            peers,
            clock,
            jobs: jobs::JobSignals::default(),
            job_settings: jobs::JobSettings::default(),
            peer_backoff: jobs::PeerBackoff::default(),
            hot: hot_cache::HotCache::default(),
            diagnostics: None,
            latest_diagnosis: std::sync::Mutex::new(None),
            refusals: std::sync::Mutex::default(),
            call_refusals: std::sync::Mutex::default(),
        })
    }

    pub fn info(&self) -> InstanceInfo {
        InstanceInfo {
            sys_id: self.sys_id.clone(),
            host: self.host.clone(),
            version: env!("CARGO_PKG_VERSION"),
            signer_kind: self.signer.kind(),
        }
    }

    /// The caller a verified certificate names, parsed once per certificate.
    pub fn caller_for_cert(
        &self,
        cert_der: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<crate::domain::auth::Caller, crate::domain::DomainError>,
    ) -> Result<crate::domain::auth::Caller, crate::domain::DomainError> {
        if let Some(c) = self.hot.caller(cert_der) {
            return Ok(c);
        }
        let c = parse(cert_der)?;
        self.hot.put_caller(cert_der, c.clone());
        Ok(c)
    }

    pub fn sys_id(&self) -> &SysId {
        &self.sys_id
    }

    /// The node's clock (injectable; tests advance it).
    pub fn now(&self) -> crate::domain::ids::UnixMillis {
        self.clock.now()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs blocking work (redb, openssl, RSA) off the async workers.
    async fn blocking<T, F>(self: &Arc<Self>, f: F) -> AppResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Node) -> AppResult<T> + Send + 'static,
    {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| AppError::Internal(format!("blocking task failed: {e}")))?
    }
}

pub use byok::{ExportedKey, ImportParameters};
pub use clone_exchange::NewCloneExchange;
pub use exchange_source::Decision;
pub use keys::DefaultAccess;
pub use records::{MAX_PAGE as MAX_RECORD_PAGE, NewRecord, RecordDigest};

/// The audit event for a request that just changed; the actor is the one in
/// its latest history line.
pub(crate) fn request_audit(
    req: &crate::domain::exchange::ExchangeRequest,
    action: &str,
    outcome: crate::domain::audit::Outcome,
    details: impl AsRef<str>,
) -> crate::domain::audit::AuditEvent {
    let actor = req.history.last().map_or_else(|| "system".to_owned(), |t| t.actor.clone());
    let details = format!("status {}; {}", req.status.label(), details.as_ref());
    crate::domain::audit::AuditEvent::new(req.updated_at, actor, action, req.id.to_string(), outcome)
        .with_details(details)
}
pub use exchange_target::NewRequest;

impl Node {
    /// A page of requests in creation order, and the token of the next page.
    pub async fn requests_page(
        self: &Arc<Self>,
        page_token: Option<String>,
        page_size: usize,
    ) -> AppResult<(Vec<crate::domain::exchange::ExchangeRequest>, Option<String>)> {
        let after = match page_token.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                crate::store::RequestCursor::parse(&t)
                    .ok_or_else(|| crate::domain::DomainError::invalid("page_token", "not a token this server gave"))?,
            ),
        };
        self.blocking(move |node| {
            let (page, next) = node.store.requests_page(after.as_ref(), page_size)?;
            Ok((page, next.map(|c| c.token())))
        })
        .await
    }

    pub async fn request(
        self: &Arc<Self>,
        id: crate::domain::ids::RequestId,
    ) -> AppResult<crate::domain::exchange::ExchangeRequest> {
        self.blocking(move |node| {
            Ok(node.store.request(&id)?.ok_or_else(|| crate::domain::DomainError::not_found("request", &id))?.value)
        })
        .await
    }
}
