//! Modules, specs, keys and their lifecycle. Every change is written
//! together with its audit entry.

use std::sync::Arc;

use super::Catalog;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::ids::{KeyId, Name};
use crate::domain::key::{
    KeyAction, KeyChange, KeyRecord, LifecycleDefinition, LifecyclePolicy, PolicyScope, due_for_destruction,
    effective_cap, plan_action, plan_generate, plan_rotate,
};
use crate::domain::spec::{Module, Spec, SpecChoice};
use crate::domain::sweeps;
use crate::error::{AppError, AppResult};
use crate::node::context::Blocking;
use crate::signer::material::generate_material;
use crate::store::StoreError;

/// What a new module allows before any policy is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DefaultAccess {
    Reject,
    Track,
}

/// How often a use case reads again and decides again after a conditional
/// write found its read out of date (`StoreError::Stale`).
const WRITE_ATTEMPTS: usize = 3;

fn already_exists(e: StoreError) -> AppError {
    match e {
        StoreError::AlreadyExists { what, id } => DomainError::AlreadyExists { what, id }.into(),
        other => other.into(),
    }
}

impl Catalog {
    /// A successful catalog change by `actor`, dated by the instance's clock.
    fn event(&self, actor: &str, action: &str, subject: impl ToString) -> AuditEvent {
        AuditEvent::new(self.now(), actor, action, subject.to_string(), Outcome::Success)
    }
}

impl Catalog {
    /// Creates a module. With `DefaultAccess::Track` it also gets AutoGen Track
    /// policies for the roles that may use keys (same
    /// transaction); with Reject it has no policy, so every crypto call is
    /// denied until one is created.
    pub async fn create_module(
        self: &Arc<Self>,
        caller: &Caller,
        name: Name,
        access: DefaultAccess,
    ) -> AppResult<Module> {
        let actor = caller.actor();
        self.blocking(move |this| {
            let module = Module { name, created_at: this.now() };
            let policies = match access {
                DefaultAccess::Track => super::policies::autogen_policies(&module.name, module.created_at),
                DefaultAccess::Reject => Vec::new(),
            };
            let mut audit = vec![
                this.event(&actor, "module.create", &module.name).with_details(format!("default access {access:?}")),
            ];
            for p in &policies {
                audit.push(
                    this.event(&actor, "policy.create", format!("{}/{}", p.module, p.name))
                        .with_details("AutoGen Track"),
                );
            }
            this.store.insert_module(&module, &policies, &audit).map_err(already_exists)?;
            tracing::info!(module = %module.name, "module created");
            Ok(module)
        })
        .await
    }

    pub async fn modules(self: &Arc<Self>) -> AppResult<Vec<Module>> {
        self.blocking(|this| Ok(this.store.modules()?)).await
    }

    pub async fn create_spec(
        self: &Arc<Self>,
        caller: &Caller,
        module: Name,
        name: Name,
        choice: SpecChoice,
        exportable: bool,
    ) -> AppResult<Spec> {
        let actor = caller.actor();
        self.blocking(move |this| {
            if this.store.module(&module)?.is_none() {
                return Err(DomainError::not_found("module", &module).into());
            }
            let mut spec = Spec::try_new(name, module, choice, this.now())?;
            spec.exportable = exportable;
            let audit = this.event(&actor, "spec.create", &spec.name).with_details(format!(
                "module {} {} {} {} bits{}{}",
                spec.module,
                spec.purpose.as_str(),
                spec.algorithm.as_str(),
                spec.key_size_bits,
                if spec.equality_preserving { " equality preserving" } else { "" },
                if spec.exportable { " exportable" } else { "" }
            ));
            this.store.insert_spec(&spec, &[audit]).map_err(already_exists)?;
            tracing::info!(spec = %spec.name, module = %spec.module, "spec created");
            Ok(spec)
        })
        .await
    }

    pub async fn specs(self: &Arc<Self>, module: Option<Name>) -> AppResult<Vec<Spec>> {
        self.blocking(move |this| {
            if let Some(m) = &module
                && this.store.module(m)?.is_none()
            {
                return Err(DomainError::not_found("module", m).into());
            }
            let specs = this.store.specs()?;
            Ok(specs.into_iter().filter(|s| module.as_ref().is_none_or(|m| &s.module == m)).collect())
        })
        .await
    }

