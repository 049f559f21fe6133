//! The source side of an exchange: record a request a target opens, approve
//! or reject it, build and sign the bundle, deliver it (now, and again from
//! the outbox until the target answers), and expire overdue requests.

use std::sync::Arc;

use super::ports::{OpenRequest, SourceView};
use super::{Node, request_audit};
use crate::clock;
use crate::domain::DomainError;
use crate::domain::audit::Outcome;
use crate::domain::auth::Caller;
use crate::domain::bundle::{Bundle, BundleEntry, Receipt};
use crate::domain::exchange::{
    ExchangeRequest, ExchangeRole, Frequency, MAX_EXPIRY_MILLIS, PeerRef, RequestEvent, RequestStatus, SignedBlob,
    SpecLine, SpecLineStatus, Transition,
};
use crate::domain::ids::{KeyId, RequestId, SysId, UnixMillis};
use crate::error::{AppError, AppResult, PeerError};
use crate::signer::primitives::{kwp_wrap, random_key, rsa_oaep_encrypt, sha256, verify_sha256_with_cert};
use crate::store::{OutboxChange, OutboxItem, StoreError};

/// An operator's decision on a pending request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject { reason: String },
}

impl Node {
    /// A target opens a request here. `caller` comes from its certificate.
    pub async fn open_request_from_peer(
        self: &Arc<Self>,
        caller: SysId,
        caller_cert: Vec<u8>,
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
        let now = clock::now();
        if open.expires_at <= now || open.expires_at > now.plus_millis(MAX_EXPIRY_MILLIS) {
            return Err(DomainError::invalid("expires_at", "must be in the future and at most 90 days away").into());
        }
        // Refuse a transport key we could not encrypt to, before recording anything.
        rsa_oaep_encrypt(&open.transport_public_key, open.wrapping, &[0u8; 32])
            .map_err(|e| DomainError::invalid("transport_public_key", e.to_string()))?;
        self.blocking(move |node| {
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
                    total += node.store.keys(spec)?.len() as u32;
                    lines.push(SpecLine::pending(spec.clone()));
                }
            }
            let actor = format!("instance:{caller}");
            let mut req = ExchangeRequest {
                id: open.request_id,
                role: ExchangeRole::Source,
                frequency: Frequency::Adhoc,
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
            };
            if req.pending_specs().next().is_none() {
                // Nothing here needs approval: every spec is missing on this source.
                req.apply(RequestEvent::Approve, "system", now)?;
                req.apply(RequestEvent::Complete, "system", now)?;
            }
            let specs: Vec<String> = req.lines.iter().map(|l| l.spec.to_string()).collect();
            let audit = request_audit(&req, "exchange.open", Outcome::Success, format!("target {} at {}; specs {}", req.target.sys_id, req.target.host, specs.join(",")));
            node.store.insert_request(&req, None, &[audit]).map_err(|e| match e {
                StoreError::AlreadyExists { what, id } => AppError::Domain(DomainError::AlreadyExists { what, id }),
                other => other.into(),
            })?;
            tracing::info!(request_id = %req.id, target = %req.target.sys_id, status = req.status.label(), "exchange request opened by target");
            Ok(SourceView { status: req.status, lines: req.lines, total_key_count: req.total_key_count })
        })
        .await
    }

    /// Approves or rejects a pending request (source side, one explicit call).
    pub async fn update_request(
        self: &Arc<Self>,
        caller: &Caller,
        id: RequestId,
        decision: Decision,
    ) -> AppResult<ExchangeRequest> {
        let actor = caller.actor();
        let id2 = id.clone();
        self.blocking(move |node| node.decide(&id2, decision, &actor)).await?;
        self.deliver(&id).await?;
        self.blocking(move |node| node.store.request(&id)?.ok_or_else(|| DomainError::not_found("request", &id).into()))
            .await
    }

    fn decide(&self, id: &RequestId, decision: Decision, actor: &str) -> AppResult<()> {
        let mut req = self.store.request(id)?.ok_or_else(|| DomainError::not_found("request", id))?;
        if req.role != ExchangeRole::Source {
            return Err(DomainError::FailedPrecondition(
                "this instance is the request's target; approve it on the source".into(),
            )
            .into());
        }
        let now = clock::now();
        if !req.status.is_terminal() && now >= req.expires_at {
            self.expire(&mut req, now)?;
            return Err(DomainError::FailedPrecondition(
                "the request has expired and can no longer be approved".into(),
            )
            .into());
        }
        match decision {
            Decision::Reject { reason } => {
                req.apply(RequestEvent::Reject { reason: reason.clone() }, actor, now)?;
                let audit = request_audit(&req, "exchange.reject", Outcome::Success, format!("reason: {reason}"));
                let notice = OutboxItem::Status { status: RequestStatus::Rejected, reason };
                self.store.update_request(&req, OutboxChange::Set(&notice), &[audit])?;
                tracing::info!(request_id = %req.id, actor, "exchange request rejected");
            }
            Decision::Approve => {
                req.apply(RequestEvent::Approve, actor, now)?;
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
                self.store.update_request(&req, OutboxChange::Set(&OutboxItem::Bundle(bundle)), &audit)?;
                tracing::info!(request_id = %req.id, actor, exported = req.exported_key_count, "exchange request approved");
            }
        }
        Ok(())
    }

    /// Builds and signs the bundle; fills the request's lines and counts.
    fn build_bundle(&self, req: &mut ExchangeRequest, now: UnixMillis) -> AppResult<(SignedBlob, Vec<KeyId>)> {
        let transport = random_key(32);
        let wrapped_transport_key = rsa_oaep_encrypt(&req.transport_public_key, req.wrapping, transport.expose())?;
        let mut entries = Vec::new();
        let mut specs = Vec::new();
        let mut total = 0u32;
        for line in req.lines.iter_mut().filter(|l| l.status == SpecLineStatus::Pending) {
            let keys = match self.store.spec(&line.spec)? {
                Some(spec) => {
                    specs.push((spec.name.clone(), spec.choice()));
                    self.store.keys(&line.spec)?
                }
                None => {
                    *line = SpecLine {
                        spec: line.spec.clone(),
                        status: SpecLineStatus::NotOnSource,
                        key_count: 0,
                        reason: "spec not found on source".into(),
                    };
                    continue;
                }
            };
            let mut failed = 0u32;
            for (rec, wrapped) in &keys {
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
            let n = keys.len() as u32;
            total += n;
            line.key_count = n - failed;
            if failed > 0 {
                line.status = SpecLineStatus::Failed;
                line.reason = format!("{failed} of {n} key(s) could not be unwrapped on the source");
            } else {
                line.status = SpecLineStatus::Exchanged;
            }
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

    fn expire(&self, req: &mut ExchangeRequest, now: UnixMillis) -> AppResult<()> {
        req.apply(RequestEvent::Expire, "system", now)?;
        match req.role {
            ExchangeRole::Source => {
                let notice =
                    OutboxItem::Status { status: RequestStatus::Expired, reason: "expired on the source".into() };
                let audit = request_audit(req, "exchange.expire", Outcome::Success, "");
                self.store.update_request(req, OutboxChange::Set(&notice), &[audit])?;
            }
            ExchangeRole::Target => {
                let audit = request_audit(req, "exchange.expire", Outcome::Success, "");
                self.store.update_request(req, OutboxChange::Keep, &[audit])?
            }
        }
        tracing::info!(request_id = %req.id, "exchange request expired");
        Ok(())
    }

    /// Moves overdue Pending/Approved requests to REQUEST_EXPIRED. Returns how many.
    pub async fn sweep_expired(self: &Arc<Self>) -> AppResult<usize> {
        let expired = self
            .blocking(|node| {
                let now = clock::now();
                let mut ids = Vec::new();
                for mut req in node.store.requests()? {
                    if !req.status.is_terminal() && now >= req.expires_at {
                        node.expire(&mut req, now)?;
                        ids.push(req.id);
                    }
                }
                Ok(ids)
            })
            .await?;
        for id in &expired {
            self.deliver(id).await?;
        }
        Ok(expired.len())
    }

    /// Delivers every outbox item (after a restart, or when a target was down).
    pub async fn deliver_outbox(self: &Arc<Self>) -> AppResult<()> {
        let items = self.blocking(|node| Ok(node.store.outbox()?)).await?;
        for (id, _) in items {
            self.deliver(&id).await?;
        }
        Ok(())
    }

    /// Tries once to deliver the outbox item of `id`. An unreachable target
    /// leaves it queued; a refusal closes the request as ERROR_ON_REMOTE_INSTANCE.
    pub async fn deliver(self: &Arc<Self>, id: &RequestId) -> AppResult<()> {
        let _guard = self.delivery_lock.lock().await;
        let id2 = id.clone();
        let pending = self
            .blocking(move |node| {
                let item = node.store.outbox()?.into_iter().find(|(i, _)| i == &id2).map(|(_, item)| item);
                let req = node.store.request(&id2)?;
                Ok(item.zip(req))
            })
            .await?;
        let Some((item, req)) = pending else { return Ok(()) };
        let (host, target) = (req.target.host.clone(), req.target.sys_id.clone());
        match item {
            OutboxItem::Bundle(bundle) => {
                let digest = sha256(&bundle.bytes);
                let answer = self.peers.deliver_bundle(&host, &target, bundle).await;
                self.blocking(move |node| node.settle_delivery(req, digest, answer)).await
            }
            OutboxItem::Status { status, reason } => {
                let answer = self.peers.notify_status(&host, &target, req.id.clone(), status, reason).await;
                self.blocking(move |node| match answer {
                    Err(PeerError::Unreachable { .. }) => Ok(()),
                    Ok(()) | Err(PeerError::Refused(_)) => {
                        if let Err(e) = &answer {
                            tracing::warn!(request_id = %req.id, error = %e, "target refused the status notice");
                        }
                        Ok(node.store.update_request(&req, OutboxChange::Clear, &[])?)
                    }
                })
                .await
            }
        }
    }

    fn settle_delivery(
        &self,
        mut req: ExchangeRequest,
        bundle_sha256: [u8; 32],
        answer: Result<SignedBlob, PeerError>,
    ) -> AppResult<()> {
        let now = clock::now();
        match answer {
            Err(PeerError::Unreachable { host, reason }) => {
                tracing::warn!(request_id = %req.id, %host, %reason, "target unreachable; delivery stays queued");
                Ok(())
            }
            Err(PeerError::Refused(why)) => {
                tracing::warn!(request_id = %req.id, error = %why, "target refused the bundle");
                if req.status == RequestStatus::Approved {
                    req.apply(RequestEvent::FailRemote { reason: why.to_string() }, "system", now)?;
                }
                let audit =
                    request_audit(&req, "exchange.fail", Outcome::Failed, format!("target refused the bundle: {why}"));
                Ok(self.store.update_request(&req, OutboxChange::Clear, &[audit])?)
            }
            Ok(receipt) => {
                let audit = match self.check_receipt(&req, &receipt, bundle_sha256) {
                    Ok(r) => {
                        req.imported_key_count = r.imported.len() as u32;
                        req.receipt = Some(receipt);
                        req.apply(RequestEvent::Complete, &format!("instance:{}", req.target.sys_id), now)?;
                        tracing::info!(request_id = %req.id, imported = r.imported.len(), "exchange completed");
                        request_audit(
                            &req,
                            "exchange.complete",
                            Outcome::Success,
                            format!("signed receipt: {} key(s) imported", r.imported.len()),
                        )
                    }
                    Err(e) => {
                        tracing::warn!(request_id = %req.id, error = %e, "receipt refused");
                        req.apply(RequestEvent::FailRemote { reason: e.to_string() }, "system", now)?;
                        request_audit(&req, "exchange.fail", Outcome::Failed, format!("receipt refused: {e}"))
                    }
                };
                Ok(self.store.update_request(&req, OutboxChange::Clear, &[audit])?)
            }
        }
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
