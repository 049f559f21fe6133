//! Encrypted records: put (encrypt under the spec's current key with the
//! address as associated data), get (decrypt, policies apply), list, delete.
//!
//! Replacing or deleting a record destroys what its current key protects, so
//! it needs what reading it needs: the module access policies of the current
//! key's spec must grant the caller `decrypt` (a replace is a rewrap: decrypt
//! under the old key, encrypt under the new; the new spec's `encrypt` is
//! checked when the record is sealed). The check reads the current key ids;
//! the write is conditional on them being unchanged (else the check runs
//! again) and commits with its audit entry: one `record.put` per call (with a
//! count for PutRecords) or `record.delete`, naming addresses and key ids.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::Crypto;
use super::operations::{OpenItem, SealItem};
use super::session::Session;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, MAX_DETAILS_CHARS, Outcome, bounded};
use crate::domain::auth::Caller;
use crate::domain::ids::{KeyId, Name};
use crate::domain::policy::Operation;
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::error::{AppError, AppResult};
use crate::node::context::Blocking;

/// Most records one list page returns, and one PutRecords call stores.
pub const MAX_PAGE: usize = 1000;

/// One record of a PutRecords call.
pub struct NewRecord {
    pub address: RecordAddress,
    pub spec: Name,
    pub plaintext: Vec<u8>,
}

impl std::fmt::Debug for NewRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewRecord({:?}, {}, [{} bytes redacted])", self.address, self.spec, self.plaintext.len())
    }
}

/// What DigestRecords returns: how many records, and SHA-256 over each one's
/// length-prefixed table, field, record_id and plaintext in address order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordDigest {
    pub records: u64,
    pub sha256: [u8; 32],
}

/// Attempts at a checked record write that keeps finding the record changed.
const CHECKED_WRITE_ATTEMPTS: usize = 3;

fn address_name(a: &RecordAddress) -> String {
    format!("{}/{}/{}", a.table, a.field, a.record_id)
}

/// The distinct key ids of `ids`, in order of first appearance, at most a
/// few by name.
fn key_list<'k>(ids: impl Iterator<Item = &'k KeyId>) -> String {
    const NAMED: usize = 8;
    let mut seen: Vec<&KeyId> = Vec::new();
    for id in ids {
        if !seen.contains(&id) {
            seen.push(id);
        }
    }
    let mut out = seen.iter().take(NAMED).map(|k| k.to_string()).collect::<Vec<_>>().join(", ");
    if seen.len() > NAMED {
        out.push_str(&format!(" and {} more", seen.len() - NAMED));
    }
    out
}

/// The one `record.put` entry of a call: how many records, how many replaced,
/// under which keys (never plaintext).
fn put_event(
    caller: &Caller,
    at: crate::domain::ids::UnixMillis,
    recs: &[StoredRecord],
    old: &[Option<KeyId>],
) -> AuditEvent {
    let subject = match recs {
        [one] => address_name(&one.address),
        [first, ..] => format!("{} and {} more", address_name(&first.address), recs.len() - 1),
        [] => String::new(),
    };
    let replaced: Vec<&KeyId> = old.iter().flatten().collect();
    let mut details = format!("{} records under {}", recs.len(), key_list(recs.iter().map(|r| &r.key_id)));
    if !replaced.is_empty() {
        details.push_str(&format!("; {} replaced, under {}", replaced.len(), key_list(replaced.into_iter())));
    }
    AuditEvent::new(at, caller.actor(), "record.put", subject, Outcome::Success)
        .with_details(bounded(details, MAX_DETAILS_CHARS))
}

fn hash_field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

impl Crypto {
    pub async fn put_record(
        self: &Arc<Self>,
        caller: &Caller,
        address: RecordAddress,
        spec: Name,
        plaintext: Vec<u8>,
    ) -> AppResult<StoredRecord> {
        let item = SealItem { spec, plaintext, aad: address.associated_data() };
        let mut results = self.encrypt_batch(caller, vec![item]).await?;
        let (ciphertext, key_id) = results.pop().ok_or_else(|| AppError::Internal("empty batch".into()))??;
        let rec = StoredRecord { address, ciphertext, key_id, updated_at: self.now() };
        let mut stored = self.store_checked(caller, vec![rec]).await?;
        stored.pop().ok_or_else(|| AppError::Internal("empty batch".into()))
    }

