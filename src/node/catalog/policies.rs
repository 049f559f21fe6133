//! Module access policies: management, explanation, and the check every
//! crypto call passes (a denial is PERMISSION_DENIED and audited).

use std::sync::Arc;

use super::Catalog;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::{Caller, Role};
use crate::domain::ids::{Host, Name, SysId};
use crate::domain::policy::{
    AccessDecision, AccessPolicy, AccessRequest, ApprovalType, ExchangeAccess, Operation, PolicyResult, PolicyType,
    Subject, allows, evaluate, evaluate_exchange,
};
use crate::domain::spec::Spec;
use crate::error::{AppError, AppResult};
use crate::node::context::Blocking;
use crate::store::StoreError;

/// Roles the AutoGen policies of a module created with Track default access grant
/// (every role that may call Encrypt/Decrypt at all).
pub const AUTOGEN_ROLES: [Role; 3] = [Role::Admin, Role::CryptographicManager, Role::CryptographicOperator];

/// The AutoGen Track policies for a new module.
pub fn autogen_policies(module: &Name, now: crate::domain::ids::UnixMillis) -> Vec<AccessPolicy> {
    AUTOGEN_ROLES
        .iter()
        .filter_map(|role| {
            let name = Name::parse(&format!("AutoGen-{}", role.as_str()), "name").ok()?;
            Some(AccessPolicy {
                name,
                module: module.clone(),
                kind: PolicyType::Role(*role),
                result: PolicyResult::Track,
                spec: None,
                operations: Vec::new(),
                active: true,
                created_at: now,
            })
        })
        .collect()
}

fn describe(p: &AccessPolicy) -> String {
    let ops: Vec<&str> = p.operations.iter().map(|o| o.as_str()).collect();
    format!(
        "{:?} -> {}; spec {}; operations {}; active {}",
        p.kind,
        p.result.as_str(),
        p.spec.as_ref().map_or("(any)".into(), ToString::to_string),
        if ops.is_empty() { "(all)".to_owned() } else { ops.join(",") },
        p.active
    )
}

impl Catalog {
    pub async fn create_policy(self: &Arc<Self>, caller: &Caller, policy: AccessPolicy) -> AppResult<AccessPolicy> {
        policy.validate()?;
        let actor = caller.actor();
        self.blocking(move |this| {
            if this.store.module(&policy.module)?.is_none() {
                return Err(DomainError::not_found("module", &policy.module).into());
            }
            if let Some(spec) = &policy.spec {
                let s = this.spec_or_not_found_blocking(spec)?;
                if s.module != policy.module {
                    return Err(
                        DomainError::invalid("spec", format!("spec {spec} belongs to module {}", s.module)).into()
                    );
                }
            }
            let audit = AuditEvent::new(
                this.now(),
                actor,
                "policy.create",
                format!("{}/{}", policy.module, policy.name),
                Outcome::Success,
            )
            .with_details(describe(&policy));
            this.store.insert_policies(std::slice::from_ref(&policy), &[audit]).map_err(|e| match e {
                StoreError::AlreadyExists { what, id } => AppError::Domain(DomainError::AlreadyExists { what, id }),
                other => other.into(),
            })?;
            Ok(policy)
        })
        .await
    }

    pub async fn policies(self: &Arc<Self>, module: Option<Name>) -> AppResult<Vec<AccessPolicy>> {
        self.blocking(move |this| {
            if let Some(m) = &module
                && this.store.module(m)?.is_none()
            {
                return Err(DomainError::not_found("module", m).into());
            }
            let mut list = this.store.policies(module.as_ref())?;
            list.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
            Ok(list)
        })
        .await
    }

    pub async fn policy(self: &Arc<Self>, module: Name, name: Name) -> AppResult<AccessPolicy> {
        self.blocking(move |this| {
            this.store
                .policies(Some(&module))?
                .into_iter()
                .find(|p| p.name == name)
                .ok_or_else(|| DomainError::not_found("access policy", format!("{module}/{name}")).into())
        })
        .await
    }

