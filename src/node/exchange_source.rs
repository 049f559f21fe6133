//! The source side of an exchange: record a request a target opens, approve,
//! reject or retry it (one conditional write each: of concurrent decisions
//! exactly one wins), build and sign the bundle, and the jobs that deliver
//! it and notify the target (run by `jobs.rs`, whether or not the deciding
//! caller is still connected), and expire overdue requests.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ports::{OpenRequest, SourceView};
use super::{Node, request_audit};
use crate::domain::DomainError;
use crate::domain::audit::Outcome;

use crate::domain::audit::AuditEvent;
use crate::domain::auth::Caller;
use crate::domain::bundle::{Bundle, BundleEntry, Receipt};
use crate::domain::exchange::{
    ExchangeRequest, ExchangeRole, Frequency, MAX_EXPIRY_MILLIS, PeerRef, RequestEvent, RequestStatus, SignedBlob,
    SpecLine, SpecLineStatus, Transition, dialable_target_host, export_line,
};
use crate::domain::ids::{Host, KeyId, RequestId, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::error::{AppError, AppResult, PeerError};
use crate::signer::primitives::{kwp_wrap, random_key, rsa_oaep_encrypt, sha256, verify_sha256_with_cert};
use crate::store::{BundleChange, GRANT_REFUSED, RequestEffects, StoreError, SystemApproval, UseUp, Versioned};

/// An operator's decision on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject {
        reason: String,
    },
    /// Retry a request that ended in ERROR_ON_*: deliver its bundle again,
    /// or, without one, make it pending again.
    Retry,
}

/// What an approval without a person checks again and uses up in its
/// transaction: the clone grant, and a One Time configuration.
#[derive(Clone, Copy)]
struct SystemCheck<'a> {
    approval: &'a SystemApproval,
    use_up: Option<&'a UseUp>,
}

/// How many times a decision re-reads a request that changed under it.
const DECIDE_ATTEMPTS: usize = 3;
/// Keys read per page while building a bundle.
const KEY_PAGE: usize = 1000;

