//! Change tokens: per-subject versions derived from the tables a transaction
//! wrote. No caller names what it changed: `Store::write` runs the
//! transaction through `Recording`, which notes each table written (and, for
//! the keys table, the spec of each key row written, the first component of
//! its tuple key), and after the commit `ChangeTokens::publish` moves the
//! version of each subject touched:
//! - `specs`: the specs table;
//! - `policies`: the policy tables (access policies, lifecycle policies);
//! - `keys_of(spec)`: the keys table, rows of that spec;
//! - `writes`: every commit (the metrics' row counts use it).
//!
//! A transaction that fails (its closure's error, `Stale`, `Conflict` at
//! commit) publishes nothing; one that is run again after a `Conflict`
//! publishes only what its committed attempt wrote.
//!
//! A cache reads the version *before* it reads the data and keeps the
//! version with what it read; an entry whose version moved on is stale.
//! Writes that no cache depends on (records, audit entries, requests, jobs)
//! move only `writes`, so they never cool the crypto cache.
//!
//! Keys are counted in buckets by a hash of the spec's encoded name: two
//! specs that share a bucket invalidate each other's entries (harmless, just
//! a reload).
//!
//! Today these are process-local counters: they move for this process's
//! writes only, which is right while one process holds the store. The
//! replica issue (several `kmfd` on one database) moves them into the
//! database, written in the same transaction as the tables they count.

use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use super::engine::{KeyRange, ReadTxn, Result, Table, Visitor, WriteTxn};
use super::tuple::{KeyBuf, first_str_component};
use crate::domain::ids::Name;

const KEY_BUCKETS: usize = 256;

/// The tables whose writes move `policies`.
const POLICY_TABLES: [Table; 2] = [Table::AccessPolicies, Table::LifecyclePolicies];

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

/// The bucket of a spec's keys, from the encoded spec name (the prefix of
/// each of its key rows).
fn bucket_of_prefix(prefix: &[u8]) -> usize {
    let mut h = DefaultHasher::new();
    h.write(prefix);
    (h.finish() % KEY_BUCKETS as u64) as usize
}

fn bucket(spec: &Name) -> usize {
    bucket_of_prefix(&KeyBuf::new().str(spec.as_str()).done())
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

    /// Moved by every committed write (the metrics' row counts use it).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    /// After a commit: moves the version of each subject `written` touched,
    /// and `writes`.
    pub(super) fn publish(&self, written: &Written) {
        if written.has(Table::Specs) {
            self.specs.fetch_add(1, Ordering::AcqRel);
        }
        if POLICY_TABLES.iter().any(|t| written.has(*t)) {
            self.policies.fetch_add(1, Ordering::AcqRel);
        }
        for (i, counter) in self.keys.iter().enumerate() {
            if written.key_buckets[i / 64] & (1 << (i % 64)) != 0 {
                counter.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.writes.fetch_add(1, Ordering::AcqRel);
    }
}

/// What one transaction wrote: the tables, and the key buckets of the key
/// rows.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub(super) struct Written {
    tables: u64,
    key_buckets: [u64; KEY_BUCKETS / 64],
}

impl Written {
    fn note(&mut self, table: Table, key: &[u8]) {
        self.tables |= 1 << table.index();
        if table == Table::Keys {
            // A key row's tuple key starts with its spec's name (catalog::key_key).
            let b = bucket_of_prefix(first_str_component(key).unwrap_or(key));
            self.key_buckets[b / 64] |= 1 << (b % 64);
        }
    }

    fn has(&self, table: Table) -> bool {
        self.tables & (1 << table.index()) != 0
    }
}

/// A write transaction that notes what is written through it (see the
/// module header); `Store::write` commits the inner transaction and
/// publishes what was noted.
pub(super) struct Recording<'t> {
    inner: Box<dyn WriteTxn + 't>,
    written: Written,
}

impl<'t> Recording<'t> {
    pub(super) fn new(inner: Box<dyn WriteTxn + 't>) -> Self {
        Recording { inner, written: Written::default() }
    }

    /// Commits; on success, what was written.
    pub(super) fn commit_noted(self) -> Result<Written> {
        self.inner.commit()?;
        Ok(self.written)
    }
}

