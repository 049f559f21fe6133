//! The jobs table and its due index. A job row is keyed by (kind, subject);
//! the due index by (due time, job key), where the due time of a leased job
//! is when its lease runs out, so a runner that died is found by the same
//! scan that finds new work. Claims, retries and completions happen inside
//! transactions that read the job first: a runner whose lease was taken
//! over gets `Stale` and changes nothing.

use serde::{Deserialize, Serialize};

use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::records::decode;
use super::tuple::{KeyBuf, KeyReader};
use super::{JobStore, Result, RowKind, StoreError, corrupt, get_row, put_row};
use crate::domain::ids::UnixMillis;
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::domain::schedule::RetryPolicy;

#[derive(Serialize, Deserialize)]
pub(super) struct JobRow {
    v: u8,
    kind: String,
    subject: String,
    attempts: u32,
    claims: u64,
    next_due: i64,
    last_error: Option<String>,
    lease_owner: Option<String>,
    lease_claim: u64,
    lease_expires_at: i64,
    created_at: i64,
}

impl From<&Job> for JobRow {
    fn from(j: &Job) -> Self {
        JobRow {
            v: 1,
            kind: j.id.kind.label().to_owned(),
            subject: j.id.subject.clone(),
            attempts: j.attempts,
            claims: j.claims,
            next_due: j.next_due.0,
            last_error: j.last_error.clone(),
            lease_owner: j.lease.as_ref().map(|l| l.owner.clone()),
            lease_claim: j.lease.as_ref().map_or(0, |l| l.claim),
            lease_expires_at: j.lease.as_ref().map_or(0, |l| l.expires_at.0),
            created_at: j.created_at.0,
        }
    }
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self> {
        let kind = JobKind::parse(&r.kind).ok_or_else(|| corrupt(format!("job kind {}", r.kind)))?;
        Ok(Job {
            id: JobId::new(kind, r.subject),
            attempts: r.attempts,
            claims: r.claims,
            next_due: UnixMillis(r.next_due),
            last_error: r.last_error,
            lease: r.lease_owner.map(|owner| Lease {
                owner,
                claim: r.lease_claim,
                expires_at: UnixMillis(r.lease_expires_at),
            }),
            created_at: UnixMillis(r.created_at),
        })
    }
}

fn job_key(id: &JobId) -> Vec<u8> {
    KeyBuf::new().str(id.kind.label()).str(&id.subject).done()
}

fn due_key(job: &Job) -> Vec<u8> {
    KeyBuf::new().i64(job.due_at().0).raw(&job_key(&job.id)).done()
}

pub(crate) fn read_job(tx: &mut dyn ReadTxn, id: &JobId) -> Result<Option<Job>> {
    get_row::<JobRow>(tx, Table::Jobs, &job_key(id))?.map(Job::try_from).transpose()
}

/// Inserts or replaces a job and moves its due-index entry.
pub(crate) fn put_job_in(tx: &mut dyn WriteTxn, job: &Job) -> Result<()> {
    if let Some(old) = read_job(tx, &job.id)? {
        tx.delete(Table::JobsDue, &due_key(&old))?;
    }
    put_row(tx, Table::Jobs, &job_key(&job.id), &JobRow::from(job))?;
    tx.put(Table::JobsDue, &due_key(job), &[])
}

/// The job as stored, if `lease` still holds it (else `Stale`).
pub(crate) fn held_job(tx: &mut dyn WriteTxn, id: &JobId, lease: &Lease) -> Result<Job> {
    match read_job(tx, id)? {
        Some(job) if job.is_held_by(lease) => Ok(job),
        _ => Err(StoreError::Stale { kind: RowKind::JobLease, id: id.to_string() }),
    }
}

/// Extends the lease, if `lease` still holds the job (a long job renews it
/// with each step, so it is not taken over while it makes progress).
pub(crate) fn renew_lease_in(tx: &mut dyn WriteTxn, id: &JobId, lease: &Lease, until: UnixMillis) -> Result<()> {
    let mut job = held_job(tx, id, lease)?;
    if let Some(l) = job.lease.as_mut() {
        l.expires_at = l.expires_at.max(until);
    }
    put_job_in(tx, &job)
}

/// Removes a finished job, if `lease` still holds it.
pub(crate) fn finish_job_in(tx: &mut dyn WriteTxn, id: &JobId, lease: &Lease) -> Result<()> {
    let job = held_job(tx, id, lease)?;
    delete_job_in(tx, &job)
}

/// Removes `job` (as read in this transaction) and its due-index entry.
pub(crate) fn delete_job_in(tx: &mut dyn WriteTxn, job: &Job) -> Result<()> {
    tx.delete(Table::JobsDue, &due_key(job))?;
    tx.delete(Table::Jobs, &job_key(&job.id))?;
    Ok(())
}

impl JobStore {
    pub async fn job(&self, id: JobId) -> Result<Option<Job>> {
        self.store.read(move |tx| read_job(tx, &id)).await
    }

    /// Up to `limit` jobs in due order (leased ones by lease expiry).
    pub async fn jobs_by_due(&self, limit: usize) -> Result<Vec<Job>> {
        self.store
            .read(move |tx| {
                let mut ids = Vec::new();
                tx.visit(Table::JobsDue, &KeyRange::all(), &mut |k, _| {
                    let mut r = KeyReader::new(k);
                    r.i64()?;
                    ids.push(r.raw().to_vec());
                    Ok(if ids.len() >= limit { Visit::Stop } else { Visit::Continue })
                })?;
                let mut out = Vec::with_capacity(ids.len());
                for k in ids {
                    let row: JobRow =
                        decode(&tx.get(Table::Jobs, &k)?.ok_or_else(|| corrupt("due index names a missing job"))?)?;
                    out.push(row.try_into()?);
                }
                Ok(out)
            })
            .await
    }

