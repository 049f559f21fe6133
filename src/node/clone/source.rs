//! Clone, source side: the registered clone targets, and serving a snapshot
//! to one of them. The snapshot is read by the store in one read transaction
//! (on the blocking pool) and handed, page by page, to the RPC stream through
//! a small bounded channel, so a slow target holds a few parts in memory,
//! never the whole store.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Clones;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::clone::{CloneGrant, CloneTarget, GrantBasis, RECORDS_PER_PART, SnapshotPart};
use crate::domain::ids::{Host, Name, SysId};
use crate::error::{AppError, AppResult};
use crate::signer::primitives::random_bytes;

/// Parts waiting for the network at most (about 1.5 MB of 256-byte records).
const PARTS_IN_FLIGHT: usize = 4;

pub type SnapshotParts = mpsc::Receiver<AppResult<SnapshotPart>>;

impl Clones {
    pub async fn add_clone_target(&self, caller: &Caller, sys_id: SysId, host: Host) -> AppResult<CloneTarget> {
        if sys_id == self.sys_id {
            return Err(DomainError::invalid("sys_id", "an instance cannot be its own clone target").into());
        }
        let actor = caller.actor();
        let target = CloneTarget { sys_id, host, added_at: self.now(), added_by: actor.clone() };
        let audit =
            AuditEvent::new(target.added_at, actor, "clone.target.add", target.sys_id.as_str(), Outcome::Success)
                .with_details(format!("host {}", target.host));
        self.clone_store.put_clone_target(target.clone(), vec![audit]).await?;
        Ok(target)
    }

    /// Every instance that may clone this one, and what authorises it: the
    /// registered clone targets, then the targets of configurations not used
    /// up that are not registered (as their configuration names them).
    pub async fn clone_targets(&self) -> AppResult<Vec<(CloneTarget, GrantBasis)>> {
        let mut out: Vec<_> =
            self.clone_store.clone_targets().await?.into_iter().map(|t| (t, GrantBasis::Registered)).collect();
        for cfg in self.clone_store.clone_exchanges().await? {
            if cfg.used.is_none() && !out.iter().any(|(t, _)| t.sys_id == cfg.target.sys_id) {
                let t = CloneTarget {
                    sys_id: cfg.target.sys_id,
                    host: cfg.target.host,
                    added_at: cfg.created_at,
                    added_by: cfg.created_by,
                };
                out.push((t, GrantBasis::Configuration));
            }
        }
        Ok(out)
    }

    pub async fn remove_clone_target(&self, caller: &Caller, sys_id: SysId) -> AppResult<()> {
        let actor = caller.actor();
        let audit = AuditEvent::new(self.now(), actor, "clone.target.remove", sys_id.as_str(), Outcome::Success);
        match self.clone_store.remove_clone_target(sys_id.clone(), vec![audit]).await? {
            true => Ok(()),
            false => Err(DomainError::not_found("clone target", sys_id.as_str()).into()),
        }
    }

