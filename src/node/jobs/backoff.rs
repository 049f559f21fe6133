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
