//! The job runner: claims due jobs from the store under a lease and hands
//! each to the handler its service registered for the job's kind
//! (`JobHandler`), at most `max_in_flight` at once. The runner knows no job
//! kind: leases, retries, their backoff and the peer backoff are its alone,
//! a handler only reports how its run ended (`JobOutcome`). Each job's effect
//! is idempotent, and a job whose runner died is claimed again when its lease
//! runs out. No lock is held across a network call: the store is the only
//! coordination.

mod backoff;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::context::{Context, millis};
pub use super::context::{DEFAULT_CLONE_GRANT_LIFETIME, DEFAULT_REKEY_RETRY, JobSettings, JobSignals};
use crate::clock::Clock;
use crate::domain::ids::{Host, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::domain::schedule::next_periodic;
use crate::error::{AppError, AppResult};
use crate::signer::primitives::random_bytes;
use crate::store::JobStore;
pub use backoff::PeerBackoff;

/// How one run of a job ended, as its handler reports it; the runner writes
/// what follows (the job's end, its next run or its retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// The job is over: the runner removes it.
    Done,
    /// The handler's own transaction already ended or rescheduled the job.
    Settled,
    /// A recurring job: it runs again at this time.
    RunAgainAt(UnixMillis),
    /// Its peer is backing off: it waits until then, no attempt counted.
    WaitUntil(UnixMillis),
    /// The peer at `host` did not answer: the job is retried with backoff,
    /// and every other job for `host` waits as long.
    PeerUnreachable { host: String, reason: String },
}

/// One claimed run of a job, as a handler gets it.
pub struct JobRun {
    pub job: Job,
    pub lease: Lease,
    backoff: Arc<PeerBackoff>,
    clock: Arc<dyn Clock>,
}

impl JobRun {
    /// Until when jobs for `host` wait because another one found it unreachable.
    pub fn peer_waiting_until(&self, host: &Host) -> Option<UnixMillis> {
        self.backoff.waiting_until(&host.to_string(), self.clock.now())
    }

    /// `host` answered (accepted or refused): its jobs stop waiting.
    pub fn peer_answered(&self, host: &Host) {
        self.backoff.answered(&host.to_string());
    }
}

pub type JobFuture = Pin<Box<dyn Future<Output = AppResult<JobOutcome>> + Send>>;

/// What a service registers for the job kinds it carries out. An error is
/// retried with the runner's backoff.
pub trait JobHandler: Send + Sync + 'static {
    /// The kinds this handler runs.
    fn kinds(&self) -> &'static [JobKind];
    fn run(self: Arc<Self>, run: JobRun) -> JobFuture;
    /// Jobs that must exist from the start (the recurring sweeps); added at
    /// every start, a no-op when already there.
    fn startup_jobs(&self, _now: UnixMillis) -> Vec<Job> {
        Vec::new()
    }
}

/// The next due time of a recurring job that ran for `due`, every `every`.
pub fn next_run(due: UnixMillis, every: Duration, now: UnixMillis) -> UnixMillis {
    next_periodic(due, millis(every), now)
}

/// The time a recurring job should next run, for tests of the schedule.
pub fn next_sweep(previous: UnixMillis, every: Duration, now: UnixMillis) -> UnixMillis {
    next_run(previous, every, now)
}

fn jitter() -> u64 {
    u64::from_le_bytes(random_bytes::<8>())
}

pub struct JobRunner {
    sys_id: SysId,
    store: JobStore,
    clock: Arc<dyn Clock>,
    settings: JobSettings,
    signals: Arc<JobSignals>,
    backoff: Arc<PeerBackoff>,
    handlers: RwLock<HashMap<JobKind, Arc<dyn JobHandler>>>,
}

impl JobRunner {
    pub fn new(ctx: &Context) -> Self {
        JobRunner {
            sys_id: ctx.sys_id.clone(),
            store: JobStore::new(&ctx.store),
            clock: Arc::clone(&ctx.clock),
            settings: ctx.settings.clone(),
            signals: Arc::clone(&ctx.signals),
            backoff: Arc::default(),
            handlers: RwLock::default(),
        }
    }

    /// Makes `handler` the one of its kinds.
    pub fn register(&self, handler: Arc<dyn JobHandler>) {
        let mut handlers = self.handlers.write().unwrap_or_else(|p| p.into_inner());
        for kind in handler.kinds() {
            handlers.insert(*kind, Arc::clone(&handler));
        }
    }

    /// The kinds no handler is registered for (none once `Services` is built).
    pub fn unhandled_kinds(&self) -> Vec<JobKind> {
        let handlers = self.handlers.read().unwrap_or_else(|p| p.into_inner());
        JobKind::ALL.into_iter().filter(|k| !handlers.contains_key(k)).collect()
    }

    fn handler(&self, kind: JobKind) -> Option<Arc<dyn JobHandler>> {
        self.handlers.read().unwrap_or_else(|p| p.into_inner()).get(&kind).cloned()
    }

    /// Changes each time a job run ends (tests wait on it).
    pub fn settled(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signals.subscribe()
    }

    /// Wakes the runner (tests call it after advancing a manual clock).
    pub fn wake(&self) {
        self.signals.wake();
    }

