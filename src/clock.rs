//! Time, injectable. `SystemClock` is the one place that reads the wall
//! clock; tests use `ManualClock` and advance it instead of waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::ids::UnixMillis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at the wall clock's now, so certificates and expiries made
    /// with real time still make sense.
    pub fn starting_now() -> Arc<Self> {
        Arc::new(ManualClock(AtomicI64::new(now().0)))
    }

    pub fn advance_millis(&self, millis: i64) {
        self.0.fetch_add(millis, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(self.0.load(Ordering::Acquire))
    }
}

/// The wall clock's now (for code outside the node: CLI, composition root).
pub fn now() -> UnixMillis {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    UnixMillis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// `t` as RFC 3339 UTC to the second (for messages and audit details).
pub fn rfc3339(t: UnixMillis) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(t.0).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}