impl Node {
    /// A target opens a request here. `caller` comes from its certificate,
    /// `cert_hosts` are the DNS names and IP addresses that certificate
    /// names: the target host it sends must be one of them or a host
    /// registered here for it (`dialable_target_host`), since this source
    /// dials it for the delivery, the notices and the diagnosis.
    pub async fn open_request_from_peer(
        self: &Arc<Self>,
        caller: SysId,
        caller_cert: Vec<u8>,
        cert_hosts: Vec<String>,
        open: OpenRequest,
    ) -> AppResult<SourceView> {
        if open.target_sys_id != caller {
            return Err(DomainError::PermissionDenied(format!(
                "request claims target {} but the certificate names {caller}",
                open.target_sys_id
            ))
            .into());
        }
        if open.source_sys_id != self.sys_id {
            return Err(DomainError::PermissionDenied(format!(
                "request is addressed to {}, this instance is {}",
                open.source_sys_id, self.sys_id
            ))
            .into());
        }
        let now = self.now();
        if open.expires_at <= now || open.expires_at > now.plus_millis(MAX_EXPIRY_MILLIS) {
            return Err(DomainError::invalid("expires_at", "must be in the future and at most 90 days away").into());
        }
        // Refuse a transport key we could not encrypt to, before recording anything.
        rsa_oaep_encrypt(&open.transport_public_key, open.wrapping, &[0u8; 32])
            .map_err(|e| DomainError::invalid("transport_public_key", e.to_string()))?;
        self.blocking(move |node| {
            node.check_target_host(&caller, &open.target_host, &cert_hosts)?;
            let mut lines = Vec::with_capacity(open.spec_names.len());
            let mut total = 0u32;
            for spec in &open.spec_names {
                if node.store.spec(spec)?.is_none() {
                    lines.push(SpecLine {
                        spec: spec.clone(),
                        status: SpecLineStatus::NotOnSource,
                        key_count: 0,
                        reason: "spec not found on source".into(),
                    });
                } else {
                    total += node.store.count_keys_of(spec)? as u32;
                    lines.push(SpecLine::pending(spec.clone()));
                }
            }
            let actor = format!("instance:{caller}");
            let mut req = ExchangeRequest {
                id: open.request_id,
                role: ExchangeRole::Source,
                frequency: open.frequency,
                source: PeerRef { sys_id: node.sys_id.clone(), host: node.host.clone() },
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
            if req.pending_specs().next().is_none() {
                // Nothing here needs approval: every spec is missing on this source.
                req.apply(RequestEvent::Approve, "system", now)?;
                req.apply(RequestEvent::Complete, "system", now)?;
            }
            let specs: Vec<String> = req.lines.iter().map(|l| l.spec.to_string()).collect();
            let audit = request_audit(&req, "exchange.open", Outcome::Success, format!("target {} at {}; specs {}", req.target.sys_id, req.target.host, specs.join(",")));
            match node.store.insert_request(&req, None, RequestEffects::default(), &[audit]) {
                Ok(()) => {}
                // The target retried after losing our answer: the same request again.
                Err(StoreError::AlreadyExists { what, id }) => {
                    let existing = node.store.request(&req.id)?.map(|v| v.value);
                    return match existing {
                        Some(e) if e.target == req.target && e.transport_public_key == req.transport_public_key => {
                            let e = node.approve_by_grant(e)?;
                            Ok(SourceView { status: e.status, lines: e.lines, total_key_count: e.total_key_count })
                        }
                        _ => Err(DomainError::AlreadyExists { what, id }.into()),
                    };
                }
                Err(other) => return Err(other.into()),
            }
            tracing::info!(request_id = %req.id, target = %req.target.sys_id, status = req.status.label(), "exchange request opened by target");
            let req = node.approve_by_grant(req)?;
            Ok(SourceView { status: req.status, lines: req.lines, total_key_count: req.total_key_count })
        })
        .await
    }

    /// Approves `req` when the grant of the clone it follows still allows
    /// it (no person involved); else returns `req`, left for a person. The
    /// approving transaction checks the grant, the source's own
    /// automatic-exchange property and the target's authorisation again and
    /// uses the grant up (and a One Time configuration with it).
    fn approve_by_grant(&self, req: ExchangeRequest) -> AppResult<ExchangeRequest> {
        let Some((actor, approval)) = self.approver(&req)? else { return Ok(req) };
        let use_up = (req.frequency == Frequency::OneTimeClone).then(|| self.one_time_use_up(&req));
        let system = SystemCheck { approval: &approval, use_up: use_up.as_ref() };
        match self.decide_as(&req.id, &Decision::Approve, &actor, Some(system)) {
            Ok(approved) => {
                self.jobs.wake();
                tracing::info!(request_id = %req.id, target = %req.target.sys_id, frequency = req.frequency.label(), by = %actor, "request approved without a person");
                Ok(approved)
            }
            Err(AppError::Store(StoreError::Stale { what: GRANT_REFUSED, id: why })) => {
                tracing::info!(request_id = %req.id, frequency = req.frequency.label(), %why, "request left pending for a person");
                Ok(self.request_or_not_found(&req.id)?.value)
            }
            Err(e) => Err(e),
        }
    }

    /// The use of a One Time configuration by the approval of `req`.
    fn one_time_use_up(&self, req: &ExchangeRequest) -> UseUp {
        let now = self.now();
        UseUp {
            target: req.target.sys_id.clone(),
            request: req.id.clone(),
            at: now,
            audit: AuditEvent::new(now, "system", "clone_exchange.used", req.target.sys_id.as_str(), Outcome::Success)
                .with_details(format!(
                    "One Time Clone used by the approval of request {}; its policies are inactive",
                    req.id
                )),
        }
    }

    /// Who approves `req` at once, if anyone, and what the approving
    /// transaction checks again: it must be pending, after a clone, name the
    /// grant of that clone (unexpired, unused for its frequency, covering its
    /// specs), from a target still authorised to clone; an AUTOMATIC request
    /// needs this source's own automatic-exchange property true and is
    /// approved by the grant, a One Time / Recurring Clone request by the
    /// Resource Exchange policies of its specs. Adhoc requests wait for a person.
    fn approver(&self, req: &ExchangeRequest) -> AppResult<Option<(String, SystemApproval)>> {
        if req.frequency == Frequency::Adhoc || req.status != RequestStatus::Pending {
            return Ok(None);
        }
        let approval = SystemApproval {
            target: req.target.sys_id.clone(),
            frequency: req.frequency,
            presented: req.clone_grant.clone(),
            specs: req.pending_specs().cloned().collect(),
            at: self.now(),
        };
        if let Err(why) = self.store.system_approval_refusal(&approval)? {
            tracing::info!(request_id = %req.id, frequency = req.frequency.label(), %why, "request left pending for a person");
            return Ok(None);
        }
        if req.frequency == Frequency::Automatic {
            let grant = approval.presented.as_deref().unwrap_or_default();
            return Ok(Some((format!("system (clone grant {grant})"), approval)));
        }
        match self.approving_policies(req)? {
            Ok(policies) => {
                let names: Vec<&str> = policies.iter().map(|n| n.as_str()).collect();
                Ok(Some((format!("system (policy {})", names.join(", ")), approval)))
            }
            Err(why) => {
                tracing::info!(request_id = %req.id, frequency = req.frequency.label(), %why, "request left pending for a person");
                Ok(None)
            }
        }
    }

    /// Decides on a request (source side, one explicit call): commits the
    /// decision with the job that carries it out, then waits at most
    /// `decision_wait` for the outcome and answers with the request as it
    /// stands. The job runs whether or not the caller is still there.
    pub async fn update_request(
        self: &Arc<Self>,
        caller: &Caller,
        id: RequestId,
        decision: Decision,
    ) -> AppResult<ExchangeRequest> {
        let actor = caller.actor();
        let id2 = id.clone();
        if decision == Decision::Retry {
            let role = self.blocking(move |node| Ok(node.request_or_not_found(&id2)?.value.role)).await?;
            if role == ExchangeRole::Target {
                return self.retry_on_target(actor, id).await;
            }
        }
        let id2 = id.clone();
        let decided = self.blocking(move |node| node.decide(&id2, &decision, &actor)).await?;
        self.jobs.wake();
        if decided.status.is_terminal() {
            return Ok(decided);
        }
        self.wait_until_settled(&id, self.decision_wait()).await
    }

    /// Waits at most `bound` for the request to leave Pending/Approved.
    pub async fn wait_until_settled(
        self: &Arc<Self>,
        id: &RequestId,
        bound: std::time::Duration,
    ) -> AppResult<ExchangeRequest> {
        let deadline = tokio::time::Instant::now() + bound;
        let mut settled = self.jobs.subscribe();
        loop {
            let id2 = id.clone();
            let req = self.blocking(move |node| node.request_or_not_found(&id2)).await?.value;
            if req.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(req);
            }
            // Woken when any job settles; re-read then. A lagging receiver
            // just re-reads too.
            let _ = tokio::time::timeout_at(deadline, settled.changed()).await;
        }
    }

