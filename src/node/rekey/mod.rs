//! The rekey service, after an import (target side): the durable `Rekey` job re-encrypts
//! every record under a request's imported keys with this instance's own
//! Active key of the same spec (generating one when the spec has none), in
//! batches whose rows and cursor commit together under the job's lease.
//! Then `protected.script.values.kmf.rekeyed` becomes true. A failed attempt
//! sets it false, records why and runs again after `rekey.retry_interval`;
//! at the request's expiry the request becomes REQUEST_EXPIRED and the
//! imported keys no record needs are destroyed.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::catalog::Catalog;
use super::context::{Context, JobSettings, lease_until, millis};
use super::crypto::current_key;
use super::jobs::{JobFuture, JobHandler, JobOutcome, JobRun};
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::ciphertext;
use crate::domain::ids::SysId;
use crate::domain::ids::{KeyId, Name, RequestId, UnixMillis};
use crate::domain::job::JobKind;
use crate::domain::job::Lease;
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::domain::rekey::{BATCH_RECORDS, KeyDebt, RekeyRun, next_attempt};
use crate::domain::rekey_plan::{self, PassEnd, RekeyStep};
use crate::domain::spec::Scheme;
use crate::error::{AppError, AppResult};
use crate::signer::async_signer::{AsyncSigner, off_the_workers};
use crate::signer::primitives::GcmSealer;
use crate::signer::schemes::LoadedKey;
use crate::store::{CatalogStore, RecordStore, RekeyEnd, RekeyStore, RowKind, StoreError};

#[cfg(test)]
mod tests;

pub struct Rekey {
    sys_id: SysId,
    rekeys: RekeyStore,
    records: RecordStore,
    keys: CatalogStore,
    signer: AsyncSigner,
    clock: Arc<dyn Clock>,
    settings: JobSettings,
    catalog: Arc<Catalog>,
}

impl Rekey {
    pub fn new(ctx: &Context, catalog: Arc<Catalog>) -> Self {
        Rekey {
            sys_id: ctx.sys_id.clone(),
            rekeys: RekeyStore::new(&ctx.store),
            records: RecordStore::new(&ctx.store),
            keys: CatalogStore::new(&ctx.store),
            signer: ctx.async_signer(),
            clock: Arc::clone(&ctx.clock),
            settings: ctx.settings.clone(),
            catalog,
        }
    }

    /// The instance's clock.
    pub fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Until when the job's lease is renewed by each batch.
    fn lease_until(&self) -> UnixMillis {
        lease_until(&*self.clock, &self.settings)
    }
}

impl JobHandler for Rekey {
    fn kinds(&self) -> &'static [JobKind] {
        &[JobKind::Rekey]
    }

    fn run(self: Arc<Self>, run: JobRun) -> JobFuture {
        Box::pin(async move { self.run_rekey(&run).await })
    }
}

/// One batch for the writer: (as read, re-encrypted) records and the cursor
/// after them.
struct RekeyBatch {
    records: Vec<(StoredRecord, StoredRecord)>,
    cursor: Option<RecordAddress>,
    durable: bool,
}

/// This instance's current key of a spec, ready to seal.
struct Sealer {
    key_id: KeyId,
    header: Vec<u8>,
    key: LoadedKey,
    gcm: Option<GcmSealer>,
}

/// The keys one attempt needs, loaded once (by `Rekey::load_opening` and
/// `load_sealing`), owned so the re-encryption runs off the workers: the
/// imported keys (to open) and this instance's current keys (to seal).
#[derive(Default)]
struct RekeyCipher {
    opening: HashMap<KeyId, LoadedKey>,
    sealing: HashMap<Name, Sealer>,
}

/// What a record opened to: its plaintext and the key it was under, or why
/// it did not (this record's alone: the others go on).
type Opened = Result<(Zeroizing<Vec<u8>>, KeyId), String>;

