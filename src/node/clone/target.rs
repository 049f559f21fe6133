//! Clone, target side: `start_clone` records a clone run and its durable
//! job; the job (`run_clone`) clears what an earlier attempt staged, pulls
//! the snapshot stream from the source, stages its records part by part,
//! swaps the snapshot in with one transaction, then clears the old records.
//! A crash or a broken stream before the swap leaves the previous data as it
//! was; the job is taken again (its lease runs out, or at once after a
//! restart) and starts the copy over. The source refusing the clone fails it
//! for good.

use tokio_stream::StreamExt;

use super::Clones;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::clone::{CloneRun, FollowUp, SnapshotCatalog, SnapshotOrder, SnapshotPart};
use crate::domain::clone_decide::{self, AfterClone, CloneFailure};
use crate::domain::exchange::{Frequency, PeerRef, validate_expiry};
use crate::domain::ids::{CloneId, Host, Name, RequestId, SysId};
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::error::{AppError, AppResult, PeerError};
use crate::node::exchange::PlannedRequest;
use crate::node::jobs::{JobOutcome, JobRun};
use crate::signer::primitives::random_bytes;
use crate::store::{CloneSwap, StoreError, clone_job_id};

/// Staging rows deleted per transaction when clearing.
const CLEAR_BATCH: usize = 10_000;

impl Clones {
    pub async fn start_clone(&self, caller: &Caller, source: SysId, source_host: Host) -> AppResult<CloneRun> {
        if source == self.sys_id {
            return Err(DomainError::invalid("source_sys_id", "an instance cannot clone itself").into());
        }
        let actor = caller.actor();
        let now = self.now();
        let id = CloneId::from_random(random_bytes::<16>());
        let run = CloneRun::started(id.clone(), source, source_host, now);
        let audit = AuditEvent::new(now, actor, "clone.start", id.as_str(), Outcome::Success)
            .with_details(format!("from {} at {}", run.source, run.source_host));
        let job = Job::new(clone_job_id(&id), now, now);
        self.clone_store.start_clone(run.clone(), job, vec![audit]).await.map_err(|e| match e {
            StoreError::AlreadyExists { id, .. } => {
                DomainError::FailedPrecondition(format!("clone {id} is still running; wait for it to finish")).into()
            }
            other => AppError::from(other),
        })?;
        self.signals.wake();
        Ok(run)
    }

    pub async fn clone_run(&self, id: CloneId) -> AppResult<CloneRun> {
        self.clone_store.clone_run(id.clone()).await?.ok_or_else(|| DomainError::not_found("clone", id.as_str()).into())
    }

    pub async fn clone_runs(&self) -> AppResult<Vec<CloneRun>> {
        Ok(self.clone_store.clone_runs().await?)
    }

    /// The clone job.
    pub(super) async fn run_clone(&self, job_run: &JobRun) -> AppResult<JobOutcome> {
        let (job, lease) = (&job_run.job, job_run.lease.clone());
        let id = CloneId::parse(&job.id.subject)?;
        let run = self.clone_run(id.clone()).await?;
        if clone_decide::clone_copies(run.state)
            && let Err(e) = self.copy_and_swap(&run, &lease).await
        {
            let refusal = match &e {
                AppError::Peer(PeerError::Refused(reason)) => Some(reason.to_string()),
                _ => None,
            };
            match clone_decide::clone_failure(refusal.as_deref()) {
                CloneFailure::GiveUp { error } => {
                    self.give_up_clone(&id, &lease, error).await?;
                    return Ok(JobOutcome::Settled);
                }
                CloneFailure::Retry => {
                    let _ = self.clone_store.note_clone_error(id, e.to_string(), self.now()).await;
                    return Err(e);
                }
            }
        }
        self.clear_staging(&id, &lease).await?;
        Ok(JobOutcome::Done)
    }

    async fn give_up_clone(&self, id: &CloneId, lease: &Lease, error: String) -> AppResult<()> {
        tracing::warn!(clone = %id, %error, "clone failed");
        let now = self.now();
        let audit = AuditEvent::new(now, "system", "clone.fail", id.as_str(), Outcome::Failed).with_details(&error);
        Ok(self.clone_store.fail_clone(id.clone(), lease.clone(), error, now, vec![audit]).await?)
    }

    async fn clear_staging(&self, id: &CloneId, lease: &Lease) -> AppResult<()> {
        loop {
            let cleared =
                self.clone_store.clear_staging(id.clone(), lease.clone(), self.lease_until(), CLEAR_BATCH).await?;
            if cleared < CLEAR_BATCH {
                return Ok(());
            }
        }
    }