impl ReadTxn for Recording<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(table, key)
    }

    fn visit(&mut self, table: Table, range: &KeyRange, f: &mut Visitor<'_>) -> Result<()> {
        self.inner.visit(table, range, f)
    }

    fn last(&mut self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.inner.last(table)
    }

    fn len(&mut self, table: Table) -> Result<u64> {
        self.inner.len(table)
    }
}

impl WriteTxn for Recording<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.put(table, key, value)?;
        self.written.note(table, key);
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        let existed = self.inner.delete(table, key)?;
        if existed {
            self.written.note(table, key);
        }
        Ok(existed)
    }

    fn insert_absent(&mut self, table: Table, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<bool>> {
        let inserted = self.inner.insert_absent(table, rows)?;
        for ((k, _), new) in rows.iter().zip(&inserted) {
            if *new {
                self.written.note(table, k);
            }
        }
        Ok(inserted)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::audit::{AuditEvent, Outcome};
    use crate::domain::ids::{Host, KeyId, SysId, UnixMillis};
    use crate::store::engine::ALL_TABLES;
    use crate::store::{RowKind, Store, StoreError};

    /// (specs, policies, keys of `a`, keys of `b`, writes)
    type Versions = (u64, u64, u64, u64, u64);

    fn name(s: &str) -> Name {
        Name::parse(s, "n").unwrap()
    }

    /// Two specs whose keys fall in different buckets.
    fn two_specs() -> (Name, Name) {
        let a = name("a");
        let b = (0..1000).map(|i| name(&format!("b{i}"))).find(|b| bucket(b) != bucket(&a)).unwrap();
        (a, b)
    }

    fn store() -> Store {
        Store::in_memory(&SysId::parse(&"a".repeat(32)).unwrap(), &Host::parse("a.example:1").unwrap()).unwrap()
    }

    fn versions(st: &Store, a: &Name, b: &Name) -> Versions {
        let c = st.changes();
        (c.specs(), c.policies(), c.keys_of(a), c.keys_of(b), c.writes())
    }

    fn moved(before: Versions, after: Versions) -> [u64; 5] {
        [after.0 - before.0, after.1 - before.1, after.2 - before.2, after.3 - before.3, after.4 - before.4]
    }

    /// A row key of `table`; for the keys table, one of spec `a`'s keys.
    fn row_key(table: Table, a: &Name) -> Vec<u8> {
        match table {
            Table::Keys => KeyBuf::new().str(a.as_str()).str("origin").u32(1).done(),
            _ => KeyBuf::new().str("row").done(),
        }
    }

    #[test]
    fn a_write_to_each_table_moves_exactly_its_subject() {
        let (a, b) = two_specs();
        let st = store();
        for table in ALL_TABLES {
            if table == Table::Meta {
                continue; // the identity; written once, by `Store::create`
            }
            let before = versions(&st, &a, &b);
            st.write_blocking(|tx| tx.put(table, &row_key(table, &a), b"v")).unwrap();
            let want = match table {
                Table::Specs => [1, 0, 0, 0, 1],
                Table::AccessPolicies | Table::LifecyclePolicies => [0, 1, 0, 0, 1],
                Table::Keys => [0, 0, 1, 0, 1],
                _ => [0, 0, 0, 0, 1],
            };
            assert_eq!(moved(before, versions(&st, &a, &b)), want, "{table:?}");
            // A delete of the row is a write too; of an absent row, nothing.
            let before = versions(&st, &a, &b);
            st.write_blocking(|tx| tx.delete(table, &row_key(table, &a))).unwrap();
            assert_eq!(moved(before, versions(&st, &a, &b)), want, "{table:?} delete");
            let before = versions(&st, &a, &b);
            st.write_blocking(|tx| tx.delete(table, &row_key(table, &a))).unwrap();
            assert_eq!(moved(before, versions(&st, &a, &b)), [0, 0, 0, 0, 1], "{table:?} absent delete");
        }
    }

    #[test]
    fn key_rows_move_their_spec_only() {
        let (a, b) = two_specs();
        let st = store();
        let before = versions(&st, &a, &b);
        let rows = vec![(row_key(Table::Keys, &b), b"v".to_vec()), (row_key(Table::Keys, &b), b"v".to_vec())];
        st.write_blocking(|tx| tx.insert_absent(Table::Keys, &rows)).unwrap();
        assert_eq!(moved(before, versions(&st, &a, &b)), [0, 0, 0, 1, 1]);
        // Rows already there are not written: nothing of b moves.
        let before = versions(&st, &a, &b);
        st.write_blocking(|tx| tx.insert_absent(Table::Keys, &rows)).unwrap();
        assert_eq!(moved(before, versions(&st, &a, &b)), [0, 0, 0, 0, 1]);
        // A spec name with a 0x00 inside is still one component.
        let odd = Written::default();
        let mut w = odd.clone();
        w.note(Table::Keys, &KeyBuf::new().str("x\0y").u32(1).done());
        let mut v = odd;
        v.note(Table::Keys, &KeyBuf::new().str("x\0y").str("o").u32(2).done());
        assert_eq!(w, v);
    }

    #[test]
    fn records_audit_and_jobs_move_only_writes() {
        use crate::domain::job::{Job, JobId, JobKind};
        use crate::domain::record::{RecordAddress, StoredRecord};
        use crate::store::jobs::put_job_in;
        let (a, b) = two_specs();
        let st = Arc::new(store());
        let now = UnixMillis(1_000);
        let key_id = KeyId { origin: st.sys_id().unwrap(), spec: a.clone(), version: 1 };
        let address = RecordAddress::parse("t", "f", "r1").unwrap();
        let record = StoredRecord { address: address.clone(), ciphertext: vec![1; 8], key_id, updated_at: now };
        let (records, runtime) = (crate::store::RecordStore::new(&st), tokio::runtime::Runtime::new().unwrap());
        let writes: [&dyn Fn(&Store); 4] = [
            &|_| runtime.block_on(records.put_record(record.clone())).unwrap(),
            &|_| assert!(runtime.block_on(records.delete_record(address.clone())).unwrap()),
            &|st| {
                let refused = [AuditEvent::new(now, "alice", "call.refused", "x", Outcome::Refused)];
                st.write_blocking(|tx| crate::store::audit::append_audit(tx, &refused)).unwrap()
            },
            &|st| {
                st.write_blocking(|tx| put_job_in(tx, &Job::new(JobId::singleton(JobKind::LifecycleSweep), now, now)))
                    .unwrap()
            },
        ];
        for (i, write) in writes.iter().enumerate() {
            let before = versions(&st, &a, &b);
            write(&st);
            assert_eq!(moved(before, versions(&st, &a, &b)), [0, 0, 0, 0, 1], "write {i}");
        }
    }

    #[test]
    fn a_failed_transaction_moves_nothing() {
        let (a, b) = two_specs();
        let st = store();
        let spec = row_key(Table::Specs, &a);
        for err in [
            || StoreError::Stale { kind: RowKind::Spec, id: "a".into() },
            || StoreError::Conflict,
            || StoreError::Missing { kind: RowKind::Spec, id: "a".into() },
        ] {
            let before = versions(&st, &a, &b);
            let r = st.write_blocking(|tx| {
                tx.put(Table::Specs, &spec, b"v")?;
                tx.put(Table::Keys, &row_key(Table::Keys, &a), b"v")?;
                Err::<(), _>(err())
            });
            assert!(r.is_err());
            assert_eq!(moved(before, versions(&st, &a, &b)), [0, 0, 0, 0, 0]);
        }
        // A commit that loses a race is run again: only the attempt that
        // commits publishes (here: the other writer's specs, then ours).
        let st = Arc::new(st);
        let before = versions(&st, &a, &b);
        let mut attempts = 0;
        st.write_blocking(|tx| {
            attempts += 1;
            tx.get(Table::Specs, &spec)?;
            if attempts == 1 {
                st.write_blocking(|other| other.put(Table::Specs, &spec, b"other"))?;
                tx.put(Table::Keys, &row_key(Table::Keys, &b), b"lost")?;
            }
            tx.put(Table::Specs, &spec, b"ours")
        })
        .unwrap();
        assert_eq!(attempts, 2);
        assert_eq!(moved(before, versions(&st, &a, &b)), [2, 0, 0, 0, 2]);
    }
}