    pub(super) fn request_or_not_found(&self, id: &RequestId) -> AppResult<Versioned<ExchangeRequest>> {
        Ok(self.store.request(id)?.ok_or_else(|| DomainError::not_found("request", id))?)
    }

    /// Applies `decision` with a conditional write; a request that changed
    /// since it was read is read again, so the loser of a race is refused
    /// with the status the winner left.
    fn decide(&self, id: &RequestId, decision: &Decision, actor: &str) -> AppResult<ExchangeRequest> {
        self.decide_as(id, decision, actor, None)
    }

    /// As `decide`; `system` is what an approval without a person checks
    /// again and uses up in its transaction (a refusal there is
    /// `Stale { what: GRANT_REFUSED }`, returned as it is).
    fn decide_as(
        &self,
        id: &RequestId,
        decision: &Decision,
        actor: &str,
        system: Option<SystemCheck<'_>>,
    ) -> AppResult<ExchangeRequest> {
        for _ in 0..DECIDE_ATTEMPTS {
            match self.try_decide(id, decision, actor, system) {
                Err(AppError::Store(StoreError::Stale { what, .. })) if what != GRANT_REFUSED => continue,
                other => return other,
            }
        }
        let req = self.request_or_not_found(id)?.value;
        Err(DomainError::FailedPrecondition(format!("request {id} keeps changing; it is {}", req.status_summary()))
            .into())
    }

