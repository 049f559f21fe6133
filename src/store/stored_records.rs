//! Encrypted record rows (ciphertext only; the store never sees plaintext).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::record_debt::DebtDelta;
use super::records::decode;
use super::tuple::{KeyBuf, KeyReader};
use super::{RecordStore, Result, RowKind, StoreError, corrupt};
use crate::domain::audit::AuditEvent;
use crate::domain::codec::{Reader, Writer};
use crate::domain::ids::{KeyId, Name, UnixMillis};
use crate::domain::record::{RecordAddress, StoredRecord};

/// Record rows written before binary rows: JSON, ciphertext in hex. Still read.
#[derive(Serialize, Deserialize)]
struct RecordRow {
    v: u8,
    #[serde(with = "super::records::hex_bytes")]
    ciphertext: Vec<u8>,
    key_id: String,
    updated_at: i64,
}

/// Binary record rows: `"KMFR" 02`, updated_at, key id, ciphertext (a
/// million-record clone spent most of its time in hex and JSON otherwise).
const ROW_MAGIC: &[u8; 4] = b"KMFR";
const ROW_VERSION: u8 = 2;

pub(super) fn encode_row(rec: &StoredRecord) -> Vec<u8> {
    let mut w = Writer::new(ROW_MAGIC, ROW_VERSION);
    w.i64(rec.updated_at.0).str(&rec.key_id.to_string()).bytes(&rec.ciphertext);
    w.finish()
}

/// The record at `address` from its row, in either format.
pub(super) fn decode_row(address: RecordAddress, v: &[u8]) -> Result<StoredRecord> {
    if !v.starts_with(ROW_MAGIC) {
        return row_to(address, decode(v)?);
    }
    let mut r = Reader::new(v, ROW_MAGIC, ROW_VERSION, "record row").map_err(corrupt)?;
    let updated_at = UnixMillis(r.i64().map_err(corrupt)?);
    let key_id = KeyId::parse(r.str().map_err(corrupt)?).map_err(corrupt)?;
    let ciphertext = r.bytes().map_err(corrupt)?.to_vec();
    r.finish().map_err(corrupt)?;
    Ok(StoredRecord { address, ciphertext, key_id, updated_at })
}

fn row_to(address: RecordAddress, r: RecordRow) -> Result<StoredRecord> {
    Ok(StoredRecord {
        address,
        ciphertext: r.ciphertext,
        key_id: KeyId::parse(&r.key_id).map_err(corrupt)?,
        updated_at: UnixMillis(r.updated_at),
    })
}

/// A record from its row (key: table, field, record id).
pub(super) fn record_from_row(k: &[u8], v: &[u8]) -> Result<StoredRecord> {
    decode_row(address_from_key(k)?, v)
}

/// The address a record row's key names.
pub(super) fn address_from_key(k: &[u8]) -> Result<RecordAddress> {
    let mut r = KeyReader::new(k);
    let (tb, f, id) = (r.str()?, r.str()?, r.str()?);
    RecordAddress::parse(&tb, &f, &id).map_err(corrupt)
}

/// Meta key naming the table that holds the records (`a`: Records, `b`: RecordsAlt).
const META_RECORDS_TABLE: &[u8] = b"records_table";

/// The table holding the records now.
pub(super) fn active_records(tx: &mut dyn ReadTxn) -> Result<Table> {
    Ok(match tx.get(Table::Meta, META_RECORDS_TABLE)?.as_deref() {
        None | Some(b"a") => Table::Records,
        Some(b"b") => Table::RecordsAlt,
        Some(_) => return Err(corrupt("meta records_table is neither a nor b")),
    })
}

/// The other records table (a clone stages there).
pub(super) fn staging_records(tx: &mut dyn ReadTxn) -> Result<Table> {
    Ok(match active_records(tx)? {
        Table::Records => Table::RecordsAlt,
        _ => Table::Records,
    })
}

/// Makes the staging table the active one (inside the swap transaction).
pub(super) fn swap_records_tables(tx: &mut dyn WriteTxn) -> Result<()> {
    let flag: &[u8] = if staging_records(tx)? == Table::Records { b"a" } else { b"b" };
    tx.put(Table::Meta, META_RECORDS_TABLE, flag)
}

/// A record's row (key and value) for writing.
pub(super) fn record_row(rec: &StoredRecord) -> (Vec<u8>, Vec<u8>) {
    (address_key(&rec.address), encode_row(rec))
}

/// `table/field/record_id`, as errors and audit entries name a record.
pub(super) fn record_name(a: &RecordAddress) -> String {
    format!("{}/{}/{}", a.table, a.field, a.record_id)
}

pub(super) fn address_key(a: &RecordAddress) -> Vec<u8> {
    KeyBuf::new().str(a.table.as_str()).str(a.field.as_str()).str(&a.record_id).done()
}

impl RecordStore {
    pub async fn put_record(&self, rec: StoredRecord) -> Result<()> {
        self.put_records(vec![rec]).await
    }

