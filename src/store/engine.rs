//! The storage engine port: ordered byte tables with transactions. The
//! `Store` (the port the use cases see) is written once against it; redb
//! (`redb_engine.rs`, the embedded default) and an in-memory engine with
//! optimistic concurrency (`memory_engine.rs`) implement it, and a networked
//! database could too. Nothing here names redb.
//!
//! Contract every engine keeps (checked by `tests/it/store_contract.rs`):
//! - a write transaction is all or nothing, and serializable: `commit` fails
//!   with `StoreError::Conflict` when anything it read was changed by another
//!   transaction that committed first (the `Store` then runs it again);
//! - a read transaction sees one consistent state;
//! - a transaction sees its own writes.

use std::ops::Bound;

use super::StoreError;

pub type Result<T> = std::result::Result<T, StoreError>;

/// Every table. Keys and values are bytes; keys are ordered bytewise
/// (`tuple.rs` encodes composite keys so that order is preserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Meta,
    Modules,
    Specs,
    /// (spec, origin sys_id, version) -> key row
    Keys,
    Requests,
    /// (created_at, request id) -> () — requests in creation order.
    RequestsByCreated,
    /// Target side: request id -> transport key handle, until import.
    TransportKeys,
    /// Source side: request id -> the signed bundle to deliver.
    Bundles,
    /// Target side: SHA-256 of a bundle -> the signed receipt given for it.
    Receipts,
    /// job id -> job row
    Jobs,
    /// (next_due, job id) -> () — jobs in due order.
    JobsDue,
    LifecyclePolicies,
    AccessPolicies,
    /// (table, field, record id) -> encrypted record row. Records live in
    /// one of two tables (`Records`, `RecordsAlt`); meta `records_table`
    /// names the active one, the other stages a clone (`store/clone_runs.rs`).
    Records,
    Properties,
    /// sequence -> hash-chained audit entry
    Audit,
    Diagnostics,
    /// Source side: target sys_id -> the clone target row.
    CloneTargets,
    /// The second records table (see `Records`).
    RecordsAlt,
    /// Target side: clone id -> the clone run row.
    CloneRuns,
    /// Source side: target sys_id -> the grant of its last complete clone.
    CloneGrants,
    /// Source side: target sys_id -> its One Time / Recurring Clone configuration.
    CloneExchanges,
    /// Target side: schedule name -> the clone schedule row.
    CloneSchedules,
    /// Target side: request id -> the rekey run that follows its import.
    Rekeys,
    /// (records table flag `a`/`b`, key id) -> u64: how many records of that
    /// records table are encrypted under the key (the rekey debt), kept in
    /// the transactions that write records.
    RecordDebt,
    /// BYOK: import token -> the one-time import key row (spec, expiry,
    /// signer handle, used), until it expires and is swept.
    ImportKeys,
}

pub const ALL_TABLES: [Table; 26] = [
    Table::Meta,
    Table::Modules,
    Table::Specs,
    Table::Keys,
    Table::Requests,
    Table::RequestsByCreated,
    Table::TransportKeys,
    Table::Bundles,
    Table::Receipts,
    Table::Jobs,
    Table::JobsDue,
    Table::LifecyclePolicies,
    Table::AccessPolicies,
    Table::Records,
    Table::Properties,
    Table::Audit,
    Table::Diagnostics,
    Table::CloneTargets,
    Table::RecordsAlt,
    Table::CloneRuns,
    Table::CloneGrants,
    Table::CloneExchanges,
    Table::CloneSchedules,
    Table::Rekeys,
    Table::RecordDebt,
    Table::ImportKeys,
];

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Modules => "modules",
            Table::Specs => "specs",
            Table::Keys => "keys",
            Table::Requests => "requests",
            Table::RequestsByCreated => "requests_by_created",
            Table::TransportKeys => "transport_keys",
            Table::Bundles => "bundles",
            Table::Receipts => "receipts",
            Table::Jobs => "jobs",
            Table::JobsDue => "jobs_due",
            Table::LifecyclePolicies => "lifecycle_policies",
            Table::AccessPolicies => "access_policies",
            Table::Records => "records",
            Table::Properties => "properties",
            Table::Audit => "audit",
            Table::Diagnostics => "diagnostics",
            Table::CloneTargets => "clone_targets",
            Table::RecordsAlt => "records_alt",
            Table::CloneRuns => "clone_runs",
            Table::CloneGrants => "clone_grants",
            Table::CloneExchanges => "clone_exchanges",
            Table::CloneSchedules => "clone_schedules",
            Table::Rekeys => "rekeys",
            Table::RecordDebt => "record_debt",
            Table::ImportKeys => "import_keys",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// A key range: start and end bounds over encoded keys.
