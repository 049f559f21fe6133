//! Clone, target side: `start_clone` records a clone run and its durable
//! job; the job (`run_clone`) clears what an earlier attempt staged, pulls
//! the snapshot stream from the source, stages its records part by part,
//! swaps the snapshot in with one transaction, then clears the old records.
//! A crash or a broken stream before the swap leaves the previous data as it
//! was; the job is taken again (its lease runs out, or at once after a
//! restart) and starts the copy over. The source refusing the clone fails it
//! for good.

use std::sync::Arc;

use tokio_stream::StreamExt;

use super::Node;
use super::exchange_target::PlannedRequest;
use super::jobs::millis;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::clone::{
    CloneRun, CloneState, SnapshotCatalog, SnapshotOrder, SnapshotPart, wants_automatic_exchange,
};
use crate::domain::exchange::{Frequency, PeerRef, RequestStatus, validate_expiry};
use crate::domain::ids::{CloneId, Host, RequestId, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::error::{AppError, AppResult, PeerError};
use crate::signer::primitives::random_bytes;
use crate::store::{CloneSwap, StoreError, clone_job_id};

/// Staging rows deleted per transaction when clearing.
const CLEAR_BATCH: usize = 10_000;

impl Node {
    pub async fn start_clone(
        self: &Arc<Self>,
        caller: &Caller,
        source: SysId,
        source_host: Host,
    ) -> AppResult<CloneRun> {
        if source == self.sys_id {
            return Err(DomainError::invalid("source_sys_id", "an instance cannot clone itself").into());
        }
        let actor = caller.actor();
        let run = self
            .blocking(move |node| {
                let now = node.now();
                let id = CloneId::from_random(random_bytes::<16>());
                let run = CloneRun {
                    id: id.clone(),
                    source,
                    source_host,
                    state: CloneState::Running,
                    records_total: 0,
                    records_copied: 0,
                    started_at: now,
                    copy_started_at: now,
                    updated_at: now,
                    finished_at: None,
                    error: None,
                };
                let audit = AuditEvent::new(now, actor, "clone.start", id.as_str(), Outcome::Success)
                    .with_details(format!("from {} at {}", run.source, run.source_host));
                node.store.start_clone(&run, &Job::new(clone_job_id(&id), now, now), &[audit]).map_err(
                    |e| match e {
                        StoreError::AlreadyExists { id, .. } => DomainError::FailedPrecondition(format!(
                            "clone {id} is still running; wait for it to finish"
                        ))
                        .into(),
                        other => AppError::from(other),
                    },
                )?;
                Ok(run)
            })
            .await?;
        self.jobs.wake();
        Ok(run)
    }

    pub async fn clone_run(self: &Arc<Self>, id: CloneId) -> AppResult<CloneRun> {
        self.blocking(move |node| {
            node.store.clone_run(&id)?.ok_or_else(|| DomainError::not_found("clone", id.as_str()).into())
        })
        .await
    }

    pub async fn clone_runs(self: &Arc<Self>) -> AppResult<Vec<CloneRun>> {
        self.blocking(|node| Ok(node.store.clone_runs()?)).await
    }

    fn lease_until(&self) -> UnixMillis {
        self.now().plus_millis(millis(self.job_settings.lease))
    }

    /// The clone job.
    pub(super) async fn run_clone(self: &Arc<Self>, job: &Job, lease: Lease) -> AppResult<()> {
        let id = CloneId::parse(&job.id.subject)?;
        let run = self.clone_run(id.clone()).await?;
        if run.state == CloneState::Running {
            match self.copy_and_swap(&run, &lease).await {
                Ok(()) => {}
                Err(AppError::Peer(PeerError::Refused(reason))) => {
                    let error = format!("the source refused: {reason}");
                    return self.give_up_clone(&id, &lease, error).await;
                }
                Err(e) => {
                    let (id2, error) = (id.clone(), e.to_string());
                    let _ = self.blocking(move |node| Ok(node.store.note_clone_error(&id2, &error, node.now())?)).await;
                    return Err(e);
                }
            }
        }
        self.clear_staging(&id, &lease).await?;
        let job_id = job.id.clone();
        self.blocking(move |node| Ok(node.store.finish_job(&job_id, &lease, None)?)).await
    }

    async fn give_up_clone(self: &Arc<Self>, id: &CloneId, lease: &Lease, error: String) -> AppResult<()> {
        tracing::warn!(clone = %id, %error, "clone failed");
        let (id, lease) = (id.clone(), lease.clone());
        self.blocking(move |node| {
            let now = node.now();
            let audit = AuditEvent::new(now, "system", "clone.fail", id.as_str(), Outcome::Failed).with_details(&error);
            Ok(node.store.fail_clone(&id, &lease, &error, now, &[audit])?)
        })
        .await
    }

    async fn clear_staging(self: &Arc<Self>, id: &CloneId, lease: &Lease) -> AppResult<()> {
        loop {
            let (id, lease) = (id.clone(), lease.clone());
            let cleared = self
                .blocking(move |node| Ok(node.store.clear_staging(&id, &lease, node.lease_until(), CLEAR_BATCH)?))
                .await?;
            if cleared < CLEAR_BATCH {
                return Ok(());
            }
        }
    }

    async fn copy_and_swap(self: &Arc<Self>, run: &CloneRun, lease: &Lease) -> AppResult<()> {
        self.clear_staging(&run.id, lease).await?;
        let mut parts = self.peers.stream_snapshot(&run.source_host, &run.source).await?;
        let (mut order, mut catalog) = (SnapshotOrder::default(), SnapshotCatalog::default());
        // One part is written while the next arrives (a pipeline of one).
        let mut writing: Option<tokio::task::JoinHandle<AppResult<()>>> = None;
        while let Some(part) = parts.next().await {
            let part = part?;
            order.accept(&part).map_err(|e| PeerError::Refused(DomainError::malformed("snapshot", e.to_string())))?;
            let (id, lease) = (run.id.clone(), lease.clone());
            match part {
                SnapshotPart::Header(h) => {
                    if h.source != run.source {
                        let why = format!("the snapshot comes from {}, not {}", h.source, run.source);
                        return Err(PeerError::Refused(DomainError::malformed("snapshot", why)).into());
                    }
                    self.blocking(move |node| {
                        Ok(node.store.begin_clone_copy(&id, &lease, node.lease_until(), h.records, node.now())?)
                    })
                    .await?;
                }
                SnapshotPart::Catalog(c) => catalog.extend(c),
                SnapshotPart::Records(records) => {
                    if let Some(previous) = writing.take() {
                        joined(previous).await?;
                    }
                    let node = Arc::clone(self);
                    writing = Some(tokio::spawn(async move {
                        node.blocking(move |node| {
                            node.store.stage_clone_records(&id, &lease, node.lease_until(), &records, node.now())?;
                            Ok(())
                        })
                        .await
                    }));
                }
                SnapshotPart::End { .. } => break,
            }
        }
        if let Some(last) = writing.take() {
            joined(last).await?;
        }
        if !order.is_complete() {
            return Err(PeerError::Unreachable {
                host: run.source_host.to_string(),
                reason: "the snapshot stream ended before its end part".into(),
            }
            .into());
        }
        let (id, lease, source) = (run.id.clone(), lease.clone(), run.source.clone());
        let automatic = wants_automatic_exchange(&catalog);
        let done = self
            .blocking(move |node| {
                let now = node.now();
                // The automatic exchange is committed with the swap, so it happens exactly when the swap did.
                let follow_up = automatic.then(|| Job::new(JobId::new(JobKind::AutoExchange, id.as_str()), now, now));
                let details = format!(
                    "from {source}: {} modules, {} specs, {} policies, {} properties, records swapped in; automatic exchange {}",
                    catalog.modules.len(),
                    catalog.specs.len(),
                    catalog.policies.len(),
                    catalog.properties.len(),
                    if automatic { "requested" } else { "off" }
                );
                let audit = AuditEvent::new(now, "system", "clone.complete", id.as_str(), Outcome::Success)
                    .with_details(details);
                let swap =
                    CloneSwap { catalog: &catalog, follow_up: follow_up.as_ref(), now, lease_until: node.lease_until() };
                Ok(node.store.swap_in_clone(&id, &lease, &swap, &[audit])?)
            })
            .await?;
        tracing::info!(clone = %done.id, records = done.records_copied, rate = done.rate(), "clone swapped in");
        self.jobs.wake();
        Ok(())
    }

    /// After a clone: requests every spec that came with it from the source
    /// (AUTOMATIC; the source's clone grant approves it). The request's id is
    /// the clone's, so running this twice opens one request: a pending one
    /// is opened again (the source answers a repeat with what it has), a
    /// failed one is retried.
    pub(super) async fn run_auto_exchange(self: &Arc<Self>, job: &Job, lease: Lease) -> AppResult<()> {
        let clone_id = CloneId::parse(&job.id.subject)?;
        let request_id = RequestId::parse(clone_id.as_str())?;
        let run = self.clone_run(clone_id).await?;
        let rid = request_id.clone();
        let existing = self.blocking(move |node| Ok(node.store.request(&rid)?.map(|v| v.value))).await?;
        match existing {
            None => {
                let source = PeerRef { sys_id: run.source, host: run.source_host };
                let planned = move |node: &Node| -> AppResult<PlannedRequest> {
                    Ok(PlannedRequest {
                        id: request_id,
                        frequency: Frequency::Automatic,
                        source,
                        specs: node.store.specs()?.into_iter().map(|s| s.name).collect(),
                        lifetime: validate_expiry(None)?,
                        actor: "system".into(),
                    })
                };
                let (req, public_key) = self.blocking(move |node| node.insert_target_request(planned(node)?)).await?;
                tracing::info!(request_id = %req.id, source = %req.source.sys_id, "automatic exchange requested after the clone");
                self.open_on_source(req, public_key).await?;
            }
            Some(req) if req.status == RequestStatus::Pending => {
                let public_key = req.transport_public_key.clone();
                self.open_on_source(req, public_key).await?;
            }
            Some(req)
                if matches!(req.status, RequestStatus::ErrorOnLocalInstance | RequestStatus::ErrorOnRemoteInstance) =>
            {
                self.retry_on_target("system".into(), req.id).await?;
            }
            Some(_) => {}
        }
        let id = job.id.clone();
        self.blocking(move |node| Ok(node.store.finish_job(&id, &lease, None)?)).await
    }
}

/// The outcome of a spawned step (a panic in it is an internal error).
async fn joined(handle: tokio::task::JoinHandle<AppResult<()>>) -> AppResult<()> {
    handle.await.map_err(|e| AppError::Internal(format!("a clone write task failed: {e}")))?
}
