//! Encrypted record rows (ciphertext only; the store never sees plaintext).

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::records::{decode, encode};
use super::tables::RECORDS;
use super::{RedbStore, Result, StoreError};
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

impl RedbStore {
    pub fn put_record(&self, rec: &StoredRecord) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let a = &rec.address;
            let row = RecordRow {
                v: 1,
                ciphertext: rec.ciphertext.clone(),
                key_id: rec.key_id.to_string(),
                updated_at: rec.updated_at.0,
            };
            tx.open_table(RECORDS)?
                .insert((a.table.as_str(), a.field.as_str(), a.record_id.as_str()), encode(&row).as_slice())?;
        }
        self.commit(tx)?;
        Ok(())
    }

    pub fn record(&self, a: &RecordAddress) -> Result<Option<StoredRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECORDS)?;
        let row = t.get((a.table.as_str(), a.field.as_str(), a.record_id.as_str()))?.map(|g| g.value().to_vec());
        row.map(|b| row_to(a.clone(), decode(&b)?)).transpose()
    }

    /// Returns whether a record was deleted.
    pub fn delete_record(&self, a: &RecordAddress) -> Result<bool> {
        let tx = self.db.begin_write()?;
        let existed =
            tx.open_table(RECORDS)?.remove((a.table.as_str(), a.field.as_str(), a.record_id.as_str()))?.is_some();
        self.commit(tx)?;
        Ok(existed)
    }

    /// Records after `after` (exclusive) in address order, filtered, at most `limit`.
    pub fn records(
        &self,
        table: Option<&Name>,
        field: Option<&Name>,
        after: Option<&RecordAddress>,
        limit: usize,
    ) -> Result<Vec<StoredRecord>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RECORDS)?;
        let mut out = Vec::new();
        let start = after.map(|a| (a.table.to_string(), a.field.to_string(), a.record_id.clone()));
        let iter = match &start {
            Some((tb, f, r)) => t.range((tb.as_str(), f.as_str(), r.as_str())..)?,
            None => t.iter()?,
        };
        for row in iter {
            let (k, v) = row?;
            let (tb, f, r) = k.value();
            let address = RecordAddress::parse(tb, f, r).map_err(corrupt)?;
            if after == Some(&address)
                || table.is_some_and(|x| x != &address.table)
                || field.is_some_and(|x| x != &address.field)
            {
                continue;
            }
            out.push(row_to(address, decode(v.value())?)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