#[derive(Clone, Debug)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    pub fn all() -> Self {
        KeyRange { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: Vec<u8>) -> Self {
        let end = prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        KeyRange { start: Bound::Included(prefix), end }
    }

    /// Keys with `prefix` strictly after `after` (a cursor).
    pub fn prefix_after(prefix: Vec<u8>, after: Option<Vec<u8>>) -> Self {
        let mut r = KeyRange::prefix(prefix);
        if let Some(a) = after {
            r.start = Bound::Excluded(a);
        }
        r
    }

    /// Keys up to and including `end`.
    pub fn up_to(end: Vec<u8>) -> Self {
        KeyRange { start: Bound::Unbounded, end: Bound::Included(end) }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }

    /// True when no key can be in the range (redb panics on such ranges).
    pub fn is_empty(&self) -> bool {
        match (&self.start, &self.end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e) | Bound::Included(e)) => s >= e,
            _ => false,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// What a visitor says after each row.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Visit {
    Continue,
    Stop,
}

/// Called on each visited row (key, value); says whether to go on.
pub type Visitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<Visit> + 'a;

pub trait ReadTxn {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Calls `f` on each row in `range`, in key order, until it says Stop.
    fn visit(&mut self, table: Table, range: &KeyRange, f: &mut Visitor<'_>) -> Result<()>;
    /// The row with the greatest key.
    fn last(&mut self, table: Table) -> Result<Option<(Vec<u8>, Vec<u8>)>>;
    fn len(&mut self, table: Table) -> Result<u64>;
}

pub trait WriteTxn: ReadTxn {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<()>;
    /// Returns whether the key existed.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool>;
    /// Inserts the rows whose keys are absent; returns, per row, whether it
    /// was inserted (false: the key exists, that row is not written). One
    /// call for a bulk insert (an import of 10,000 keys).
    fn insert_absent(&mut self, table: Table, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<bool>> {
        let mut inserted = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let absent = self.get(table, k)?.is_none();
            if absent {
                self.put(table, k, v)?;
            }
            inserted.push(absent);
        }
        Ok(inserted)
    }
    /// Makes every write durable at once, or fails with `Conflict` (nothing written).
    fn commit(self: Box<Self>) -> Result<()>;
}

pub trait Engine: Send + Sync + 'static {
    fn begin_read(&self) -> Result<Box<dyn ReadTxn + '_>>;
    fn begin_write(&self) -> Result<Box<dyn WriteTxn + '_>>;
    /// A write whose commit need not be durable by itself: it becomes durable
    /// with the next durable commit, and a crash before that may lose it. For
    /// writes whose loss is harmless (a clone's staging, which a crash makes
    /// start over anyway). Engines without the distinction write durably.
    fn begin_write_relaxed(&self) -> Result<Box<dyn WriteTxn + '_>> {
        self.begin_write()
    }
    /// A short name for diagnostics and logs ("redb", "memory").
    fn kind(&self) -> &'static str;
    /// True when no other process can use this store while we hold it (an
    /// embedded file we have locked): leases found at start are then leftovers
    /// of our own previous run. A shared (networked) store answers false.
    fn is_exclusive(&self) -> bool;
}

/// Up to `limit` rows of `range`, in key order.
pub fn scan(
    tx: &mut (impl ReadTxn + ?Sized),
    table: Table,
    range: &KeyRange,
    limit: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    tx.visit(table, range, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        Ok(if out.len() >= limit { Visit::Stop } else { Visit::Continue })
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        let r = KeyRange::prefix(b"ab".to_vec());
        assert!(r.contains(b"ab") && r.contains(b"ab\xff\xff") && !r.contains(b"ac") && !r.contains(b"aa"));
        let r = KeyRange::prefix_after(b"a".to_vec(), Some(b"ab".to_vec()));
        assert!(!r.contains(b"ab") && r.contains(b"abc"));
        assert!(KeyRange::prefix_after(b"a".to_vec(), Some(b"b".to_vec())).is_empty());
        assert!(!KeyRange::all().is_empty());
        assert!(KeyRange::up_to(vec![]).contains(b""));
    }

    #[test]
    fn table_indexes_follow_the_list() {
        for (i, t) in ALL_TABLES.iter().enumerate() {
            assert_eq!(t.index(), i, "{t:?}");
        }
    }
}
