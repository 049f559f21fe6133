//! The audit chain's rows: appended inside the transaction of the change
//! they describe, read back in pages.

use super::engine::{KeyRange, ReadTxn, Table, WriteTxn, scan};
use super::tuple::{KeyBuf, KeyReader};
use super::{AuditStore, Result, StoreError};
use crate::domain::audit::{AuditEntry, AuditEvent, GENESIS};

fn audit_rows_in(tx: &mut dyn ReadTxn, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
    let range = KeyRange::prefix_after(Vec::new(), Some(KeyBuf::new().u64(after).done()));
    scan(tx, Table::Audit, &range, limit)?.into_iter().map(|(k, v)| Ok((seq_of(&k)?, v))).collect()
}

fn seq_of(key: &[u8]) -> Result<u64> {
    let mut r = KeyReader::new(key);
    let seq = r.u64()?;
    r.end()?;
    Ok(seq)
}

/// Appends `events` to the chain inside the caller's transaction, so an
/// event and the change it describes commit together.
pub(crate) fn append_audit(tx: &mut dyn WriteTxn, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (mut seq, mut prev) = match tx.last(Table::Audit)? {
        Some((k, bytes)) => {
            // The stored form ends with the entry's hash.
            let seq = seq_of(&k)?;
            if bytes.len() < 32 {
                return Err(StoreError::Corrupt(format!("audit entry {seq} is truncated")));
            }
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes[bytes.len() - 32..]);
            (seq, hash)
        }
        None => (0, GENESIS),
    };
    for event in events {
        seq += 1;
        let entry = AuditEntry::chain(seq, event.clone(), prev);
        tx.put(Table::Audit, &KeyBuf::new().u64(seq).done(), &entry.encode())?;
        prev = entry.hash;
    }
    Ok(())
}

impl AuditStore {
    /// Appends events on their own (refused calls, failures).
    pub async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        self.store.write(move |tx| append_audit(tx, &events)).await
    }

    /// Raw audit rows (sequence, stored bytes) after `after`, oldest first,
    /// at most `limit`. Decoding is the caller's, so a damaged row can be
    /// reported as a broken link rather than a store failure.
    pub async fn audit_rows(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.store.read(move |tx| audit_rows_in(tx, after, limit)).await
    }
}