impl RekeyCipher {
    /// Opens a record with its imported key. The inner error is this
    /// record's alone (it does not decrypt); the outer one stops the attempt.
    fn open(&self, rec: &StoredRecord) -> AppResult<Opened> {
        let (key_id, header, body) = match rekey_plan::record_source(rec) {
            Ok(parts) => parts,
            Err(why) => return Ok(Err(why)),
        };
        let key =
            self.opening.get(&key_id).ok_or_else(|| AppError::Internal("rekey key cache lost an entry".into()))?;
        let aad = rec.address.associated_data();
        Ok(match key.open(&[header, &aad], body) {
            Ok(plaintext) => Ok((plaintext, key_id)),
            Err(e) => Err(rekey_plan::undecryptable(rec, &key_id, &e.to_string())),
        })
    }

    /// The record, opened to `plaintext` from under `from`, encrypted under
    /// its spec's current key, with the same address (and so the same
    /// associated data).
    fn seal(&mut self, rec: &StoredRecord, plaintext: &[u8], from: &KeyId, now: UnixMillis) -> AppResult<StoredRecord> {
        let s = self
            .sealing
            .get_mut(&from.spec)
            .ok_or_else(|| AppError::Internal("rekey key cache lost an entry".into()))?;
        let aad = rec.address.associated_data();
        let mut out = Vec::with_capacity(s.header.len() + plaintext.len() + 64);
        out.extend_from_slice(&s.header);
        match &mut s.gcm {
            Some(gcm) => gcm.seal(&[&s.header, &aad], plaintext, &mut out)?,
            None => s.key.seal(&[&s.header, &aad], plaintext, &mut out)?,
        }
        Ok(StoredRecord { address: rec.address.clone(), ciphertext: out, key_id: s.key_id.clone(), updated_at: now })
    }
}

/// Re-encryption work queued for the next run off the workers.
enum Step {
    /// Open record `i` and seal it again.
    Both(usize),
    /// Seal record `i` again, opened already.
    Seal(usize, Zeroizing<Vec<u8>>, KeyId),
}

/// Where each record of a page ended: re-encrypted, or why not.
type Answers = Vec<Option<Result<StoredRecord, String>>>;

impl Step {
    fn run(
        self,
        c: &mut RekeyCipher,
        records: &[StoredRecord],
        now: UnixMillis,
        answers: &mut Answers,
    ) -> AppResult<()> {
        let (i, answer) = match self {
            Step::Both(i) => match c.open(&records[i])? {
                Ok((plaintext, from)) => (i, Ok(c.seal(&records[i], &plaintext, &from, now)?)),
                Err(why) => (i, Err(why)),
            },
            Step::Seal(i, plaintext, from) => (i, Ok(c.seal(&records[i], &plaintext, &from, now)?)),
        };
        answers[i] = Some(answer);
        Ok(())
    }
}

/// Runs the queued steps, then opens record `open`, in one go off the
/// workers; returns what opening `open` gave.
async fn run_steps(
    cipher: &mut RekeyCipher,
    records: &Arc<Vec<StoredRecord>>,
    queue: Vec<Step>,
    open: Option<usize>,
    now: UnixMillis,
    answers: &mut Answers,
) -> AppResult<Option<Opened>> {
    if queue.is_empty() && open.is_none() {
        return Ok(None);
    }
    let (mut c, shared, mut done) = (std::mem::take(cipher), Arc::clone(records), std::mem::take(answers));
    let work = move || -> AppResult<_> {
        for step in queue {
            step.run(&mut c, &shared, now, &mut done)?;
        }
        let opened = open.map(|i| c.open(&shared[i])).transpose()?;
        Ok((c, done, opened))
    };
    let (c, done, opened) = off_the_workers(move || Ok(work())).await??;
    (*cipher, *answers) = (c, done);
    Ok(opened)
}

fn audit(now: UnixMillis, action: &str, id: &RequestId, outcome: Outcome, details: String) -> AuditEvent {
    AuditEvent::new(now, "system (rekey)", action, id.to_string(), outcome).with_details(details)
}

/// The job's lease was taken over (or the run moved on): nothing more to write.
fn lost_the_run(e: &AppError) -> bool {
    matches!(e, AppError::Store(StoreError::Stale { kind: RowKind::JobLease, .. }))
}