    /// Stores sealed records: the policies of the keys they replace are
    /// checked (`decrypt`, see the module docs), then the write, conditional
    /// on those keys, commits with its audit entry.
    async fn store_checked(
        self: &Arc<Self>,
        caller: &Caller,
        records: Vec<StoredRecord>,
    ) -> AppResult<Vec<StoredRecord>> {
        let caller = caller.clone();
        self.blocking(move |this| {
            let addresses: Vec<RecordAddress> = records.iter().map(|r| r.address.clone()).collect();
            let many = records.len() > 1;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let current = this.store.record_keys(&addresses)?;
                let mut session = Session::new(this, &caller);
                for (i, key) in current.iter().enumerate() {
                    if let Some(key) = key {
                        session.allow(&key.spec, Operation::Decrypt).map_err(|e| match many {
                            true => e.at(format!("records[{i}]")),
                            false => e,
                        })?;
                    }
                }
                let event = put_event(&caller, this.now(), &records, &current);
                match this.store.put_records_checked(&records, &current, &[event]) {
                    Err(crate::store::StoreError::Stale { .. }) if attempt < CHECKED_WRITE_ATTEMPTS => continue,
                    Err(e) => return Err(e.into()),
                    Ok(()) => return Ok(records),
                }
            }
        })
        .await
    }

    /// All or nothing: every record is encrypted first, then all are stored in
    /// one transaction. The first record that fails fails the call, naming its index.
    pub async fn put_records(
        self: &Arc<Self>,
        caller: &Caller,
        records: Vec<NewRecord>,
    ) -> AppResult<Vec<StoredRecord>> {
        if records.is_empty() || records.len() > MAX_PAGE {
            return Err(DomainError::invalid("records", format!("a call holds 1 to {MAX_PAGE} records")).into());
        }
        let mut addresses = Vec::with_capacity(records.len());
        let items = records
            .into_iter()
            .map(|r| {
                let aad = r.address.associated_data();
                addresses.push(r.address);
                SealItem { spec: r.spec, plaintext: r.plaintext, aad }
            })
            .collect();
        let sealed = self.encrypt_batch(caller, items).await?;
        let mut stored = Vec::with_capacity(addresses.len());
        let now = self.now();
        for (i, (address, result)) in addresses.into_iter().zip(sealed).enumerate() {
            let (ciphertext, key_id) = result.map_err(|e| e.at(format!("records[{i}]")))?;
            stored.push(StoredRecord { address, ciphertext, key_id, updated_at: now });
        }
        self.store_checked(caller, stored).await
    }

    /// Decrypts every record (of `table` / `field` when given), a page at a
    /// time on the blocking pool, into a count and a digest; plaintexts are
    /// hashed and dropped (zeroized) one by one. Pages are read one after the
    /// other: a record written meanwhile may or may not be counted.
    pub async fn digest_records(
        self: &Arc<Self>,
        caller: &Caller,
        table: Option<Name>,
        field: Option<Name>,
    ) -> AppResult<RecordDigest> {
        let caller = caller.clone();
        self.blocking(move |this| {
            let mut hasher = Sha256::new();
            let mut count = 0u64;
            let mut after: Option<RecordAddress> = None;
            let mut session = Session::new(this, &caller);
            loop {
                let page = this.store.records(table.as_ref(), field.as_ref(), after.as_ref(), MAX_PAGE)?;
                for rec in &page {
                    let aad = rec.address.associated_data();
                    let (plaintext, _) = session.open(&rec.ciphertext, Operation::Decrypt, &aad).map_err(|e| {
                        e.at(format!("record {}/{}/{}", rec.address.table, rec.address.field, rec.address.record_id))
                    })?;
                    hash_field(&mut hasher, rec.address.table.as_str().as_bytes());
                    hash_field(&mut hasher, rec.address.field.as_str().as_bytes());
                    hash_field(&mut hasher, rec.address.record_id.as_bytes());
                    hash_field(&mut hasher, &plaintext);
                    count += 1;
                }
                if page.len() < MAX_PAGE {
                    break;
                }
                after = page.into_iter().next_back().map(|r| r.address);
            }
            Ok(RecordDigest { records: count, sha256: hasher.finalize().into() })
        })
        .await
    }

    pub async fn get_record(
        self: &Arc<Self>,
        caller: &Caller,
        address: RecordAddress,
    ) -> AppResult<(StoredRecord, Vec<u8>)> {
        let a = address.clone();
        let rec = self
            .blocking(move |this| {
                this.store.record(&a)?.ok_or_else(|| DomainError::not_found("record", format!("{a:?}")).into())
            })
            .await?;
        let item = OpenItem { ciphertext: rec.ciphertext.clone(), aad: address.associated_data() };
        let mut results = self.decrypt_batch(caller, vec![item]).await?;
        let (plaintext, _) = results.pop().ok_or_else(|| AppError::Internal("empty batch".into()))??;
        Ok((rec, plaintext))
    }

    pub async fn list_records(
        self: &Arc<Self>,
        table: Option<Name>,
        field: Option<Name>,
        after: Option<RecordAddress>,
        limit: usize,
    ) -> AppResult<Vec<StoredRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        self.blocking(move |this| Ok(this.store.records(table.as_ref(), field.as_ref(), after.as_ref(), limit)?)).await
    }

    /// Deletes a record if the policies of its key grant the caller
    /// `decrypt` (see the module docs), with its `record.delete` entry.
    pub async fn delete_record(self: &Arc<Self>, caller: &Caller, address: RecordAddress) -> AppResult<()> {
        let caller = caller.clone();
        self.blocking(move |this| {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let current = this.store.record_keys(std::slice::from_ref(&address))?.pop().flatten();
                let Some(key) = current else {
                    return Err(DomainError::not_found("record", format!("{address:?}")).into());
                };
                Session::new(this, &caller).allow(&key.spec, Operation::Decrypt)?;
                let event = AuditEvent::new(this.now(), caller.actor(), "record.delete", address_name(&address), {
                    Outcome::Success
                })
                .with_details(format!("under {key}"));
                match this.store.delete_record_checked(&address, &key, &[event]) {
                    Err(crate::store::StoreError::Stale { .. }) if attempt < CHECKED_WRITE_ATTEMPTS => continue,
                    Err(e) => return Err(e.into()),
                    Ok(()) => return Ok(()),
                }
            }
        })
        .await
    }
}