    fn try_decide(
        &self,
        id: &RequestId,
        decision: &Decision,
        actor: &str,
        system: Option<SystemCheck<'_>>,
    ) -> AppResult<ExchangeRequest> {
        let Versioned { value: mut req, version } = self.request_or_not_found(id)?;
        if req.role != ExchangeRole::Source {
            return Err(DomainError::FailedPrecondition(
                "this instance is the request's target; decide on it on the source".into(),
            )
            .into());
        }
        let now = self.now();
        if !req.status.is_terminal() && now >= req.expires_at {
            self.expire(req, version, now)?;
            return Err(DomainError::FailedPrecondition(
                "the request has expired and can no longer be approved".into(),
            )
            .into());
        }
        let refused = |req: &ExchangeRequest, e: DomainError, verb: &str| -> AppError {
            match e {
                DomainError::FailedPrecondition(_) => DomainError::FailedPrecondition(format!(
                    "request {} is {}; it cannot be {verb}",
                    req.id,
                    req.status_summary()
                ))
                .into(),
                other => other.into(),
            }
        };
        match decision {
            Decision::Reject { reason } => {
                let found = req.clone();
                req.apply(RequestEvent::Reject { reason: reason.clone() }, actor, now)
                    .map_err(|e| refused(&found, e, "rejected"))?;
                let audit = request_audit(&req, "exchange.reject", Outcome::Success, format!("reason: {reason}"));
                let effects =
                    RequestEffects { schedule: vec![self.job_now(JobKind::Notify, id)], ..Default::default() };
                self.store.update_request(version, &req, effects, &[audit])?;
                tracing::info!(request_id = %req.id, actor, "exchange request rejected");
            }
            Decision::Approve => {
                let found = req.clone();
                req.apply(RequestEvent::Approve, actor, now).map_err(|e| refused(&found, e, "approved"))?;
                let (bundle, exported) = self.build_bundle(&mut req, now)?;
                let ids: Vec<String> = exported.iter().map(ToString::to_string).collect();
                let audit = [
                    request_audit(&req, "exchange.approve", Outcome::Success, format!("target {}", req.target.sys_id)),
                    request_audit(
                        &req,
                        "exchange.export",
                        Outcome::Success,
                        format!("{} key(s) for {}: {}", ids.len(), req.target.sys_id, ids.join(" ")),
                    ),
                ];
                let effects = RequestEffects {
                    bundle: BundleChange::Set(&bundle),
                    schedule: vec![self.job_now(JobKind::Deliver, id)],
                    system_approval: system.map(|s| s.approval),
                    use_up: system.and_then(|s| s.use_up),
                    ..Default::default()
                };
                self.store.update_request(version, &req, effects, &audit)?;
                tracing::info!(request_id = %req.id, actor, exported = req.exported_key_count, "exchange request approved");
            }
            Decision::Retry => {
                let found = req.clone();
                let has_bundle = self.store.bundle(id)?.is_some();
                let resume_at = if has_bundle { RequestStatus::Approved } else { RequestStatus::Pending };
                req.apply(RequestEvent::Retry { resume_at }, actor, now).map_err(|e| refused(&found, e, "retried"))?;
                let schedule = if has_bundle { vec![self.job_now(JobKind::Deliver, id)] } else { Vec::new() };
                let audit =
                    request_audit(&req, "exchange.retry", Outcome::Success, format!("from {}", found.status.label()));
                self.store.update_request(
                    version,
                    &req,
                    RequestEffects { schedule, ..Default::default() },
                    &[audit],
                )?;
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
    fn check_target_host(&self, target: &SysId, host: &Host, cert_hosts: &[String]) -> AppResult<()> {
        let mut registered: Vec<Host> = self.store.clone_target(target)?.into_iter().map(|t| t.host).collect();
        registered.extend(self.store.clone_exchange(target)?.map(|c| c.target.host));
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
    fn build_bundle(&self, req: &mut ExchangeRequest, now: UnixMillis) -> AppResult<(SignedBlob, Vec<KeyId>)> {
        let transport = random_key(32);
        let wrapped_transport_key = rsa_oaep_encrypt(&req.transport_public_key, req.wrapping, transport.expose())?;
        let mut entries = Vec::new();
        let mut specs = Vec::new();
        let mut total = 0u32;
        for line in req.lines.iter_mut().filter(|l| l.status == SpecLineStatus::Pending) {
            match self.store.spec(&line.spec)? {
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
                let page = self.store.keys_page(&line.spec, after.as_ref(), KEY_PAGE)?;
                after = page.last().map(|(k, _)| k.id.clone());
                n += page.len() as u32;
                for (rec, wrapped) in &page {
                    if rec.id.origin != self.sys_id || !rec.origin.is_own() {
                        *foreign.entry(rec.id.origin.clone()).or_default() += 1;
                        continue;
                    }
                    let dek = match self.signer.unwrap(wrapped) {
                        Ok(dek) => dek,
                        Err(e) => {
                            tracing::error!(key_id = %rec.id, error = %e, "key does not unwrap under the KEK; not exported");
                            failed += 1;
                            continue;
                        }
                    };
                    entries.push(BundleEntry {
                        key_id: rec.id.clone(),
                        state: rec.state,
                        generated_at: rec.generated_at,
                        activated_at: rec.activated_at,
                        deactivated_at: rec.deactivated_at,
                        wrapped: kwp_wrap(transport.expose(), dek.expose())?,
                    });
                }
                if page.len() < KEY_PAGE {
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
        let bytes = bundle.encode();
        let signature = self.instance_key.sign(&bytes)?;
        Ok((SignedBlob { bytes, signature }, exported))
    }

    /// Expires a request conditionally; the source tells the target.
    fn expire(&self, mut req: ExchangeRequest, version: u64, now: UnixMillis) -> AppResult<()> {
        req.apply(RequestEvent::Expire, "system", now)?;
        let audit = request_audit(&req, "exchange.expire", Outcome::Success, "");
        let effects = match req.role {
            ExchangeRole::Source => RequestEffects {
                bundle: BundleChange::Clear,
                schedule: vec![self.job_now(JobKind::Notify, &req.id)],
                ..Default::default()
            },
            ExchangeRole::Target => RequestEffects::default(),
        };
        self.store.update_request(version, &req, effects, &[audit])?;
        tracing::info!(request_id = %req.id, "exchange request expired");
        Ok(())
    }

    /// Moves overdue Pending/Approved requests to REQUEST_EXPIRED, a page at
    /// a time. A request that changed meanwhile is left to the next sweep.
    pub(super) fn sweep_expired_now(&self) -> AppResult<usize> {
        let now = self.now();
        let (mut after, mut expired) = (None, 0);
        loop {
            let (page, next) = self.store.requests_page(after.as_ref(), KEY_PAGE)?;
            for req in page.into_iter().filter(|r| !r.status.is_terminal() && now >= r.expires_at) {
                let Some(Versioned { value, version }) = self.store.request(&req.id)? else { continue };
                match self.expire(value, version, now) {
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
    pub async fn sweep_expired(self: &Arc<Self>) -> AppResult<usize> {
        let n = self.blocking(|node| node.sweep_expired_now()).await?;
        self.jobs.wake();
        Ok(n)
    }

    /// The delivery job: sends the bundle, settles the request on the answer.
    pub(super) async fn run_delivery(self: &Arc<Self>, job: JobId, lease: Lease) -> AppResult<()> {
        let id = job.request_id().ok_or_else(|| AppError::Internal(format!("job {job} names no request")))?;
        let id2 = id.clone();
        let found = self.blocking(move |node| Ok(node.store.request(&id2)?.zip(node.store.bundle(&id2)?))).await?;
        let (req, bundle) = match found {
            Some((req, bundle)) if req.value.status == RequestStatus::Approved => (req, bundle),
            // Decided otherwise since (completed, expired, failed): nothing to deliver.
            _ => return self.blocking(move |node| Ok(node.store.finish_job(&job, &lease, None)?)).await,
        };
        let (host, target) = (req.value.target.host.clone(), req.value.target.sys_id.clone());
        if let Some(until) = self.peer_backoff.waiting_until(&host.to_string(), self.now()) {
            // Another job just found this target unreachable: wait with it.
            return self.blocking(move |node| Ok(node.store.postpone_job(&job, &lease, until)?)).await;
        }
        let digest = sha256(&bundle.bytes);
        let answer = match tokio::time::timeout(
            self.delivery_timeout(),
            self.peers.deliver_bundle(&host, &target, bundle),
        )
        .await
        {
            Ok(answer) => answer,
            Err(_) => Err(PeerError::Unreachable {
                host: host.to_string(),
                reason: format!("no answer within {} s", self.delivery_timeout().as_secs()),
            }),
        };
        self.blocking(move |node| node.settle_delivery(req, digest, answer, &job, &lease)).await
    }

    fn settle_delivery(
        &self,
        Versioned { value: mut req, version }: Versioned<ExchangeRequest>,
        bundle_sha256: [u8; 32],
        answer: Result<SignedBlob, PeerError>,
        job: &JobId,
        lease: &Lease,
    ) -> AppResult<()> {
        let now = self.now();
        let finish = Some((job, lease));
        if answer.is_ok() || matches!(answer, Err(PeerError::Refused(_))) {
            self.peer_backoff.answered(&req.target.host.to_string());
        }
        let outcome = match answer {
            Err(PeerError::Unreachable { host, reason }) => {
                tracing::warn!(request_id = %req.id, %host, %reason, "target unreachable; delivery will be retried");
                let jitter = u64::from_le_bytes(crate::signer::primitives::random_bytes::<8>());
                let retry = self.store.retry_job(job, lease, &reason, now, self.retry_policy(), jitter)?;
                self.peer_backoff.failed(&host, retry.next_due);
                return Ok(());
            }
            Err(PeerError::Refused(why)) => {
                tracing::warn!(request_id = %req.id, error = %why, "target refused the bundle");
                req.apply(RequestEvent::FailRemote { reason: why.to_string() }, "system", now)?;
                let audit =
                    request_audit(&req, "exchange.fail", Outcome::Failed, format!("target refused the bundle: {why}"));
                // The bundle stays, so a RETRY can deliver it again.
                self.store.update_request(version, &req, RequestEffects { finish, ..Default::default() }, &[audit])
            }
            Ok(receipt) => match self.check_receipt(&req, &receipt, bundle_sha256) {
                Ok(r) => {
                    req.imported_key_count = r.imported.len() as u32;
                    req.receipt = Some(receipt);
                    req.apply(RequestEvent::Complete, &format!("instance:{}", req.target.sys_id), now)?;
                    tracing::info!(request_id = %req.id, imported = r.imported.len(), "exchange completed");
                    let audit = request_audit(
                        &req,
                        "exchange.complete",
                        Outcome::Success,
                        format!("signed receipt: {} key(s) imported", r.imported.len()),
                    );
                    let use_up = (req.frequency == Frequency::OneTimeClone).then(|| UseUp {
                        target: req.target.sys_id.clone(),
                        request: req.id.clone(),
                        at: now,
                        audit: AuditEvent::new(
                            now,
                            "system",
                            "clone_exchange.used",
                            req.target.sys_id.as_str(),
                            Outcome::Success,
                        )
                        .with_details(format!("One Time Clone used by request {}; its policies are inactive", req.id)),
                    });
                    let effects = RequestEffects {
                        bundle: BundleChange::Clear,
                        finish,
                        use_up: use_up.as_ref(),
                        ..Default::default()
                    };
                    self.store.update_request(version, &req, effects, &[audit])
                }
                Err(e) => {
                    tracing::warn!(request_id = %req.id, error = %e, "receipt refused");
                    req.apply(RequestEvent::FailRemote { reason: e.to_string() }, "system", now)?;
                    let audit = request_audit(&req, "exchange.fail", Outcome::Failed, format!("receipt refused: {e}"));
                    self.store.update_request(version, &req, RequestEffects { finish, ..Default::default() }, &[audit])
                }
            },
        };
        match outcome {
            Ok(_) => Ok(()),
            // The request moved on meanwhile (expired, decided again): this
            // run's answer no longer applies; the job ends.
            Err(StoreError::Stale { what: "request", .. }) => Ok(self.store.finish_job(job, lease, None)?),
            Err(e) => Err(e.into()),
        }
    }

    /// The notice job: tells the target the request was rejected or expired.
    pub(super) async fn run_notice(self: &Arc<Self>, job: JobId, lease: Lease) -> AppResult<()> {
        let id = job.request_id().ok_or_else(|| AppError::Internal(format!("job {job} names no request")))?;
        let id2 = id.clone();
        let req = self.blocking(move |node| Ok(node.store.request(&id2)?)).await?;
        let Some(Versioned { value: req, .. }) = req.filter(|r| {
            r.value.role == ExchangeRole::Source
                && matches!(r.value.status, RequestStatus::Rejected | RequestStatus::Expired)
        }) else {
            return self.blocking(move |node| Ok(node.store.finish_job(&job, &lease, None)?)).await;
        };
        let reason = match req.status {
            RequestStatus::Expired => "expired on the source".to_owned(),
            _ => req.history.last().map(|t| t.note.clone()).unwrap_or_default(),
        };
        let (host, target) = (req.target.host.clone(), req.target.sys_id.clone());
        if let Some(until) = self.peer_backoff.waiting_until(&host.to_string(), self.now()) {
            return self.blocking(move |node| Ok(node.store.postpone_job(&job, &lease, until)?)).await;
        }
        let call = self.peers.notify_status(&host, &target, req.id.clone(), req.status, reason);
        let answer = match tokio::time::timeout(self.delivery_timeout(), call).await {
            Ok(a) => a,
            Err(_) => Err(PeerError::Unreachable { host: host.to_string(), reason: "no answer".into() }),
        };
        self.blocking(move |node| {
            match answer {
                Err(PeerError::Unreachable { reason, .. }) => {
                    let jitter = u64::from_le_bytes(crate::signer::primitives::random_bytes::<8>());
                    let policy = node.retry_policy();
                    let retry = node.store.retry_job(&job, &lease, &reason, node.now(), policy, jitter)?;
                    node.peer_backoff.failed(&host.to_string(), retry.next_due);
                }
                Ok(()) | Err(PeerError::Refused(_)) => {
                    node.peer_backoff.answered(&host.to_string());
                    if let Err(e) = &answer {
                        tracing::warn!(request_id = %req.id, error = %e, "target refused the status notice");
                    }
                    node.store.finish_job(&job, &lease, None)?;
                }
            }
            Ok(())
        })
        .await
    }

    fn check_receipt(
        &self,
        req: &ExchangeRequest,
        receipt: &SignedBlob,
        digest: [u8; 32],
    ) -> Result<Receipt, DomainError> {
        verify_sha256_with_cert(&req.peer_certificate, &receipt.bytes, &receipt.signature)
            .map_err(|_| DomainError::PermissionDenied("receipt signature does not verify".into()))?;
        let r = Receipt::decode(&receipt.bytes)?;
        if r.request_id != req.id
            || r.source != self.sys_id
            || r.target != req.target.sys_id
            || r.bundle_sha256 != digest
        {
            return Err(DomainError::PermissionDenied("receipt does not match the request and bundle".into()));
        }
        Ok(r)
    }
}
