//! The use-case layer: one service per subject, each a struct in its own
//! folder holding only the ports it uses, built from one shared `Context`
//! (`context.rs`). The imports run one way (enforced by the tidy test):
//! jobs ← audit ← catalog ← crypto ← exchange ← clone, rekey, byok ←
//! diagnostics; `ports.rs`, `context.rs` and `cache.rs` are shared by all,
//! and this file, which builds them (`Services`), uses every one.
//!
//! - `jobs`: the job runner (leases, retries, backoff, peer backoff) and the
//!   `JobHandler` trait each service's job kinds implement.
//! - `audit`: the audit log, coalesced refusals, and `Access` (who calls).
//! - `catalog`: modules, specs, keys, lifecycle, access policies, properties.
//! - `crypto`: encrypt/decrypt/rewrap, sign/MAC, wrap, encrypted records.
//! - `exchange`: both sides of a key exchange and its delivery.
//! - `clone`: clone source and target, One Time / Recurring Clone, schedules.
//! - `rekey`: re-encrypting cloned records under this instance's keys.
//! - `byok`: importing and exporting keys.
//! - `diagnostics`: the self-check health follows, and the store gauges.
//!
//! The RPC services only convert and call in here.

pub mod audit;
pub mod byok;
mod cache;
pub mod catalog;
pub mod clone;
pub mod context;
pub mod crypto;
pub mod diagnostics;
pub mod exchange;
pub mod jobs;
pub mod ports;
pub mod rekey;
#[cfg(test)]
pub(crate) mod testing;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::ids::{Host, SysId, UnixMillis};
use crate::store::Store;
use audit::{Access, Audit};
use byok::Byok;
use catalog::Catalog;
use clone::Clones;
use context::Context;
use crypto::Crypto;
use diagnostics::{Diagnostics, DiagnosticsSetup};
use exchange::Exchange;
use jobs::JobRunner;
use rekey::Rekey;

/// What `Instance.Info` reports.
#[derive(Clone, Debug)]
pub struct InstanceInfo {
    pub sys_id: SysId,
    pub host: Host,
    pub version: &'static str,
    pub signer_kind: &'static str,
}

/// Every service of one instance, built from one context.
pub struct Services {
    pub jobs: Arc<JobRunner>,
    pub audit: Arc<Audit>,
    pub access: Arc<Access>,
    pub catalog: Arc<Catalog>,
    pub crypto: Arc<Crypto>,
    pub exchange: Arc<Exchange>,
    pub clone: Arc<Clones>,
    pub rekey: Arc<Rekey>,
    pub byok: Arc<Byok>,
    pub diagnostics: Arc<Diagnostics>,
    info: InstanceInfo,
    store: Arc<Store>,
    clock: Arc<dyn crate::clock::Clock>,
    sweep_every: Duration,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("sys_id", &self.info.sys_id)
            .field("host", &self.info.host)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// Builds the services and registers each one's job kinds with the runner.
    /// `setup`: the TLS configuration and peer probe of the diagnosis and the
    /// access check (None: those checks are Disabled).
    pub fn new(ctx: Context, setup: Option<DiagnosticsSetup>) -> Self {
        let certificate_der = setup.as_ref().map(|s| s.certificate_der.clone()).unwrap_or_default();
        let tls = setup.as_ref().map(|s| Arc::clone(&s.tls));
        let jobs = Arc::new(JobRunner::new(&ctx));
        let audit = Arc::new(Audit::new(&ctx));
        let access = Arc::new(Access::new(&ctx, Arc::clone(&audit), tls));
        let catalog = Arc::new(Catalog::new(&ctx, Arc::clone(&audit)));
        let crypto = Arc::new(Crypto::new(&ctx, Arc::clone(&catalog)));
        let exchange = Arc::new(Exchange::new(&ctx, Arc::clone(&catalog), certificate_der));
        let clone = Arc::new(Clones::new(&ctx, Arc::clone(&exchange)));
        let rekey = Arc::new(Rekey::new(&ctx, Arc::clone(&catalog)));
        let byok = Arc::new(Byok::new(&ctx, Arc::clone(&catalog)));
        let diagnostics = Arc::new(Diagnostics::new(&ctx, setup));
        jobs.register(catalog.clone());
        jobs.register(exchange.clone());
        jobs.register(clone.clone());
        jobs.register(rekey.clone());
        let info = InstanceInfo {
            sys_id: ctx.sys_id.clone(),
            host: ctx.host.clone(),
            version: env!("CARGO_PKG_VERSION"),
            signer_kind: ctx.signer.kind(),
        };
        Services {
            jobs,
            audit,
            access,
            catalog,
            crypto,
            exchange,
            clone,
            rekey,
            byok,
            diagnostics,
            info,
            store: ctx.store,
            clock: ctx.clock,
            sweep_every: ctx.settings.sweep_every,
        }
    }