impl Rekey {
    /// A rekey run (operators' view).
    pub async fn rekey_run(&self, id: RequestId) -> AppResult<RekeyRun> {
        let run = self.rekeys.rekey(id.clone()).await?;
        run.ok_or_else(|| DomainError::not_found("rekey of request", &id).into())
    }

    /// How many records still depend on each imported key of `run`.
    pub async fn debt_of_run(&self, run: RekeyRun) -> AppResult<Vec<KeyDebt>> {
        Ok(self.rekeys.rekey_debt(run).await?)
    }

    /// Every rekey run, newest first.
    pub async fn rekey_runs(&self) -> AppResult<Vec<RekeyRun>> {
        Ok(self.rekeys.rekeys().await?)
    }

    /// The imported keys records still depend on, with how many records
    /// each (from the debt index). Keys of this instance are not debt.
    pub async fn rekey_debt(&self) -> AppResult<Vec<KeyDebt>> {
        let own = &self.sys_id;
        Ok(self.records.record_debt().await?.into_iter().filter(|d| d.key_id.origin != *own).collect())
    }

    /// The rekey job: one attempt, or the run's end at its expiry. An
    /// attempt, its failure and the expiry each end or reschedule the job in
    /// their own transaction.
    async fn run_rekey(&self, job_run: &JobRun) -> AppResult<JobOutcome> {
        let id = RequestId::parse(&job_run.job.id.subject)?;
        let lease = &job_run.lease;
        let Some(run) = self.rekeys.rekey(id.clone()).await? else { return Ok(JobOutcome::Done) };
        let now = self.now();
        match rekey_plan::rekey_step(Some(&run), now) {
            RekeyStep::Finish => Ok(JobOutcome::Done),
            RekeyStep::Expire => {
                self.expire_rekey(&run, lease, now).await?;
                Ok(JobOutcome::Settled)
            }
            RekeyStep::Attempt => match self.rekey_attempt(&id, lease).await {
                Ok(()) => Ok(JobOutcome::Settled),
                Err(e) if lost_the_run(&e) => Err(e),
                Err(e) => self.fail_rekey(&run, lease, e).await.map(|()| JobOutcome::Settled),
            },
        }
    }

    /// One attempt: passes over the records until none is left under the
    /// run's keys (at most `MAX_PASSES`).
    async fn rekey_attempt(&self, id: &RequestId, lease: &Lease) -> AppResult<()> {
        let begun = self.rekeys.begin_rekey_attempt(id.clone(), lease.clone(), self.lease_until(), self.now());
        let mut run = begun.await?;
        tracing::info!(request_id = %id, attempt = run.attempts, records = run.records_total - run.records_done, "rekey running");
        let debts = self.rekeys.rekey_debt(run.clone()).await?;
        for spec in rekey_plan::specs_needing_keys(&debts) {
            self.catalog.ensure_active_key(spec, &format!("system (rekey of {id})")).await?;
        }
        loop {
            let unmovable;
            (run, unmovable) = self.rekey_pass(&run, lease).await?;
            if let PassEnd::Fail(e) = rekey_plan::pass_end(&unmovable) {
                return Err(e.into());
            }
            let left = rekey_plan::total_debt(&self.rekeys.rekey_debt(run.clone()).await?);
            if rekey_plan::completes(left) {
                match self.complete_rekey(&run, lease).await {
                    // Records arrived under the run's keys since the count.
                    Err(AppError::Store(StoreError::Stale { kind: RowKind::Rekey, .. })) => {}
                    other => return other,
                }
            }
            run = self
                .rekeys
                .next_rekey_pass(id.clone(), lease.clone(), self.lease_until(), self.now())
                .await?
                .ok_or_else(|| rekey_plan::passes_exhausted(left))?;
        }
    }

