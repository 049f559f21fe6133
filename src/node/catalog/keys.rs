//! Modules, specs, keys and their lifecycle. Every change is written
//! together with its audit entry.

use super::Catalog;
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::ids::{KeyId, Name, SysId};
use crate::domain::key::{
    KeyAction, KeyChange, KeyRecord, LifecycleDefinition, LifecyclePolicy, PolicyScope, WrappedKey,
    due_for_destruction, effective_cap, plan_action, plan_generate, plan_rotate,
};
use crate::domain::spec::{MaterialShape, Module, Spec, SpecChoice};
use crate::domain::sweeps;
use crate::error::{AppError, AppResult};
use crate::node::context::reread_and_retry;
use crate::signer::Signer;
use crate::signer::material::generate_material;
use crate::store::{RowKind, StoreError};

/// What a new module allows before any policy is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DefaultAccess {
    Reject,
    Track,
}

/// Rows `seed_rotations` writes in one transaction (at least).
const SEED_BATCH: usize = 1000;

/// A store refusal of a duplicate as the caller's error; any other as it is.
pub(super) fn already_exists(e: StoreError) -> AppError {
    match e {
        StoreError::AlreadyExists { kind, id } => DomainError::AlreadyExists { what: kind.label(), id }.into(),
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
    pub async fn create_module(&self, caller: &Caller, name: Name, access: DefaultAccess) -> AppResult<Module> {
        let actor = caller.actor();
        let module = Module { name, created_at: self.now() };
        let policies = match access {
            DefaultAccess::Track => super::policies::autogen_policies(&module.name, module.created_at),
            DefaultAccess::Reject => Vec::new(),
        };
        let mut audit =
            vec![self.event(&actor, "module.create", &module.name).with_details(format!("default access {access:?}"))];
        for p in &policies {
            audit.push(
                self.event(&actor, "policy.create", format!("{}/{}", p.module, p.name)).with_details("AutoGen Track"),
            );
        }
        self.specs.insert_module(module.clone(), policies, audit).await.map_err(already_exists)?;
        tracing::info!(module = %module.name, "module created");
        Ok(module)
    }

    pub async fn modules(&self) -> AppResult<Vec<Module>> {
        Ok(self.specs.modules().await?)
    }

    /// NOT_FOUND unless the module exists.
    pub(super) async fn module_exists(&self, module: &Name) -> AppResult<()> {
        match self.specs.module(module.clone()).await? {
            Some(_) => Ok(()),
            None => Err(DomainError::not_found("module", module).into()),
        }
    }

    pub async fn create_spec(
        &self,
        caller: &Caller,
        module: Name,
        name: Name,
        choice: SpecChoice,
        exportable: bool,
    ) -> AppResult<Spec> {
        let actor = caller.actor();
        self.module_exists(&module).await?;
        let mut spec = Spec::try_new(name, module, choice, self.now())?;
        spec.exportable = exportable;
        let audit = self.event(&actor, "spec.create", &spec.name).with_details(format!(
            "module {} {} {} {} bits{}{}",
            spec.module,
            spec.purpose.as_str(),
            spec.algorithm.as_str(),
            spec.key_size_bits,
            if spec.equality_preserving { " equality preserving" } else { "" },
            if spec.exportable { " exportable" } else { "" }
        ));
        self.specs.insert_spec(spec.clone(), vec![audit]).await.map_err(already_exists)?;
        tracing::info!(spec = %spec.name, module = %spec.module, "spec created");
        Ok(spec)
    }

    pub async fn specs(&self, module: Option<Name>) -> AppResult<Vec<Spec>> {
        if let Some(m) = &module {
            self.module_exists(m).await?;
        }
        let specs = self.specs.specs().await?;
        Ok(specs.into_iter().filter(|s| module.as_ref().is_none_or(|m| &s.module == m)).collect())
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

    async fn key_records(&self, spec: &Name) -> AppResult<Vec<KeyRecord>> {
        Ok(self.specs.keys(spec.clone()).await?.into_iter().map(|(k, _)| k).collect())
    }

    /// Fresh material for `shape`, wrapped under the KEK (made and wrapped
    /// off the workers: an RSA key takes long to generate).
    async fn new_wrapped_material(&self, shape: MaterialShape) -> AppResult<WrappedKey> {
        Ok(self.signer.with_backend(move |b| b.wrap(&generate_material(shape)?)).await?)
    }

    /// Writes a planned change: new material for the new key, one transaction.
    /// `read`: the records the change was planned from; the write is refused
    /// (`Stale`) if any key it updates changed since.
    async fn write_change(
        &self,
        spec: &Spec,
        read: Vec<KeyRecord>,
        change: KeyChange,
        audit: Vec<AuditEvent>,
    ) -> AppResult<()> {
        let new = match change.new_key {
            Some(k) => Some((k, self.new_wrapped_material(spec.material()).await?)),
            None => None,
        };
        self.specs.apply_key_change(read, change.updated, new, audit).await.map_err(already_exists)?;
        Ok(())
    }

    pub async fn generate_key(&self, caller: &Caller, spec: Name) -> AppResult<KeyRecord> {
        let actor = caller.actor();
        let spec = self.spec_or_not_found(&spec).await?;
        let read = self.key_records(&spec.name).await?;
        let change = plan_generate(&self.sys_id, &spec.name, &read, &spec.lifecycle, self.now());
        let new = change.new_key.clone().ok_or_else(|| AppError::Internal("generate planned no key".into()))?;
        let audit = self.event(&actor, "key.generate", &new.id).with_details(format!("state {}", new.state.label()));
        self.write_change(&spec, read, change, vec![audit]).await?;
        tracing::info!(key_id = %new.id, state = new.state.label(), "key generated");
        Ok(new)
    }

    /// The spec's current key; when it has none, a new Active one is
    /// generated (audited as `actor`). A key another writer made meanwhile
    /// is read again, at most `REREAD_ATTEMPTS` times (then ABORTED).
    pub async fn ensure_active_key(&self, spec: &Name, actor: &str) -> AppResult<KeyRecord> {
        reread_and_retry(format!("the keys of spec {spec}"), || async {
            if let Some((k, _)) = self.specs.find_key(spec.clone(), |k| k.state.is_current()).await? {
                return Ok(k);
            }
            let spec = self.spec_or_not_found(spec).await?;
            let read = self.key_records(&spec.name).await?;
            let change = plan_generate(&self.sys_id, &spec.name, &read, &spec.lifecycle, self.now());
            let new = change.new_key.clone().ok_or_else(|| AppError::Internal("generate planned no key".into()))?;
            let audit = self.event(actor, "key.generate", &new.id).with_details("Active; the spec had no current key");
            match self.write_change(&spec, read, change, vec![audit]).await {
                Ok(()) => {
                    tracing::info!(key_id = %new.id, "key generated");
                    Ok(new)
                }
                // Another writer made one meanwhile: read it.
                Err(AppError::Domain(DomainError::AlreadyExists { id, .. })) => {
                    Err(StoreError::Stale { kind: RowKind::Key, id }.into())
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Returns (deactivated, new active).
    pub async fn rotate_key(&self, caller: &Caller, spec: Name) -> AppResult<(KeyRecord, KeyRecord)> {
        let actor = caller.actor();
        let spec = self.spec_or_not_found(&spec).await?;
        let read = self.key_records(&spec.name).await?;
        let change = plan_rotate(&self.sys_id, &spec.name, &read, &spec.lifecycle, self.now())?;
        let (Some(old), Some(new)) = (change.updated.first().cloned(), change.new_key.clone()) else {
            return Err(AppError::Internal("rotate planned no keys".into()));
        };
        let audit = self
            .event(&actor, "key.rotate", &spec.name)
            .with_details(format!("deactivated {}, active {}", old.id, new.id));
        self.write_change(&spec, read, change, vec![audit]).await?;
        tracing::info!(deactivated = %old.id, active = %new.id, "key rotated");
        Ok((old, new))
    }

    /// Activate, renew, suspend, resume, revoke or mark compromised. Returns
    /// the changed key, then the new Active key if one was made.
    pub async fn change_key_state(&self, caller: &Caller, key: KeyId, action: KeyAction) -> AppResult<Vec<KeyRecord>> {
        let actor = caller.actor();
        let spec = self.spec_or_not_found(&key.spec).await?;
        let existing = self.key_records(&spec.name).await?;
        let change = plan_action(&self.sys_id, &existing, &key, &action, &spec.lifecycle, self.now())?;
        let mut audit = Vec::new();
        for k in &change.updated {
            let details = if k.reason.is_empty() {
                format!("now {}", k.state.label())
            } else {
                format!("now {}; reason: {}", k.state.label(), k.reason)
            };
            audit.push(
                self.event(&actor, &format!("key.{}", action.name().replace(' ', "_")), &k.id).with_details(details),
            );
        }
        if let Some(new) = &change.new_key {
            audit.push(self.event(&actor, "key.generate", &new.id).with_details(format!("replaces {key}")));
        }
        let changed: Vec<KeyRecord> = change.updated.iter().chain(&change.new_key).cloned().collect();
        self.write_change(&spec, existing, change, audit).await?;
        tracing::info!(key_id = %key, action = action.name(), "key state changed");
        Ok(changed)
    }

    pub async fn keys(&self, spec: Name) -> AppResult<Vec<KeyRecord>> {
        let spec = self.spec_or_not_found(&spec).await?;
        self.key_records(&spec.name).await
    }

    /// Sets a spec's lifecycle definition, within the cap of the lifecycle
    /// policies, checked again in the writing transaction: a spec or a cap
    /// that changed since it was read is read and decided again, at most
    /// `REREAD_ATTEMPTS` times (then ABORTED).
    pub async fn set_spec_lifecycle(
        &self,
        caller: &Caller,
        spec: Name,
        lifecycle: LifecycleDefinition,
    ) -> AppResult<Spec> {
        let actor = caller.actor();
        reread_and_retry(format!("spec {spec}"), || async {
            let read = self.spec_or_not_found(&spec).await?;
            let policies = self.specs.lifecycle_policies().await?;
            sweeps::check_lifecycle(&lifecycle, &policies, &read.module)?;
            let audit = self.event(&actor, "spec.lifecycle", &read.name).with_details(format!(
                "expire_after_ms {:?}, destroy_after_idle_ms {:?}",
                lifecycle.expire_after, lifecycle.destroy_after_idle
            ));
            let cap = effective_cap(&policies, &read.module);
            Ok(self.specs.set_spec_lifecycle(read, lifecycle, cap, vec![audit]).await?)
        })
        .await
    }

    /// Sets the lifecycle policy of its scope, conditionally on the one it
    /// replaces (read and written again, at most `REREAD_ATTEMPTS` times,
    /// then ABORTED).
    pub async fn set_lifecycle_policy(&self, caller: &Caller, policy: LifecyclePolicy) -> AppResult<LifecyclePolicy> {
        let actor = caller.actor();
        if let PolicyScope::Module(m) = &policy.scope {
            self.module_exists(m).await?;
        }
        sweeps::lifecycle_policy_refusal(&policy)?;
        let subject = sweeps::lifecycle_policy_subject(&policy.scope);
        reread_and_retry(format!("the lifecycle policy {subject}"), || async {
            let read = self.specs.lifecycle_policies().await?.into_iter().find(|p| p.scope == policy.scope);
            let audit = self
                .event(&actor, "lifecycle_policy.set", &subject)
                .with_details(format!("active {}, max_expire_after_ms {:?}", policy.active, policy.max_expire_after));
            Ok(self.specs.put_lifecycle_policy(read, policy.clone(), vec![audit]).await?)
        })
        .await?;
        Ok(policy)
    }

    pub async fn lifecycle_policies(&self) -> AppResult<Vec<LifecyclePolicy>> {
        Ok(self.specs.lifecycle_policies().await?)
    }

    /// Lifecycle automation: destroys Deactivated keys idle past their spec's
    /// destroy_after_idle (their wrapped material is erased). Returns how many.
    pub async fn sweep_lifecycle(&self) -> AppResult<usize> {
        let now = self.now();
        let mut destroyed = 0;
        for spec in self.specs.specs().await? {
            let read = self.key_records(&spec.name).await?;
            let due = due_for_destruction(&read, &spec.lifecycle, now);
            if due.is_empty() {
                continue;
            }
            let count = due.len();
            // Dated by the wall clock, as `event` dates every entry here.
            let audit = sweeps::destruction_audit(&due, self.now());
            match self.specs.apply_key_change(read, due, None, audit).await {
                // A key changed meanwhile: the next sweep decides again.
                Err(StoreError::Stale { .. }) => continue,
                other => other?,
            }
            destroyed += count;
            tracing::info!(spec = %spec.name, destroyed = count, "lifecycle policy destroyed idle keys");
        }
        Ok(destroyed)
    }

    /// Adds `count` rotations to `spec` in one transaction per 1,000 keys.
    /// For benchmarks and load tests that need many key versions quickly.
    /// Each batch is planned and its material made in one hop off the
    /// workers, then written.
    #[doc(hidden)]
    pub async fn seed_rotations(&self, spec: Name, count: u32) -> AppResult<()> {
        let spec = self.spec_or_not_found(&spec).await?;
        let mut existing = self.key_records(&spec.name).await?;
        let mut done = 0;
        while done < count {
            // The one stored key a batch changes: the current one, which
            // its first rotation deactivates.
            let current = match existing.iter().find(|k| k.state.is_current()) {
                Some(k) => {
                    Some(self.specs.key(k.id.clone()).await?.ok_or_else(|| DomainError::not_found("key", &k.id))?)
                }
                None => None,
            };
            let seed = Seed {
                own: self.sys_id.clone(),
                spec: spec.clone(),
                clock: std::sync::Arc::clone(&self.clock),
                left: count - done,
            };
            let (planned, batch, rotations) =
                self.signer.with_backend(move |b| Ok(seed.batch(b, existing, current))).await??;
            existing = planned;
            let audit = vec![
                self.event("system", "key.seed", &spec.name).with_details(format!("{} keys written", batch.len())),
            ];
            self.specs.seed_keys(batch, audit).await?;
            done += rotations;
        }
        Ok(())
    }
}

/// What one batch of `seed_rotations` is planned from.
struct Seed {
    own: SysId,
    spec: Spec,
    clock: std::sync::Arc<dyn Clock>,
    /// Rotations still to make.
    left: u32,
}

/// The key records after a seeded batch, its rows, and how many rotations it holds.
type SeedBatch = (Vec<KeyRecord>, Vec<(KeyRecord, WrappedKey)>, u32);

impl Seed {
    /// Rotations (a generation when there is no current key) on top of
    /// `existing`, until the batch holds `SEED_BATCH` rows or none is left;
    /// `current`: the stored current key and its material.
    fn batch(
        self,
        signer: &dyn Signer,
        mut existing: Vec<KeyRecord>,
        mut current: Option<(KeyRecord, WrappedKey)>,
    ) -> AppResult<SeedBatch> {
        let mut batch: Vec<(KeyRecord, WrappedKey)> = Vec::new();
        let mut rotations = 0;
        while rotations < self.left {
            let now = self.clock.now();
            let change = if existing.iter().any(|k| k.state.is_current()) {
                plan_rotate(&self.own, &self.spec.name, &existing, &self.spec.lifecycle, now)?
            } else {
                plan_generate(&self.own, &self.spec.name, &existing, &self.spec.lifecycle, now)
            };
            for old in change.updated {
                if let Some(slot) = existing.iter_mut().find(|k| k.id == old.id) {
                    *slot = old.clone();
                }
                if let Some(row) = batch.iter_mut().find(|(k, _)| k.id == old.id) {
                    row.0 = old;
                } else {
                    let (_, w) = current
                        .take()
                        .filter(|(k, _)| k.id == old.id)
                        .ok_or_else(|| AppError::Internal(format!("seeding changed key {} it did not read", old.id)))?;
                    batch.push((old, w));
                }
            }
            if let Some(new) = change.new_key {
                existing.push(new.clone());
                batch.push((new, signer.wrap(&generate_material(self.spec.material())?)?));
            }
            rotations += 1;
            if batch.len() >= SEED_BATCH {
                break;
            }
        }
        Ok((existing, batch, rotations))
    }
}
