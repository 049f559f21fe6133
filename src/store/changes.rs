//! Change tokens: one counter per kind of data that a cache may hold (the
//! specs, the access policies, the keys of one spec), bumped after a write
//! that touched it commits. A cache reads the token *before* it reads the
//! data and keeps the token with what it read; an entry whose token moved
//! on is stale. Writes that no cache depends on (records, audit entries,
//! requests, jobs) bump only `writes`, so they never cool the crypto cache.
//!
//! Keys are counted in buckets by a hash of the spec name: two specs that
//! share a bucket invalidate each other's entries (harmless, just a reload).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::ids::Name;

const KEY_BUCKETS: usize = 256;

/// What a write touched.
#[derive(Clone, Copy, Debug)]
pub enum Change<'a> {
    Specs,
    Policies,
    KeysOf(&'a Name),
    /// Anything else (counted only in `writes`).
    Other,
}

pub struct ChangeTokens {
    specs: AtomicU64,
    policies: AtomicU64,
    keys: Vec<AtomicU64>,
    writes: AtomicU64,
}

impl Default for ChangeTokens {
    fn default() -> Self {
        ChangeTokens {
            specs: AtomicU64::new(0),
            policies: AtomicU64::new(0),
            keys: (0..KEY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            writes: AtomicU64::new(0),
        }
    }
}

fn bucket(spec: &Name) -> usize {
    let mut h = DefaultHasher::new();
    spec.hash(&mut h);
    (h.finish() % KEY_BUCKETS as u64) as usize
}

impl ChangeTokens {
    pub fn specs(&self) -> u64 {
        self.specs.load(Ordering::Acquire)
    }

    pub fn policies(&self) -> u64 {
        self.policies.load(Ordering::Acquire)
    }

    pub fn keys_of(&self, spec: &Name) -> u64 {
        self.keys[bucket(spec)].load(Ordering::Acquire)
    }

    /// Bumped by every committed write (the metrics' row counts use it).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    pub(super) fn publish(&self, changed: &[Change<'_>]) {
        for c in changed {
            match c {
                Change::Specs => self.specs.fetch_add(1, Ordering::AcqRel),
                Change::Policies => self.policies.fetch_add(1, Ordering::AcqRel),
                Change::KeysOf(spec) => self.keys[bucket(spec)].fetch_add(1, Ordering::AcqRel),
                Change::Other => 0,
            };
        }
        self.writes.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_moves_alone() {
        let t = ChangeTokens::default();
        let a = Name::parse("a", "n").unwrap();
        let b =
            (0..1000).map(|i| Name::parse(&format!("b{i}"), "n").unwrap()).find(|b| bucket(b) != bucket(&a)).unwrap();
        t.publish(&[Change::Other]);
        assert_eq!((t.specs(), t.policies(), t.keys_of(&a), t.writes()), (0, 0, 0, 1));
        t.publish(&[Change::KeysOf(&a)]);
        assert_eq!((t.keys_of(&a), t.keys_of(&b), t.specs()), (1, 0, 0));
        t.publish(&[Change::Specs, Change::Policies]);
        assert_eq!((t.specs(), t.policies(), t.writes()), (1, 1, 3));
    }
}