    /// One pass from the run's cursor to the last record: pages are read
    /// and re-encrypted while the batches before them commit (each batch
    /// with its cursor), so the store and the CPU work at once. Returns the
    /// run as the last batch left it, and the records that could not be
    /// moved (they stay under their imported keys).
    async fn rekey_pass(&self, run: &RekeyRun, lease: &Lease) -> AppResult<(RekeyRun, Vec<String>)> {
        let id = &run.request_id;
        let (send, mut receive) = mpsc::channel::<RekeyBatch>(2);
        let writer = async move {
            let mut last = None;
            while let Some(b) = receive.recv().await {
                let (until, now) = (self.lease_until(), self.now());
                let batch = (b.records, b.cursor, b.durable);
                let written =
                    self.rekeys.write_rekey_batch(id.clone(), lease.clone(), until, batch.0, batch.1, batch.2, now);
                last = Some(written.await?.0);
            }
            // Done (or failed): the reader's next send fails and ends the pass.
            Ok::<_, AppError>(last)
        };
        let reader = async move {
            let read = self.read_and_reencrypt(run, &send).await;
            drop(send);
            read
        };
        let (written, read) = tokio::join!(writer, reader);
        // A writer that lost the job's lease says so first.
        let last = written?.unwrap_or_else(|| run.clone());
        Ok((last, read?))
    }

    /// The reading half of a pass: pages after the cursor, re-encrypted and
    /// handed to the writer; stops at the last record or when the writer does.
    async fn read_and_reencrypt(&self, run: &RekeyRun, send: &mpsc::Sender<RekeyBatch>) -> AppResult<Vec<String>> {
        let mut cipher = RekeyCipher::default();
        let (mut cursor, mut batches, mut unmovable) = (run.cursor.clone(), 0u32, Vec::new());
        loop {
            let page = self.rekeys.rekey_page(run.clone(), cursor.clone(), BATCH_RECORDS, rekey_plan::SCAN_LIMIT);
            let page = page.await?;
            let now = self.now();
            let (records, mut left) = self.reencrypt_page(&mut cipher, page.records, now).await?;
            // Left under their imported keys (still owed); the attempt fails at the end of the pass.
            unmovable.append(&mut left);
            batches += 1;
            let durable;
            (cursor, durable) = rekey_plan::batch_after_page(cursor, page.last_scanned, batches, page.at_end);
            // A writer that stopped has its error; the pass ends with it.
            if send.send(RekeyBatch { records, cursor: cursor.clone(), durable }).await.is_err() || page.at_end {
                return Ok(unmovable);
            }
        }
    }

    /// A page's records re-encrypted in order, as one record at a time
    /// would be: (as read, re-encrypted) pairs, and why the others were not.
    /// The CPU work runs off the workers in one go, except that a record
    /// whose imported key is not loaded yet, or whose spec's current key is
    /// not (loaded once a record of the spec opened), waits for the records
    /// before it; a key that cannot be loaded stops the attempt there.
    async fn reencrypt_page(
        &self,
        cipher: &mut RekeyCipher,
        records: Vec<StoredRecord>,
        now: UnixMillis,
    ) -> AppResult<(Vec<(StoredRecord, StoredRecord)>, Vec<String>)> {
        let records = Arc::new(records);
        let mut answers: Answers = (0..records.len()).map(|_| None).collect();
        let mut queue = Vec::new();
        for i in 0..records.len() {
            let key_id = match rekey_plan::record_source(&records[i]) {
                Ok((key_id, _, _)) => key_id,
                Err(why) => {
                    answers[i] = Some(Err(why));
                    continue;
                }
            };
            if !cipher.opening.contains_key(&key_id) {
                run_steps(cipher, &records, std::mem::take(&mut queue), None, now, &mut answers).await?;
                self.load_opening(cipher, &key_id).await?;
            }
            if cipher.sealing.contains_key(&key_id.spec) {
                queue.push(Step::Both(i));
                continue;
            }
            match run_steps(cipher, &records, std::mem::take(&mut queue), Some(i), now, &mut answers).await? {
                Some(Ok((plaintext, from))) => {
                    self.load_sealing(cipher, &from.spec).await?;
                    queue.push(Step::Seal(i, plaintext, from));
                }
                Some(Err(why)) => answers[i] = Some(Err(why)),
                None => {}
            }
        }
        run_steps(cipher, &records, queue, None, now, &mut answers).await?;
        let records = Arc::try_unwrap(records).unwrap_or_else(|shared| shared.as_ref().clone());
        let (mut moved, mut unmovable) = (Vec::with_capacity(records.len()), Vec::new());
        for (rec, answer) in records.into_iter().zip(answers) {
            match answer {
                Some(Ok(new)) => moved.push((rec, new)),
                Some(Err(why)) => unmovable.push(why),
                None => return Err(AppError::Internal("a rekey record was lost".into())),
            }
        }
        Ok((moved, unmovable))
    }

