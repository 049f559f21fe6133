//! Clone, source side: the registered clone targets, and serving a snapshot
//! to one of them. The snapshot is read on the blocking pool in one read
//! transaction and handed to the RPC stream through a small bounded channel,
//! so a slow target holds a few parts in memory, never the whole store.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Node;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::clone::{CloneGrant, CloneTarget, GRANT_MILLIS, RECORDS_PER_PART, SnapshotPart};
use crate::domain::ids::{Host, SysId};
use crate::error::{AppError, AppResult};

/// Parts waiting for the network at most (about 1.5 MB of 256-byte records).
const PARTS_IN_FLIGHT: usize = 4;

pub type SnapshotParts = mpsc::Receiver<AppResult<SnapshotPart>>;

impl Node {
    pub async fn add_clone_target(
        self: &Arc<Self>,
        caller: &Caller,
        sys_id: SysId,
        host: Host,
    ) -> AppResult<CloneTarget> {
        if sys_id == self.sys_id {
            return Err(DomainError::invalid("sys_id", "an instance cannot be its own clone target").into());
        }
        let actor = caller.actor();
        self.blocking(move |node| {
            let target = CloneTarget { sys_id, host, added_at: node.now(), added_by: actor.clone() };
            let audit =
                AuditEvent::new(target.added_at, actor, "clone.target.add", target.sys_id.as_str(), Outcome::Success)
                    .with_details(format!("host {}", target.host));
            node.store.put_clone_target(&target, &[audit])?;
            Ok(target)
        })
        .await
    }

    pub async fn clone_targets(self: &Arc<Self>) -> AppResult<Vec<CloneTarget>> {
        self.blocking(|node| Ok(node.store.clone_targets()?)).await
    }

    pub async fn remove_clone_target(self: &Arc<Self>, caller: &Caller, sys_id: SysId) -> AppResult<()> {
        let actor = caller.actor();
        self.blocking(move |node| {
            let audit = AuditEvent::new(node.now(), actor, "clone.target.remove", sys_id.as_str(), Outcome::Success);
            match node.store.remove_clone_target(&sys_id, &[audit])? {
                true => Ok(()),
                false => Err(DomainError::not_found("clone target", sys_id.as_str()).into()),
            }
        })
        .await
    }

    /// Starts serving a snapshot to instance `caller`, if it is a registered
    /// clone target (PERMISSION_DENIED otherwise, audited). The parts arrive
    /// on the returned channel; dropping it stops the read.
    pub async fn serve_snapshot(self: &Arc<Self>, caller: SysId) -> AppResult<SnapshotParts> {
        let who = caller.clone();
        self.blocking(move |node| {
            if node.authorised_clone_target(&who)? {
                return Ok(());
            }
            let reason = format!("instance {who} is not a clone target of this instance");
            let audit =
                AuditEvent::new(node.now(), format!("instance:{who}"), "clone.refused", who.as_str(), Outcome::Refused)
                    .with_details(reason.clone());
            node.store.append_audit(&[audit])?;
            tracing::warn!(target_instance = %who, "clone refused: not a registered clone target");
            Err(DomainError::PermissionDenied(format!("{reason}; register it there with `kmfctl clone target add` or configure a One Time / Recurring Clone for it"))
                .into())
        })
        .await?;
        let (tx, rx) = mpsc::channel(PARTS_IN_FLIGHT);
        let node = Arc::clone(self);
        tokio::task::spawn_blocking(move || node.stream_snapshot(&caller, &tx));
        Ok(rx)
    }

    /// Reads the snapshot into `tx` (blocking), then audits what was served.
    fn stream_snapshot(&self, target: &SysId, tx: &mpsc::Sender<AppResult<SnapshotPart>>) {
        let (mut sent, mut specs) = (0u64, Vec::new());
        let mut emit = |part: SnapshotPart| {
            match &part {
                SnapshotPart::Records(r) => sent += r.len() as u64,
                SnapshotPart::Catalog(c) => specs.extend(c.specs.iter().map(|s| s.name.clone())),
                _ => {}
            }
            tx.blocking_send(Ok(part)).is_ok()
        };
        let plan = match self.store.clone_exchange(target) {
            Ok(cfg) => cfg.and_then(|c| c.plan()),
            Err(e) => {
                let _ = tx.blocking_send(Err(AppError::from(e)));
                return;
            }
        };
        let outcome = self.store.snapshot(self.now(), RECORDS_PER_PART, plan, &mut emit);
        let complete = matches!(outcome, Ok(true));
        let (result, details) = match &outcome {
            Ok(true) => (Outcome::Success, format!("snapshot of {sent} records served")),
            Ok(false) => (Outcome::Failed, format!("the target went away after {sent} records")),
            Err(e) => (Outcome::Failed, format!("reading the snapshot failed after {sent} records: {e}")),
        };
        if let Err(e) = outcome {
            let _ = tx.blocking_send(Err(AppError::from(e)));
        }
        let now = self.now();
        let audit = AuditEvent::new(now, format!("instance:{target}"), "clone.serve", target.as_str(), result)
            .with_details(details.clone());
        // A complete clone grants the target's automatic request for its specs.
        let written = match complete {
            true => {
                let grant = CloneGrant {
                    target: target.clone(),
                    specs,
                    granted_at: now,
                    expires_at: now.plus_millis(GRANT_MILLIS),
                };
                self.store.put_clone_grant(&grant, &[audit])
            }
            _ => self.store.append_audit(&[audit]),
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "could not record a served clone");
        }
        tracing::info!(target_instance = %target, %details, "clone snapshot");
    }
}
