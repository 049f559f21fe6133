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
use super::session::{Cipher, Session, compute, parse};
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, MAX_DETAILS_CHARS, Outcome, bounded};
use crate::domain::auth::Caller;
use crate::domain::ids::{KeyId, Name};
use crate::domain::policy::Operation;
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::error::{AppError, AppResult};
use crate::node::context::reread_and_retry;

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

/// The running count and hash of DigestRecords.
struct Digesting {
    hasher: Sha256,
    count: u64,
}

fn record_label(rec: &StoredRecord) -> String {
    format!("record {}/{}/{}", rec.address.table, rec.address.field, rec.address.record_id)
}

/// Opens the records of `page` that `queue` names, in order, and hashes them
/// into `digest`, off the workers; plaintexts are dropped (zeroized) one by one.
async fn hash_records(
    cipher: &mut Cipher,
    digest: Digesting,
    page: &Arc<Vec<StoredRecord>>,
    queue: Vec<usize>,
) -> AppResult<Digesting> {
    if queue.is_empty() {
        return Ok(digest);
    }
    let (c, page) = (std::mem::take(cipher), Arc::clone(page));
    let (c, digest) = compute(false, move || {
        let mut d = digest;
        for i in queue {
            let rec = &page[i];
            let aad = rec.address.associated_data();
            let (plaintext, _) =
                c.open(&rec.ciphertext, Operation::Decrypt, &aad).map_err(|e| e.at(record_label(rec)))?;
            hash_field(&mut d.hasher, rec.address.table.as_str().as_bytes());
            hash_field(&mut d.hasher, rec.address.field.as_str().as_bytes());
            hash_field(&mut d.hasher, rec.address.record_id.as_bytes());
            hash_field(&mut d.hasher, &plaintext);
            d.count += 1;
        }
        Ok((c, d))
    })
    .await?;
    *cipher = c;
    Ok(digest)
}

impl Crypto {
    pub async fn put_record(
        &self,
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
    /// on those keys, commits with its audit entry. A record replaced
    /// meanwhile makes it check again (at most `REREAD_ATTEMPTS` times, then ABORTED).
    async fn store_checked(&self, caller: &Caller, records: Vec<StoredRecord>) -> AppResult<Vec<StoredRecord>> {
        let addresses: Vec<RecordAddress> = records.iter().map(|r| r.address.clone()).collect();
        let many = records.len() > 1;
        let what = match &addresses[..] {
            [one] => format!("record {}", address_name(one)),
            [first, ..] => format!("record {} and {} more", address_name(first), addresses.len() - 1),
            [] => "records".to_owned(),
        };
        let records = Arc::new(records);
        reread_and_retry(what, || async {
            let current = self.records.record_keys(addresses.clone()).await?;
            let mut session = Session::new(self, caller);
            for (i, key) in current.iter().enumerate() {
                if let Some(key) = key {
                    session.allow(&key.spec, Operation::Decrypt).await.map_err(|e| match many {
                        true => e.at(format!("records[{i}]")),
                        false => e,
                    })?;
                }
            }
            let event = put_event(caller, self.now(), &records, &current);
            Ok(self.records.put_records_checked(Arc::clone(&records), current, vec![event]).await?)
        })
        .await?;
        Ok(Arc::try_unwrap(records).unwrap_or_else(|shared| shared.as_ref().clone()))
    }

    /// All or nothing: every record is encrypted first, then all are stored in
    /// one transaction. The first record that fails fails the call, naming its index.
    pub async fn put_records(&self, caller: &Caller, records: Vec<NewRecord>) -> AppResult<Vec<StoredRecord>> {
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
    /// time off the workers, into a count and a digest; plaintexts are
    /// hashed and dropped (zeroized) one by one. Pages are read one after the
    /// other: a record written meanwhile may or may not be counted. Records
    /// are checked and opened in order, the first failure failing the call:
    /// a record whose spec's access is not decided yet in this call waits for
    /// the records before it to open.
    pub async fn digest_records(
        &self,
        caller: &Caller,
        table: Option<Name>,
        field: Option<Name>,
    ) -> AppResult<RecordDigest> {
        let mut digest = Digesting { hasher: Sha256::new(), count: 0 };
        let mut after: Option<RecordAddress> = None;
        let mut session = Session::new(self, caller);
        loop {
            let page = self.records.records(table.clone(), field.clone(), after.take(), MAX_PAGE).await?;
            let page = Arc::new(page);
            let mut queue = Vec::new();
            for (i, rec) in page.iter().enumerate() {
                let decided = match parse(&rec.ciphertext, Operation::Decrypt) {
                    Ok((key_id, _, _)) => session.decided(&key_id.spec, Operation::Decrypt),
                    Err(_) => true,
                };
                if !decided {
                    // Checking it may audit a refusal: only once the records before it opened.
                    digest = hash_records(&mut session.cipher, digest, &page, std::mem::take(&mut queue)).await?;
                }
                if let Err(e) = session.prepare_open(&rec.ciphertext, Operation::Decrypt).await {
                    hash_records(&mut session.cipher, digest, &page, queue).await?;
                    return Err(e.at(record_label(rec)));
                }
                queue.push(i);
            }
            digest = hash_records(&mut session.cipher, digest, &page, queue).await?;
            if page.len() < MAX_PAGE {
                break;
            }
            after = page.last().map(|r| r.address.clone());
        }
        Ok(RecordDigest { records: digest.count, sha256: digest.hasher.finalize().into() })
    }

    pub async fn get_record(&self, caller: &Caller, address: RecordAddress) -> AppResult<(StoredRecord, Vec<u8>)> {
        let found = self.records.record(address.clone()).await?;
        let rec = found.ok_or_else(|| DomainError::not_found("record", format!("{address:?}")))?;
        let item = OpenItem { ciphertext: rec.ciphertext.clone(), aad: address.associated_data() };
        let mut results = self.decrypt_batch(caller, vec![item]).await?;
        let (plaintext, _) = results.pop().ok_or_else(|| AppError::Internal("empty batch".into()))??;
        Ok((rec, plaintext))
    }

    pub async fn list_records(
        &self,
        table: Option<Name>,
        field: Option<Name>,
        after: Option<RecordAddress>,
        limit: usize,
    ) -> AppResult<Vec<StoredRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        Ok(self.records.records(table, field, after, limit).await?)
    }

    /// Deletes a record if the policies of its key grant the caller
    /// `decrypt` (see the module docs), with its `record.delete` entry. A
    /// record replaced meanwhile makes it check again (at most
    /// `REREAD_ATTEMPTS` times, then ABORTED).
    pub async fn delete_record(&self, caller: &Caller, address: RecordAddress) -> AppResult<()> {
        reread_and_retry(format!("record {}", address_name(&address)), || async {
            let current = self.records.record_keys(vec![address.clone()]).await?.pop().flatten();
            let Some(key) = current else {
                return Err(DomainError::not_found("record", format!("{address:?}")).into());
            };
            Session::new(self, caller).allow(&key.spec, Operation::Decrypt).await?;
            let event =
                AuditEvent::new(self.now(), caller.actor(), "record.delete", address_name(&address), Outcome::Success)
                    .with_details(format!("under {key}"));
            Ok(self.records.delete_record_checked(address.clone(), key, vec![event]).await?)
        })
        .await
    }
}
