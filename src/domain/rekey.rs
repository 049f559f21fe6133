//! Rekey after import: on the target, once a clone exchange configured with
//! rekey has imported the source's keys, every record encrypted under one of
//! those keys is re-encrypted under this instance's own Active key of the
//! same spec. This module is the pure part: the run's state, which keys it
//! moves records away from, its progress, when it tries again, and what its
//! expiry does to the imported keys.
//!
//! ```text
//! Pending --first batch--> Running --all records moved--> Completed
//!            Running|Pending --failure--> Failed --retry_interval--> Running
//!            any but Completed --request expires--> Expired
//! ```

use super::ids::{KeyId, Name, RequestId, SysId, UnixMillis};
use super::record::RecordAddress;

/// How long a failed rekey waits before it tries again (the reference's
/// daily retry).
pub const DEFAULT_RETRY_INTERVAL_MILLIS: i64 = 24 * 3600 * 1000;
/// Most records one batch re-encrypts (one transaction with its cursor).
pub const BATCH_RECORDS: usize = 2_000;
/// Most passes over the records one attempt makes: records that arrive
/// under an imported key behind the cursor are found by the next pass.
pub const MAX_PASSES: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RekeyState {
    /// Scheduled by the import; no batch has run yet.
    Pending,
    /// Batches are being re-encrypted.
    Running,
    /// The last attempt failed; the next one is due at `next_attempt_at`.
    Failed,
    /// Every record is under this instance's keys.
    Completed,
    /// The request expired before the rekey completed.
    Expired,
}

impl RekeyState {
    pub const ALL: [RekeyState; 5] =
        [RekeyState::Pending, RekeyState::Running, RekeyState::Failed, RekeyState::Completed, RekeyState::Expired];

    /// Stored labels; never rename them.
    pub fn label(self) -> &'static str {
        match self {
            RekeyState::Pending => "pending",
            RekeyState::Running => "running",
            RekeyState::Failed => "failed",
            RekeyState::Completed => "completed",
            RekeyState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.label() == s)
    }

    /// Nothing more will happen to the run.
    pub fn is_final(self) -> bool {
        matches!(self, RekeyState::Completed | RekeyState::Expired)
    }
}

/// An imported key and how many records still depend on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyDebt {
    pub key_id: KeyId,
    pub records: u64,
}

/// The rekey of one completed request (target side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RekeyRun {
    pub request_id: RequestId,
    /// The instance the imported keys came from.
    pub source: SysId,
    /// The specs whose imported keys records move away from.
    pub specs: Vec<Name>,
    pub state: RekeyState,
    /// Attempts started (the first run included).
    pub attempts: u32,
    /// Records re-encrypted so far, over every attempt.
    pub records_done: u64,
    /// Records to re-encrypt in all: done plus the debt found when the
    /// current attempt started.
    pub records_total: u64,
    /// The last address the current pass has dealt with.
    pub cursor: Option<RecordAddress>,
    /// Passes the current attempt has started.
    pub pass: u32,
    /// Records re-encrypted by the current attempt, and when it started
    /// (the rate and the ETA are computed from them).
    pub attempt_done: u64,
    pub attempt_started_at: UnixMillis,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    pub next_attempt_at: Option<UnixMillis>,
    pub last_error: Option<String>,
    /// The request's expiry: the rekey must be done by then.
    pub expires_at: UnixMillis,
    /// After expiry: imported keys still needed by records (kept).
    pub kept_keys: Vec<KeyDebt>,
    /// After expiry: imported keys no record needed (destroyed).
    pub destroyed_keys: Vec<KeyId>,
}