    /// Activates or deactivates a policy.
    pub async fn set_policy_active(
        self: &Arc<Self>,
        caller: &Caller,
        module: Name,
        name: Name,
        active: bool,
    ) -> AppResult<AccessPolicy> {
        let actor = caller.actor();
        self.blocking(move |this| {
            let verb = if active { "policy.activate" } else { "policy.deactivate" };
            let audit = AuditEvent::new(this.now(), actor, verb, format!("{module}/{name}"), Outcome::Success);
            this.store.set_policy_active(&module, &name, active, &[audit]).map_err(|e| match e {
                StoreError::Missing { .. } => {
                    DomainError::not_found("access policy", format!("{module}/{name}")).into()
                }
                other => other.into(),
            })
        })
        .await
    }

    /// The debugger: every policy of the spec's module evaluated for `subject`.
    pub async fn explain_access(
        self: &Arc<Self>,
        subject: Subject,
        spec: Name,
        operation: Operation,
    ) -> AppResult<AccessDecision> {
        self.blocking(move |this| this.decide_access(subject, &spec, operation)).await
    }

    /// ExplainAccess for an inbound exchange request (One Time / Recurring Clone).
    pub async fn explain_exchange(
        self: &Arc<Self>,
        spec: Name,
        target_sys_id: SysId,
        target_host: Host,
        approval: ApprovalType,
    ) -> AppResult<AccessDecision> {
        self.blocking(move |this| {
            let spec = this.spec_or_not_found_blocking(&spec)?;
            let policies = this.module_policies(&spec.module, false)?;
            let access = ExchangeAccess {
                module: spec.module.clone(),
                spec: spec.name.clone(),
                target_sys_id,
                target_host,
                approval,
            };
            Ok(evaluate_exchange(&policies, &access))
        })
        .await
    }

    /// The module's policies, from the hot cache when the store is unchanged
    /// (`inline`: only from there, else `WouldBlock`).
    fn module_policies(&self, module: &Name, inline: bool) -> AppResult<Arc<Vec<AccessPolicy>>> {
        let g = self.store.changes().policies();
        if let Some(p) = self.hot.policies(g, module) {
            return Ok(p);
        }
        if inline {
            return Err(AppError::WouldBlock);
        }
        let p = Arc::new(self.store.policies(Some(module))?);
        self.hot.put_policies(g, module.clone(), p.clone());
        Ok(p)
    }

    fn decide_access(&self, subject: Subject, spec: &Name, operation: Operation) -> AppResult<AccessDecision> {
        let spec = self.spec_or_not_found_blocking(spec)?;
        let policies = self.module_policies(&spec.module, false)?;
        Ok(evaluate(
            &policies,
            &AccessRequest { subject, module: spec.module.clone(), spec: spec.name.clone(), operation },
        ))
    }

    /// Allows or refuses `caller` for `operation` on `spec`; a refusal is
    /// audited (repeats coalesced, see `node::refusals`). `inline` (on an
    /// async worker): a refusal that must write its audit entry is
    /// `WouldBlock` and is decided again off the workers; a repeat inside an
    /// open window is answered at once.
    pub async fn check_access(
        self: &Arc<Self>,
        caller: &Caller,
        spec_rec: &Spec,
        operation: Operation,
    ) -> AppResult<()> {
        let (caller, spec_rec) = (caller.clone(), spec_rec.clone());
        self.blocking(move |this| this.check_access_blocking(&caller, &spec_rec, operation, false)).await
    }

    /// Transitional: the sync form of `check_access`.
    pub fn check_access_blocking(
        &self,
        caller: &Caller,
        spec_rec: &Spec,
        operation: Operation,
        inline: bool,
    ) -> AppResult<()> {
        let policies = self.module_policies(&spec_rec.module, inline)?;
        let request = AccessRequest {
            subject: Subject::from(caller),
            module: spec_rec.module.clone(),
            spec: spec_rec.name.clone(),
            operation,
        };
        if allows(&policies, &request) {
            return Ok(());
        }
        let reason = evaluate(&policies, &request).reason;
        self.audit.refused(caller, &spec_rec.name, operation, reason, inline)
    }
}
