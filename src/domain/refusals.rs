//! Coalescing of repeated access refusals, so a caller who keeps being
//! refused cannot flood the audit log (or the disk, or the store's single
//! writer) with one entry per call.
//!
//! The first refusal of a kind (same caller, spec, operation and reason) is
//! audited at once and opens a window; refusals of the same kind inside the
//! window are only counted; when the window has closed, one entry records
//! how many there were, from when to when. Only the repeat counts of open
//! windows live in memory (a crash loses at most one window of counts, never
//! a first refusal). The number of open windows is bounded: when full, a
//! refusal is audited on its own, as if coalescing were off.
//!
//! Two kinds are coalesced: policy refusals (`Refusal`) and calls refused for
//! who is calling, by role or certificate, on gRPC or the metrics listener
//! (`CallRefusal`).

use std::collections::HashMap;

use super::ids::{Name, UnixMillis};
use super::policy::Operation;

/// How long a window stays open after the first refusal of its kind.
pub const WINDOW_MILLIS: i64 = 5_000;
/// Most windows open at once.
pub const MAX_OPEN: usize = 4096;

/// One kind of refusal.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Refusal {
    /// `operator:<name>` or `instance:<sys_id>`.
    pub actor: String,
    pub spec: Name,
    pub operation: Operation,
    pub reason: String,
}

/// One kind of refused call (`call.refused`): same caller, same place, same
/// reason. `scope` is what the coalescing keys on: the RPC method, or the
/// whole metrics listener (its request paths are the caller's to choose, so
/// they must not open windows of their own).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CallRefusal {
    pub actor: String,
    pub scope: String,
    pub reason: String,
}

impl CallRefusal {
    /// The kind of a refusal; an unidentified caller (`unidentified@<ip>:<port>`)
    /// is keyed by its address without the port, which changes per connection.
    pub fn new(actor: &str, scope: String, reason: String) -> Self {
        let actor = match actor.strip_prefix("unidentified@").and_then(|a| a.rsplit_once(':')) {
            Some((ip, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                format!("unidentified@{ip}")
            }
            _ => actor.to_owned(),
        };
        CallRefusal { actor, scope, reason }
    }
}

/// The refusals counted in a window after its first, ready to audit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Repeats<K = Refusal> {
    pub refusal: K,
    pub count: u64,
    pub first: UnixMillis,
    pub last: UnixMillis,
}

/// What to do with a refusal just noted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Noted {
    /// The first of its kind in a window (or coalescing is full): audit it.
    First,
    /// Counted in an open window: nothing to write now.
    Repeat,
}

#[derive(Clone, Copy, Debug)]
struct Window {
    opened: UnixMillis,
    repeats: u64,
    last: UnixMillis,
}

#[derive(Debug)]
pub struct RefusalWindows<K = Refusal> {
    open: HashMap<K, Window>,
    window_millis: i64,
    max_open: usize,
}

impl<K: Clone + Eq + std::hash::Hash> Default for RefusalWindows<K> {
    fn default() -> Self {
        Self::new(WINDOW_MILLIS, MAX_OPEN)
    }
}

impl<K: Clone + Eq + std::hash::Hash> RefusalWindows<K> {
    pub fn new(window_millis: i64, max_open: usize) -> Self {
        RefusalWindows { open: HashMap::new(), window_millis, max_open }
    }

    /// Counts `r` if a window of its kind is open; changes nothing and
    /// answers false otherwise (the caller must then `note` it, off the
    /// async workers, because that may need a write).
    pub fn count_repeat(&mut self, r: &K, now: UnixMillis) -> bool {
        let window_millis = self.window_millis;
        match self.open.get_mut(r) {
            Some(w) if w.is_open_at(now, window_millis) => {
                w.repeats += 1;
                w.last = now;
                true
            }
            _ => false,
        }
    }

