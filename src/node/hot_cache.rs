//! In-memory caches for the crypto hot path: specs, module access policies,
//! each spec's current key and unwrapped keys by id; and the row counts the
//! metrics show (so a scrape of an unchanged store reads no table). Every
//! entry keeps the store's change token for its kind of data (specs,
//! policies, the keys of its spec, any write for the counts), read *before*
//! the data was; an entry whose token moved on is a miss. So a write drops
//! only what it touched: a stored record or a refused call's audit entry
//! leaves every key warm.
//! Unwrapped keys stay in memory only as `LoadedKey`s (zeroizing `DataKey`s inside).

use std::collections::HashMap;
use std::hash::Hash;
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
/// Most specs, policy sets and current keys kept at once.
const MAX_ENTRIES: usize = 4096;

/// A map whose entries are valid for one token each.
struct Tokened<K, V>(HashMap<K, (u64, V)>);

impl<K, V> Default for Tokened<K, V> {
    fn default() -> Self {
        Tokened(HashMap::new())
    }
}

impl<K: Eq + Hash, V: Clone> Tokened<K, V> {
    fn get(&self, token: u64, k: &K) -> Option<V> {
        self.0.get(k).filter(|(t, _)| *t == token).map(|(_, v)| v.clone())
    }

    fn put(&mut self, token: u64, k: K, v: V, max: usize) {
        if self.0.len() >= max && !self.0.contains_key(&k) {
            self.0.clear();
        }
        self.0.insert(k, (token, v));
    }
}

#[derive(Default)]
struct Entries {
    specs: Tokened<Name, Spec>,
    policies: Tokened<Name, Arc<Vec<AccessPolicy>>>,
    current: Tokened<Name, (KeyId, Arc<LoadedKey>)>,
    keys: Tokened<KeyId, Arc<LoadedKey>>,
    /// The metrics' row counts.
    counts: Option<(u64, StoreCounts)>,
}

#[derive(Default)]
pub(super) struct HotCache {
    entries: Mutex<Entries>,
    /// Certificate DER -> caller; certificates do not change with the store.
    callers: Mutex<HashMap<Vec<u8>, Caller>>,
}

impl HotCache {
    fn with<T>(&self, f: impl FnOnce(&mut Entries) -> T) -> T {
        f(&mut self.entries.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn spec(&self, token: u64, name: &Name) -> Option<Spec> {
        self.with(|e| e.specs.get(token, name))
    }

    pub fn put_spec(&self, token: u64, spec: Spec) {
        self.with(|e| e.specs.put(token, spec.name.clone(), spec, MAX_ENTRIES));
    }

    pub fn policies(&self, token: u64, module: &Name) -> Option<Arc<Vec<AccessPolicy>>> {
        self.with(|e| e.policies.get(token, module))
    }

    pub fn put_policies(&self, token: u64, module: Name, p: Arc<Vec<AccessPolicy>>) {
        self.with(|e| e.policies.put(token, module, p, MAX_ENTRIES));
    }

    pub fn current(&self, token: u64, spec: &Name) -> Option<(KeyId, Arc<LoadedKey>)> {
        self.with(|e| e.current.get(token, spec))
    }

    pub fn put_current(&self, token: u64, spec: Name, key: (KeyId, Arc<LoadedKey>)) {
        self.with(|e| e.current.put(token, spec, key, MAX_ENTRIES));
    }

    pub fn key(&self, token: u64, id: &KeyId) -> Option<Arc<LoadedKey>> {
        self.with(|e| e.keys.get(token, id))
    }

    pub fn put_key(&self, token: u64, id: KeyId, key: Arc<LoadedKey>) {
        self.with(|e| e.keys.put(token, id, key, MAX_KEYS));
    }

    pub fn counts(&self, token: u64) -> Option<StoreCounts> {
        self.with(|e| e.counts.as_ref().filter(|(t, _)| *t == token).map(|(_, c)| c.clone()))
    }

    pub fn put_counts(&self, token: u64, counts: StoreCounts) {
        self.with(|e| e.counts = Some((token, counts)));
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
