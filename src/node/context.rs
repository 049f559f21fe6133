//! What every service is built from: the instance's identity, its ports
//! (store, signer, instance key, peer link, clock) and the job runner's
//! signals and settings. `Services::new` makes one `Context`; each service
//! takes from it only the ports it uses; the store and the signer run their
//! blocking work off the async workers themselves (`offload`), so services
//! are plain `async fn`s. `reread_and_retry` bounds a use case's re-reads.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::ports::PeerLink;
use crate::clock::Clock;
use crate::domain::ids::{Host, SysId, UnixMillis};
use crate::domain::schedule::RetryPolicy;
use crate::error::{AppError, AppResult};
use crate::signer::Signer;
use crate::signer::async_signer::{AsyncInstanceKey, AsyncSigner};
use crate::signer::instance_key::InstanceKey;
use crate::store::Store;

/// The shared parts of one instance.
pub struct Context {
    pub sys_id: SysId,
    /// The host this instance advertises to peers.
    pub host: Host,
    pub store: Arc<Store>,
    pub signer: Arc<dyn Signer>,
    pub instance_key: Arc<InstanceKey>,
    pub peers: Arc<dyn PeerLink>,
    pub clock: Arc<dyn Clock>,
    /// Wakes the job runner and tells waiters that a job settled.
    pub signals: Arc<JobSignals>,
    pub settings: JobSettings,
}

impl Context {
    pub fn new(
        store: Arc<Store>,
        signer: Arc<dyn Signer>,
        instance_key: InstanceKey,
        peers: Arc<dyn PeerLink>,
        clock: Arc<dyn Clock>,
        advertised_host: Host,
        settings: JobSettings,
    ) -> AppResult<Self> {
        let sys_id = store.sys_id()?;
        Ok(Context {
            sys_id,
            host: advertised_host,
            store,
            signer,
            instance_key: Arc::new(instance_key),
            peers,
            clock,
            signals: Arc::default(),
            settings,
        })
    }
}

impl Context {
    /// The signer as services use it: every call runs on the blocking pool.
    pub fn async_signer(&self) -> AsyncSigner {
        AsyncSigner::new(Arc::clone(&self.signer))
    }

    /// The instance key as services use it: every signature runs on the blocking pool.
    pub fn async_instance_key(&self) -> AsyncInstanceKey {
        AsyncInstanceKey::new(Arc::clone(&self.instance_key))
    }
}

/// How often a use case reads again and decides again after its
/// conditional write found the read out of date, before it answers ABORTED.
pub const REREAD_ATTEMPTS: usize = 3;

/// Runs `attempt` (read, decide, write conditionally) again while its write
/// finds the read out of date (`StoreError::Stale`), at most
/// `REREAD_ATTEMPTS` times; then `AppError::Aborted`: `what` kept changing.
/// Any other answer, success or error, is returned as it is.
pub async fn reread_and_retry<T, Fut>(what: impl std::fmt::Display, mut attempt: impl FnMut() -> Fut) -> AppResult<T>
where
    Fut: Future<Output = AppResult<T>>,
{
    for _ in 0..REREAD_ATTEMPTS {
        match attempt().await {
            Err(e) if e.is_stale() => continue,
            answer => return answer,
        }
    }
    Err(AppError::Aborted(format!("{what} kept changing while it was written; read it again and retry")))
}

/// `d` in milliseconds (saturating).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Until when a long job's lease is renewed by each of its steps.
pub fn lease_until(clock: &dyn Clock, settings: &JobSettings) -> UnixMillis {
    clock.now().plus_millis(millis(settings.lease))
}

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

    /// Resolves at the next `wake`.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
    }

    pub fn settled(&self) {
        self.settled.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[tokio::test]
    async fn a_stale_write_is_read_again_a_bounded_number_of_times_then_aborted() {
        use crate::store::{RowKind, StoreError};
        let stale = || AppError::Store(StoreError::Stale { kind: RowKind::Spec, id: "pay".into() });
        let mut calls = 0;
        let answer = reread_and_retry("spec pay", || {
            calls += 1;
            let n = calls;
            async move { if n < 3 { Err(stale()) } else { Ok(n) } }
        })
        .await;
        assert_eq!(answer.expect("the third read wins"), 3);
        let mut calls = 0;
        let answer: AppResult<()> = reread_and_retry("spec pay", || {
            calls += 1;
            async { Err(stale()) }
        })
        .await;
        assert_eq!(calls, REREAD_ATTEMPTS);
        let said = answer.unwrap_err();
        assert!(matches!(&said, AppError::Aborted(_)), "{said:?}");
        assert_eq!(said.to_string(), "aborted: spec pay kept changing while it was written; read it again and retry");
        let mut calls = 0;
        let answer: AppResult<()> = reread_and_retry("spec pay", || {
            calls += 1;
            async { Err(AppError::Internal("disk".into())) }
        })
        .await;
        assert!(matches!(answer, Err(AppError::Internal(_))) && calls == 1, "other errors are not retried");
    }

    #[test]
    fn a_lease_is_renewed_until_now_plus_its_length() {
        let clock = ManualClock::starting_now();
        let settings = JobSettings { lease: Duration::from_secs(120), ..JobSettings::default() };
        assert_eq!(lease_until(&*clock, &settings), clock.now().plus_millis(120_000));
        assert_eq!(millis(Duration::from_secs(u64::MAX)), i64::MAX, "saturates");
    }

    #[test]
    fn the_settings_derive_from_the_background_interval() {
        let s = JobSettings::for_interval(Duration::from_millis(200));
        assert_eq!(s.sweep_every, Duration::from_millis(200));
        assert_eq!((s.retry.base_millis, s.retry.cap_millis), (200, 12_000));
        let slow = JobSettings::for_interval(Duration::from_secs(60));
        assert_eq!((slow.retry.base_millis, slow.retry.cap_millis), (1_000, 300_000), "capped at 1 s and 5 min");
    }
}