    /// Notes `r`: a repeat inside an open window, or the first of a new
    /// window. Also returns the closed windows with repeats to audit now.
    pub fn note(&mut self, r: K, now: UnixMillis) -> (Noted, Vec<Repeats<K>>) {
        if self.count_repeat(&r, now) {
            return (Noted::Repeat, Vec::new());
        }
        // `r`'s own window, if any, has closed too and is among these.
        let closed = self.close_expired(now);
        if self.open.len() < self.max_open {
            self.open.insert(r, Window { opened: now, repeats: 0, last: now });
        }
        (Noted::First, closed)
    }

    /// The windows closed by `now` that counted repeats (windows without
    /// repeats close silently).
    pub fn close_expired(&mut self, now: UnixMillis) -> Vec<Repeats<K>> {
        let window_millis = self.window_millis;
        self.close(|w| !w.is_open_at(now, window_millis))
    }

    /// Closes every window (at shutdown).
    pub fn close_all(&mut self) -> Vec<Repeats<K>> {
        self.close(|_| true)
    }

    /// Whether any window has closed by `now` (the flush has nothing to do
    /// otherwise).
    pub fn any_closed(&self, now: UnixMillis) -> bool {
        self.open.values().any(|w| !w.is_open_at(now, self.window_millis))
    }

    fn close(&mut self, closing: impl Fn(&Window) -> bool) -> Vec<Repeats<K>> {
        let mut out: Vec<Repeats<K>> =
            self.open.extract_if(|_, w| closing(w)).filter_map(|(r, w)| repeats_of(r, w)).collect();
        out.sort_by_key(|r| r.first);
        out
    }
}

impl Window {
    fn is_open_at(&self, now: UnixMillis, window_millis: i64) -> bool {
        now.0 < self.opened.0.saturating_add(window_millis)
    }
}

