//! The record debt index: for each records table and each key, how many
//! records of that table are encrypted under the key. It is written in the
//! same transaction as the records it counts (puts, deletes, a clone's
//! staging and clearing, a rekey's batches), so it is exact at every commit
//! and a rekey's "debt" is a lookup, not a scan of the records.

use std::collections::HashMap;

use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::stored_records::{active_records, record_from_row};
use super::tuple::{KeyBuf, KeyReader};
use super::{RecordStore, Result, corrupt};
use crate::domain::ids::KeyId;
use crate::domain::rekey::KeyDebt;

/// Meta key set once the index covers every record (databases written
/// before it existed build it when first opened).
const META_DEBT_BUILT: &[u8] = b"record_debt";

fn flag(table: Table) -> &'static str {
    if table == Table::RecordsAlt { "b" } else { "a" }
}

fn debt_key(table: Table, key_id: &str) -> Vec<u8> {
    KeyBuf::new().str(flag(table)).str(key_id).done()
}

fn read_count(v: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| corrupt("record debt is not 8 bytes"))?;
    Ok(u64::from_le_bytes(bytes))
}

/// Changes to the index a transaction collects and writes once (a batch
/// touches few keys: one lookup per record, no allocation once a key is in).
#[derive(Default)]
pub(super) struct DebtDelta(HashMap<KeyId, i64>);

impl DebtDelta {
    fn change(&mut self, key: &KeyId, by: i64) {
        match self.0.get_mut(key) {
            Some(n) => *n += by,
            None => {
                self.0.insert(key.clone(), by);
            }
        }
    }

    pub(super) fn add(&mut self, key: &KeyId) {
        self.change(key, 1);
    }

    pub(super) fn remove(&mut self, key: &KeyId) {
        self.change(key, -1);
    }

    /// Writes the changes for records `table`; a count reaching zero is deleted.
    pub(super) fn apply(self, tx: &mut dyn WriteTxn, table: Table) -> Result<()> {
        for (key, delta) in self.0.into_iter().filter(|(_, d)| *d != 0) {
            let k = debt_key(table, &key.to_string());
            let now = match tx.get(Table::RecordDebt, &k)? {
                Some(v) => read_count(&v)?,
                None => 0,
            };
            let next = i64::try_from(now).unwrap_or(i64::MAX).saturating_add(delta);
            if next < 0 {
                return Err(corrupt(format!("record debt of {key} would fall below zero")));
            }
            if next == 0 {
                tx.delete(Table::RecordDebt, &k)?;
            } else {
                tx.put(Table::RecordDebt, &k, &(next as u64).to_le_bytes())?;
            }
        }
        Ok(())
    }
}

/// Forgets every count of records `table` (it is being emptied).
pub(super) fn clear_debt(tx: &mut dyn WriteTxn, table: Table) -> Result<()> {
    let mut keys = Vec::new();
    tx.visit(Table::RecordDebt, &KeyRange::prefix(KeyBuf::new().str(flag(table)).done()), &mut |k, _| {
        keys.push(k.to_vec());
        Ok(Visit::Continue)
    })?;
    for k in keys {
        tx.delete(Table::RecordDebt, &k)?;
    }
    Ok(())
}

/// How many records of `table` are under `key`.
pub(super) fn debt_in(tx: &mut dyn ReadTxn, table: Table, key: &KeyId) -> Result<u64> {
    tx.get(Table::RecordDebt, &debt_key(table, &key.to_string()))?.map_or(Ok(0), |v| read_count(&v))
}

/// Every key with records in `table`, and how many.
pub(super) fn debts_in(tx: &mut dyn ReadTxn, table: Table) -> Result<Vec<KeyDebt>> {
    let mut out = Vec::new();
    tx.visit(Table::RecordDebt, &KeyRange::prefix(KeyBuf::new().str(flag(table)).done()), &mut |k, v| {
        let mut r = KeyReader::new(k);
        let (_, id) = (r.str()?, r.str()?);
        out.push(KeyDebt { key_id: KeyId::parse(&id).map_err(corrupt)?, records: read_count(v)? });
        Ok(Visit::Continue)
    })?;
    Ok(out)
}

pub(super) fn is_debt_built(tx: &mut dyn ReadTxn) -> Result<bool> {
    Ok(tx.get(Table::Meta, META_DEBT_BUILT)?.is_some())
}

/// Builds the index from the records, once (the marker says it is built).
pub(super) fn build_debt_if_missing(tx: &mut dyn WriteTxn) -> Result<bool> {
    if tx.get(Table::Meta, META_DEBT_BUILT)?.is_some() {
        return Ok(false);
    }
    for table in [Table::Records, Table::RecordsAlt] {
        clear_debt(tx, table)?;
        let mut delta = DebtDelta::default();
        tx.visit(table, &KeyRange::all(), &mut |k, v| {
            delta.add(&record_from_row(k, v)?.key_id);
            Ok(Visit::Continue)
        })?;
        delta.apply(tx, table)?;
    }
    tx.put(Table::Meta, META_DEBT_BUILT, b"1")?;
    Ok(true)
}

/// A new database has no records: its index is complete from the start.
pub(super) fn mark_debt_built(tx: &mut dyn WriteTxn) -> Result<()> {
    tx.put(Table::Meta, META_DEBT_BUILT, b"1")
}

impl RecordStore {
    /// Every key the records depend on, with how many records each (the
    /// index, not a scan of the records).
    pub async fn record_debt(&self) -> Result<Vec<KeyDebt>> {
        self.store
            .read(|tx| {
                let table = active_records(tx)?;
                debts_in(tx, table)
            })
            .await
    }
}
