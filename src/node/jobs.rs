//! The job runner: claims due jobs from the store under a lease and runs
//! them, at most `max_in_flight` at once. Deliveries, status notices, the
//! expiry and lifecycle sweeps, clones, the automatic exchange after a clone,
//! clone schedules and rekeys are jobs (`run_job`); each job's effect is
//! idempotent, and a job whose runner died is claimed again when its lease
//! runs out. No lock is held
//! across a network call: the store is the only coordination.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Node;
use crate::domain::ids::UnixMillis;
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::domain::schedule::{RetryPolicy, next_periodic};
use crate::error::AppResult;
use crate::signer::primitives::random_bytes;

/// How the runner paces work. `for_interval` derives it from the daemon's
/// `background_interval`.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// How long `UpdateRequest` waits for a delivery before answering.
    pub decision_wait: Duration,
    /// How long one delivery or notice may take before it counts as failed.
    pub delivery_timeout: Duration,
    /// How long a claimed job stays leased (longer than any one run).
    pub lease: Duration,
    /// How often the sweeps run, and the longest the runner sleeps.
    pub sweep_every: Duration,
    /// Retry backoff of deliveries and notices.
    pub retry: RetryPolicy,
    /// Jobs run at once.
    pub max_in_flight: usize,
    /// How long a failed rekey waits before it tries again.
    pub rekey_retry: Duration,
    /// How long after its snapshot a clone grant approves (`clone.grant_lifetime`).
    pub clone_grant_lifetime: Duration,
}

/// A clone grant approves for 1 h after its snapshot unless configured.
pub const DEFAULT_CLONE_GRANT_LIFETIME: Duration = Duration::from_millis(crate::domain::clone::GRANT_MILLIS as u64);

/// The reference's daily rekey retry.
pub const DEFAULT_REKEY_RETRY: Duration = Duration::from_secs(24 * 3600);

impl JobSettings {
    /// Sweeps every `interval`; retries start at `interval` (at most 1 s) and
    /// back off to 60 × `interval` (at most 5 minutes).
    pub fn for_interval(interval: Duration) -> Self {
        let ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX).max(1);
        JobSettings {
            decision_wait: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            sweep_every: interval,
            retry: RetryPolicy { base_millis: ms.min(1_000), cap_millis: ms.saturating_mul(60).min(300_000) },
            max_in_flight: 16,
            rekey_retry: DEFAULT_REKEY_RETRY,
            clone_grant_lifetime: DEFAULT_CLONE_GRANT_LIFETIME,
        }
    }

    /// The same, with failed rekeys retried after `interval` (the config's
    /// `rekey.retry_interval`).
    pub fn with_rekey_retry(mut self, interval: Duration) -> Self {
        self.rekey_retry = interval;
        self
    }

    /// The same, with clone grants lasting `lifetime` (the config's `clone.grant_lifetime`).
    pub fn with_clone_grant_lifetime(mut self, lifetime: Duration) -> Self {
        self.clone_grant_lifetime = lifetime;
        self
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings::for_interval(Duration::from_secs(2))
    }
}

/// Wakes the runner when work is added, and tells waiters when a job ended.
pub struct JobSignals {
    wake: Notify,
    settled: watch::Sender<u64>,
}

impl Default for JobSignals {
    fn default() -> Self {
        JobSignals { wake: Notify::new(), settled: watch::channel(0).0 }
    }
}

impl JobSignals {
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    fn settled(&self) {
        self.settled.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Backoff per target: after a delivery or notice to a host fails as
/// unreachable, the other jobs for that host wait until the same time instead
/// of each dialling it (a dead target with 100 queued deliveries costs one
/// attempt per backoff step, not 100). In memory: after a restart each host
/// gets one fresh attempt.
#[derive(Default)]
pub struct PeerBackoff(Mutex<std::collections::HashMap<String, UnixMillis>>);

impl PeerBackoff {
    /// Until when jobs for `host` wait, if they do at `now`.
    pub fn waiting_until(&self, host: &str, now: UnixMillis) -> Option<UnixMillis> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(host).copied().filter(|until| *until > now)
    }

    pub fn failed(&self, host: &str, until: UnixMillis) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let slot = map.entry(host.to_owned()).or_insert(until);
        *slot = (*slot).max(until);
    }

    pub fn answered(&self, host: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(host);
    }
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn jitter() -> u64 {
    u64::from_le_bytes(random_bytes::<8>())
}

impl Node {
    pub fn with_job_settings(mut self, settings: JobSettings) -> Self {
        self.job_settings = settings;
        self
    }

    pub(super) fn clone_grant_millis(&self) -> i64 {
        millis(self.job_settings.clone_grant_lifetime)
    }

    pub(super) fn decision_wait(&self) -> Duration {
        self.job_settings.decision_wait
    }

    pub(super) fn delivery_timeout(&self) -> Duration {
        self.job_settings.delivery_timeout
    }

