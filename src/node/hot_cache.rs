//! In-memory caches for the crypto hot path: specs, module access policies,
//! each spec's current key and unwrapped keys by id; and the row counts the
//! metrics show (so a scrape of an unchanged store reads no table). Every entry is
//! discarded as soon as the store's generation changes (any committed
//! write), so the cache never serves stale policy or key state.
//! Unwrapped keys stay in memory only as `LoadedKey`s (zeroizing `DataKey`s inside).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::domain::auth::Caller;
use crate::domain::ids::{KeyId, Name};
use crate::domain::policy::AccessPolicy;
use crate::domain::spec::Spec;
use crate::signer::schemes::LoadedKey;
use crate::store::StoreCounts;

/// Most unwrapped keys kept at once (the map is emptied when full).
const MAX_KEYS: usize = 4096;
/// Most certificate identities kept at once.
const MAX_CALLERS: usize = 1024;

#[derive(Default)]
struct Entries {
    generation: u64,
    specs: HashMap<Name, Spec>,
    policies: HashMap<Name, Arc<Vec<AccessPolicy>>>,
    current: HashMap<Name, (KeyId, Arc<LoadedKey>)>,
    keys: HashMap<KeyId, Arc<LoadedKey>>,
    /// The metrics' row counts.
    counts: Option<StoreCounts>,
}

#[derive(Default)]
pub(super) struct HotCache {
    entries: Mutex<Entries>,
    /// Certificate DER -> caller; certificates do not change with the store.
    callers: Mutex<HashMap<Vec<u8>, Caller>>,
}

impl HotCache {
    /// Runs `f` on entries valid for `generation`.
    fn with<T>(&self, generation: u64, f: impl FnOnce(&mut Entries) -> T) -> T {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if e.generation != generation {
            *e = Entries { generation, ..Default::default() };
        }
        f(&mut e)
    }

    pub fn spec(&self, g: u64, name: &Name) -> Option<Spec> {
        self.with(g, |e| e.specs.get(name).cloned())
    }

    pub fn put_spec(&self, g: u64, spec: Spec) {
        self.with(g, |e| e.specs.insert(spec.name.clone(), spec));
    }

    pub fn policies(&self, g: u64, module: &Name) -> Option<Arc<Vec<AccessPolicy>>> {
        self.with(g, |e| e.policies.get(module).cloned())
    }

    pub fn put_policies(&self, g: u64, module: Name, p: Arc<Vec<AccessPolicy>>) {
        self.with(g, |e| e.policies.insert(module, p));
    }

    pub fn current(&self, g: u64, spec: &Name) -> Option<(KeyId, Arc<LoadedKey>)> {
        self.with(g, |e| e.current.get(spec).cloned())
    }

    pub fn put_current(&self, g: u64, spec: Name, key: (KeyId, Arc<LoadedKey>)) {
        self.with(g, |e| e.current.insert(spec, key));
    }

    pub fn key(&self, g: u64, id: &KeyId) -> Option<Arc<LoadedKey>> {
        self.with(g, |e| e.keys.get(id).cloned())
    }

    pub fn put_key(&self, g: u64, id: KeyId, key: Arc<LoadedKey>) {
        self.with(g, |e| {
            if e.keys.len() >= MAX_KEYS {
                e.keys.clear();
            }
            e.keys.insert(id, key);
        });
    }

    pub fn counts(&self, g: u64) -> Option<StoreCounts> {
        self.with(g, |e| e.counts.clone())
    }

    pub fn put_counts(&self, g: u64, counts: StoreCounts) {
        self.with(g, |e| e.counts = Some(counts));
    }

    pub fn caller(&self, cert: &[u8]) -> Option<Caller> {
        self.callers.lock().unwrap_or_else(|p| p.into_inner()).get(cert).cloned()
    }

    pub fn put_caller(&self, cert: &[u8], caller: Caller) {
        let mut c = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if c.len() >= MAX_CALLERS {
            c.clear();
        }
        c.insert(cert.to_vec(), caller);
    }
}
