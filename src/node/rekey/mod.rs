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
use std::sync::mpsc::SyncSender;

use zeroize::Zeroizing;

use super::catalog::Catalog;
use super::context::{Blocking, Context, JobSettings, lease_until, millis};
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
use crate::signer::Signer;
use crate::signer::primitives::GcmSealer;
use crate::signer::schemes::LoadedKey;
use crate::store::Store;
use crate::store::{RekeyEnd, StoreError};

#[cfg(test)]
mod tests;

pub struct Rekey {
    sys_id: SysId,
    store: Arc<Store>,
    signer: Arc<dyn Signer>,
    clock: Arc<dyn Clock>,
    settings: JobSettings,
    catalog: Arc<Catalog>,
}

impl Rekey {
    pub fn new(ctx: &Context, catalog: Arc<Catalog>) -> Self {
        Rekey {
            sys_id: ctx.sys_id.clone(),
            store: Arc::clone(&ctx.store),
            signer: Arc::clone(&ctx.signer),
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

/// The keys one attempt needs, loaded once: the imported keys (to open) and
/// this instance's current keys (to seal).
struct RekeyCipher<'a> {
    rekey: &'a Rekey,
    opening: HashMap<KeyId, LoadedKey>,
    sealing: HashMap<Name, Sealer>,
}

impl<'a> RekeyCipher<'a> {
    fn new(rekey: &'a Rekey) -> Self {
        RekeyCipher { rekey, opening: HashMap::new(), sealing: HashMap::new() }
    }

    fn scheme(&self, spec: &Name) -> AppResult<Scheme> {
        Ok(self.rekey.catalog.spec_or_not_found_blocking(spec)?.scheme())
    }

    fn opening(&mut self, id: &KeyId) -> AppResult<&LoadedKey> {
        if !self.opening.contains_key(id) {
            let (_, wrapped) =
                self.rekey.store.key(id)?.ok_or_else(|| {
                    DomainError::FailedPrecondition(format!("imported key {id} is not on this instance"))
                })?;
            let key = LoadedKey::load(self.scheme(&id.spec)?, self.rekey.signer.unwrap(&wrapped)?)?;
            self.opening.insert(id.clone(), key);
        }
        self.opening.get(id).ok_or_else(|| AppError::Internal("rekey key cache lost an entry".into()))
    }

    fn sealing(&mut self, spec: &Name) -> AppResult<&mut Sealer> {
        if !self.sealing.contains_key(spec) {
            let (rec, wrapped) = self
                .rekey
                .store
                .find_key(spec, |k| k.state.can_encrypt())?
                .ok_or_else(|| DomainError::FailedPrecondition(format!("spec {spec} has no Active key")))?;
            let key = LoadedKey::load(self.scheme(spec)?, self.rekey.signer.unwrap(&wrapped)?)?;
            let gcm = match key.scheme() {
                Scheme::AesGcm { .. } => Some(GcmSealer::new(key.secret())?),
                _ => None,
            };
            let header = ciphertext::encode_header(&rec.id);
            self.sealing.insert(spec.clone(), Sealer { key_id: rec.id, header, key, gcm });
        }
        self.sealing.get_mut(spec).ok_or_else(|| AppError::Internal("rekey key cache lost an entry".into()))
    }

    /// The record re-encrypted under its spec's current key, with the same
    /// address (and so the same associated data). The inner error is this
    /// record's alone (it does not decrypt): the others go on; the outer one
    /// stops the attempt (a key that cannot be loaded).
    fn reencrypt(&mut self, rec: &StoredRecord, now: UnixMillis) -> AppResult<Result<StoredRecord, String>> {
        let (key_id, header, body) = match rekey_plan::record_source(rec) {
            Ok(parts) => parts,
            Err(why) => return Ok(Err(why)),
        };
        let aad = rec.address.associated_data();
        let plaintext: Zeroizing<Vec<u8>> = match self.opening(&key_id)?.open(&[header, &aad], body) {
            Ok(p) => p,
            Err(e) => return Ok(Err(rekey_plan::undecryptable(rec, &key_id, &e.to_string()))),
        };
        let s = self.sealing(&key_id.spec)?;
        let mut out = Vec::with_capacity(s.header.len() + plaintext.len() + 64);
        out.extend_from_slice(&s.header);
        match &mut s.gcm {
            Some(gcm) => gcm.seal(&[&s.header, &aad], &plaintext, &mut out)?,
            None => s.key.seal(&[&s.header, &aad], &plaintext, &mut out)?,
        }
        Ok(Ok(StoredRecord {
            address: rec.address.clone(),
            ciphertext: out,
            key_id: s.key_id.clone(),
            updated_at: now,
        }))
    }
}

fn audit(now: UnixMillis, action: &str, id: &RequestId, outcome: Outcome, details: String) -> AuditEvent {
    AuditEvent::new(now, "system (rekey)", action, id.to_string(), outcome).with_details(details)
}

/// The job's lease was taken over (or the run moved on): nothing more to write.
fn lost_the_run(e: &AppError) -> bool {
    matches!(e, AppError::Store(StoreError::Stale { what: "job lease", .. }))
}

impl Rekey {
    /// A rekey run (operators' view).
    pub async fn rekey_run(self: &Arc<Self>, id: RequestId) -> AppResult<RekeyRun> {
        self.blocking(move |this| {
            this.store.rekey(&id)?.ok_or_else(|| DomainError::not_found("rekey of request", &id).into())
        })
        .await
    }

    /// How many records still depend on each imported key of `run`.
    pub async fn debt_of_run(self: &Arc<Self>, run: RekeyRun) -> AppResult<Vec<KeyDebt>> {
        self.blocking(move |this| Ok(this.store.rekey_debt(&run)?)).await
    }

    /// Every rekey run, newest first.
    pub async fn rekey_runs(self: &Arc<Self>) -> AppResult<Vec<RekeyRun>> {
        self.blocking(|this| Ok(this.store.rekeys()?)).await
    }

    /// The imported keys records still depend on, with how many records
    /// each (from the debt index). Keys of this instance are not debt.
    pub async fn rekey_debt(self: &Arc<Self>) -> AppResult<Vec<KeyDebt>> {
        self.blocking(|this| {
            let own = this.sys_id.clone();
            Ok(this.store.record_debt()?.into_iter().filter(|d| d.key_id.origin != own).collect())
        })
        .await
    }

    /// The rekey job: one attempt, or the run's end at its expiry. An
    /// attempt, its failure and the expiry each end or reschedule the job in
    /// their own transaction.
    async fn run_rekey(self: &Arc<Self>, job_run: &JobRun) -> AppResult<JobOutcome> {
        let id = RequestId::parse(&job_run.job.id.subject)?;
        let lease = job_run.lease.clone();
        self.blocking(move |this| {
            let Some(run) = this.store.rekey(&id)? else { return Ok(JobOutcome::Done) };
            let now = this.now();
            match rekey_plan::rekey_step(Some(&run), now) {
                RekeyStep::Finish => Ok(JobOutcome::Done),
                RekeyStep::Expire => {
                    this.expire_rekey(&run, &lease, now)?;
                    Ok(JobOutcome::Settled)
                }
                RekeyStep::Attempt => match this.rekey_attempt(&id, &lease) {
                    Ok(()) => Ok(JobOutcome::Settled),
                    Err(e) if lost_the_run(&e) => Err(e),
                    Err(e) => this.fail_rekey(&run, &lease, e).map(|()| JobOutcome::Settled),
                },
            }
        })
        .await
    }

    /// One attempt: passes over the records until none is left under the
    /// run's keys (at most `MAX_PASSES`).
    fn rekey_attempt(&self, id: &RequestId, lease: &Lease) -> AppResult<()> {
        let mut run = self.store.begin_rekey_attempt(id, lease, self.lease_until(), self.now())?;
        tracing::info!(request_id = %id, attempt = run.attempts, records = run.records_total - run.records_done, "rekey running");
        let debts = self.store.rekey_debt(&run)?;
        for spec in rekey_plan::specs_needing_keys(&debts) {
            self.catalog.ensure_active_key_blocking(spec, &format!("system (rekey of {id})"))?;
        }
        loop {
            let unmovable;
            (run, unmovable) = self.rekey_pass(&run, lease)?;
            if let PassEnd::Fail(e) = rekey_plan::pass_end(&unmovable) {
                return Err(e.into());
            }
            let left = rekey_plan::total_debt(&self.store.rekey_debt(&run)?);
            if rekey_plan::completes(left) {
                match self.complete_rekey(&run, lease) {
                    // Records arrived under the run's keys since the count.
                    Err(AppError::Store(StoreError::Stale { what: "rekey", .. })) => {}
                    other => return other,
                }
            }
            run = self
                .store
                .next_rekey_pass(id, lease, self.lease_until(), self.now())?
                .ok_or_else(|| rekey_plan::passes_exhausted(left))?;
        }
    }

    /// One pass from the run's cursor to the last record: this thread reads
    /// and re-encrypts pages while a second one commits the batches before
    /// them (each batch with its cursor), so both cores work. Returns the
    /// run as the last batch left it, and the records that could not be
    /// moved (they stay under their imported keys).
    fn rekey_pass(&self, run: &RekeyRun, lease: &Lease) -> AppResult<(RekeyRun, Vec<String>)> {
        let id = &run.request_id;
        let (send, receive) = std::sync::mpsc::sync_channel::<RekeyBatch>(2);
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> AppResult<Option<RekeyRun>> {
                let mut last = None;
                for b in receive {
                    let (until, now) = (self.lease_until(), self.now());
                    let written = self.store.write_rekey_batch(
                        id,
                        lease,
                        until,
                        &b.records,
                        b.cursor.as_ref(),
                        b.durable,
                        now,
                    )?;
                    last = Some(written.0);
                }
                Ok(last)
            });
            let read = self.read_and_reencrypt(run, &send);
            drop(send);
            let written = writer.join().map_err(|_| AppError::Internal("the rekey writer panicked".into()))?;
            // A writer that lost the job's lease says so first.
            let last = written?.unwrap_or_else(|| run.clone());
            Ok((last, read?))
        })
    }

    /// The reading half of a pass: pages after the cursor, re-encrypted and
    /// handed to the writer; stops at the last record or when the writer does.
    fn read_and_reencrypt(&self, run: &RekeyRun, send: &SyncSender<RekeyBatch>) -> AppResult<Vec<String>> {
        let mut cipher = RekeyCipher::new(self);
        let (mut cursor, mut batches, mut unmovable) = (run.cursor.clone(), 0u32, Vec::new());
        loop {
            let page = self.store.rekey_page(run, cursor.as_ref(), BATCH_RECORDS, rekey_plan::SCAN_LIMIT)?;
            let now = self.now();
            let mut records = Vec::with_capacity(page.records.len());
            for rec in page.records {
                match cipher.reencrypt(&rec, now)? {
                    Ok(new) => records.push((rec, new)),
                    // Left under its imported key (still owed); the attempt fails at the end of the pass.
                    Err(why) => unmovable.push(why),
                }
            }
            batches += 1;
            let durable;
            (cursor, durable) = rekey_plan::batch_after_page(cursor, page.last_scanned, batches, page.at_end);
            // A writer that stopped has its error; the pass ends with it.
            if send.send(RekeyBatch { records, cursor: cursor.clone(), durable }).is_err() || page.at_end {
                return Ok(unmovable);
            }
        }
    }

    fn complete_rekey(&self, run: &RekeyRun, lease: &Lease) -> AppResult<()> {
        let now = self.now();
        let entry = |r: &RekeyRun| {
            audit(now, "rekey.completed", &r.request_id, Outcome::Success, rekey_plan::completed_details(r))
        };
        let done = self.store.end_rekey(run, lease, RekeyEnd::Completed, now, &entry)?;
        tracing::info!(request_id = %run.request_id, records = done.records_done, "rekey completed");
        Ok(())
    }

    fn fail_rekey(&self, run: &RekeyRun, lease: &Lease, error: AppError) -> AppResult<()> {
        let now = self.now();
        let reason = rekey_plan::failure_reason(&error.to_string(), matches!(error, AppError::Internal(_)));
        let next = next_attempt(now, millis(self.settings.rekey_retry), run.expires_at);
        tracing::warn!(request_id = %run.request_id, error = %error, next_attempt = next.0, "rekey failed; it will be tried again");
        let entry = |r: &RekeyRun| {
            audit(now, "rekey.failed", &r.request_id, Outcome::Failed, rekey_plan::failed_details(&reason, next))
        };
        self.store.end_rekey(run, lease, RekeyEnd::Failed { error: &reason, next }, now, &entry)?;
        Ok(())
    }

    fn expire_rekey(&self, run: &RekeyRun, lease: &Lease, now: UnixMillis) -> AppResult<()> {
        let entry =
            |r: &RekeyRun| audit(now, "rekey.expired", &r.request_id, Outcome::Failed, rekey_plan::expired_details(r));
        let done = self.store.end_rekey(run, lease, RekeyEnd::Expired, now, &entry)?;
        tracing::warn!(
            request_id = %run.request_id,
            destroyed = done.destroyed_keys.len(),
            kept = done.kept_keys.len(),
            "rekey expired"
        );
        Ok(())
    }
}
