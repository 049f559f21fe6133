//! Rekey runs (target side) and the transactions that move records from
//! imported keys to this instance's own: a batch rewrites its records and
//! moves the run's cursor in one transaction, conditional on the job's lease
//! and on each record still being what was read; the run ends (completed,
//! failed and rescheduled, or expired with its keys dealt with) in one
//! transaction with its property, its audit entry and its job.

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::catalog::{decode_key, key_key, spec_prefix};
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::jobs::{finish_job_in, held_job, put_job_in, renew_lease_in};
use super::properties::put_property_in;
use super::record_debt::{DebtDelta, debt_in};
use super::records::{KeyRow, decode};
use super::requests::{read_request, write_request};
use super::stored_records::{active_records, address_key, decode_row, record_from_row, record_row};
use super::tuple::{KeyReader, str_key};
use super::{RekeyStore, Result, RowKind, StoreError, corrupt, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::exchange::{ExchangeRequest, RequestEvent};
use crate::domain::ids::{KeyId, Name, RequestId, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::domain::key::{KeyRecord, KeyState, WrappedKey};
use crate::domain::property::{Property, REKEYED};
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::domain::rekey::{KeyDebt, RekeyRun, RekeyState, split_at_expiry};

#[derive(Serialize, Deserialize)]
pub(super) struct RekeyRow {
    v: u8,
    source: String,
    specs: Vec<String>,
    state: String,
    attempts: u32,
    records_done: u64,
    records_total: u64,
    /// (table, field, record id) of the cursor.
    cursor: Option<(String, String, String)>,
    pass: u32,
    attempt_done: u64,
    attempt_started_at: i64,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    next_attempt_at: Option<i64>,
    last_error: Option<String>,
    expires_at: i64,
    kept_keys: Vec<(String, u64)>,
    destroyed_keys: Vec<String>,
}

impl From<&RekeyRun> for RekeyRow {
    fn from(r: &RekeyRun) -> Self {
        RekeyRow {
            v: 1,
            source: r.source.to_string(),
            specs: r.specs.iter().map(|s| s.to_string()).collect(),
            state: r.state.label().to_owned(),
            attempts: r.attempts,
            records_done: r.records_done,
            records_total: r.records_total,
            cursor: r.cursor.as_ref().map(|a| (a.table.to_string(), a.field.to_string(), a.record_id.clone())),
            pass: r.pass,
            attempt_done: r.attempt_done,
            attempt_started_at: r.attempt_started_at.0,
            created_at: r.created_at.0,
            updated_at: r.updated_at.0,
            finished_at: r.finished_at.map(|t| t.0),
            next_attempt_at: r.next_attempt_at.map(|t| t.0),
            last_error: r.last_error.clone(),
            expires_at: r.expires_at.0,
            kept_keys: r.kept_keys.iter().map(|d| (d.key_id.to_string(), d.records)).collect(),
            destroyed_keys: r.destroyed_keys.iter().map(|k| k.to_string()).collect(),
        }
    }
}

pub(super) fn run_from(request_id: RequestId, r: RekeyRow) -> Result<RekeyRun> {
    let key = |s: &str| KeyId::parse(s).map_err(corrupt);
    Ok(RekeyRun {
        request_id,
        source: SysId::parse(&r.source).map_err(corrupt)?,
        specs: r.specs.iter().map(|s| Name::parse(s, "spec").map_err(corrupt)).collect::<Result<_>>()?,
        state: RekeyState::parse(&r.state).ok_or_else(|| corrupt(format!("rekey state {}", r.state)))?,
        attempts: r.attempts,
        records_done: r.records_done,
        records_total: r.records_total,
        cursor: r.cursor.map(|(t, f, id)| RecordAddress::parse(&t, &f, &id).map_err(corrupt)).transpose()?,
        pass: r.pass,
        attempt_done: r.attempt_done,
        attempt_started_at: UnixMillis(r.attempt_started_at),
        created_at: UnixMillis(r.created_at),
        updated_at: UnixMillis(r.updated_at),
        finished_at: r.finished_at.map(UnixMillis),
        next_attempt_at: r.next_attempt_at.map(UnixMillis),
        last_error: r.last_error,
        expires_at: UnixMillis(r.expires_at),
        kept_keys: r
            .kept_keys
            .iter()
            .map(|(k, n)| Ok(KeyDebt { key_id: key(k)?, records: *n }))
            .collect::<Result<_>>()?,
        destroyed_keys: r.destroyed_keys.iter().map(|k| key(k)).collect::<Result<_>>()?,
    })
}

pub fn rekey_job_id(id: &RequestId) -> JobId {
    JobId::for_request(JobKind::Rekey, id)
}

fn read_run(tx: &mut dyn ReadTxn, id: &RequestId) -> Result<Option<RekeyRun>> {
    get_row::<RekeyRow>(tx, Table::Rekeys, &str_key(id.as_str()))?.map(|r| run_from(id.clone(), r)).transpose()
}

fn put_run(tx: &mut dyn WriteTxn, run: &RekeyRun) -> Result<()> {
    put_row(tx, Table::Rekeys, &str_key(run.request_id.as_str()), &RekeyRow::from(run))
}

/// Inside the import's transaction: the rekey run of a completed request
/// that asked for one, and its job (due at once).
pub(super) fn schedule_rekey_in(tx: &mut dyn WriteTxn, req: &ExchangeRequest) -> Result<()> {
    if read_run(tx, &req.id)?.is_some() {
        return Ok(());
    }
    let specs = req.lines.iter().map(|l| l.spec.clone()).collect();
    let run = RekeyRun::new(req.id.clone(), req.source.sys_id.clone(), specs, req.expires_at, req.updated_at);
    put_run(tx, &run)?;
    put_job_in(tx, &Job::new(rekey_job_id(&req.id), req.updated_at, req.updated_at))
}

/// The imported keys `run` moves records away from: the source's keys of
/// its specs, as stored here.
fn covered_keys(tx: &mut dyn ReadTxn, run: &RekeyRun) -> Result<Vec<(KeyRecord, WrappedKey)>> {
    let mut out = Vec::new();
    for spec in &run.specs {
        let prefix = super::tuple::KeyBuf::new().raw(&spec_prefix(spec)).str(run.source.as_str()).done();
        tx.visit(Table::Keys, &KeyRange::prefix(prefix), &mut |_, v| {
            out.push(decode_key(v)?);
            Ok(Visit::Continue)
        })?;
    }
    Ok(out)
}

fn covered_debt(tx: &mut dyn ReadTxn, run: &RekeyRun) -> Result<Vec<KeyDebt>> {
    let table = active_records(tx)?;
    let keys = covered_keys(tx, run)?;
    keys.into_iter().map(|(k, _)| Ok(KeyDebt { records: debt_in(tx, table, &k.id)?, key_id: k.id })).collect()
}

/// The run, if the rekey job's `lease` still holds it (renewed until
/// `lease_until`).
fn held_run(tx: &mut dyn WriteTxn, id: &RequestId, lease: &Lease, lease_until: UnixMillis) -> Result<RekeyRun> {
    renew_lease_in(tx, &rekey_job_id(id), lease, lease_until)?;
    read_run(tx, id)?.ok_or_else(|| StoreError::Missing { kind: RowKind::Rekey, id: id.to_string() })
}

/// One page of records to re-encrypt: those under keys the run covers, in
/// address order after the run's cursor.
#[derive(Debug, Default)]
pub struct RekeyPage {
    pub records: Vec<StoredRecord>,
    /// The last address the page looked at (the cursor after it).
    pub last_scanned: Option<RecordAddress>,
    /// The scan reached the end of the records.
    pub at_end: bool,
}

/// How a rekey attempt ends.
pub enum RekeyEnd {
    /// No record depends on the run's keys any more: the property becomes
    /// true and the job is removed. `Stale` when some still do.
    Completed,
    /// The property becomes false; the job runs again at `next`.
    Failed { error: String, next: UnixMillis },
    /// The request expired: it becomes REQUEST_EXPIRED, keys no record needs
    /// are destroyed (their wrapped material erased), the others are kept
    /// and reported; the property is false; the job is removed.
    Expired,
}

impl RekeyStore {
    pub async fn rekey(&self, id: RequestId) -> Result<Option<RekeyRun>> {
        self.store.read(move |tx| read_run(tx, &id)).await
    }

    /// Every rekey run, newest first.
    pub async fn rekeys(&self) -> Result<Vec<RekeyRun>> {
        let mut runs = self
            .store
            .read(|tx| {
                let mut out = Vec::new();
                tx.visit(Table::Rekeys, &KeyRange::all(), &mut |k, v| {
                    let id = RequestId::parse(&KeyReader::new(k).str()?).map_err(corrupt)?;
                    out.push(run_from(id, decode(v)?)?);
                    Ok(Visit::Continue)
                })?;
                Ok(out)
            })
            .await?;
        runs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.request_id.cmp(&b.request_id)));
        Ok(runs)
    }

    /// How many records still depend on each imported key of `run`.
    pub async fn rekey_debt(&self, run: RekeyRun) -> Result<Vec<KeyDebt>> {
        self.store.read(move |tx| covered_debt(tx, &run)).await
    }

    /// Starts an attempt (or resumes the one a crash interrupted: a Running
    /// run keeps its cursor) under the job's lease.
    pub async fn begin_rekey_attempt(
        &self,
        id: RequestId,
        lease: Lease,
        lease_until: UnixMillis,
        now: UnixMillis,
    ) -> Result<RekeyRun> {
        self.store
            .write(move |tx| {
                let mut run = held_run(tx, &id, &lease, lease_until)?;
                match run.state {
                    RekeyState::Running => {}
                    RekeyState::Pending | RekeyState::Failed => {
                        let debt = covered_debt(tx, &run)?.iter().map(|d| d.records).sum();
                        run.start_attempt(debt, now);
                        put_run(tx, &run)?;
                    }
                    RekeyState::Completed | RekeyState::Expired => {
                        return Err(StoreError::Stale {
                            kind: RowKind::Rekey,
                            id: format!("{id} is {}", run.state.label()),
                        });
                    }
                }
                Ok(run)
            })
            .await
    }

    /// Up to `limit` records under the run's keys after `after`, looking at
    /// no more than `scan_limit` records.
    pub async fn rekey_page(
        &self,
        run: RekeyRun,
        after: Option<RecordAddress>,
        limit: usize,
        scan_limit: usize,
    ) -> Result<RekeyPage> {
        let range = KeyRange::prefix_after(Vec::new(), after.as_ref().map(address_key));
        self.store
            .read(move |tx| {
                let table = active_records(tx)?;
                let (mut page, mut scanned) = (RekeyPage { at_end: true, ..RekeyPage::default() }, 0usize);
                tx.visit(table, &range, &mut |k, v| {
                    let rec = record_from_row(k, v)?;
                    scanned += 1;
                    page.last_scanned = Some(rec.address.clone());
                    if run.covers(&rec.key_id) {
                        page.records.push(rec);
                    }
                    if page.records.len() >= limit || scanned >= scan_limit {
                        page.at_end = false;
                        return Ok(Visit::Stop);
                    }
                    Ok(Visit::Continue)
                })?;
                Ok(page)
            })
            .await
    }

    /// Writes one batch: each record of `batch` (as read, re-encrypted) is
    /// replaced if its row is still the one read (a record changed since is
    /// left alone: it was written under a current key), the debt moves with
    /// it, and the cursor moves to `cursor` — one transaction, under the
    /// job's lease. `durable: false` lets the commit ride on the next durable
    /// one (a crash then loses the batch and its cursor together, and the
    /// batch is done again). Returns the run and how many records moved.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_rekey_batch(
        &self,
        id: RequestId,
        lease: Lease,
        lease_until: UnixMillis,
        batch: Vec<(StoredRecord, StoredRecord)>,
        cursor: Option<RecordAddress>,
        durable: bool,
        now: UnixMillis,
    ) -> Result<(RekeyRun, u64)> {
        let write = move |tx: &mut dyn WriteTxn| {
            let mut run = held_run(tx, &id, &lease, lease_until)?;
            if run.state != RekeyState::Running {
                return Err(StoreError::Stale { kind: RowKind::Rekey, id: format!("{id} is {}", run.state.label()) });
            }
            let table = active_records(tx)?;
            let (mut debt, mut moved) = (DebtDelta::default(), 0u64);
            for (old, new) in &batch {
                let (k, was) = record_row(old);
                let Some(current) = tx.get(table, &k)? else { continue };
                // Rows of earlier formats encode differently: compare what they hold.
                if current != was {
                    let current = decode_row(old.address.clone(), &current)?;
                    if current.key_id != old.key_id || current.ciphertext != old.ciphertext {
                        continue;
                    }
                }
                tx.put(table, &k, &record_row(new).1)?;
                debt.remove(&old.key_id);
                debt.add(&new.key_id);
                moved += 1;
            }
            debt.apply(tx, table)?;
            run.record_batch(moved, cursor.clone(), now);
            put_run(tx, &run)?;
            Ok((run, moved))
        };
        if durable { self.store.write(write).await } else { self.store.write_relaxed(write).await }
    }

    /// Starts another pass from the first record (records were written
    /// under the run's keys behind the cursor): the run as written, or none
    /// when the attempt has no passes left.
    pub async fn next_rekey_pass(
        &self,
        id: RequestId,
        lease: Lease,
        lease_until: UnixMillis,
        now: UnixMillis,
    ) -> Result<Option<RekeyRun>> {
        self.store
            .write(move |tx| {
                let mut run = held_run(tx, &id, &lease, lease_until)?;
                let remaining = covered_debt(tx, &run)?.iter().map(|d| d.records).sum();
                let again = run.next_pass(remaining, now);
                put_run(tx, &run)?;
                Ok(again.then_some(run))
            })
            .await
    }

    /// Ends the attempt as `end` says, in one transaction with the
    /// `protected.script.values.kmf.rekeyed` property (written by the system
    /// only), the job and the audit entry `audit` makes from the run as it
    /// ends (so it names exactly the keys this transaction destroyed or kept).
    /// `read`: the run as the caller read it (the transaction reads the run
    /// again; the key rows an expiry destroys move their specs' change
    /// tokens, derived from the rows written).
    pub async fn end_rekey(
        &self,
        read: RekeyRun,
        lease: Lease,
        end: RekeyEnd,
        now: UnixMillis,
        audit: impl Fn(&RekeyRun) -> AuditEvent + Send + 'static,
    ) -> Result<RekeyRun> {
        let id = read.request_id;
        self.store
            .write(move |tx| {
                let job = held_job(tx, &rekey_job_id(&id), &lease)?;
                let mut run = read_run(tx, &id)?
                    .ok_or_else(|| StoreError::Missing { kind: RowKind::Rekey, id: id.to_string() })?;
                let property = |value: &str| Property {
                    name: REKEYED.to_owned(),
                    value: value.to_owned(),
                    updated_at: now,
                    updated_by: "system (rekey)".to_owned(),
                };
                match &end {
                    RekeyEnd::Completed => {
                        let left: u64 = covered_debt(tx, &run)?.iter().map(|d| d.records).sum();
                        if left > 0 {
                            return Err(StoreError::Stale {
                                kind: RowKind::Rekey,
                                id: format!("{id}: {left} record(s) left"),
                            });
                        }
                        run.complete(now);
                        put_property_in(tx, &property("true"))?;
                        finish_job_in(tx, &job.id, &lease)?;
                    }
                    RekeyEnd::Failed { error, next } => {
                        run.fail(error.clone(), *next, now);
                        put_property_in(tx, &property("false"))?;
                        let mut job = job;
                        job.reschedule(*next);
                        put_job_in(tx, &job)?;
                    }
                    RekeyEnd::Expired => {
                        expire_request_in(tx, &id, now)?;
                        let debts = covered_debt(tx, &run)?;
                        let (kept, destroyed) = split_at_expiry(debts);
                        for key in &destroyed {
                            destroy_key_in(tx, key, now)?;
                        }
                        run.expire(kept, destroyed, now);
                        put_property_in(tx, &property("false"))?;
                        finish_job_in(tx, &job.id, &lease)?;
                    }
                }
                put_run(tx, &run)?;
                append_audit(tx, &[audit(&run)])?;
                Ok(run)
            })
            .await
    }
}

/// The target's request becomes REQUEST_EXPIRED (its rekey did not finish).
fn expire_request_in(tx: &mut dyn WriteTxn, id: &RequestId, now: UnixMillis) -> Result<()> {
    let Some(stored) = read_request(tx, id)? else { return Ok(()) };
    let mut req = stored.value;
    if req.apply(RequestEvent::ExpireRekey, "system (rekey expiry)", now).is_ok() {
        write_request(tx, &req, stored.version + 1)?;
    }
    Ok(())
}

/// An imported key no record needs: Destroyed, its wrapped material erased.
fn destroy_key_in(tx: &mut dyn WriteTxn, id: &KeyId, now: UnixMillis) -> Result<()> {
    let k = key_key(id);
    let Some(bytes) = tx.get(Table::Keys, &k)? else { return Ok(()) };
    let (mut rec, _) = decode_key(&bytes)?;
    rec.state = KeyState::Destroyed;
    rec.destroyed_at = Some(now);
    rec.reason = "its rekey expired and no record needed it".to_owned();
    put_row(tx, Table::Keys, &k, &KeyRow::new(&rec, &WrappedKey(Vec::new())))
}