    /// Stores records in one transaction (and their keys' debt).
    pub async fn put_records(&self, recs: Vec<StoredRecord>) -> Result<()> {
        self.store
            .write(move |tx| {
                let table = active_records(tx)?;
                let mut debt = DebtDelta::default();
                for rec in &recs {
                    let (k, v) = record_row(rec);
                    if let Some(old) = tx.get(table, &k)? {
                        debt.remove(&decode_row(rec.address.clone(), &old)?.key_id);
                    }
                    debt.add(&rec.key_id);
                    tx.put(table, &k, &v)?;
                }
                debt.apply(tx, table)
            })
            .await
    }

    /// The key id of the record at each address (None: no record), read in
    /// one transaction: what a replace or delete is checked against.
    pub async fn record_keys(&self, addresses: Vec<RecordAddress>) -> Result<Vec<Option<KeyId>>> {
        self.store
            .read(move |tx| {
                let table = active_records(tx)?;
                let mut out = Vec::with_capacity(addresses.len());
                for a in &addresses {
                    let row = tx.get(table, &address_key(a))?;
                    out.push(row.map(|v| decode_row(a.clone(), &v)).transpose()?.map(|r| r.key_id));
                }
                Ok(out)
            })
            .await
    }

    /// Stores `recs` (and their keys' debt) with `audit` in one transaction,
    /// only if each address still holds what the caller checked: a record
    /// under `expected[i]`'s key id, or none (`None`). Else `Stale`, nothing written.
    pub async fn put_records_checked(
        &self,
        recs: Arc<Vec<StoredRecord>>,
        expected: Vec<Option<KeyId>>,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                let table = active_records(tx)?;
                for (rec, want) in recs.iter().zip(&expected) {
                    let old = tx.get(table, &address_key(&rec.address))?;
                    let found = old.map(|v| decode_row(rec.address.clone(), &v)).transpose()?.map(|r| r.key_id);
                    if found != *want {
                        return Err(StoreError::Stale { kind: RowKind::Record, id: record_name(&rec.address) });
                    }
                }
                let mut debt = DebtDelta::default();
                for rec in recs.iter() {
                    let (k, v) = record_row(rec);
                    // Read again: a call may name one address twice.
                    if let Some(old) = tx.get(table, &k)? {
                        debt.remove(&decode_row(rec.address.clone(), &old)?.key_id);
                    }
                    debt.add(&rec.key_id);
                    tx.put(table, &k, &v)?;
                }
                debt.apply(tx, table)?;
                append_audit(tx, &audit)
            })
            .await
    }

    /// Deletes the record at `a` with `audit` in one transaction, only if it
    /// is still under `expected` (else `Stale`, nothing written).
    pub async fn delete_record_checked(&self, a: RecordAddress, expected: KeyId, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                let table = active_records(tx)?;
                let old = tx.get(table, &address_key(&a))?.map(|v| decode_row(a.clone(), &v)).transpose()?;
                let Some(old) = old.filter(|r| r.key_id == expected) else {
                    return Err(StoreError::Stale { kind: RowKind::Record, id: record_name(&a) });
                };
                let mut debt = DebtDelta::default();
                debt.remove(&old.key_id);
                debt.apply(tx, table)?;
                tx.delete(table, &address_key(&a))?;
                append_audit(tx, &audit)
            })
            .await
    }

    pub async fn record(&self, a: RecordAddress) -> Result<Option<StoredRecord>> {
        self.store
            .read(move |tx| {
                let table = active_records(tx)?;
                tx.get(table, &address_key(&a))?.map(|v| decode_row(a.clone(), &v)).transpose()
            })
            .await
    }

    /// Returns whether a record was deleted.
    pub async fn delete_record(&self, a: RecordAddress) -> Result<bool> {
        self.store
            .write(move |tx| {
                let table = active_records(tx)?;
                let Some(old) = tx.get(table, &address_key(&a))? else { return Ok(false) };
                let mut debt = DebtDelta::default();
                debt.remove(&decode_row(a.clone(), &old)?.key_id);
                debt.apply(tx, table)?;
                tx.delete(table, &address_key(&a))
            })
            .await
    }

    /// Records after `after` (exclusive) in address order, filtered, at most `limit`.
    pub async fn records(
        &self,
        table: Option<Name>,
        field: Option<Name>,
        after: Option<RecordAddress>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        // A table (and a field of it) narrows the scan to their prefix.
        let prefix = match (&table, &field) {
            (Some(t), Some(f)) => KeyBuf::new().str(t.as_str()).str(f.as_str()).done(),
            (Some(t), None) => KeyBuf::new().str(t.as_str()).done(),
            _ => Vec::new(),
        };
        let range = KeyRange::prefix_after(prefix, after.as_ref().map(address_key));
        self.store
            .read(move |tx| {
                let mut out = Vec::new();
                if limit == 0 {
                    return Ok(out);
                }
                let table = active_records(tx)?;
                tx.visit(table, &range, &mut |k, v| {
                    let rec = record_from_row(k, v)?;
                    if field.as_ref().is_some_and(|x| x != &rec.address.field) {
                        return Ok(Visit::Continue);
                    }
                    out.push(rec);
                    Ok(if out.len() >= limit { Visit::Stop } else { Visit::Continue })
                })?;
                Ok(out)
            })
            .await
    }
}