    pub fn info(&self) -> InstanceInfo {
        self.info.clone()
    }

    pub fn sys_id(&self) -> &SysId {
        &self.info.sys_id
    }

    /// The instance's clock (injectable; tests advance it).
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Starts the services' own background tasks on `background`: the job
    /// runner (its jobs run on the same tracker) and the writer of closed
    /// refusal windows.
    pub fn start(&self, background: &Background) {
        let (cancel, tracker) = (background.cancel.clone(), background.tracker.clone());
        background.spawn(Arc::clone(&self.jobs).run(cancel.clone(), tracker));
        background.spawn(Arc::clone(&self.audit).flush_closed_refusals(self.sweep_every, cancel));
    }

    /// What shutdown does last: writes every open refusal window.
    pub async fn flush(&self) {
        self.audit.flush_refusals(true).await;
    }
}

/// The one lifecycle of every background task: a cancellation token they
/// watch and a tracker shutdown waits on, within a deadline.
#[derive(Clone, Default)]
pub struct Background {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancelled when shutdown starts.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Cancels every task and waits at most `deadline` for them (a job still
    /// running then keeps its lease and runs again after the next start).
    /// Returns whether all ended in time.
    pub async fn shut_down(&self, deadline: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(deadline, self.tracker.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::domain::ids::RequestId;
    use crate::domain::job::{Job, JobId, JobKind};
    use crate::node::testing::{Instance, test_ca};

    #[test]
    fn every_job_kind_has_a_handler() {
        let instance = Instance::new(&test_ca(), "kinds");
        assert_eq!(instance.services.jobs.unhandled_kinds(), Vec::<JobKind>::new());
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_tasks_it_tracks_and_says_when_one_outlives_the_deadline() {
        let background = Background::new();
        let ended = Arc::new(AtomicBool::new(false));
        let (token, flag) = (background.token(), Arc::clone(&ended));
        background.spawn(async move {
            token.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        });
        assert!(background.shut_down(Duration::from_secs(5)).await, "the task ended when cancelled");
        assert!(ended.load(Ordering::SeqCst));

        let stubborn = Background::new();
        stubborn.spawn(std::future::pending::<()>());
        assert!(
            !stubborn.shut_down(Duration::from_millis(20)).await,
            "a task that ignores the token outlives the deadline"
        );
    }

    #[tokio::test]
    async fn the_started_runner_runs_a_due_job_and_stops_on_shutdown() {
        let instance = Instance::new(&test_ca(), "runner");
        let services = &instance.services;
        // A delivery job for a request that does not exist ends at once (Done).
        let id = RequestId::from_random(crate::signer::primitives::random_bytes());
        let job_id = JobId::for_request(JobKind::Deliver, &id);
        let now = instance.now();
        let jobs = crate::store::JobStore::new(services.store());
        jobs.add_job(Job::new(job_id.clone(), now, now)).await.expect("add job");
        let background = Background::new();
        let mut settled = services.jobs.settled();
        services.start(&background);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while jobs.job(job_id.clone()).await.expect("read").is_some() {
            assert!(tokio::time::Instant::now() < deadline, "the runner never ran the job");
            let _ = tokio::time::timeout_at(deadline, settled.changed()).await;
        }
        assert!(background.shut_down(Duration::from_secs(10)).await, "the runner and the refusal writer stop");
        let sweeps = services.jobs.jobs(10).await.expect("jobs");
        let kinds: Vec<JobKind> = sweeps.iter().map(|j| j.id.kind).collect();
        assert!(kinds.contains(&JobKind::ExpirySweep) && kinds.contains(&JobKind::LifecycleSweep), "{kinds:?}");
    }
}
