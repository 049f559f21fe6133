//! Exchange requests and what travels with them: the transport key handle
//! (target), the signed bundle waiting for delivery (source), the receipts
//! given for imported bundles (target), and the jobs a change schedules.
//! Every change to a request is conditional on the version the caller read.

use super::audit::append_audit;
use super::catalog::{decode_key, insert_new_keys, key_key};
use super::clone::{SystemApproval, system_approval_in};
use super::clone_exchanges::{UseUp, use_up_in};
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::jobs::{finish_job_in, put_job_in};
use super::records::{RequestRow, decode};
use super::tuple::{KeyBuf, KeyReader, str_key};
use super::{RequestStore, Result, RowKind, StoreError, Versioned, corrupt, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::exchange::{ExchangeRequest, SignedBlob};
use crate::domain::ids::{KeyId, RequestId};
use crate::domain::job::{Job, JobId, Lease};
use crate::domain::key::{KeyRecord, WrappedKey};

/// Where a page of requests ended: (created_at, id) of its last request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestCursor {
    created_at: i64,
    id: String,
}

impl RequestCursor {
    /// The opaque page token handed to clients.
    pub fn token(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }

    pub fn parse(token: &str) -> Option<Self> {
        let (at, id) = token.split_once('.')?;
        let id = RequestId::parse(id).ok()?;
        Some(RequestCursor { created_at: at.parse().ok()?, id: id.to_string() })
    }

    fn key(&self) -> Vec<u8> {
        KeyBuf::new().i64(self.created_at).str(&self.id).done()
    }
}

/// What `update_request` does to the request's bundle.
#[derive(Clone, Debug, Default)]
pub enum BundleChange {
    #[default]
    Keep,
    Set(SignedBlob),
    Clear,
}

/// Rows that change with a request, in its transaction.
#[derive(Clone, Debug, Default)]
pub struct RequestEffects {
    pub bundle: BundleChange,
    /// Jobs to schedule (inserted, or replacing the job with the same id).
    pub schedule: Vec<Job>,
    /// The job whose run made this change: removed, if the lease still holds it.
    pub finish: Option<(JobId, Lease)>,
    /// Target side: a new transport key handle (a retried request's).
    pub transport_handle: Option<Vec<u8>>,
    /// Source side: the completed exchange uses up a One Time configuration.
    pub use_up: Option<UseUp>,
    /// Source side: an approval without a person, re-checked and its clone
    /// grant used up in this transaction (before `use_up`).
    pub system_approval: Option<SystemApproval>,
}

fn request_key(id: &RequestId) -> Vec<u8> {
    str_key(id.as_str())
}

pub(super) fn read_request(tx: &mut dyn ReadTxn, id: &RequestId) -> Result<Option<Versioned<ExchangeRequest>>> {
    match tx.get(Table::Requests, &request_key(id))? {
        None => Ok(None),
        Some(b) => {
            let row: RequestRow = decode(&b)?;
            let version = row.version;
            Ok(Some(Versioned { value: row.try_into()?, version }))
        }
    }
}

pub(super) fn write_request(tx: &mut dyn WriteTxn, req: &ExchangeRequest, version: u64) -> Result<()> {
    let mut row = RequestRow::from(req);
    row.version = version;
    put_row(tx, Table::Requests, &request_key(&req.id), &row)?;
    // A failed request keeps its transport key: a retry may still use it
    // (the source redelivering after this side's failure).
    if req.status.is_final() {
        tx.delete(Table::TransportKeys, &request_key(&req.id))?;
    }
    Ok(())
}

/// The stored version must be `expected`; returns the next one.
fn check_version(tx: &mut dyn WriteTxn, id: &RequestId, expected: u64) -> Result<u64> {
    match read_request(tx, id)? {
        None => Err(StoreError::Missing { kind: RowKind::Request, id: id.to_string() }),
        Some(v) if v.version != expected => Err(StoreError::Stale { kind: RowKind::Request, id: id.to_string() }),
        Some(v) => Ok(v.version + 1),
    }
}

