//! In-memory caches of the services, each entry valid for one store change
//! token: the token of its kind of data (specs, policies, the keys of its
//! spec, any write for the counts), read *before* the data was, so an entry
//! whose token moved on is a miss and a write drops only what it touched (a
//! stored record or a refused call's audit entry leaves every key warm).
//! They are caches, harmless when stale: a miss reads the store.
//! `CatalogCache` (specs, policy sets) is the catalog's, `KeyCache`
//! (each spec's current key, unwrapped keys by id, as `LoadedKey`s with
//! zeroizing `DataKey`s inside) the crypto service's, `CountsCache` (the
//! metrics' row counts, so a scrape of an unchanged store reads no table)
//! the diagnostics'.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::domain::ids::{KeyId, Name};
use crate::domain::policy::AccessPolicy;
use crate::domain::spec::Spec;
use crate::signer::schemes::LoadedKey;
use crate::store::StoreCounts;

/// Most unwrapped keys kept at once (the map is emptied when full).
const MAX_KEYS: usize = 4096;
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

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
pub struct CatalogCache {
    specs: Mutex<Tokened<Name, Spec>>,
    policies: Mutex<Tokened<Name, Arc<Vec<AccessPolicy>>>>,
}

impl CatalogCache {
    pub fn spec(&self, token: u64, name: &Name) -> Option<Spec> {
        locked(&self.specs).get(token, name)
    }

    pub fn put_spec(&self, token: u64, spec: Spec) {
        locked(&self.specs).put(token, spec.name.clone(), spec, MAX_ENTRIES);
    }

    pub fn policies(&self, token: u64, module: &Name) -> Option<Arc<Vec<AccessPolicy>>> {
        locked(&self.policies).get(token, module)
    }

    pub fn put_policies(&self, token: u64, module: Name, p: Arc<Vec<AccessPolicy>>) {
        locked(&self.policies).put(token, module, p, MAX_ENTRIES);
    }
}

#[derive(Default)]
pub struct KeyCache {
    current: Mutex<Tokened<Name, (KeyId, Arc<LoadedKey>)>>,
    keys: Mutex<Tokened<KeyId, Arc<LoadedKey>>>,
}

impl KeyCache {
    pub fn current(&self, token: u64, spec: &Name) -> Option<(KeyId, Arc<LoadedKey>)> {
        locked(&self.current).get(token, spec)
    }

    pub fn put_current(&self, token: u64, spec: Name, key: (KeyId, Arc<LoadedKey>)) {
        locked(&self.current).put(token, spec, key, MAX_ENTRIES);
    }

    pub fn key(&self, token: u64, id: &KeyId) -> Option<Arc<LoadedKey>> {
        locked(&self.keys).get(token, id)
    }

    pub fn put_key(&self, token: u64, id: KeyId, key: Arc<LoadedKey>) {
        locked(&self.keys).put(token, id, key, MAX_KEYS);
    }
}

#[derive(Default)]
pub struct CountsCache(Mutex<Option<(u64, StoreCounts)>>);

impl CountsCache {
    pub fn counts(&self, token: u64) -> Option<StoreCounts> {
        locked(&self.0).as_ref().filter(|(t, _)| *t == token).map(|(_, c)| c.clone())
    }

    pub fn put_counts(&self, token: u64, counts: StoreCounts) {
        *locked(&self.0) = Some((token, counts));
    }
}
