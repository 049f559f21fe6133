//! The in-memory engine (tests, and proof that the `Store` needs no single
//! writer): optimistic concurrency over immutable snapshots. A transaction
//! reads one snapshot and buffers its writes; `commit` checks, under a lock
//! held only for the check and the swap, that no table it read was changed
//! since its snapshot, else fails with `Conflict` and the `Store` runs the
//! transaction again. Conflicts are per table: coarse, but never wrong.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use super::engine::{ALL_TABLES, Engine, KeyRange, ReadTxn, Result, Table, Visit, Visitor, WriteTxn};
use super::{BackendError, StoreError};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;
/// A transaction's pending writes to one table: None deletes.
type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

#[derive(Clone)]
struct Snapshot {
    tables: Vec<Arc<Map>>,
}

pub struct MemoryEngine {
    current: Mutex<Arc<Snapshot>>,
}

impl Default for MemoryEngine {
    fn default() -> Self {
        MemoryEngine { current: Mutex::new(Arc::new(Snapshot { tables: ALL_TABLES.map(|_| Arc::default()).to_vec() })) }
    }
}

impl MemoryEngine {
    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn range_of<'a>(map: &'a Map, range: &KeyRange) -> impl DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Vec<u8>)> + 'a {
    let b = |b: &Bound<Vec<u8>>| b.clone();
    let r = if range.is_empty() { None } else { Some(map.range((b(&range.start), b(&range.end)))) };
    r.into_iter().flatten()
}

struct MemRead {
    snap: Arc<Snapshot>,
}

impl ReadTxn for MemRead {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.snap.tables[table.index()].get(key).cloned())
    }

    fn visit(&mut self, table: Table, range: &KeyRange, f: &mut Visitor<'_>) -> Result<()> {
        for (k, v) in range_of(&self.snap.tables[table.index()], range) {
            if f(k, v)? == Visit::Stop {
                break;
            }
        }
        Ok(())
    }

    fn last(&mut self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.snap.tables[table.index()].last_key_value().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn len(&mut self, table: Table) -> Result<u64> {
        Ok(self.snap.tables[table.index()].len() as u64)
    }
}

struct MemWrite<'a> {
    engine: &'a MemoryEngine,
    snap: Arc<Snapshot>,
    read: Vec<bool>,
    writes: Vec<Overlay>,
}

impl MemWrite<'_> {
    fn base(&mut self, table: Table) -> &Map {
        self.read[table.index()] = true;
        &self.snap.tables[table.index()]
    }
}

impl ReadTxn for MemWrite<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(pending) = self.writes[table.index()].get(key) {
            self.read[table.index()] = true;
            return Ok(pending.clone());
        }
        Ok(self.base(table).get(key).cloned())
    }

    fn visit(&mut self, table: Table, range: &KeyRange, f: &mut Visitor<'_>) -> Result<()> {
        self.read[table.index()] = true;
        let overlay = &self.writes[table.index()];
        let mut base = range_of(&self.snap.tables[table.index()], range).peekable();
        let ob = |b: &Bound<Vec<u8>>| b.clone();
        let mut pending = if range.is_empty() { None } else { Some(overlay.range((ob(&range.start), ob(&range.end)))) }
            .into_iter()
            .flatten()
            .peekable();
        loop {
            // The smaller key goes first; on a tie the pending write wins.
            let take_pending = match (base.peek(), pending.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((bk, _)), Some((pk, _))) => pk <= bk,
            };
            let row = if take_pending {
                let (k, v) = pending.next().ok_or_else(|| StoreError::from(BackendError::Misuse("overlay ran dry")))?;
                if base.peek().is_some_and(|(bk, _)| *bk == k) {
                    base.next();
                }
                v.as_ref().map(|v| (k, v))
            } else {
                base.next()
            };
            if let Some((k, v)) = row
                && f(k, v)? == Visit::Stop
            {
                return Ok(());
            }
        }
    }

    fn last(&mut self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.read[table.index()] = true;
        let overlay = &self.writes[table.index()];
        let base = self.snap.tables[table.index()].iter().rev().find(|(k, _)| !overlay.contains_key(*k));
        let pending = overlay.iter().rev().find_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        Ok(match (base, pending) {
            (Some(b), Some(p)) => Some(if p.0 > b.0 { p } else { b }),
            (b, p) => b.or(p),
        }
        .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn len(&mut self, table: Table) -> Result<u64> {
        self.read[table.index()] = true;
        let base = &self.snap.tables[table.index()];
        let mut n = base.len() as i64;
        for (k, v) in &self.writes[table.index()] {
            match (base.contains_key(k), v.is_some()) {
                (false, true) => n += 1,
                (true, false) => n -= 1,
                _ => {}
            }
        }
        Ok(n.max(0) as u64)
    }
}

impl WriteTxn for MemWrite<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.writes[table.index()].insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        let existed = self.get(table, key)?.is_some();
        self.writes[table.index()].insert(key.to_vec(), None);
        Ok(existed)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        let mut current = self.engine.current.lock().unwrap_or_else(|p| p.into_inner());
        for (i, read) in self.read.iter().enumerate() {
            if *read && !Arc::ptr_eq(&current.tables[i], &self.snap.tables[i]) {
                return Err(StoreError::Conflict);
            }
        }
        if self.writes.iter().all(BTreeMap::is_empty) {
            return Ok(());
        }
        let mut next = Snapshot::clone(&current);
        for (i, overlay) in self.writes.into_iter().enumerate() {
            if overlay.is_empty() {
                continue;
            }
            let table = Arc::make_mut(&mut next.tables[i]);
            for (k, v) in overlay {
                match v {
                    Some(v) => table.insert(k, v),
                    None => table.remove(&k),
                };
            }
        }
        *current = Arc::new(next);
        Ok(())
    }
}

impl Engine for MemoryEngine {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>> {
        Ok(Box::new(MemRead { snap: self.snapshot() }))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>> {
        Ok(Box::new(MemWrite {
            engine: self,
            snap: self.snapshot(),
            read: vec![false; ALL_TABLES.len()],
            writes: vec![Overlay::new(); ALL_TABLES.len()],
        }))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    /// Treated as shared, like the networked stores it stands in for.
    fn is_exclusive(&self) -> bool {
        false
    }
}