fn apply_effects(tx: &mut dyn WriteTxn, id: &RequestId, effects: &RequestEffects) -> Result<()> {
    match &effects.bundle {
        BundleChange::Keep => {}
        BundleChange::Set(blob) => tx.put(Table::Bundles, &request_key(id), &encode_blob(blob))?,
        BundleChange::Clear => {
            tx.delete(Table::Bundles, &request_key(id))?;
        }
    }
    if let Some((job, lease)) = &effects.finish {
        finish_job_in(tx, job, lease)?;
    }
    if let Some(handle) = &effects.transport_handle {
        tx.put(Table::TransportKeys, &request_key(id), handle)?;
    }
    for job in &effects.schedule {
        put_job_in(tx, job)?;
    }
    if let Some(a) = &effects.system_approval {
        system_approval_in(tx, a)?;
    }
    if let Some(u) = &effects.use_up {
        use_up_in(tx, u)?;
    }
    Ok(())
}

/// Up to `limit` requests in creation order after `after`, and the cursor
/// of the next page when there may be more.
fn requests_page_in(
    tx: &mut dyn ReadTxn,
    after: Option<&RequestCursor>,
    limit: usize,
) -> Result<(Vec<ExchangeRequest>, Option<RequestCursor>)> {
    let range = KeyRange::prefix_after(Vec::new(), after.map(RequestCursor::key));
    let mut ids = Vec::new();
    tx.visit(Table::RequestsByCreated, &range, &mut |k, _| {
        let mut r = KeyReader::new(k);
        ids.push(RequestCursor { created_at: r.i64()?, id: r.str()? });
        Ok(if ids.len() >= limit { Visit::Stop } else { Visit::Continue })
    })?;
    let mut out = Vec::with_capacity(ids.len());
    for c in &ids {
        let id = RequestId::parse(&c.id).map_err(corrupt)?;
        let req = read_request(tx, &id)?.ok_or_else(|| corrupt(format!("index names missing request {id}")))?;
        out.push(req.value);
    }
    let next = if ids.len() >= limit { ids.pop() } else { None };
    Ok((out, next))
}

/// Inserts a new request (refusing an existing id) with its transport key
/// handle and effects, and its audit entries.
fn insert_request_in(
    tx: &mut dyn WriteTxn,
    req: &ExchangeRequest,
    transport_handle: Option<&[u8]>,
    effects: &RequestEffects,
    audit: &[AuditEvent],
) -> Result<()> {
    let k = request_key(&req.id);
    if tx.get(Table::Requests, &k)?.is_some() {
        return Err(StoreError::AlreadyExists { kind: RowKind::Request, id: req.id.to_string() });
    }
    write_request(tx, req, 1)?;
    tx.put(Table::RequestsByCreated, &KeyBuf::new().i64(req.created_at.0).str(req.id.as_str()).done(), &[])?;
    if let Some(handle) = transport_handle {
        tx.put(Table::TransportKeys, &k, handle)?;
    }
    apply_effects(tx, &req.id, effects)?;
    append_audit(tx, audit)
}

/// A signed blob as stored: u32 signature length, signature, bytes.
pub(crate) fn encode_blob(b: &SignedBlob) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + b.signature.len() + b.bytes.len());
    out.extend_from_slice(&(b.signature.len() as u32).to_be_bytes());
    out.extend_from_slice(&b.signature);
    out.extend_from_slice(&b.bytes);
    out
}

pub(crate) fn decode_blob(v: &[u8]) -> Result<SignedBlob> {
    let len = v.get(..4).ok_or_else(|| corrupt("signed blob: truncated"))?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let signature = v.get(4..4 + len).ok_or_else(|| corrupt("signed blob: truncated signature"))?;
    Ok(SignedBlob { signature: signature.to_vec(), bytes: v[4 + len..].to_vec() })
}

impl RequestStore {
    pub async fn request(&self, id: RequestId) -> Result<Option<Versioned<ExchangeRequest>>> {
        self.store.read(move |tx| read_request(tx, &id)).await
    }

