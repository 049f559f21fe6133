//! One Time / Recurring Clone, source side: the configurations (with their
//! Resource Exchange policies, which approve the target's request after a
//! clone in `exchange/approval.rs`), and whether a target may clone this
//! instance at all (`clone_authorisation`).

use super::Clones;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::clone::GrantBasis;
use crate::domain::clone_decide;
use crate::domain::clone_exchange::{
    CloneExchange, approving_policy, check_auto_exchange_guard, frequency_of, validate_specs,
};
use crate::domain::exchange::PeerRef;
use crate::domain::ids::{Name, SysId};
use crate::domain::policy::ApprovalType;
use crate::domain::property::{AUTO_KEY_EXCHANGE, schema};
use crate::error::{AppError, AppResult};
use crate::store::{RowKind, StoreError};

/// A new One Time / Recurring Clone configuration, as an operator asks for it.
#[derive(Clone, Debug)]
pub struct NewCloneExchange {
    pub target: PeerRef,
    pub approval: ApprovalType,
    pub specs: Vec<Name>,
    pub rekey: bool,
}

impl Clones {
    pub async fn create_clone_exchange(&self, caller: &Caller, new: NewCloneExchange) -> AppResult<CloneExchange> {
        if new.target.sys_id == self.sys_id {
            return Err(DomainError::invalid("target_sys_id", "an instance cannot be its own clone target").into());
        }
        validate_specs(&new.specs)?;
        let actor = caller.actor();
        let stored = self.properties.property(AUTO_KEY_EXCHANGE.into()).await?.map(|p| p.value);
        let now = self.now();
        let mut policies = Vec::with_capacity(new.specs.len());
        for name in &new.specs {
            let spec =
                self.specs.spec(name.clone()).await?.ok_or_else(|| DomainError::not_found("spec", name.as_str()))?;
            policies.push(approving_policy(&new.target, new.approval, &spec.module, name, now)?);
        }
        let auto_enabled = stored.as_deref().or(schema(AUTO_KEY_EXCHANGE).1) == Some("true");
        check_auto_exchange_guard(new.approval, new.rekey, auto_enabled)?;
        let cfg = CloneExchange {
            target: new.target,
            approval: new.approval,
            specs: new.specs,
            rekey: new.rekey,
            policies: policies.iter().map(|p| (p.module.clone(), p.name.clone())).collect(),
            created_at: now,
            created_by: actor.clone(),
            used: None,
        };
        let specs: Vec<&str> = cfg.specs.iter().map(Name::as_str).collect();
        let audit = AuditEvent::new(now, actor, "clone_exchange.create", cfg.target.sys_id.as_str(), Outcome::Success)
            .with_details(format!(
                "{} for {} at {}; specs {}; rekey {}",
                frequency_of(cfg.approval).label(),
                cfg.target.sys_id,
                cfg.target.host,
                specs.join(","),
                cfg.rekey
            ));
        // Conditional on the property as read above: a change meanwhile is the
        // caller's to look at again (the guard may decide otherwise now).
        self.clone_store.create_clone_exchange(cfg.clone(), policies, stored, vec![audit]).await.map_err(
            |e| match e {
                StoreError::Stale { .. } => AppError::from(DomainError::FailedPrecondition(format!(
                    "{AUTO_KEY_EXCHANGE} changed meanwhile; try again"
                ))),
                StoreError::AlreadyExists { kind: RowKind::AccessPolicy, id } => {
                    AppError::from(DomainError::AlreadyExists {
                        what: "access policy",
                        id: format!("{id} (delete it or rename the spec)"),
                    })
                }
                other => other.into(),
            },
        )?;
        Ok(cfg)
    }

    pub async fn clone_exchanges(&self) -> AppResult<Vec<CloneExchange>> {
        Ok(self.clone_store.clone_exchanges().await?)
    }

    pub async fn delete_clone_exchange(&self, caller: &Caller, target: SysId) -> AppResult<CloneExchange> {
        let actor = caller.actor();
        let audit = AuditEvent::new(self.now(), actor, "clone_exchange.delete", target.as_str(), Outcome::Success);
        self.clone_store
            .delete_clone_exchange(target.clone(), vec![audit])
            .await?
            .ok_or_else(|| DomainError::not_found("clone exchange for target", target.as_str()).into())
    }

    /// Whether `target` may clone this instance, and as what: a registered
    /// clone target, or the target of a One Time / Recurring Clone
    /// configuration that is not used up (a used One Time configuration
    /// authorises nothing).
    pub(super) async fn clone_authorisation(&self, target: &SysId) -> AppResult<Option<GrantBasis>> {
        let registered = self.clone_store.clone_target(target.clone()).await?.is_some();
        let configuration = if registered { None } else { self.clone_store.clone_exchange(target.clone()).await? };
        Ok(clone_decide::clone_authorisation(registered, configuration.as_ref()))
    }
}