impl RekeyRun {
    pub fn new(
        request_id: RequestId,
        source: SysId,
        specs: Vec<Name>,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Self {
        RekeyRun {
            request_id,
            source,
            specs,
            state: RekeyState::Pending,
            attempts: 0,
            records_done: 0,
            records_total: 0,
            cursor: None,
            pass: 0,
            attempt_done: 0,
            attempt_started_at: now,
            created_at: now,
            updated_at: now,
            finished_at: None,
            next_attempt_at: None,
            last_error: None,
            expires_at,
            kept_keys: Vec::new(),
            destroyed_keys: Vec::new(),
        }
    }

    /// Whether records under `key` move: an imported key of the source, of
    /// one of the run's specs.
    pub fn covers(&self, key: &KeyId) -> bool {
        key.origin == self.source && self.specs.contains(&key.spec)
    }

    /// An attempt starts with `debt` records still to move.
    pub fn start_attempt(&mut self, debt: u64, now: UnixMillis) {
        self.state = RekeyState::Running;
        self.attempts += 1;
        self.records_total = self.records_done + debt;
        self.cursor = None;
        self.pass = 1;
        self.attempt_done = 0;
        self.attempt_started_at = now;
        self.updated_at = now;
        self.next_attempt_at = None;
    }

    /// A batch moved `moved` records; the pass has dealt with everything up
    /// to `cursor`.
    pub fn record_batch(&mut self, moved: u64, cursor: Option<RecordAddress>, now: UnixMillis) {
        self.records_done += moved;
        self.attempt_done += moved;
        // Records written under an imported key meanwhile make the total grow.
        self.records_total = self.records_total.max(self.records_done);
        self.cursor = cursor;
        self.updated_at = now;
    }

    /// A pass ended with records still under imported keys (written behind
    /// the cursor meanwhile): start another from the beginning, if the
    /// attempt has passes left.
    pub fn next_pass(&mut self, remaining: u64, now: UnixMillis) -> bool {
        if self.pass >= MAX_PASSES {
            return false;
        }
        self.pass += 1;
        self.cursor = None;
        self.records_total = self.records_done + remaining;
        self.updated_at = now;
        true
    }

    pub fn complete(&mut self, now: UnixMillis) {
        self.state = RekeyState::Completed;
        self.cursor = None;
        self.finished_at = Some(now);
        self.updated_at = now;
        self.last_error = None;
        self.next_attempt_at = None;
    }

    /// The attempt failed; the next is due at `next`.
    pub fn fail(&mut self, error: String, next: UnixMillis, now: UnixMillis) {
        self.state = RekeyState::Failed;
        self.last_error = Some(error);
        self.next_attempt_at = Some(next);
        self.updated_at = now;
    }

    /// The request expired first: `kept` keys still had records, `destroyed`
    /// ones had none.
    pub fn expire(&mut self, kept: Vec<KeyDebt>, destroyed: Vec<KeyId>, now: UnixMillis) {
        self.state = RekeyState::Expired;
        self.kept_keys = kept;
        self.destroyed_keys = destroyed;
        self.cursor = None;
        self.finished_at = Some(now);
        self.updated_at = now;
        self.next_attempt_at = None;
    }

    pub fn is_expired_at(&self, now: UnixMillis) -> bool {
        now >= self.expires_at
    }

    /// Records per second of the current (or, once finished, the last) attempt.
    pub fn rate(&self, now: UnixMillis) -> f64 {
        let end = self.finished_at.unwrap_or(now);
        let elapsed = (end.0 - self.attempt_started_at.0).max(1) as f64 / 1000.0;
        self.attempt_done as f64 / elapsed
    }

    /// Milliseconds left at the current rate, while running.
    pub fn eta_millis(&self, now: UnixMillis) -> Option<i64> {
        let rate = self.rate(now);
        let left = self.records_total.saturating_sub(self.records_done);
        (self.state == RekeyState::Running && rate > 0.0).then(|| (left as f64 / rate * 1000.0) as i64)
    }
}

/// When a failed attempt runs again: after `retry_interval_millis`, but no
/// later than the expiry (which then ends the run).
pub fn next_attempt(now: UnixMillis, retry_interval_millis: i64, expires_at: UnixMillis) -> UnixMillis {
    now.plus_millis(retry_interval_millis.max(1)).min(expires_at)
}

/// Splits the imported keys at expiry: those records still need are kept,
/// the others are destroyed.
pub fn split_at_expiry(debts: Vec<KeyDebt>) -> (Vec<KeyDebt>, Vec<KeyId>) {
    let (kept, unneeded): (Vec<KeyDebt>, Vec<KeyDebt>) = debts.into_iter().partition(|d| d.records > 0);
    (kept, unneeded.into_iter().map(|d| d.key_id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(origin: &SysId, spec: &str, v: u32) -> KeyId {
        KeyId { origin: origin.clone(), spec: Name::parse(spec, "spec").unwrap(), version: v }
    }

    fn run() -> (RekeyRun, SysId) {
        let source = SysId::from_random([1; 16]);
        let specs = vec![Name::parse("pay", "spec").unwrap()];
        let r =
            RekeyRun::new(RequestId::from_random([2; 16]), source.clone(), specs, UnixMillis(10_000), UnixMillis(0));
        (r, source)
    }

    #[test]
    fn a_run_covers_the_sources_keys_of_its_specs_only() {
        let (r, source) = run();
        let own = SysId::from_random([3; 16]);
        assert!(r.covers(&key(&source, "pay", 1)));
        assert!(r.covers(&key(&source, "pay", 7)));
        assert!(!r.covers(&key(&own, "pay", 1)), "this instance's own keys stay");
        assert!(!r.covers(&key(&source, "other", 1)), "specs outside the run stay");
    }

    #[test]
    fn progress_counts_over_attempts_and_passes() {
        let (mut r, _) = run();
        r.start_attempt(100, UnixMillis(1_000));
        assert_eq!((r.state, r.attempts, r.records_total, r.pass), (RekeyState::Running, 1, 100, 1));
        r.record_batch(40, None, UnixMillis(2_000));
        assert_eq!(r.rate(UnixMillis(2_000)), 40.0);
        assert_eq!(r.eta_millis(UnixMillis(2_000)), Some(1_500));
        r.fail("signer down".into(), UnixMillis(5_000), UnixMillis(2_000));
        assert_eq!(r.eta_millis(UnixMillis(2_000)), None, "no ETA while waiting to retry");
        r.start_attempt(60, UnixMillis(5_000));
        assert_eq!((r.attempts, r.records_done, r.records_total, r.attempt_done), (2, 40, 100, 0));
        r.record_batch(60, None, UnixMillis(6_000));
        assert!(r.next_pass(5, UnixMillis(6_000)), "records written behind the cursor need a second pass");
        assert_eq!((r.pass, r.records_total), (2, 105));
        assert!(r.next_pass(5, UnixMillis(6_000)));
        assert!(!r.next_pass(5, UnixMillis(6_000)), "at most {MAX_PASSES} passes an attempt");
        r.complete(UnixMillis(7_000));
        assert!(r.state.is_final());
    }

    #[test]
    fn retries_wait_the_interval_but_never_past_the_expiry() {
        assert_eq!(next_attempt(UnixMillis(1_000), 500, UnixMillis(10_000)), UnixMillis(1_500));
        assert_eq!(next_attempt(UnixMillis(1_000), 50_000, UnixMillis(10_000)), UnixMillis(10_000));
        assert_eq!(next_attempt(UnixMillis(1_000), 0, UnixMillis(10_000)), UnixMillis(1_001));
    }

    #[test]
    fn expiry_keeps_needed_keys_and_destroys_the_rest() {
        let source = SysId::from_random([1; 16]);
        let (a, b, c) = (key(&source, "pay", 1), key(&source, "pay", 2), key(&source, "pay", 3));
        let debts = vec![
            KeyDebt { key_id: a.clone(), records: 0 },
            KeyDebt { key_id: b.clone(), records: 3 },
            KeyDebt { key_id: c.clone(), records: 0 },
        ];
        let (kept, destroyed) = split_at_expiry(debts);
        assert_eq!(kept, vec![KeyDebt { key_id: b, records: 3 }]);
        assert_eq!(destroyed, vec![a, c]);
    }

    #[test]
    fn state_labels_round_trip() {
        for s in RekeyState::ALL {
            assert_eq!(RekeyState::parse(s.label()), Some(s));
        }
        assert_eq!(RekeyState::parse("done"), None);
    }
}