    async fn scheme(&self, spec: &Name) -> AppResult<Scheme> {
        Ok(self.catalog.spec_or_not_found(spec).await?.scheme())
    }

    /// Unwraps an imported key and loads it to open records.
    async fn load_opening(&self, cipher: &mut RekeyCipher, id: &KeyId) -> AppResult<()> {
        let (_, wrapped) = self
            .keys
            .key(id.clone())
            .await?
            .ok_or_else(|| DomainError::FailedPrecondition(format!("imported key {id} is not on this instance")))?;
        let scheme = self.scheme(&id.spec).await?;
        let key = self.signer.with_backend(move |b| LoadedKey::load(scheme, b.unwrap(&wrapped)?)).await?;
        cipher.opening.insert(id.clone(), key);
        Ok(())
    }

    /// Unwraps this instance's current key of `spec` and loads it to seal.
    async fn load_sealing(&self, cipher: &mut RekeyCipher, spec: &Name) -> AppResult<()> {
        let (rec, wrapped) = current_key(&self.keys, spec)
            .await?
            .ok_or_else(|| DomainError::FailedPrecondition(format!("spec {spec} has no Active key")))?;
        let scheme = self.scheme(spec).await?;
        let key = self.signer.with_backend(move |b| LoadedKey::load(scheme, b.unwrap(&wrapped)?)).await?;
        let gcm = match key.scheme() {
            Scheme::AesGcm { .. } => Some(GcmSealer::new(key.secret())?),
            _ => None,
        };
        let header = ciphertext::encode_header(&rec.id);
        cipher.sealing.insert(spec.clone(), Sealer { key_id: rec.id, header, key, gcm });
        Ok(())
    }

    async fn complete_rekey(&self, run: &RekeyRun, lease: &Lease) -> AppResult<()> {
        let now = self.now();
        let entry = move |r: &RekeyRun| {
            audit(now, "rekey.completed", &r.request_id, Outcome::Success, rekey_plan::completed_details(r))
        };
        let done = self.rekeys.end_rekey(run.clone(), lease.clone(), RekeyEnd::Completed, now, entry).await?;
        tracing::info!(request_id = %run.request_id, records = done.records_done, "rekey completed");
        Ok(())
    }

    async fn fail_rekey(&self, run: &RekeyRun, lease: &Lease, error: AppError) -> AppResult<()> {
        let now = self.now();
        let reason = rekey_plan::failure_reason(&error.to_string(), matches!(error, AppError::Internal(_)));
        let next = next_attempt(now, millis(self.settings.rekey_retry), run.expires_at);
        tracing::warn!(request_id = %run.request_id, error = %error, next_attempt = next.0, "rekey failed; it will be tried again");
        let details = rekey_plan::failed_details(&reason, next);
        let entry = move |r: &RekeyRun| audit(now, "rekey.failed", &r.request_id, Outcome::Failed, details.clone());
        let end = RekeyEnd::Failed { error: reason, next };
        self.rekeys.end_rekey(run.clone(), lease.clone(), end, now, entry).await?;
        Ok(())
    }

    async fn expire_rekey(&self, run: &RekeyRun, lease: &Lease, now: UnixMillis) -> AppResult<()> {
        let entry = move |r: &RekeyRun| {
            audit(now, "rekey.expired", &r.request_id, Outcome::Failed, rekey_plan::expired_details(r))
        };
        let done = self.rekeys.end_rekey(run.clone(), lease.clone(), RekeyEnd::Expired, now, entry).await?;
        tracing::warn!(
            request_id = %run.request_id,
            destroyed = done.destroyed_keys.len(),
            kept = done.kept_keys.len(),
            "rekey expired"
        );
        Ok(())
    }
}
