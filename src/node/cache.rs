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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::Name;

    #[test]
    fn an_entry_is_valid_for_its_token_only() {
        let mut t: Tokened<&str, u32> = Tokened::default();
        t.put(3, "a", 1, 10);
        assert_eq!(t.get(3, &"a"), Some(1));
        assert_eq!(t.get(4, &"a"), None, "the token moved on: a miss");
        assert_eq!(t.get(3, &"b"), None);
        t.put(4, "a", 2, 10);
        assert_eq!((t.get(3, &"a"), t.get(4, &"a")), (None, Some(2)), "replaced under the new token");
    }

    #[test]
    fn a_full_map_is_emptied_before_a_new_key_but_not_for_a_known_one() {
        let mut t: Tokened<u32, u32> = Tokened::default();
        for k in 0..3 {
            t.put(1, k, k, 3);
        }
        t.put(1, 2, 20, 3);
        assert_eq!(t.0.len(), 3, "a known key is replaced in place");
        t.put(1, 9, 9, 3);
        assert_eq!((t.0.len(), t.get(1, &9), t.get(1, &0)), (1, Some(9), None), "emptied, then the new key");
    }

    #[test]
    fn the_policy_sets_and_counts_follow_their_tokens() {
        let cache = CatalogCache::default();
        let module = Name::parse("payroll", "module").expect("name");
        cache.put_policies(5, module.clone(), Arc::new(Vec::new()));
        assert!(cache.policies(5, &module).is_some());
        assert!(cache.policies(6, &module).is_none());
        let counts = CountsCache::default();
        assert!(counts.counts(1).is_none(), "nothing counted yet");
        let none = StoreCounts { requests: Vec::new(), keys: Vec::new(), audit_entries: 7, rekey_debt: Vec::new() };
        counts.put_counts(1, none);
        assert_eq!(counts.counts(1).map(|c| c.audit_entries), Some(7));
        assert!(counts.counts(2).is_none(), "any write since: counted again");
    }
}