fn repeats_of<K>(refusal: K, w: Window) -> Option<Repeats<K>> {
    (w.repeats > 0).then_some(Repeats { refusal, count: w.repeats, first: w.opened, last: w.last })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn refusal(actor: &str, reason: &str) -> Refusal {
        Refusal {
            actor: actor.into(),
            spec: Name::parse("pay", "spec").unwrap(),
            operation: Operation::Encrypt,
            reason: reason.into(),
        }
    }

    #[test]
    fn first_refusal_is_audited_and_repeats_are_counted_until_the_window_closes() {
        let mut w = RefusalWindows::new(1_000, 16);
        let r = refusal("operator:app", "no access policy");
        assert!(!w.count_repeat(&r, UnixMillis(0)), "nothing open yet: the caller must note it");
        assert_eq!(w.note(r.clone(), UnixMillis(0)), (Noted::First, vec![]));
        for t in 1..=9 {
            assert!(w.count_repeat(&r, UnixMillis(t * 100)));
        }
        assert!(!w.any_closed(UnixMillis(999)));
        assert!(w.close_expired(UnixMillis(999)).is_empty(), "still open");
        assert!(w.any_closed(UnixMillis(1_000)));
        let closed = w.close_expired(UnixMillis(1_000));
        assert_eq!(closed, vec![Repeats { refusal: r.clone(), count: 9, first: UnixMillis(0), last: UnixMillis(900) }]);
        assert!(!w.any_closed(UnixMillis(5_000)), "nothing left to flush");
        assert!(!w.count_repeat(&r, UnixMillis(1_001)), "a closed window counts nothing");
    }

    #[test]
    fn kinds_are_kept_apart_and_a_late_refusal_closes_its_old_window() {
        let mut w = RefusalWindows::new(1_000, 16);
        let (a, b) = (refusal("operator:a", "x"), refusal("operator:b", "x"));
        assert_eq!(w.note(a.clone(), UnixMillis(0)).0, Noted::First);
        assert_eq!(w.note(b.clone(), UnixMillis(10)).0, Noted::First);
        assert_eq!(w.note(a.clone(), UnixMillis(20)).0, Noted::Repeat, "note counts inside an open window");
        assert!(w.count_repeat(&b, UnixMillis(30)));
        let (noted, closed) = w.note(a.clone(), UnixMillis(1_500));
        assert_eq!(noted, Noted::First, "a new window");
        assert_eq!(closed.len(), 2, "both expired windows had a repeat: {closed:?}");
        assert_eq!((closed[0].refusal.actor.as_str(), closed[0].count), ("operator:a", 1));
        assert_eq!((closed[1].refusal.actor.as_str(), closed[1].count), ("operator:b", 1));
        let other_reason = refusal("operator:a", "y");
        assert_eq!(w.note(other_reason, UnixMillis(1_501)).0, Noted::First, "another reason is another kind");
    }

    #[test]
    fn windows_without_repeats_close_silently_and_close_all_flushes_open_ones() {
        let mut w = RefusalWindows::new(1_000, 16);
        let (a, b) = (refusal("operator:a", "x"), refusal("operator:b", "x"));
        w.note(a, UnixMillis(0));
        w.note(b.clone(), UnixMillis(0));
        assert!(w.count_repeat(&b, UnixMillis(5)));
        assert!(w.close_expired(UnixMillis(2_000)).iter().all(|r| r.refusal.actor == "operator:b"));
        w.note(b.clone(), UnixMillis(3_000));
        assert!(w.count_repeat(&b, UnixMillis(3_001)));
        let all = w.close_all();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].count, 1);
        assert!(!w.any_closed(UnixMillis(9_000)));
    }

    #[test]
    fn call_refusals_coalesce_per_caller_scope_and_reason() {
        let mut w: RefusalWindows<CallRefusal> = RefusalWindows::new(1_000, 16);
        let role = |actor: &str| CallRefusal::new(actor, "/kmf.v1.Keys/GenerateKey".into(), "needs a role".into());
        assert_eq!(w.note(role("operator:aud"), UnixMillis(0)).0, Noted::First);
        for t in 1..200 {
            assert!(w.count_repeat(&role("operator:aud"), UnixMillis(t)), "call {t} is a repeat");
        }
        assert_eq!(w.note(role("operator:other"), UnixMillis(300)).0, Noted::First, "another caller");
        let a = CallRefusal::new("unidentified@10.0.0.7:40001", "metrics".into(), "no identity".into());
        let b = CallRefusal::new("unidentified@10.0.0.7:40002", "metrics".into(), "no identity".into());
        assert_eq!(a, b, "the port of an unidentified caller is not part of the kind");
        let v6 = CallRefusal::new("unidentified@[::1]:9", "metrics".into(), "x".into());
        assert_eq!(v6.actor, "unidentified@[::1]");
        assert_eq!(CallRefusal::new("operator:a:b", "m".into(), "r".into()).actor, "operator:a:b");
        let closed = w.close_all();
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert_eq!((closed[0].refusal.actor.as_str(), closed[0].count), ("operator:aud", 199));
    }

    #[test]
    fn when_full_every_refusal_is_audited_on_its_own() {
        let mut w = RefusalWindows::new(1_000, 2);
        assert_eq!(w.note(refusal("operator:a", "x"), UnixMillis(0)).0, Noted::First);
        assert_eq!(w.note(refusal("operator:b", "x"), UnixMillis(0)).0, Noted::First);
        let c = refusal("operator:c", "x");
        assert_eq!(w.note(c.clone(), UnixMillis(1)).0, Noted::First);
        assert!(!w.count_repeat(&c, UnixMillis(2)), "no window was opened for c");
        assert_eq!(w.note(c.clone(), UnixMillis(2)).0, Noted::First, "audited again: nothing is lost");
        // Once old windows expire, room is made again.
        assert_eq!(w.note(c.clone(), UnixMillis(1_500)).0, Noted::First);
        assert!(w.count_repeat(&c, UnixMillis(1_501)));
    }
}