    /// Up to `limit` requests in creation order after `after`, and the cursor
    /// of the next page when there may be more.
    pub async fn requests_page(
        &self,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> Result<(Vec<ExchangeRequest>, Option<RequestCursor>)> {
        self.store.read(move |tx| requests_page_in(tx, after.as_ref(), limit)).await
    }

    /// Inserts a new request (refusing an existing id) with its transport key
    /// handle and effects.
    pub async fn insert_request(
        &self,
        req: ExchangeRequest,
        transport_handle: Option<Vec<u8>>,
        effects: RequestEffects,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store.write(move |tx| insert_request_in(tx, &req, transport_handle.as_deref(), &effects, &audit)).await
    }

    /// Saves `req` if its stored version is still `expected` (else `Stale`),
    /// with its effects and audit entries; returns the new version.
    pub async fn update_request(
        &self,
        expected: u64,
        req: ExchangeRequest,
        effects: RequestEffects,
        audit: Vec<AuditEvent>,
    ) -> Result<u64> {
        self.store
            .write(move |tx| {
                let next = check_version(tx, &req.id, expected)?;
                write_request(tx, &req, next)?;
                apply_effects(tx, &req.id, &effects)?;
                append_audit(tx, &audit)?;
                Ok(next)
            })
            .await
    }

    pub async fn bundle(&self, id: RequestId) -> Result<Option<SignedBlob>> {
        self.store.read(move |tx| tx.get(Table::Bundles, &request_key(&id))?.map(|v| decode_blob(&v)).transpose()).await
    }

    pub async fn transport_handle(&self, id: RequestId) -> Result<Option<Vec<u8>>> {
        self.store.read(move |tx| tx.get(Table::TransportKeys, &request_key(&id))).await
    }

    /// The receipt given for the bundle with this SHA-256, and its request.
    pub async fn receipt_for(&self, bundle_sha256: [u8; 32]) -> Result<Option<(RequestId, SignedBlob)>> {
        self.store
            .read(move |tx| match tx.get(Table::Receipts, &bundle_sha256)? {
                None => Ok(None),
                Some(v) => {
                    let mut r = KeyReader::new(&v);
                    let id = RequestId::parse(&r.str()?).map_err(corrupt)?;
                    Ok(Some((id, decode_blob(r.raw())?)))
                }
            })
            .await
    }

    /// Which of `ids` are stored, in the order of `ids`.
    pub async fn existing_keys(&self, ids: Vec<KeyId>) -> Result<Vec<KeyId>> {
        self.store
            .read(move |tx| {
                let mut out = Vec::new();
                for id in ids {
                    if tx.get(Table::Keys, &key_key(&id))?.is_some() {
                        out.push(id);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// The wrapped material of each of `ids` as stored now (None: no such
    /// key), in the order of `ids`: one read for the keys an import
    /// compares with its bundle's entries.
    pub async fn wrapped_keys(&self, ids: Vec<KeyId>) -> Result<Vec<Option<WrappedKey>>> {
        self.store
            .read(move |tx| {
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    out.push(tx.get(Table::Keys, &key_key(id))?.map(|b| decode_key(&b)).transpose()?.map(|(_, w)| w));
                }
                Ok(out)
            })
            .await
    }

    /// The import, conditional on the request's version and on none of
    /// `new_keys` being stored yet (else `Stale`: the caller reads again):
    /// inserts the keys, saves the request, keeps the receipt under the
    /// bundle's digest and deletes the transport key, in one transaction.
    pub async fn complete_import(
        &self,
        expected: u64,
        req: ExchangeRequest,
        new_keys: Vec<(KeyRecord, WrappedKey)>,
        receipt: ([u8; 32], SignedBlob),
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                let next = check_version(tx, &req.id, expected)?;
                if let Some(id) = insert_new_keys(tx, &new_keys)?.first() {
                    return Err(StoreError::Stale { kind: RowKind::Key, id: id.to_string() });
                }
                write_request(tx, &req, next)?;
                if req.rekey {
                    super::rekeys::schedule_rekey_in(tx, &req)?;
                }
                tx.delete(Table::TransportKeys, &request_key(&req.id))?;
                let mut row = KeyBuf::new().str(req.id.as_str()).done();
                row.extend_from_slice(&encode_blob(&receipt.1));
                tx.put(Table::Receipts, &receipt.0, &row)?;
                append_audit(tx, &audit)
            })
            .await
    }
}
