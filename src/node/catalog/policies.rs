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
use crate::error::AppResult;
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
    pub async fn create_policy(&self, caller: &Caller, policy: AccessPolicy) -> AppResult<AccessPolicy> {
        policy.validate()?;
        let actor = caller.actor();
        self.module_exists(&policy.module).await?;
        if let Some(spec) = &policy.spec {
            let s = self.spec_or_not_found(spec).await?;
            if s.module != policy.module {
                return Err(DomainError::invalid("spec", format!("spec {spec} belongs to module {}", s.module)).into());
            }
        }
        let audit = AuditEvent::new(
            self.now(),
            actor,
            "policy.create",
            format!("{}/{}", policy.module, policy.name),
            Outcome::Success,
        )
        .with_details(describe(&policy));
        self.policies.insert_policies(vec![policy.clone()], vec![audit]).await.map_err(super::keys::already_exists)?;
        Ok(policy)
    }

    pub async fn policies(&self, module: Option<Name>) -> AppResult<Vec<AccessPolicy>> {
        if let Some(m) = &module {
            self.module_exists(m).await?;
        }
        let mut list = self.policies.policies(module).await?;
        list.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
        Ok(list)
    }

    pub async fn policy(&self, module: Name, name: Name) -> AppResult<AccessPolicy> {
        self.policies
            .policies(Some(module.clone()))
            .await?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| DomainError::not_found("access policy", format!("{module}/{name}")).into())
    }

    /// Activates or deactivates a policy.
    pub async fn set_policy_active(
        &self,
        caller: &Caller,
        module: Name,
        name: Name,
        active: bool,
    ) -> AppResult<AccessPolicy> {
        let actor = caller.actor();
        let verb = if active { "policy.activate" } else { "policy.deactivate" };
        let audit = AuditEvent::new(self.now(), actor, verb, format!("{module}/{name}"), Outcome::Success);
        self.policies.set_policy_active(module.clone(), name.clone(), active, vec![audit]).await.map_err(|e| match e {
            StoreError::Missing { .. } => DomainError::not_found("access policy", format!("{module}/{name}")).into(),
            other => other.into(),
        })
    }

    /// The debugger: every policy of the spec's module evaluated for `subject`.
    pub async fn explain_access(
        &self,
        subject: Subject,
        spec: Name,
        operation: Operation,
    ) -> AppResult<AccessDecision> {
        let spec = self.spec_or_not_found(&spec).await?;
        let policies = self.module_policies(&spec.module).await?;
        Ok(evaluate(
            &policies,
            &AccessRequest { subject, module: spec.module.clone(), spec: spec.name.clone(), operation },
        ))
    }

    /// ExplainAccess for an inbound exchange request (One Time / Recurring Clone).
    pub async fn explain_exchange(
        &self,
        spec: Name,
        target_sys_id: SysId,
        target_host: Host,
        approval: ApprovalType,
    ) -> AppResult<AccessDecision> {
        let spec = self.spec_or_not_found(&spec).await?;
        let policies = self.module_policies(&spec.module).await?;
        let access = ExchangeAccess {
            module: spec.module.clone(),
            spec: spec.name.clone(),
            target_sys_id,
            target_host,
            approval,
        };
        Ok(evaluate_exchange(&policies, &access))
    }

    /// The module's policies, from the hot cache when the store is unchanged
    /// (no hop off the worker), else from the store.
    async fn module_policies(&self, module: &Name) -> AppResult<Arc<Vec<AccessPolicy>>> {
        let g = self.store.changes().policies();
        if let Some(p) = self.hot.policies(g, module) {
            return Ok(p);
        }
        let p = Arc::new(self.policies.policies(Some(module.clone())).await?);
        self.hot.put_policies(g, module.clone(), p.clone());
        Ok(p)
    }

    /// Allows or refuses `caller` for `operation` on `spec`; a refusal is
    /// audited (repeats coalesced, see `node::audit::refusals`). A cache hit
    /// and a repeat inside an open window are answered without leaving the
    /// worker; a miss reads the store, a refusal to write awaits its entry.
    pub async fn check_access(&self, caller: &Caller, spec_rec: &Spec, operation: Operation) -> AppResult<()> {
        let policies = self.module_policies(&spec_rec.module).await?;
        let request = access_request(caller, spec_rec, operation);
        if allows(&policies, &request) {
            return Ok(());
        }
        let reason = evaluate(&policies, &request).reason;
        self.audit.refused(caller, &spec_rec.name, operation, reason).await
    }
}

fn access_request(caller: &Caller, spec: &Spec, operation: Operation) -> AccessRequest {
    AccessRequest { subject: Subject::from(caller), module: spec.module.clone(), spec: spec.name.clone(), operation }
}
