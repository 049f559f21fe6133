//! The embedded engine: one redb `Database` per daemon, one redb table per
//! `Table` (named `kv/<table>`, byte keys and values). redb has a single
//! writer, so write transactions never conflict here; they are durable at
//! commit (`Durability::Immediate`, redb's default).

use std::ops::Bound;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use super::engine::{ALL_TABLES, Engine, KeyRange, ReadTxn, Result, Table, Visit, Visitor, WriteTxn};
use super::{BackendError, StoreError};

macro_rules! backend_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Backend(BackendError::Engine(e.to_string())) }
        }
    )*};
}
backend_errors!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Backend(BackendError::InUse),
            other => StoreError::Backend(BackendError::Engine(other.to_string())),
        }
    }
}

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(t: Table) -> Def {
    TableDefinition::new(match t {
        Table::Meta => "kv/meta",
        Table::Modules => "kv/modules",
        Table::Specs => "kv/specs",
        Table::Keys => "kv/keys",
        Table::Requests => "kv/requests",
        Table::RequestsByCreated => "kv/requests_by_created",
        Table::TransportKeys => "kv/transport_keys",
        Table::Bundles => "kv/bundles",
        Table::Receipts => "kv/receipts",
        Table::Jobs => "kv/jobs",
        Table::JobsDue => "kv/jobs_due",
        Table::LifecyclePolicies => "kv/lifecycle_policies",
        Table::AccessPolicies => "kv/access_policies",
        Table::Records => "kv/records",
        Table::Properties => "kv/properties",
        Table::Audit => "kv/audit",
        Table::Diagnostics => "kv/diagnostics",
        Table::CloneTargets => "kv/clone_targets",
        Table::RecordsAlt => "kv/records_alt",
        Table::CloneRuns => "kv/clone_runs",
        Table::CloneGrants => "kv/clone_grants",
        Table::CloneExchanges => "kv/clone_exchanges",
        Table::CloneSchedules => "kv/clone_schedules",
        Table::Rekeys => "kv/rekeys",
        Table::RecordDebt => "kv/record_debt",
        Table::ImportKeys => "kv/import_keys",
    })
}

/// redb's page cache (its default, 1 GiB, lets a daemon that reads or
/// writes a million records grow to that size; the hot path has its own
/// caches).
const CACHE_BYTES: usize = 64 * 1024 * 1024;

pub struct RedbEngine {
    db: Database,
}

impl RedbEngine {
    /// Creates a new database file, mode 0600 from its first byte; refuses
    /// an existing one.
    pub fn create(path: &Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        if path.exists() {
            return Err(StoreError::AlreadyInitialised(path.display().to_string()));
        }
        // redb initialises an empty file; making it here sets the mode.
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                StoreError::AlreadyInitialised(path.display().to_string())
            } else {
                StoreError::Backend(BackendError::Create { path: path.display().to_string(), reason: e.to_string() })
            }
        })?;
        let engine = RedbEngine { db: Database::builder().set_cache_size(CACHE_BYTES).create(path)? };
        engine.create_tables()?;
        Ok(engine)
    }

    /// Opens an existing database file, converting the first schema's typed
    /// tables if it has them.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(StoreError::NotInitialised(path.display().to_string()));
        }
        let engine = RedbEngine { db: Database::builder().set_cache_size(CACHE_BYTES).open(path)? };
        super::migrate_v1::migrate(&engine.db)?;
        engine.create_tables()?;
        Ok(engine)
    }

    fn create_tables(&self) -> Result<()> {
        let tx = self.db.begin_write()?;
        for t in ALL_TABLES {
            tx.open_table(def(t))?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Names of the tables in the file (tests check the old ones are gone).
    pub fn table_names(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read()?;
        Ok(tx.list_tables()?.map(|h| h.name().to_owned()).collect())
    }
}

fn bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn bounds(r: &KeyRange) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (bound(&r.start), bound(&r.end))
}

fn visit_table(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    range: &KeyRange,
    f: &mut Visitor<'_>,
) -> Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    for row in t.range::<&[u8]>(bounds(range))? {
        let (k, v) = row?;
        if f(k.value(), v.value())? == Visit::Stop {
            break;
        }
    }
    Ok(())
}

fn last_row(t: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    Ok(t.last()?.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
}

/// The read methods, the same for read and write transactions (both have
/// an `open_table`).
macro_rules! read_methods {
    () => {
        fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
            let t = self.tx.open_table(def(table))?;
            Ok(t.get(key)?.map(|g| g.value().to_vec()))
        }

        fn visit(&mut self, table: Table, range: &KeyRange, f: &mut Visitor<'_>) -> Result<()> {
            visit_table(&self.tx.open_table(def(table))?, range, f)
        }

        fn last(&mut self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
            last_row(&self.tx.open_table(def(table))?)
        }

        fn len(&mut self, table: Table) -> Result<u64> {
            Ok(self.tx.open_table(def(table))?.len()?)
        }
    };
}

struct RedbRead {
    tx: redb::ReadTransaction,
}

impl ReadTxn for RedbRead {
    read_methods!();
}

/// A write transaction, owned (committed here) or borrowed (the migration's,
/// committed by its owner).
struct RedbWrite<T> {
    tx: T,
}

trait Commit {
    fn commit_tx(self) -> Result<()>;
}

impl Commit for Box<redb::WriteTransaction> {
    fn commit_tx(self) -> Result<()> {
        (*self).commit()?;
        Ok(())
    }
}

impl Commit for &redb::WriteTransaction {
    fn commit_tx(self) -> Result<()> {
        Err(BackendError::Misuse("a borrowed transaction is committed by its owner").into())
    }
}

impl<T: std::ops::Deref<Target = redb::WriteTransaction>> ReadTxn for RedbWrite<T> {
    read_methods!();
}

impl<T: std::ops::Deref<Target = redb::WriteTransaction> + Commit> WriteTxn for RedbWrite<T> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()> {
        self.tx.open_table(def(table))?.insert(key, value)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool> {
        Ok(self.tx.open_table(def(table))?.remove(key)?.is_some())
    }

    fn insert_absent(&mut self, table: Table, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<bool>> {
        let mut t = self.tx.open_table(def(table))?;
        let mut inserted = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let absent = t.get(k.as_slice())?.is_none();
            if absent {
                t.insert(k.as_slice(), v.as_slice())?;
            }
            inserted.push(absent);
        }
        Ok(inserted)
    }

    fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit_tx()
    }
}

/// The engine's tables inside a redb transaction someone else commits.
pub(super) fn wrap_write_unowned(tx: &redb::WriteTransaction) -> Box<dyn WriteTxn + '_> {
    Box::new(RedbWrite { tx })
}

impl Engine for RedbEngine {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>> {
        Ok(Box::new(RedbRead { tx: self.db.begin_read()? }))
    }

    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>> {
        Ok(Box::new(RedbWrite { tx: Box::new(self.db.begin_write()?) }))
    }

    fn begin_write_relaxed(&self) -> Result<Box<dyn WriteTxn + '_>> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::None).map_err(|e| BackendError::Engine(e.to_string()))?;
        Ok(Box::new(RedbWrite { tx: Box::new(tx) }))
    }

    fn kind(&self) -> &'static str {
        "redb"
    }

    /// redb locks its file: one process at a time.
    fn is_exclusive(&self) -> bool {
        true
    }
}
