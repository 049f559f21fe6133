//! The source side of an exchange: record a request a target opens, approve,
//! reject or retry it (one conditional write each: of concurrent decisions
//! exactly one wins), build and sign the bundle, and the jobs that deliver
//! it and notify the target (run by the job runner through this service's
//! `JobHandler`, whether or not the deciding
//! caller is still connected), and expire overdue requests.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::approval::SystemCheck;
use super::{Exchange, request_audit};
use crate::domain::DomainError;
use crate::domain::audit::Outcome;
use crate::node::context::reread_and_retry;
use crate::node::jobs::{JobOutcome, JobRun};
use crate::node::ports::{OpenRequest, SourceView};

use crate::domain::auth::Caller;
use crate::domain::bundle::{Bundle, BundleEntry};
use crate::domain::delivery::{self, DeliveryVerdict, NoticeVerdict, PeerAnswer, UseUpBy};
use crate::domain::exchange::{
    ExchangeRequest, ExchangeRole, PeerRef, RequestStatus, SignedBlob, SpecLine, SpecLineStatus, Transition,
    dialable_target_host, export_line,
};
use crate::domain::exchange_decide::{self as decide, DecideGate, DecisionEffects, RepeatOpening};
use crate::domain::ids::{Host, KeyId, RequestId, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::domain::key::{DataKey, KeyRecord, WrappedKey};
use crate::domain::sweeps;
use crate::error::{AppError, AppResult, PeerError};
use crate::signer::async_signer::off_the_workers;
use crate::signer::primitives::{kwp_wrap, random_key, rsa_oaep_encrypt, sha256, verify_sha256_with_cert};
use crate::signer::{CryptoError, Signer};
use crate::store::{BundleChange, RequestEffects, RowKind, StoreError, UseUp, Versioned};

/// An operator's decision on a request.
pub use crate::domain::exchange_decide::Decision;

/// Keys read per page while building a bundle.
const KEY_PAGE: usize = 1000;

impl Exchange {
    /// A target opens a request here. `caller` comes from its certificate,
    /// `cert_hosts` are the DNS names and IP addresses that certificate
    /// names: the target host it sends must be one of them or a host
    /// registered here for it (`dialable_target_host`), since this source
    /// dials it for the delivery, the notices and the diagnosis.
    pub async fn open_request_from_peer(
        &self,
        caller: SysId,
        caller_cert: Vec<u8>,
        cert_hosts: Vec<String>,
        open: OpenRequest,
    ) -> AppResult<SourceView> {
        let now = self.now();
        decide::opening_refusal(&caller, &open.target_sys_id, &open.source_sys_id, &self.sys_id, open.expires_at, now)?;
        // Refuse a transport key we could not encrypt to, before recording anything.
        let (public_key, wrapping) = (open.transport_public_key.clone(), open.wrapping);
        off_the_workers(move || Ok(rsa_oaep_encrypt(&public_key, wrapping, &[0u8; 32]).map(|_| ())))
            .await?
            .map_err(|e| DomainError::invalid("transport_public_key", e.to_string()))?;
        self.check_target_host(&caller, &open.target_host, &cert_hosts).await?;
        // Per spec, in order: whether it exists here, and only then its key count.
        let mut found = Vec::with_capacity(open.spec_names.len());
        for spec in &open.spec_names {
            let keys = match self.keys.spec(spec.clone()).await? {
                None => None,
                Some(_) => Some(self.keys.count_keys_of(spec.clone()).await?),
            };
            found.push((spec.clone(), keys));
        }
        let (lines, total) = decide::opening_lines(found);
        let actor = format!("instance:{caller}");
        let mut req = ExchangeRequest {
            id: open.request_id,
            role: ExchangeRole::Source,
            frequency: open.frequency,
            source: PeerRef { sys_id: self.sys_id.clone(), host: self.host.clone() },
            target: PeerRef { sys_id: caller, host: open.target_host },
            status: RequestStatus::Pending,
            lines,
            total_key_count: total,
            exported_key_count: 0,
            imported_key_count: 0,
            created_at: now,
            updated_at: now,
            expires_at: open.expires_at,
            history: vec![Transition { status: RequestStatus::Pending, at: now, actor, note: "opened".into() }],
            peer_certificate: caller_cert,
            receipt: None,
            transport_public_key: open.transport_public_key,
            wrapping: open.wrapping,
            rekey: false,
            clone_grant: open.clone_grant,
        };
        // Nothing here needs approval when every spec is missing on this source.
        decide::close_if_nothing_pending(&mut req, now)?;
        let specs: Vec<String> = req.lines.iter().map(|l| l.spec.to_string()).collect();
        let details = format!("target {} at {}; specs {}", req.target.sys_id, req.target.host, specs.join(","));
        let audit = request_audit(&req, "exchange.open", Outcome::Success, details);
        match self.requests.insert_request(req.clone(), None, RequestEffects::default(), vec![audit]).await {
            Ok(()) => {}
            // The target retried after losing our answer: the same request again.
            Err(StoreError::AlreadyExists { kind, id }) => {
                let existing = self.requests.request(req.id.clone()).await?.map(|v| v.value);
                return match existing {
                    Some(e) if decide::is_repeat_opening(&e, &req) => {
                        let e = self.answer_repeat_opening(e).await?;
                        Ok(SourceView { status: e.status, lines: e.lines, total_key_count: e.total_key_count })
                    }
                    _ => Err(DomainError::AlreadyExists { what: kind.label(), id }.into()),
                };
            }
            Err(other) => return Err(other.into()),
        }
        tracing::info!(request_id = %req.id, target = %req.target.sys_id, status = req.status.label(), "exchange request opened by target");
        let req = self.approve_by_grant(req).await?;
        Ok(SourceView { status: req.status, lines: req.lines, total_key_count: req.total_key_count })
    }

    /// The target opened `existing` again (it retried after losing our
    /// answer, or after refusing our delivery): a refused delivery is
    /// retried as the target's decision (`RepeatOpening::RetryDelivery`);
    /// a request still pending may be approved by its grant.
    async fn answer_repeat_opening(&self, existing: ExchangeRequest) -> AppResult<ExchangeRequest> {
        let req = match decide::repeat_opening(&existing) {
            RepeatOpening::AsItStands => existing,
            RepeatOpening::RetryDelivery => {
                let actor = format!("instance:{}", existing.target.sys_id);
                let retried = self.decide_as(&existing.id, &Decision::Retry, &actor, None).await?;
                self.signals.wake();
                retried
            }
        };
        self.approve_by_grant(req).await
    }

    /// Decides on a request (source side, one explicit call): commits the
    /// decision with the job that carries it out, then waits at most
    /// `decision_wait` for the outcome and answers with the request as it
    /// stands. The job runs whether or not the caller is still there.
    pub async fn update_request(
        &self,
        caller: &Caller,
        id: RequestId,
        decision: Decision,
    ) -> AppResult<ExchangeRequest> {
        let actor = caller.actor();
        if decision == Decision::Retry {
            let role = self.request_or_not_found(&id).await?.value.role;
            if role == ExchangeRole::Target {
                return self.retry_on_target(actor, id).await;
            }
        }
        let decided = self.decide(&id, &decision, &actor).await?;
        self.signals.wake();
        if decided.status.is_terminal() {
            return Ok(decided);
        }
        self.wait_until_settled(&id, self.settings.decision_wait).await
    }

    /// Waits at most `bound` for the request to leave Pending/Approved.
    pub async fn wait_until_settled(&self, id: &RequestId, bound: std::time::Duration) -> AppResult<ExchangeRequest> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut settled = self.signals.subscribe();
        loop {
            let req = self.request_or_not_found(id).await?.value;
            if req.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(req);
            }
            // Woken when any job settles; re-read then. A lagging receiver
            // just re-reads too.
            let _ = tokio::time::timeout_at(deadline, settled.changed()).await;
        }
    }

    pub(super) async fn request_or_not_found(&self, id: &RequestId) -> AppResult<Versioned<ExchangeRequest>> {
        Ok(self.requests.request(id.clone()).await?.ok_or_else(|| DomainError::not_found("request", id))?)
    }

    /// Applies `decision` with a conditional write; a request that changed
    /// since it was read is read again, so the loser of a race is refused
    /// with the status the winner left.
    async fn decide(&self, id: &RequestId, decision: &Decision, actor: &str) -> AppResult<ExchangeRequest> {
        self.decide_as(id, decision, actor, None).await
    }

    /// As `decide`; `system` is what an approval without a person checks
    /// again and uses up in its transaction (a refusal there is
    /// `StoreError::GrantRefused`, returned as it is: it is not stale, so it
    /// is not read again).
    /// A request that keeps changing under every read is ABORTED.
    pub(super) async fn decide_as(
        &self,
        id: &RequestId,
        decision: &Decision,
        actor: &str,
        system: Option<SystemCheck<'_>>,
    ) -> AppResult<ExchangeRequest> {
        reread_and_retry(format!("request {id}"), || self.try_decide(id, decision, actor, system)).await
    }

    async fn try_decide(
        &self,
        id: &RequestId,
        decision: &Decision,
        actor: &str,
        system: Option<SystemCheck<'_>>,
    ) -> AppResult<ExchangeRequest> {
        let Versioned { value: mut req, version } = self.request_or_not_found(id).await?;
        let now = self.now();
        if decide::decide_gate(&req, now)? == DecideGate::ExpireFirst {
            self.expire(req, version, now).await?;
            return Err(decide::expired_refusal().into());
        }
        // Read for a retry only: whether the signed bundle is still stored.
        let has_bundle = *decision == Decision::Retry && self.requests.bundle(id.clone()).await?.is_some();
        match decide::apply_decision(&mut req, decision, has_bundle, actor, now)? {
            DecisionEffects::Rejected { audit } => {
                let audit = request_audit(&req, "exchange.reject", Outcome::Success, audit);
                let effects =
                    RequestEffects { schedule: vec![self.job_now(JobKind::Notify, id)], ..Default::default() };
                self.requests.update_request(version, req.clone(), effects, vec![audit]).await?;
                tracing::info!(request_id = %req.id, actor, "exchange request rejected");
            }
            DecisionEffects::Approved => {
                let (bundle, exported) = self.build_bundle(&mut req, now).await?;
                let ids: Vec<String> = exported.iter().map(ToString::to_string).collect();
                let audit = vec![
                    request_audit(&req, "exchange.approve", Outcome::Success, format!("target {}", req.target.sys_id)),
                    request_audit(
                        &req,
                        "exchange.export",
                        Outcome::Success,
                        format!("{} key(s) for {}: {}", ids.len(), req.target.sys_id, ids.join(" ")),
                    ),
                ];
                let effects = RequestEffects {
                    bundle: BundleChange::Set(bundle),
                    schedule: vec![self.job_now(JobKind::Deliver, id)],
                    system_approval: system.map(|s| s.approval.clone()),
                    use_up: system.and_then(|s| s.use_up.cloned()),
                    ..Default::default()
                };
                self.requests.update_request(version, req.clone(), effects, audit).await?;
                tracing::info!(request_id = %req.id, actor, exported = req.exported_key_count, "exchange request approved");
            }
            DecisionEffects::Retried { deliver, audit } => {
                let schedule = if deliver { vec![self.job_now(JobKind::Deliver, id)] } else { Vec::new() };
                let audit = request_audit(&req, "exchange.retry", Outcome::Success, audit);
                let effects = RequestEffects { schedule, ..Default::default() };
                self.requests.update_request(version, req.clone(), effects, vec![audit]).await?;
                tracing::info!(request_id = %req.id, actor, status = req.status.label(), "exchange request retried");
            }
        }
        Ok(req)
    }

    fn job_now(&self, kind: JobKind, id: &RequestId) -> Job {
        let now = self.now();
        Job::new(JobId::for_request(kind, id), now, now)
    }

    /// Refuses (PERMISSION_DENIED, audited by the peer service) a target host
    /// that `target`'s certificate does not name and that is not registered
    /// here for it (its clone target, its clone exchange configuration).
    async fn check_target_host(&self, target: &SysId, host: &Host, cert_hosts: &[String]) -> AppResult<()> {
        let mut registered: Vec<Host> =
            self.clones.clone_target(target.clone()).await?.into_iter().map(|t| t.host).collect();
        registered.extend(self.clones.clone_exchange(target.clone()).await?.map(|c| c.target.host));
        if dialable_target_host(host, &registered, cert_hosts) {
            return Ok(());
        }
        Err(DomainError::PermissionDenied(format!(
            "target_host {host} is neither named in the certificate of {target} nor registered here for it; \
             this source dials only those"
        ))
        .into())
    }

    /// Builds and signs the bundle; fills the request's lines and counts.
    /// The keys are read a page at a time; each page is unwrapped under the
    /// KEK and wrapped for the transport key in one hop off the workers.
    async fn build_bundle(&self, req: &mut ExchangeRequest, now: UnixMillis) -> AppResult<(SignedBlob, Vec<KeyId>)> {
        let (public_key, wrapping) = (req.transport_public_key.clone(), req.wrapping);
        let (transport, wrapped_transport_key) = off_the_workers(move || {
            let transport = random_key(32);
            let wrapped = rsa_oaep_encrypt(&public_key, wrapping, transport.expose())?;
            Ok((Arc::new(transport), wrapped))
        })
        .await?;
        let mut entries = Vec::new();
        let mut specs = Vec::new();
        let mut total = 0u32;
        for line in req.lines.iter_mut().filter(|l| l.status == SpecLineStatus::Pending) {
            match self.keys.spec(line.spec.clone()).await? {
                Some(spec) => specs.push((spec.name.clone(), spec.choice())),
                None => {
                    *line = SpecLine {
                        spec: line.spec.clone(),
                        status: SpecLineStatus::NotOnSource,
                        key_count: 0,
                        reason: "spec not found on source".into(),
                    };
                    continue;
                }
            }
            // Page through the spec's keys: memory stays bounded by a page
            // plus the bundle itself. Only keys this instance originated go;
            // one imported from another instance is asked of its origin.
            let (mut after, mut n, mut failed) = (None::<KeyId>, 0u32, 0u32);
            let mut foreign: BTreeMap<SysId, u32> = BTreeMap::new();
            let sent_before = entries.len();
            loop {
                let page = self.keys.keys_page(line.spec.clone(), after.clone(), KEY_PAGE).await?;
                after = page.last().map(|(k, _)| k.id.clone());
                n += page.len() as u32;
                let full = page.len() >= KEY_PAGE;
                let mut own = Vec::with_capacity(page.len());
                for (rec, wrapped) in page {
                    if rec.id.origin != self.sys_id || !rec.origin.is_own() {
                        *foreign.entry(rec.id.origin.clone()).or_default() += 1;
                        continue;
                    }
                    own.push((rec, wrapped));
                }
                let transport = Arc::clone(&transport);
                let (exported, unwrapped_not) =
                    self.signer.with_backend(move |kek| export_page(kek, &transport, own)).await?;
                entries.extend(exported);
                failed += unwrapped_not;
                if !full {
                    break;
                }
            }
            total += n;
            let foreign: Vec<(SysId, u32)> = foreign.into_iter().collect();
            *line = export_line(line.spec.clone(), (entries.len() - sent_before) as u32, failed, &foreign);
        }
        req.total_key_count = total;
        req.exported_key_count = entries.len() as u32;
        let bundle = Bundle {
            request_id: req.id.clone(),
            source: self.sys_id.clone(),
            target: req.target.sys_id.clone(),
            issued_at: now,
            expires_at: req.expires_at,
            wrapping: req.wrapping,
            wrapped_transport_key,
            lines: req.lines.clone(),
            specs,
            entries,
        };
        let exported = bundle.entries.iter().map(|e| e.key_id.clone()).collect();
        let bytes = off_the_workers(move || Ok(bundle.encode())).await?;
        let signature = self.instance_key.sign(bytes.clone()).await?;
        Ok((SignedBlob { bytes, signature }, exported))
    }

    /// Expires a request conditionally; the source tells the target.
    async fn expire(&self, mut req: ExchangeRequest, version: u64, now: UnixMillis) -> AppResult<()> {
        let effects = decide::expire(&mut req, now)?;
        let audit = request_audit(&req, "exchange.expire", Outcome::Success, "");
        let effects = RequestEffects {
            bundle: if effects.clear_bundle { BundleChange::Clear } else { BundleChange::Keep },
            schedule: if effects.notify_target { vec![self.job_now(JobKind::Notify, &req.id)] } else { Vec::new() },
            ..Default::default()
        };
        let id = req.id.clone();
        self.requests.update_request(version, req, effects, vec![audit]).await?;
        tracing::info!(request_id = %id, "exchange request expired");
        Ok(())
    }

    /// Moves overdue Pending/Approved requests to REQUEST_EXPIRED, a page at
    /// a time. A request that changed meanwhile is left to the next sweep.
    pub(super) async fn sweep_expired_now(&self) -> AppResult<usize> {
        let now = self.now();
        let (mut after, mut expired) = (None, 0);
        loop {
            let (page, next) = self.requests.requests_page(after.take(), KEY_PAGE).await?;
            for id in sweeps::overdue_in(&page, now) {
                let Some(Versioned { value, version }) = self.requests.request(id.clone()).await? else { continue };
                match self.expire(value, version, now).await {
                    Ok(()) => expired += 1,
                    Err(AppError::Store(StoreError::Stale { .. })) | Err(AppError::Domain(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            match next {
                Some(c) => after = Some(c),
                None => return Ok(expired),
            }
        }
    }

    /// Runs the expiry sweep now (tests, and the sweep job).
    pub async fn sweep_expired(&self) -> AppResult<usize> {
        let n = self.sweep_expired_now().await?;
        self.signals.wake();
        Ok(n)
    }

    /// The delivery job: sends the bundle, settles the request on the answer.
    pub(super) async fn run_delivery(&self, run: &JobRun) -> AppResult<JobOutcome> {
        let job = &run.job.id;
        let id = job.request_id().ok_or_else(|| AppError::Internal(format!("job {job} names no request")))?;
        let found = self.requests.request(id.clone()).await?.zip(self.requests.bundle(id).await?);
        let (req, bundle) = match found {
            Some((req, bundle)) if delivery::has_delivery(Some(req.value.status), true) => (req, bundle),
            // Decided otherwise since (completed, expired, failed): nothing to deliver.
            _ => return Ok(JobOutcome::Done),
        };
        let (host, target) = (req.value.target.host.clone(), req.value.target.sys_id.clone());
        if let Some(until) = run.peer_waiting_until(&host) {
            // Another job just found this target unreachable: wait with it.
            return Ok(JobOutcome::WaitUntil(until));
        }
        let (bundle, digest) = off_the_workers(move || {
            let digest = sha256(&bundle.bytes);
            Ok((bundle, digest))
        })
        .await?;
        let timeout = self.settings.delivery_timeout;
        let answer = match tokio::time::timeout(timeout, self.peers.deliver_bundle(&host, &target, bundle)).await {
            Ok(answer) => answer,
            Err(_) => Err(PeerError::Unreachable {
                host: host.to_string(),
                reason: delivery::delivery_timeout_reason(timeout.as_secs()),
            }),
        };
        if answer.is_ok() || matches!(answer, Err(PeerError::Refused(_))) {
            run.peer_answered(&host);
        }
        self.settle_delivery(req, digest, answer, (job.clone(), run.lease.clone())).await
    }

    async fn settle_delivery(
        &self,
        Versioned { value: mut req, version }: Versioned<ExchangeRequest>,
        bundle_sha256: [u8; 32],
        answer: Result<SignedBlob, PeerError>,
        finish: (JobId, Lease),
    ) -> AppResult<JobOutcome> {
        let now = self.now();
        let finish = Some(finish);
        let answer = match answer {
            Ok(receipt) => {
                let cert = req.peer_certificate.clone();
                let (receipt, verifies) = off_the_workers(move || {
                    let verifies = verify_sha256_with_cert(&cert, &receipt.bytes, &receipt.signature).is_ok();
                    Ok((receipt, verifies))
                })
                .await?;
                let checked = delivery::accept_receipt(&req, &self.sys_id, &receipt, bundle_sha256, verifies);
                PeerAnswer::Answered((receipt, checked))
            }
            Err(PeerError::Refused(why)) => PeerAnswer::Refused(why.to_string()),
            Err(PeerError::Unreachable { host, reason }) => PeerAnswer::Unreachable { host, reason },
        };
        let outcome = match delivery::settle_delivery(&mut req, answer, now)? {
            DeliveryVerdict::Retry { host, reason } => {
                tracing::warn!(request_id = %req.id, %host, %reason, "target unreachable; delivery will be retried");
                return Ok(JobOutcome::PeerUnreachable { host, reason });
            }
            DeliveryVerdict::Failed { log, error, audit } => {
                tracing::warn!(request_id = %req.id, %error, "{log}");
                let audit = request_audit(&req, "exchange.fail", Outcome::Failed, audit);
                // The bundle stays, so a RETRY can deliver it again.
                let effects = RequestEffects { finish, ..Default::default() };
                self.requests.update_request(version, req, effects, vec![audit]).await
            }
            DeliveryVerdict::Completed { imported, audit, use_up_one_time } => {
                tracing::info!(request_id = %req.id, imported, "exchange completed");
                let audit = request_audit(&req, "exchange.complete", Outcome::Success, audit);
                let use_up = use_up_one_time.then(|| UseUp {
                    target: req.target.sys_id.clone(),
                    request: req.id.clone(),
                    at: now,
                    audit: delivery::one_time_use_audit(&req, UseUpBy::Completion, now),
                });
                let effects = RequestEffects { bundle: BundleChange::Clear, finish, use_up, ..Default::default() };
                self.requests.update_request(version, req, effects, vec![audit]).await
            }
        };
        match outcome {
            // The job ended in the request's own transaction.
            Ok(_) => Ok(JobOutcome::Settled),
            // The request moved on meanwhile (expired, decided again): this
            // run's answer no longer applies; the job ends.
            Err(StoreError::Stale { kind: RowKind::Request, .. }) => Ok(JobOutcome::Done),
            Err(e) => Err(e.into()),
        }
    }

    /// The notice job: tells the target the request was rejected or expired.
    pub(super) async fn run_notice(&self, run: &JobRun) -> AppResult<JobOutcome> {
        let job = &run.job.id;
        let id = job.request_id().ok_or_else(|| AppError::Internal(format!("job {job} names no request")))?;
        let req = self.requests.request(id).await?;
        let Some((req, (status, reason))) = req.map(|v| v.value).and_then(|r| delivery::notice_for(&r).map(|n| (r, n)))
        else {
            return Ok(JobOutcome::Done);
        };
        let (host, target) = (req.target.host.clone(), req.target.sys_id.clone());
        if let Some(until) = run.peer_waiting_until(&host) {
            return Ok(JobOutcome::WaitUntil(until));
        }
        let call = self.peers.notify_status(&host, &target, req.id.clone(), status, reason);
        let answer = match tokio::time::timeout(self.settings.delivery_timeout, call).await {
            Ok(a) => a,
            Err(_) => {
                Err(PeerError::Unreachable { host: host.to_string(), reason: delivery::NOTICE_TIMEOUT_REASON.into() })
            }
        };
        // Logged as node did: the whole PeerError, with its "peer refused: " prefix.
        let refused_text = match &answer {
            Err(e @ PeerError::Refused(_)) => Some(e.to_string()),
            _ => None,
        };
        let answer = match answer {
            Ok(()) => PeerAnswer::Answered(()),
            Err(PeerError::Refused(why)) => PeerAnswer::Refused(why.to_string()),
            Err(PeerError::Unreachable { host, reason }) => PeerAnswer::Unreachable { host, reason },
        };
        match delivery::settle_notice(answer) {
            // The backoff is keyed by the request's target host, not the error's.
            NoticeVerdict::Retry { reason } => Ok(JobOutcome::PeerUnreachable { host: host.to_string(), reason }),
            NoticeVerdict::Done { refused } => {
                run.peer_answered(&host);
                if refused.is_some() {
                    tracing::warn!(request_id = %req.id, error = %refused_text.unwrap_or_default(), "target refused the status notice");
                }
                Ok(JobOutcome::Done)
            }
        }
    }
}

/// One page of a spec's own keys for the bundle: each unwrapped under the
/// KEK and wrapped for `transport`; a key that does not unwrap is logged,
/// counted and left out. Returns the entries and how many were left out.
fn export_page(
    kek: &dyn Signer,
    transport: &DataKey,
    keys: Vec<(KeyRecord, WrappedKey)>,
) -> Result<(Vec<BundleEntry>, u32), CryptoError> {
    let (mut entries, mut failed) = (Vec::with_capacity(keys.len()), 0);
    for (rec, wrapped) in keys {
        let dek = match kek.unwrap(&wrapped) {
            Ok(dek) => dek,
            Err(e) => {
                tracing::error!(key_id = %rec.id, error = %e, "key does not unwrap under the KEK; not exported");
                failed += 1;
                continue;
            }
        };
        entries.push(BundleEntry {
            key_id: rec.id,
            state: rec.state,
            generated_at: rec.generated_at,
            activated_at: rec.activated_at,
            deactivated_at: rec.deactivated_at,
            wrapped: kwp_wrap(transport.expose(), dek.expose())?,
        });
    }
    Ok((entries, failed))
}
