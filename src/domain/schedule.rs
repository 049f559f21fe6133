//! When work runs again: retry backoff with jitter and the next due time of
//! recurring work, as pure functions of the attempt, `now` and a random
//! sample passed in (the domain reads no clock and draws no randomness).

use super::ids::UnixMillis;

/// Exponential backoff between `base` and `cap`, "equal jitter": the delay
/// for attempt n is d/2 plus a random share of d/2, d = min(cap, base·2^(n-1)).
/// Retries of many jobs failing together spread out instead of marching in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub base_millis: i64,
    pub cap_millis: i64,
}

impl RetryPolicy {
    /// Deliveries and notices: 1 s doubling up to 5 minutes.
    pub const DELIVERY: RetryPolicy = RetryPolicy { base_millis: 1_000, cap_millis: 300_000 };

    /// The delay before attempt `attempt` (1 = the first retry); `jitter` is
    /// any random number.
    pub fn delay_millis(self, attempt: u32, jitter: u64) -> i64 {
        let base = self.base_millis.max(1);
        let cap = self.cap_millis.max(base);
        let shift = attempt.saturating_sub(1).min(62);
        let full = base.checked_mul(1i64 << shift).map_or(cap, |d| d.min(cap));
        let half = full / 2;
        (half + (jitter % (half as u64 + 1)) as i64).max(1)
    }

    /// When attempt `attempt` is due, counted from `now`.
    pub fn next_due(self, now: UnixMillis, attempt: u32, jitter: u64) -> UnixMillis {
        now.plus_millis(self.delay_millis(attempt, jitter))
    }
}

/// The next run of work that repeats every `every_millis`, counted from its
/// previous due time so runs keep their rhythm, but never in the past
/// (after a long stop it runs once, not once per missed period).
pub fn next_periodic(previous_due: UnixMillis, every_millis: i64, now: UnixMillis) -> UnixMillis {
    let every = every_millis.max(1);
    let next = previous_due.plus_millis(every);
    if next > now { next } else { now.plus_millis(every) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_within_its_jitter_band() {
        let p = RetryPolicy { base_millis: 1_000, cap_millis: 60_000 };
        for (attempt, full) in
            [(1, 1_000), (2, 2_000), (3, 4_000), (6, 32_000), (7, 60_000), (40, 60_000), (500, 60_000)]
        {
            for jitter in [0, 1, 499, 500, 12_345, u64::MAX] {
                let d = p.delay_millis(attempt, jitter);
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt} jitter {jitter}: {d} not in [{}, {full}]",
                    full / 2
                );
            }
            assert_eq!(p.delay_millis(attempt, 0), full / 2);
            assert_eq!(p.delay_millis(attempt, (full / 2) as u64), full);
        }
        // Attempt 0 is treated as the first retry, never as no delay at all.
        assert_eq!(p.delay_millis(0, 0), 500);
        assert_eq!(p.next_due(UnixMillis(10), 1, 0), UnixMillis(510));
    }

    #[test]
    fn jitter_spreads_retries() {
        let p = RetryPolicy::DELIVERY;
        let delays: std::collections::BTreeSet<i64> = (0..100u64).map(|j| p.delay_millis(5, j * 7919)).collect();
        assert!(delays.len() > 50, "{} distinct delays", delays.len());
    }

    #[test]
    fn degenerate_policies_do_not_panic() {
        let p = RetryPolicy { base_millis: 0, cap_millis: -5 };
        assert_eq!(p.delay_millis(3, 9), 1);
        let p = RetryPolicy { base_millis: i64::MAX / 2, cap_millis: i64::MAX };
        assert!(p.delay_millis(63, 0) > 0);
    }

    #[test]
    fn periodic_keeps_rhythm_and_never_schedules_in_the_past() {
        assert_eq!(next_periodic(UnixMillis(1_000), 500, UnixMillis(1_200)), UnixMillis(1_500));
        assert_eq!(next_periodic(UnixMillis(1_000), 500, UnixMillis(9_000)), UnixMillis(9_500));
        assert_eq!(next_periodic(UnixMillis(1_000), 0, UnixMillis(1_000)), UnixMillis(1_001));
    }
}