    /// Schedules `job` unless a job with its id exists (then nothing changes).
    /// Returns whether it was added.
    pub async fn add_job(&self, job: Job) -> Result<bool> {
        self.store
            .write(move |tx| {
                if read_job(tx, &job.id)?.is_some() {
                    return Ok(false);
                }
                put_job_in(tx, &job)?;
                Ok(true)
            })
            .await
    }

    /// Claims up to `limit` jobs due at `now` for `owner`, each leased for
    /// `lease_millis`, in one transaction.
    pub async fn claim_due_jobs(
        &self,
        owner: String,
        now: UnixMillis,
        lease_millis: i64,
        limit: usize,
    ) -> Result<Vec<(Job, Lease)>> {
        // A read first: an idle runner's poll commits (and syncs) nothing.
        let any_due = self
            .store
            .read(move |tx| {
                let mut due = false;
                tx.visit(Table::JobsDue, &KeyRange::all(), &mut |k, _| {
                    due = KeyReader::new(k).i64()? <= now.0;
                    Ok(Visit::Stop)
                })?;
                Ok(due)
            })
            .await?;
        if !any_due || limit == 0 {
            return Ok(Vec::new());
        }
        self.store
            .write(move |tx| {
                let mut keys = Vec::new();
                tx.visit(
                    Table::JobsDue,
                    &KeyRange::up_to(KeyBuf::new().i64(now.0).raw(&[0xff; 8]).done()),
                    &mut |k, _| {
                        let mut r = KeyReader::new(k);
                        if r.i64()? > now.0 {
                            return Ok(Visit::Stop);
                        }
                        keys.push(r.raw().to_vec());
                        Ok(if keys.len() >= limit { Visit::Stop } else { Visit::Continue })
                    },
                )?;
                let mut claimed = Vec::with_capacity(keys.len());
                for k in keys {
                    let row: JobRow =
                        decode(&tx.get(Table::Jobs, &k)?.ok_or_else(|| corrupt("due index names a missing job"))?)?;
                    let mut job: Job = row.try_into()?;
                    let Ok(lease) = job.claim(&owner, now, lease_millis) else { continue };
                    put_job_in(tx, &job)?;
                    claimed.push((job, lease));
                }
                Ok(claimed)
            })
            .await
    }

    /// The run under `lease` is done: a one-off job is removed, a recurring
    /// one is due again at `next` (which it must then have).
    pub async fn finish_job(&self, id: JobId, lease: Lease, next: Option<UnixMillis>) -> Result<()> {
        self.store
            .write(move |tx| match next {
                None => finish_job_in(tx, &id, &lease),
                Some(at) => {
                    let mut job = held_job(tx, &id, &lease)?;
                    job.reschedule(at);
                    put_job_in(tx, &job)
                }
            })
            .await
    }

    /// The run under `lease` failed: the job is retried after a backoff.
    pub async fn retry_job(
        &self,
        id: JobId,
        lease: Lease,
        error: String,
        now: UnixMillis,
        policy: RetryPolicy,
        jitter: u64,
    ) -> Result<Job> {
        self.store
            .write(move |tx| {
                let mut job = held_job(tx, &id, &lease)?;
                job.fail(error.as_str(), now, policy, jitter);
                put_job_in(tx, &job)?;
                Ok(job)
            })
            .await
    }

    /// At start, on an exclusive store: every lease still recorded belongs to
    /// a previous run of this daemon that stopped (or was killed) holding it;
    /// its jobs become due now instead of when those leases would run out.
    /// On a shared store leases are left to run out. Returns how many.
    pub async fn release_orphaned_leases(&self) -> Result<usize> {
        if !self.store.engine.is_exclusive() {
            return Ok(0);
        }
        self.store
            .write(|tx| {
                let mut leased = Vec::new();
                tx.visit(Table::Jobs, &KeyRange::all(), &mut |_, v| {
                    let job: Job = decode::<JobRow>(v)?.try_into()?;
                    if job.lease.is_some() {
                        leased.push(job);
                    }
                    Ok(Visit::Continue)
                })?;
                for job in &leased {
                    let mut released = job.clone();
                    released.lease = None;
                    put_job_in(tx, &released)?;
                }
                Ok(leased.len())
            })
            .await
    }

    /// The job under `lease` did not run (its target is backing off): due
    /// again at `at`, attempts unchanged.
    pub async fn postpone_job(&self, id: JobId, lease: Lease, at: UnixMillis) -> Result<()> {
        self.store
            .write(move |tx| {
                let mut job = held_job(tx, &id, &lease)?;
                job.lease = None;
                job.next_due = at;
                put_job_in(tx, &job)
            })
            .await
    }

    /// Makes a waiting job due at `at` (for example: wake the delivery of a
    /// request now instead of at its backoff). A leased job is left alone.
    pub async fn hasten_job(&self, id: JobId, at: UnixMillis) -> Result<bool> {
        self.store
            .write(move |tx| match read_job(tx, &id)? {
                Some(mut job) if job.lease.is_none() && job.next_due > at => {
                    job.next_due = at;
                    put_job_in(tx, &job)?;
                    Ok(true)
                }
                _ => Ok(false),
            })
            .await
    }
}
