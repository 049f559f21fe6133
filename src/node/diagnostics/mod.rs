//! The diagnostics service: `Instance.Diagnose`, the periodic self-check
//! health follows, and the store gauges of the metrics endpoint. The
//! checks run here; statuses, the roll-up and the certificate rule are pure
//! (`domain::health`). Peers are dialled through the `PeerProbe` port
//! (implemented by `rpc::probe`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cache::CountsCache;
use super::context::Context;
use super::ports::{PeerFuture, TlsNow};
use crate::clock::Clock;
use crate::domain::exchange::ExchangeRequest;
use crate::domain::health::{
    Component, HealthStatus, MAX_PEERS, PEER_WINDOW_MILLIS, certificate_health, crl_health, recent_peers,
};
use crate::domain::ids::{Host, SysId, UnixMillis};
use crate::signer::async_signer::AsyncSigner;
use crate::store::{DiagnosticsStore, RequestStore, Store, StoreCounts, StoreError};

#[cfg(test)]
mod tests;

/// How long one peer may take to answer its health check.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the daemon diagnoses itself unasked (the reference re-runs its
/// diagnostics every 15 seconds).
pub const WATCH_EVERY: Duration = Duration::from_secs(15);

/// Health checks of other instances.
pub trait PeerProbe: Send + Sync + 'static {
    /// Dials `host` over mTLS with this instance's identity and asks for its
    /// health; Ok only when it serves and its certificate names `expected`.
    fn check<'a>(&'a self, host: &'a Host, expected: &'a SysId) -> PeerFuture<'a, ()>;
}

/// What a diagnosis needs beyond store and signer: the TLS configuration
/// in use (the certificate and CRL checks) and a way to dial peers.
pub struct DiagnosticsSetup {
    /// The instance's certificate (DER) at start, whose key signs receipts
    /// until a restart (`node::proof`); the diagnosis checks the one in use.
    pub certificate_der: Vec<u8>,
    pub tls: Arc<dyn TlsNow>,
    pub probe: Arc<dyn PeerProbe>,
}

/// The result of `Diagnostics::diagnose`: the parent component "kmf" (its status is
/// the overall status) and when the checks ran.
#[derive(Clone, Debug)]
pub struct Diagnosis {
    pub checked_at: UnixMillis,
    pub root: Component,
}

pub struct Diagnostics {
    /// For its change tokens (the counts cache).
    store: Arc<Store>,
    counts: DiagnosticsStore,
    requests: RequestStore,
    signer: AsyncSigner,
    clock: Arc<dyn Clock>,
    /// Without it the certificate and peer checks are Disabled.
    diagnostics: Option<DiagnosticsSetup>,
    /// The latest diagnosis (periodic or asked for), for the metrics; a
    /// cache of this process's own checks.
    latest_diagnosis: Mutex<Option<Diagnosis>>,
    hot: CountsCache,
}

impl Diagnostics {
    pub fn new(ctx: &Context, setup: Option<DiagnosticsSetup>) -> Self {
        Diagnostics {
            store: Arc::clone(&ctx.store),
            counts: DiagnosticsStore::new(&ctx.store),
            requests: RequestStore::new(&ctx.store),
            signer: ctx.async_signer(),
            clock: Arc::clone(&ctx.clock),
            diagnostics: setup,
            latest_diagnosis: Mutex::default(),
            hot: CountsCache::default(),
        }
    }