    pub(super) fn retry_policy(&self) -> RetryPolicy {
        self.job_settings.retry
    }

    /// Wakes the runner (tests call it after advancing a manual clock).
    pub fn wake_jobs(&self) {
        self.jobs.wake();
    }

    /// Jobs in due order (operators' view and tests).
    pub async fn jobs(self: &Arc<Self>, limit: usize) -> AppResult<Vec<Job>> {
        self.blocking(move |node| Ok(node.store.jobs_by_due(limit)?)).await
    }

    /// Runs one claimed job to its end: done, rescheduled or retried.
    async fn run_job(self: &Arc<Self>, job: Job, lease: Lease) {
        let id = job.id.clone();
        let outcome = match id.kind {
            JobKind::Deliver => self.run_delivery(id.clone(), lease.clone()).await,
            JobKind::Notify => self.run_notice(id.clone(), lease.clone()).await,
            JobKind::ExpirySweep | JobKind::LifecycleSweep => self.run_sweep(&job, lease.clone()).await,
            JobKind::Clone => self.run_clone(&job, lease.clone()).await,
            JobKind::AutoExchange => self.run_auto_exchange(&job, lease.clone()).await,
            JobKind::CloneSchedule => self.run_clone_schedule(&job, lease.clone()).await,
            JobKind::Rekey => self.run_rekey(&job, lease.clone()).await,
        };
        if let Err(e) = outcome {
            tracing::warn!(job = %id, attempt = job.attempts + 1, error = %e, "job failed; it will be retried");
            let (error, policy) = (e.to_string(), self.retry_policy());
            let retried = self
                .blocking(move |node| Ok(node.store.retry_job(&id, &lease, &error, node.now(), policy, jitter())?))
                .await;
            if let Err(e) = retried {
                tracing::warn!(error = %e, "could not record the job's failure; its lease will run out");
            }
        }
    }

    async fn run_sweep(self: &Arc<Self>, job: &Job, lease: Lease) -> AppResult<()> {
        match job.id.kind {
            JobKind::ExpirySweep => {
                self.blocking(|node| node.sweep_expired_now()).await?;
            }
            _ => {
                self.sweep_lifecycle().await?;
            }
        }
        let (id, due) = (job.id.clone(), job.next_due);
        let every = millis(self.job_settings.sweep_every);
        self.blocking(move |node| {
            let next = next_periodic(due, every, node.now());
            Ok(node.store.finish_job(&id, &lease, Some(next))?)
        })
        .await
    }
}

/// Claims and runs jobs until `cancel`; in-flight jobs are tracked by
/// `tracker` so shutdown can let them finish.
pub async fn run_jobs(node: Arc<Node>, cancel: CancellationToken, tracker: TaskTracker) {
    let owner = format!("{}-{}", node.sys_id(), hex::encode(random_bytes::<4>()));
    match node.blocking(|n| Ok(n.store.release_orphaned_leases()?)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "jobs leased by the previous run are due again"),
        Err(e) => tracing::warn!(error = %e, "could not release the previous run's leases; they will run out"),
    }
    let now = node.now();
    for kind in [JobKind::ExpirySweep, JobKind::LifecycleSweep] {
        let job = Job::new(JobId::singleton(kind), now, now);
        if let Err(e) = node.blocking(move |n| Ok(n.store.add_job(&job)?)).await {
            tracing::warn!(error = %e, job = kind.label(), "could not schedule a sweep");
        }
    }
    let settings = node.job_settings.clone();
    let permits = Arc::new(Semaphore::new(settings.max_in_flight.max(1)));
    let running: Arc<Mutex<HashSet<JobId>>> = Arc::default();
    loop {
        let free = permits.available_permits();
        if free > 0 {
            let (owner2, lease) = (owner.clone(), millis(settings.lease));
            let claimed = node.blocking(move |n| Ok(n.store.claim_due_jobs(&owner2, n.now(), lease, free)?)).await;
            match claimed {
                Ok(claimed) => {
                    for (job, lease) in claimed {
                        // Our own earlier run of it outlived its lease: let that one finish.
                        if !running.lock().unwrap_or_else(|p| p.into_inner()).insert(job.id.clone()) {
                            continue;
                        }
                        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else { break };
                        let (node, running) = (Arc::clone(&node), Arc::clone(&running));
                        tracker.spawn(async move {
                            let id = job.id.clone();
                            node.run_job(job, lease).await;
                            running.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                            drop(permit);
                            node.jobs.settled();
                            node.jobs.wake();
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming jobs failed"),
            }
        }
        if node.refusals_to_flush() {
            node.flush_refusals(false).await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = node.jobs.wake.notified() => {}
            _ = tokio::time::sleep(settings.sweep_every.min(Duration::from_secs(1))) => {}
        }
    }
}

/// The time a recurring job should next run, for tests of the schedule.
pub fn next_sweep(previous: UnixMillis, every: Duration, now: UnixMillis) -> UnixMillis {
    next_periodic(previous, millis(every), now)
}