    /// Jobs in due order (operators' view and tests).
    pub async fn jobs(&self, limit: usize) -> AppResult<Vec<Job>> {
        Ok(self.store.jobs_by_due(limit).await?)
    }

    /// Runs one claimed job and writes how it ended.
    async fn run_job(self: &Arc<Self>, job: Job, lease: Lease) {
        let id = job.id.clone();
        let attempt = job.attempts + 1;
        let outcome = match self.handler(id.kind) {
            Some(handler) => {
                let run = JobRun {
                    job,
                    lease: lease.clone(),
                    backoff: Arc::clone(&self.backoff),
                    clock: Arc::clone(&self.clock),
                };
                handler.run(run).await
            }
            None => Err(AppError::Internal(format!("no handler for job kind {}", id.kind.label()))),
        };
        if let Err(e) = self.write_end(&id, lease, attempt, outcome).await {
            tracing::warn!(job = %id, error = %e, "could not record how the job ended; its lease will run out");
        }
    }

    /// Writes how the run under `lease` ended (`outcome`).
    async fn write_end(&self, id: &JobId, lease: Lease, attempt: u32, outcome: AppResult<JobOutcome>) -> AppResult<()> {
        let id = id.clone();
        match outcome {
            Ok(JobOutcome::Settled) => {}
            Ok(JobOutcome::Done) => self.store.finish_job(id, lease, None).await?,
            Ok(JobOutcome::RunAgainAt(at)) => self.store.finish_job(id, lease, Some(at)).await?,
            Ok(JobOutcome::WaitUntil(until)) => self.store.postpone_job(id, lease, until).await?,
            Ok(JobOutcome::PeerUnreachable { host, reason }) => {
                let retry =
                    self.store.retry_job(id, lease, reason, self.clock.now(), self.settings.retry, jitter()).await?;
                self.backoff.failed(&host, retry.next_due);
            }
            Err(e) => {
                tracing::warn!(job = %id, attempt, error = %e, "job failed; it will be retried");
                let error = e.to_string();
                self.store.retry_job(id, lease, error, self.clock.now(), self.settings.retry, jitter()).await?;
            }
        }
        Ok(())
    }

    /// Adds every handler's startup jobs (the recurring sweeps); a no-op
    /// for those already there.
    pub async fn add_startup_jobs(self: &Arc<Self>) {
        let now = self.clock.now();
        let handlers: Vec<Arc<dyn JobHandler>> =
            self.handlers.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut startup: Vec<Job> = handlers.iter().flat_map(|h| h.startup_jobs(now)).collect();
        startup.sort_by(|a, b| a.id.cmp(&b.id));
        startup.dedup_by(|a, b| a.id == b.id);
        for job in startup {
            let kind = job.id.kind;
            if let Err(e) = self.store.add_job(job).await {
                tracing::warn!(error = %e, job = kind.label(), "could not schedule a recurring job");
            }
        }
    }

    /// Claims the jobs due now as `owner` and runs them one after another,
    /// to their end; returns how many ran. The unit tests drive jobs this
    /// way with a manual clock (the daemon runs `run`).
    pub async fn run_due_once(self: &Arc<Self>, owner: &str) -> AppResult<usize> {
        let lease = millis(self.settings.lease);
        let claimed = self.store.claim_due_jobs(owner.to_owned(), self.clock.now(), lease, 1000).await?;
        let ran = claimed.len();
        for (job, lease) in claimed {
            self.run_job(job, lease).await;
            self.signals.settled();
        }
        Ok(ran)
    }

    /// Claims and runs jobs until `cancel`; in-flight jobs are tracked by
    /// `tracker` so shutdown can let them finish.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken, tracker: TaskTracker) {
        let owner = format!("{}-{}", self.sys_id, hex::encode(random_bytes::<4>()));
        match self.store.release_orphaned_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "jobs leased by the previous run are due again"),
            Err(e) => tracing::warn!(error = %e, "could not release the previous run's leases; they will run out"),
        }
        self.add_startup_jobs().await;
        let settings = self.settings.clone();
        let permits = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
        let running: Arc<Mutex<HashSet<JobId>>> = Arc::default();
        loop {
            let free = permits.available_permits();
            if free > 0 {
                let lease = millis(settings.lease);
                let claimed = self.store.claim_due_jobs(owner.clone(), self.clock.now(), lease, free).await;
                match claimed {
                    Ok(claimed) => {
                        for (job, lease) in claimed {
                            // Our own earlier run of it outlived its lease: let that one finish.
                            if !running.lock().unwrap_or_else(|p| p.into_inner()).insert(job.id.clone()) {
                                continue;
                            }
                            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else { break };
                            let (runner, running) = (Arc::clone(&self), Arc::clone(&running));
                            tracker.spawn(async move {
                                let id = job.id.clone();
                                runner.run_job(job, lease).await;
                                running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                                drop(permit);
                                runner.signals.settled();
                                runner.signals.wake();
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming jobs failed"),
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.signals.woken() => {}
                // Jobs fall due by the clock with nobody to wake the runner: it
                // looks again at least once a second.
                _ = tokio::time::sleep(settings.sweep_every.min(Duration::from_secs(1))) => {}
            }
        }
    }
}