    /// The instance's clock.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Diagnoses the instance at once and every `every` after until
    /// `cancel`, handing each diagnosis to `publish` (health follows it).
    pub async fn watch<F, Fut>(self: Arc<Self>, every: Duration, cancel: CancellationToken, publish: F)
    where
        F: Fn(Diagnosis) -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        // A zero period would panic the interval; 1 ms is as good as asking for it.
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let diagnosis = self.diagnose_and_record().await;
            publish(diagnosis).await;
        }
    }

    /// Runs every check: signer, store, certificate, recent peers, CRL.
    pub async fn diagnose(&self) -> Diagnosis {
        let now = self.now();
        let (signer, store, peers) = tokio::join!(self.check_signer(), self.check_store(now), self.check_peers(now));
        let certificate = self.check_certificate(now);
        let crl = self.check_crl(now);
        let children = vec![signer, store, certificate, peers, crl];
        let attention: Vec<String> = children
            .iter()
            .filter(|c| matches!(c.status, HealthStatus::Degraded | HealthStatus::Malfunction))
            .map(|c| format!("{} {}", c.name, c.status.label()))
            .collect();
        let message = if attention.is_empty() {
            "no component needs attention".to_owned()
        } else {
            format!("needs attention: {}", attention.join(", "))
        };
        Diagnosis { checked_at: now, root: Component::parent("kmf", message, children) }
    }

    /// Runs `diagnose`, keeps the result as the latest (the metrics show it)
    /// and logs every component whose status changed: at warn when it needs
    /// attention, at info when it recovered.
    pub async fn diagnose_and_record(&self) -> Diagnosis {
        let d = self.diagnose().await;
        let previous = {
            let mut latest = self.latest_diagnosis.lock().unwrap_or_else(|p| p.into_inner());
            latest.replace(d.clone())
        };
        for c in &d.root.children {
            let before = previous.as_ref().and_then(|p| p.root.children.iter().find(|b| b.name == c.name));
            let (was, now) = (before.map(|b| b.status), c.status);
            if was == Some(now) {
                continue;
            }
            let was = was.map_or("unknown", HealthStatus::label);
            match now {
                HealthStatus::Degraded | HealthStatus::Malfunction => {
                    tracing::warn!(component = %c.name, was, now = now.label(), message = %c.message, "health changed")
                }
                _ if before.is_some() => {
                    tracing::info!(component = %c.name, was, now = now.label(), message = %c.message, "health changed")
                }
                _ => {}
            }
        }
        d
    }

    /// The latest recorded diagnosis, if one ran.
    pub fn latest_diagnosis(&self) -> Option<Diagnosis> {
        self.latest_diagnosis.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts for the metrics gauges.
    /// Counted once per committed write: scrapes between writes reuse them
    /// (answered on the worker, no store read).
    pub async fn store_counts(&self) -> crate::error::AppResult<StoreCounts> {
        let g = self.store.changes().writes();
        if let Some(counts) = self.hot.counts(g) {
            return Ok(counts);
        }
        let counts = self.counts.counts().await?;
        self.hot.put_counts(g, counts.clone());
        Ok(counts)
    }

    /// The KEK is reachable: a fresh random 32-byte key survives wrap and unwrap.
    async fn check_signer(&self) -> Component {
        let kind = self.signer.kind();
        let outcome = self
            .signer
            .with_backend(|b| {
                let key = crate::signer::primitives::random_key(32);
                let wrapped = b.wrap(&key)?;
                let back = b.unwrap(&wrapped)?;
                Ok(back.expose() == key.expose())
            })
            .await
            .map_err(crate::error::AppError::from);
        match outcome {
            Ok(true) => {
                Component::leaf("signer", HealthStatus::Operational, format!("{kind} KEK wrap and unwrap succeeded"))
            }
            Ok(false) => Component::leaf(
                "signer",
                HealthStatus::Malfunction,
                format!("{kind} KEK unwrap did not give back the wrapped test key"),
            ),
            Err(e) => Component::leaf("signer", HealthStatus::Malfunction, format!("{kind} KEK unusable: {e}")),
        }
    }

    /// The database answers a read and takes a small write.
    async fn check_store(&self, now: UnixMillis) -> Component {
        match self.counts.heartbeat(now).await {
            Ok(_) => Component::leaf("store", HealthStatus::Operational, "read and heartbeat write succeeded"),
            Err(e) => Component::leaf("store", HealthStatus::Malfunction, e.to_string()),
        }
    }

    /// The instance's own TLS certificate is within its validity window.
    fn check_certificate(&self, now: UnixMillis) -> Component {
        let Some(setup) = &self.diagnostics else {
            return Component::leaf("certificate", HealthStatus::Disabled, "no certificate was given to the node");
        };
        match crate::tls::validity::validity(&setup.tls.certificate_der()) {
            Ok((not_before, not_after)) => {
                let (status, message) = certificate_health(not_before, not_after, now);
                Component::leaf(
                    "certificate",
                    status,
                    format!("{message} (notAfter {})", crate::clock::rfc3339(not_after)),
                )
            }
            Err(e) => Component::leaf("certificate", HealthStatus::Malfunction, e.to_string()),
        }
    }

    /// The CRL in use is current (past its nextUpdate: Degraded, or
    /// Malfunction when enforced; see `domain::health::crl_health`).
    fn check_crl(&self, now: UnixMillis) -> Component {
        let crl = self.diagnostics.as_ref().and_then(|setup| setup.tls.crl());
        let (status, mut message) = crl_health(crl.as_ref(), now);
        if let Some(next) = crl.as_ref().and_then(|c| c.next_update) {
            message.push_str(&format!(" (nextUpdate {})", crate::clock::rfc3339(next)));
        }
        Component::leaf("crl", status, message)
    }

    /// The requests updated in the peer window before `now`, paged through.
    async fn recent_requests(&self, now: UnixMillis) -> Result<Vec<ExchangeRequest>, StoreError> {
        let since = now.0.saturating_sub(PEER_WINDOW_MILLIS);
        let (mut keep, mut after) = (Vec::new(), None);
        loop {
            let (page, next) = self.requests.requests_page(after, 500).await?;
            keep.extend(page.into_iter().filter(|r| r.updated_at.0 >= since));
            match next {
                Some(c) => after = Some(c),
                None => return Ok(keep),
            }
        }
    }

    /// Every distinct peer of the last 30 days' requests (at most 16),
    /// dialled concurrently with a 3 s timeout each.
    async fn check_peers(&self, now: UnixMillis) -> Component {
        let Some(setup) = &self.diagnostics else {
            return Component::leaf("peers", HealthStatus::Disabled, "peer checks are not configured");
        };
        let requests = match self.recent_requests(now).await {
            Ok(r) => r,
            Err(e) => return Component::leaf("peers", HealthStatus::Malfunction, format!("cannot list requests: {e}")),
        };
        let peers = recent_peers(&requests, now, PEER_WINDOW_MILLIS, MAX_PEERS);
        if peers.is_empty() {
            return Component::leaf("peers", HealthStatus::Disabled, "no exchange peers in the last 30 days");
        }
        let mut checks = tokio::task::JoinSet::new();
        for (i, (host, sys_id)) in peers.iter().cloned().enumerate() {
            let probe = Arc::clone(&setup.probe);
            checks.spawn(async move {
                let outcome = match tokio::time::timeout(PEER_TIMEOUT, probe.check(&host, &sys_id)).await {
                    Ok(Ok(())) => (HealthStatus::Operational, format!("instance {sys_id} is serving")),
                    Ok(Err(e)) => (HealthStatus::Malfunction, e.to_string()),
                    Err(_) => (HealthStatus::Malfunction, format!("no answer within {}s", PEER_TIMEOUT.as_secs())),
                };
                (i, outcome)
            });
        }
        let mut children: Vec<Option<Component>> = vec![None; peers.len()];
        while let Some(joined) = checks.join_next().await {
            if let Ok((i, (status, message))) = joined {
                children[i] = Some(Component::leaf(peers[i].0.to_string(), status, message));
            }
        }
        let children: Vec<Component> = children
            .into_iter()
            .zip(&peers)
            .map(|(c, (host, _))| {
                c.unwrap_or_else(|| Component::leaf(host.to_string(), HealthStatus::Malfunction, "the check failed"))
            })
            .collect();
        let reachable = children.iter().filter(|c| c.status == HealthStatus::Operational).count();
        Component::parent("peers", format!("{reachable} of {} peers reachable", children.len()), children)
    }
}