    /// Starts serving a snapshot to instance `caller`, if it is a registered
    /// clone target or has a configuration that is not used up
    /// (PERMISSION_DENIED otherwise, audited). The parts arrive on the
    /// returned channel; dropping it stops the read.
    pub async fn serve_snapshot(self: &Arc<Self>, caller: SysId) -> AppResult<SnapshotParts> {
        let Some(basis) = self.clone_authorisation(&caller).await? else {
            return Err(self.refuse_clone(caller).await);
        };
        let (tx, rx) = mpsc::channel(PARTS_IN_FLIGHT);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.stream_snapshot(&caller, basis, &tx).await });
        Ok(rx)
    }

    /// The refusal of a clone to `who`, audited (or the error that kept it from being audited).
    async fn refuse_clone(&self, who: SysId) -> AppError {
        let used = match self.clone_store.clone_exchange(who.clone()).await {
            Ok(cfg) => cfg.is_some_and(|c| c.used.is_some()),
            Err(e) => return e.into(),
        };
        let reason = match used {
            true => format!(
                "instance {who} is not a clone target of this instance (its One Time Clone configuration is used up)"
            ),
            false => format!("instance {who} is not a clone target of this instance"),
        };
        let audit =
            AuditEvent::new(self.now(), format!("instance:{who}"), "clone.refused", who.as_str(), Outcome::Refused)
                .with_details(reason.clone());
        if let Err(e) = self.audit_store.append_audit(vec![audit]).await {
            return e.into();
        }
        tracing::warn!(target_instance = %who, %reason, "clone refused");
        DomainError::PermissionDenied(format!("{reason}; register it there with `kmfctl clone target add` or configure a One Time / Recurring Clone for it"))
            .into()
    }

    /// Hands the snapshot's parts to `tx` page by page as the store reads
    /// them, then audits what was served. Just before the end part leaves,
    /// the clone grant of this one snapshot is stored (so the target's
    /// requests after the clone find it); its id travels in the end part.
    async fn stream_snapshot(&self, target: &SysId, basis: GrantBasis, tx: &mpsc::Sender<AppResult<SnapshotPart>>) {
        let cfg = match self.clone_store.clone_exchange(target.clone()).await {
            Ok(cfg) => cfg,
            Err(e) => {
                let _ = tx.send(Err(AppError::from(e))).await;
                return;
            }
        };
        let plan = cfg.as_ref().and_then(|c| c.plan());
        let configured: Option<Vec<Name>> = cfg.filter(|c| c.used.is_none()).map(|c| c.specs);
        let grant_id = hex::encode(random_bytes::<16>());
        let (taken_at, lifetime) = (self.now(), crate::node::context::millis(self.settings.clone_grant_lifetime));
        let (mut sent, mut specs, mut granted, mut taken) = (0u64, Vec::new(), None::<usize>, true);
        let mut read = self.clone_store.snapshot(taken_at, RECORDS_PER_PART, plan, Some(grant_id.clone()));
        while let Some(part) = read.next().await {
            match &part {
                SnapshotPart::Records(r) => sent += r.len() as u64,
                SnapshotPart::Catalog(c) => specs.extend(c.specs.iter().map(|s| s.name.clone())),
                SnapshotPart::End { .. } => {
                    let grant = CloneGrant::of_snapshot(
                        grant_id.clone(),
                        target.clone(),
                        basis,
                        std::mem::take(&mut specs),
                        configured.as_deref(),
                        taken_at,
                        lifetime,
                    );
                    let names: Vec<&str> = grant.specs.iter().map(Name::as_str).collect();
                    let audit = AuditEvent::new(self.now(), "system", "clone.grant", target.as_str(), Outcome::Success)
                        .with_details(format!(
                            "grant {} ({}) for specs {}; expires {}",
                            grant.id,
                            match basis {
                                GrantBasis::Registered => "registered target",
                                GrantBasis::Configuration => "configuration only",
                            },
                            names.join(","),
                            crate::clock::rfc3339(grant.expires_at)
                        ));
                    let count = grant.specs.len();
                    if let Err(e) = self.clone_store.put_clone_grant(grant, vec![audit]).await {
                        tracing::error!(error = %e, "could not record the clone grant; the snapshot ends without it");
                        let _ = tx.send(Err(AppError::from(e))).await;
                        taken = false;
                        break;
                    }
                    granted = Some(count);
                }
                SnapshotPart::Header(_) => {}
            }
            if tx.send(Ok(part)).await.is_err() {
                taken = false;
                break;
            }
        }
        // Stopped here (the target went away, or the grant failed): the read stops too.
        let outcome = read.end().await.map(|complete| complete && taken);
        let (result, details) = match &outcome {
            Ok(true) => (
                Outcome::Success,
                format!("snapshot of {sent} records served; grant {grant_id} for {} spec(s)", granted.unwrap_or(0)),
            ),
            Ok(false) => (Outcome::Failed, format!("the target went away after {sent} records")),
            Err(e) => (Outcome::Failed, format!("reading the snapshot failed after {sent} records: {e}")),
        };
        if let Err(e) = outcome {
            let _ = tx.send(Err(AppError::from(e))).await;
        }
        let audit = AuditEvent::new(self.now(), format!("instance:{target}"), "clone.serve", target.as_str(), result)
            .with_details(details.clone());
        if let Err(e) = self.audit_store.append_audit(vec![audit]).await {
            tracing::error!(error = %e, "could not record a served clone");
        }
        tracing::info!(target_instance = %target, %details, "clone snapshot");
    }
}
