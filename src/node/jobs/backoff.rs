//! The peer backoff: the runner's memory of which targets did not answer.

use std::sync::Mutex;

use crate::domain::ids::UnixMillis;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_waits_only_after_it_failed_and_only_until_then() {
        let b = PeerBackoff::default();
        assert_eq!(b.waiting_until("t.test:1", UnixMillis(100)), None, "no failure yet");
        b.failed("t.test:1", UnixMillis(500));
        assert_eq!(b.waiting_until("t.test:1", UnixMillis(100)), Some(UnixMillis(500)));
        assert_eq!(b.waiting_until("other.test:1", UnixMillis(100)), None, "other hosts do not wait");
        assert_eq!(b.waiting_until("t.test:1", UnixMillis(500)), None, "the wait is over at its end");
    }

    #[test]
    fn the_latest_end_wins_and_an_answer_ends_the_wait() {
        let b = PeerBackoff::default();
        b.failed("t.test:1", UnixMillis(900));
        b.failed("t.test:1", UnixMillis(300));
        assert_eq!(
            b.waiting_until("t.test:1", UnixMillis(0)),
            Some(UnixMillis(900)),
            "an earlier end does not shorten it"
        );
        b.answered("t.test:1");
        assert_eq!(b.waiting_until("t.test:1", UnixMillis(0)), None);
    }
}
