//! Encrypted record rows (ciphertext only; the store never sees plaintext).

use serde::{Deserialize, Serialize};

use super::engine::{KeyRange, Table, Visit};
use super::records::decode;
use super::tuple::{KeyBuf, KeyReader};
use super::{Change, Result, Store, StoreError, get_row, put_row};
use crate::domain::ids::{KeyId, Name, UnixMillis};
use crate::domain::record::{RecordAddress, StoredRecord};

#[derive(Serialize, Deserialize)]
struct RecordRow {
    v: u8,
    #[serde(with = "super::records::hex_bytes")]
    ciphertext: Vec<u8>,
    key_id: String,
    updated_at: i64,
}

fn corrupt(e: impl ToString) -> StoreError {
    StoreError::Corrupt(e.to_string())
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
    let mut r = KeyReader::new(k);
    let (tb, f, id) = (r.str()?, r.str()?, r.str()?);
    let address = RecordAddress::parse(&tb, &f, &id).map_err(corrupt)?;
    row_to(address, decode(v)?)
}

fn address_key(a: &RecordAddress) -> Vec<u8> {
    KeyBuf::new().str(a.table.as_str()).str(a.field.as_str()).str(&a.record_id).done()
}

impl Store {
    pub fn put_record(&self, rec: &StoredRecord) -> Result<()> {
        let row = RecordRow {
            v: 1,
            ciphertext: rec.ciphertext.clone(),
            key_id: rec.key_id.to_string(),
            updated_at: rec.updated_at.0,
        };
        self.write(&[Change::Other], |tx| put_row(tx, Table::Records, &address_key(&rec.address), &row))
    }

    pub fn record(&self, a: &RecordAddress) -> Result<Option<StoredRecord>> {
        self.read(|tx| {
            get_row::<RecordRow>(tx, Table::Records, &address_key(a))?.map(|r| row_to(a.clone(), r)).transpose()
        })
    }

    /// Returns whether a record was deleted.
    pub fn delete_record(&self, a: &RecordAddress) -> Result<bool> {
        self.write(&[Change::Other], |tx| tx.delete(Table::Records, &address_key(a)))
    }

    /// Records after `after` (exclusive) in address order, filtered, at most `limit`.
    pub fn records(
        &self,
        table: Option<&Name>,
        field: Option<&Name>,
        after: Option<&RecordAddress>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        // A table (and a field of it) narrows the scan to their prefix.
        let prefix = match (table, field) {
            (Some(t), Some(f)) => KeyBuf::new().str(t.as_str()).str(f.as_str()).done(),
            (Some(t), None) => KeyBuf::new().str(t.as_str()).done(),
            _ => Vec::new(),
        };
        let range = KeyRange::prefix_after(prefix, after.map(address_key));
        self.read(|tx| {
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            tx.visit(Table::Records, &range, &mut |k, v| {
                let rec = record_from_row(k, v)?;
                if field.is_some_and(|x| x != &rec.address.field) {
                    return Ok(Visit::Continue);
                }
                out.push(rec);
                Ok(if out.len() >= limit { Visit::Stop } else { Visit::Continue })
            })?;
            Ok(out)
        })
    }
}