    /// The spec, from the cache when the store's specs are unchanged since
    /// it was put there (no hop off the worker), else from the store.
    pub async fn spec_or_not_found(&self, name: &Name) -> AppResult<Spec> {
        let g = self.store.changes().specs();
        if let Some(s) = self.hot.spec(g, name) {
            return Ok(s);
        }
        let spec = self.specs.spec(name.clone()).await?.ok_or_else(|| DomainError::not_found("spec", name))?;
        self.hot.put_spec(g, spec.clone());
        Ok(spec)
    }

    /// Transitional: the sync form, for callers still inside a blocking closure.
    pub fn spec_or_not_found_blocking(&self, name: &Name) -> AppResult<Spec> {
        let g = self.store.changes().specs();
        if let Some(s) = self.hot.spec(g, name) {
            return Ok(s);
        }
        let spec = self.store.spec(name)?.ok_or_else(|| DomainError::not_found("spec", name))?;
        self.hot.put_spec(g, spec.clone());
        Ok(spec)
    }

    fn key_records(&self, spec: &Name) -> AppResult<Vec<KeyRecord>> {
        Ok(self.store.keys(spec)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Writes a planned change: new material for the new key, one transaction.
    /// `read`: the records the change was planned from; the write is refused
    /// (`Stale`) if any key it updates changed since.
    fn write_change(
        &self,
        spec: &Spec,
        read: &[KeyRecord],
        change: &KeyChange,
        audit: Vec<AuditEvent>,
    ) -> AppResult<()> {
        let new = match &change.new_key {
            Some(k) => Some((k, self.signer.wrap(&generate_material(spec.material())?)?)),
            None => None,
        };
        let new_ref = new.as_ref().map(|(k, w)| (*k, w));
        self.store.apply_key_change(read, &change.updated, new_ref, &audit).map_err(already_exists)?;
        Ok(())
    }

    pub async fn generate_key(self: &Arc<Self>, caller: &Caller, spec: Name) -> AppResult<KeyRecord> {
        let actor = caller.actor();
        self.blocking(move |this| {
            let spec = this.spec_or_not_found_blocking(&spec)?;
            let read = this.key_records(&spec.name)?;
            let change = plan_generate(&this.sys_id, &spec.name, &read, &spec.lifecycle, this.now());
            let new = change.new_key.clone().ok_or_else(|| AppError::Internal("generate planned no key".into()))?;
            let audit =
                this.event(&actor, "key.generate", &new.id).with_details(format!("state {}", new.state.label()));
            this.write_change(&spec, &read, &change, vec![audit])?;
            tracing::info!(key_id = %new.id, state = new.state.label(), "key generated");
            Ok(new)
        })
        .await
    }

    /// The spec's current key; when it has none, a new Active one is
    /// generated (audited as `actor`).
    pub async fn ensure_active_key(self: &Arc<Self>, spec: &Name, actor: &str) -> AppResult<KeyRecord> {
        let (spec, actor) = (spec.clone(), actor.to_owned());
        self.blocking(move |this| this.ensure_active_key_blocking(&spec, &actor)).await
    }

    /// Transitional: the sync form of `ensure_active_key`.
    pub fn ensure_active_key_blocking(&self, spec: &Name, actor: &str) -> AppResult<KeyRecord> {
        for _ in 0..3 {
            if let Some((k, _)) = self.store.find_key(spec, |k| k.state.is_current())? {
                return Ok(k);
            }
            let spec = self.spec_or_not_found_blocking(spec)?;
            let read = self.key_records(&spec.name)?;
            let change = plan_generate(&self.sys_id, &spec.name, &read, &spec.lifecycle, self.now());
            let new = change.new_key.clone().ok_or_else(|| AppError::Internal("generate planned no key".into()))?;
            let audit = self.event(actor, "key.generate", &new.id).with_details("Active; the spec had no current key");
            match self.write_change(&spec, &read, &change, vec![audit]) {
                Ok(()) => {
                    tracing::info!(key_id = %new.id, "key generated");
                    return Ok(new);
                }
                // Another writer made one meanwhile: read it.
                Err(AppError::Domain(DomainError::AlreadyExists { .. }))
                | Err(AppError::Store(StoreError::Stale { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        Err(DomainError::FailedPrecondition(format!("the keys of spec {spec} keep changing; try again")).into())
    }

    /// Returns (deactivated, new active).
    pub async fn rotate_key(self: &Arc<Self>, caller: &Caller, spec: Name) -> AppResult<(KeyRecord, KeyRecord)> {
        let actor = caller.actor();
        self.blocking(move |this| {
            let spec = this.spec_or_not_found_blocking(&spec)?;
            let read = this.key_records(&spec.name)?;
            let change = plan_rotate(&this.sys_id, &spec.name, &read, &spec.lifecycle, this.now())?;
            let (Some(old), Some(new)) = (change.updated.first().cloned(), change.new_key.clone()) else {
                return Err(AppError::Internal("rotate planned no keys".into()));
            };
            let audit = this
                .event(&actor, "key.rotate", &spec.name)
                .with_details(format!("deactivated {}, active {}", old.id, new.id));
            this.write_change(&spec, &read, &change, vec![audit])?;
            tracing::info!(deactivated = %old.id, active = %new.id, "key rotated");
            Ok((old, new))
        })
        .await
    }

    /// Activate, renew, suspend, resume, revoke or mark compromised. Returns
    /// the changed key, then the new Active key if one was made.
    pub async fn change_key_state(
        self: &Arc<Self>,
        caller: &Caller,
        key: KeyId,
        action: KeyAction,
    ) -> AppResult<Vec<KeyRecord>> {
        let actor = caller.actor();
        self.blocking(move |this| {
            let spec = this.spec_or_not_found_blocking(&key.spec)?;
            let existing = this.key_records(&spec.name)?;
            let change = plan_action(&this.sys_id, &existing, &key, &action, &spec.lifecycle, this.now())?;
            let mut audit = Vec::new();
            for k in &change.updated {
                let details = if k.reason.is_empty() {
                    format!("now {}", k.state.label())
                } else {
                    format!("now {}; reason: {}", k.state.label(), k.reason)
                };
                audit.push(
                    this.event(&actor, &format!("key.{}", action.name().replace(' ', "_")), &k.id)
                        .with_details(details),
                );
            }
            if let Some(new) = &change.new_key {
                audit.push(this.event(&actor, "key.generate", &new.id).with_details(format!("replaces {key}")));
            }
            this.write_change(&spec, &existing, &change, audit)?;
            tracing::info!(key_id = %key, action = action.name(), "key state changed");
            Ok(change.updated.into_iter().chain(change.new_key).collect())
        })
        .await
    }

    pub async fn keys(self: &Arc<Self>, spec: Name) -> AppResult<Vec<KeyRecord>> {
        self.blocking(move |this| {
            let spec = this.spec_or_not_found_blocking(&spec)?;
            this.key_records(&spec.name)
        })
        .await
    }

    /// Sets a spec's lifecycle definition, within the cap of the lifecycle
    /// policies, checked again in the writing transaction: a spec or a cap
    /// that changed since it was read is read and decided again, at most
    /// `WRITE_ATTEMPTS` times.
    pub async fn set_spec_lifecycle(
        self: &Arc<Self>,
        caller: &Caller,
        spec: Name,
        lifecycle: LifecycleDefinition,
    ) -> AppResult<Spec> {
        let actor = caller.actor();
        self.blocking(move |this| {
            for _ in 0..WRITE_ATTEMPTS {
                let read = this.spec_or_not_found_blocking(&spec)?;
                let policies = this.store.lifecycle_policies()?;
                sweeps::check_lifecycle(&lifecycle, &policies, &read.module)?;
                let audit = this.event(&actor, "spec.lifecycle", &read.name).with_details(format!(
                    "expire_after_ms {:?}, destroy_after_idle_ms {:?}",
                    lifecycle.expire_after, lifecycle.destroy_after_idle
                ));
                let cap = effective_cap(&policies, &read.module);
                match this.store.set_spec_lifecycle(&read, &lifecycle, cap, &[audit]) {
                    Err(StoreError::Stale { .. }) => continue,
                    other => return Ok(other?),
                }
            }
            Err(DomainError::FailedPrecondition(format!("spec {spec} keeps changing; try again")).into())
        })
        .await
    }

    /// Sets the lifecycle policy of its scope, conditionally on the one it
    /// replaces (read and written again, at most `WRITE_ATTEMPTS` times).
    pub async fn set_lifecycle_policy(
        self: &Arc<Self>,
        caller: &Caller,
        policy: LifecyclePolicy,
    ) -> AppResult<LifecyclePolicy> {
        let actor = caller.actor();
        self.blocking(move |this| {
            if let PolicyScope::Module(m) = &policy.scope
                && this.store.module(m)?.is_none()
            {
                return Err(DomainError::not_found("module", m).into());
            }
            sweeps::lifecycle_policy_refusal(&policy)?;
            let subject = sweeps::lifecycle_policy_subject(&policy.scope);
            for _ in 0..WRITE_ATTEMPTS {
                let read = this.store.lifecycle_policies()?.into_iter().find(|p| p.scope == policy.scope);
                let audit = this.event(&actor, "lifecycle_policy.set", &subject).with_details(format!(
                    "active {}, max_expire_after_ms {:?}",
                    policy.active, policy.max_expire_after
                ));
                match this.store.put_lifecycle_policy(read.as_ref(), &policy, &[audit]) {
                    Err(StoreError::Stale { .. }) => continue,
                    other => other?,
                }
                return Ok(policy);
            }
            Err(DomainError::FailedPrecondition(format!("the lifecycle policy {subject} keeps changing; try again"))
                .into())
        })
        .await
    }

    pub async fn lifecycle_policies(self: &Arc<Self>) -> AppResult<Vec<LifecyclePolicy>> {
        self.blocking(|this| Ok(this.store.lifecycle_policies()?)).await
    }

    /// Lifecycle automation: destroys Deactivated keys idle past their spec's
    /// destroy_after_idle (their wrapped material is erased). Returns how many.
    pub async fn sweep_lifecycle(self: &Arc<Self>) -> AppResult<usize> {
        self.blocking(|this| {
            let now = this.now();
            let mut destroyed = 0;
            for spec in this.store.specs()? {
                let read = this.key_records(&spec.name)?;
                let due = due_for_destruction(&read, &spec.lifecycle, now);
                if due.is_empty() {
                    continue;
                }
                // Dated by the wall clock, as `event` dates every entry here.
                let audit = sweeps::destruction_audit(&due, this.now());
                match this.store.apply_key_change(&read, &due, None, &audit) {
                    // A key changed meanwhile: the next sweep decides again.
                    Err(crate::store::StoreError::Stale { .. }) => continue,
                    other => other?,
                }
                destroyed += due.len();
                tracing::info!(spec = %spec.name, destroyed = due.len(), "lifecycle policy destroyed idle keys");
            }
            Ok(destroyed)
        })
        .await
    }

    /// Adds `count` rotations to `spec` in one transaction per 1,000 keys.
    /// For benchmarks and load tests that need many key versions quickly.
    #[doc(hidden)]
    pub async fn seed_rotations(self: &Arc<Self>, spec: Name, count: u32) -> AppResult<()> {
        self.blocking(move |this| {
            let spec = this.spec_or_not_found_blocking(&spec)?;
            let mut existing = this.key_records(&spec.name)?;
            let mut batch: Vec<(KeyRecord, crate::domain::key::WrappedKey)> = Vec::new();
            for i in 0..count {
                let now = this.now();
                let change = if existing.iter().any(|k| k.state.is_current()) {
                    plan_rotate(&this.sys_id, &spec.name, &existing, &spec.lifecycle, now)?
                } else {
                    plan_generate(&this.sys_id, &spec.name, &existing, &spec.lifecycle, now)
                };
                for old in change.updated {
                    if let Some(slot) = existing.iter_mut().find(|k| k.id == old.id) {
                        *slot = old.clone();
                    }
                    if let Some(row) = batch.iter_mut().find(|(k, _)| k.id == old.id) {
                        row.0 = old;
                    } else {
                        let (_, w) = this.store.key(&old.id)?.ok_or_else(|| DomainError::not_found("key", &old.id))?;
                        batch.push((old, w));
                    }
                }
                if let Some(new) = change.new_key {
                    existing.push(new.clone());
                    batch.push((new, this.signer.wrap(&generate_material(spec.material())?)?));
                }
                if batch.len() >= 1000 || i + 1 == count {
                    let audit = [this
                        .event("system", "key.seed", &spec.name)
                        .with_details(format!("{} keys written", batch.len()))];
                    this.store.seed_keys(&batch, &audit)?;
                    batch.clear();
                }
            }
            Ok(())
        })
        .await
    }
}