    async fn copy_and_swap(&self, run: &CloneRun, lease: &Lease) -> AppResult<()> {
        self.clear_staging(&run.id, lease).await?;
        let mut parts = self.peers.stream_snapshot(&run.source_host, &run.source).await?;
        let (mut order, mut catalog) = (SnapshotOrder::default(), SnapshotCatalog::default());
        let (mut plan, mut grant) = (None, None);
        // One part is written while the next arrives (a pipeline of one); each
        // part is one store call.
        let mut writing: Option<tokio::task::JoinHandle<AppResult<()>>> = None;
        while let Some(part) = parts.next().await {
            let part = part?;
            order.accept(&part).map_err(|e| PeerError::Refused(DomainError::malformed("snapshot", e.to_string())))?;
            let (id, lease) = (run.id.clone(), lease.clone());
            match part {
                SnapshotPart::Header(h) => {
                    if let Some(why) = clone_decide::snapshot_source_refusal(&h.source, &run.source) {
                        return Err(PeerError::Refused(DomainError::malformed("snapshot", why)).into());
                    }
                    plan = h.exchange.clone();
                    self.clone_store.begin_clone_copy(id, lease, self.lease_until(), h.records, self.now()).await?;
                }
                SnapshotPart::Catalog(c) => catalog.extend(c),
                SnapshotPart::Records(records) => {
                    if let Some(previous) = writing.take() {
                        joined(previous).await?;
                    }
                    let (clones, until, now) = (self.clone_store.clone(), self.lease_until(), self.now());
                    writing = Some(tokio::spawn(async move {
                        clones.stage_clone_records(id, lease, until, records, now).await?;
                        Ok(())
                    }));
                }
                SnapshotPart::End { grant: g, .. } => {
                    grant = g;
                    break;
                }
            }
        }
        if let Some(last) = writing.take() {
            joined(last).await?;
        }
        if !order.is_complete() {
            return Err(PeerError::Unreachable {
                host: run.source_host.to_string(),
                reason: clone_decide::SNAPSHOT_CUT_SHORT.into(),
            }
            .into());
        }
        let exchanges = FollowUp::after(&catalog, plan, grant);
        let now = self.now();
        // The exchanges are committed with the swap, so they happen exactly when the swap did.
        let follow_up =
            exchanges.is_some().then(|| Job::new(JobId::new(JobKind::AutoExchange, run.id.as_str()), now, now));
        let details = clone_decide::clone_complete_details(&run.source, &catalog, exchanges.as_ref());
        let audit =
            AuditEvent::new(now, "system", "clone.complete", run.id.as_str(), Outcome::Success).with_details(details);
        let swap = CloneSwap { catalog, follow_up, exchanges, now, lease_until: self.lease_until() };
        let done = self.clone_store.swap_in_clone(run.id.clone(), lease.clone(), swap, vec![audit]).await?;
        tracing::info!(clone = %done.id, records = done.records_copied, rate = done.rate(), "clone swapped in");
        self.signals.wake();
        Ok(())
    }

    /// After a clone: requests from the source what the clone leads to —
    /// the specs of the source's One Time / Recurring Clone configuration
    /// with its frequency (its policies approve), and, with the automatic
    /// exchange on, every other spec that came with the clone (AUTOMATIC; the
    /// clone grant approves). Request ids derive from the clone's, so running
    /// this twice opens each request once: a pending one is opened again
    /// (the source answers a repeat with what it has), a failed one retried.
    pub(super) async fn run_auto_exchange(&self, run: &JobRun) -> AppResult<JobOutcome> {
        let job = &run.job;
        let clone_id = CloneId::parse(&job.id.subject)?;
        let run = self.clone_run(clone_id.clone()).await?;
        // A run recorded before configured exchanges existed had this job only for the automatic exchange.
        let follow_up = clone_decide::follow_up_of(&run);
        let source = PeerRef { sys_id: run.source.clone(), host: run.source_host.clone() };
        if let Some(plan) = &follow_up.plan {
            let id = clone_decide::configured_request_id(&clone_id);
            let (frequency, grant) = (plan.frequency(), follow_up.grant.clone());
            self.request_after_clone(id, frequency, source.clone(), plan.specs.clone(), plan.rekey, grant).await?;
        }
        if follow_up.automatic {
            let id = clone_decide::automatic_request_id(&clone_id)?;
            let specs = self.clone_store.automatic_specs(follow_up.clone()).await?;
            if !specs.is_empty() {
                let grant = follow_up.grant.clone();
                self.request_after_clone(id, Frequency::Automatic, source, specs, false, grant).await?;
            }
        }
        Ok(JobOutcome::Done)
    }

    /// Opens (or re-opens, or retries) the request `id` for `specs` on the source.
    async fn request_after_clone(
        &self,
        id: RequestId,
        frequency: Frequency,
        source: PeerRef,
        specs: Vec<Name>,
        rekey: bool,
        clone_grant: Option<String>,
    ) -> AppResult<()> {
        let existing = self.requests.request(id.clone()).await?.map(|v| v.value);
        match (clone_decide::after_clone(existing.as_ref().map(|r| r.status)), existing) {
            (AfterClone::Create, _) => {
                let planned = PlannedRequest {
                    id,
                    frequency,
                    source,
                    specs,
                    lifetime: validate_expiry(None)?,
                    actor: "system".into(),
                    rekey,
                    clone_grant,
                };
                let (req, public_key) = self.exchange.insert_target_request(planned).await?;
                tracing::info!(request_id = %req.id, source = %req.source.sys_id, frequency = frequency.label(), "exchange requested after the clone");
                self.exchange.open_on_source(req, public_key).await.map(|_| ())
            }
            (AfterClone::OpenAgain, Some(req)) => {
                let public_key = req.transport_public_key.clone();
                self.exchange.open_on_source(req, public_key).await.map(|_| ())
            }
            (AfterClone::Retry, Some(req)) => self.exchange.retry_on_target("system".into(), req.id).await.map(|_| ()),
            _ => Ok(()),
        }
    }
}

/// The outcome of a spawned step (a panic in it is an internal error).
async fn joined(handle: tokio::task::JoinHandle<AppResult<()>>) -> AppResult<()> {
    handle.await.map_err(|e| AppError::Internal(format!("a clone write task failed: {e}")))?
}
