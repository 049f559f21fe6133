//! Modules, specs and keys.

use std::sync::Arc;

use super::Node;
use crate::clock;
use crate::domain::DomainError;
use crate::domain::ids::Name;
use crate::domain::key::{KeyRecord, plan_generate, plan_rotate};
use crate::domain::spec::{Algorithm, Module, Purpose, Spec};
use crate::error::AppResult;
use crate::signer::primitives::random_key;
use crate::store::StoreError;

fn already_exists(e: StoreError) -> crate::error::AppError {
    match e {
        StoreError::AlreadyExists { what, id } => DomainError::AlreadyExists { what, id }.into(),
        other => other.into(),
    }
}

impl Node {
    pub async fn create_module(self: &Arc<Self>, name: Name) -> AppResult<Module> {
        self.blocking(move |node| {
            let module = Module { name, created_at: clock::now() };
            node.store.insert_module(&module).map_err(already_exists)?;
            tracing::info!(module = %module.name, "module created");
            Ok(module)
        })
        .await
    }

    pub async fn modules(self: &Arc<Self>) -> AppResult<Vec<Module>> {
        self.blocking(|node| Ok(node.store.modules()?)).await
    }

    pub async fn create_spec(
        self: &Arc<Self>,
        module: Name,
        name: Name,
        purpose: Purpose,
        algorithm: Algorithm,
        key_size_bits: u32,
    ) -> AppResult<Spec> {
        self.blocking(move |node| {
            if node.store.module(&module)?.is_none() {
                return Err(DomainError::not_found("module", &module).into());
            }
            let spec = Spec::try_new(name, module, purpose, algorithm, key_size_bits, clock::now())?;
            node.store.insert_spec(&spec).map_err(already_exists)?;
            tracing::info!(spec = %spec.name, module = %spec.module, "spec created");
            Ok(spec)
        })
        .await
    }

    pub async fn specs(self: &Arc<Self>, module: Option<Name>) -> AppResult<Vec<Spec>> {
        self.blocking(move |node| {
            if let Some(m) = &module
                && node.store.module(m)?.is_none()
            {
                return Err(DomainError::not_found("module", m).into());
            }
            let specs = node.store.specs()?;
            Ok(specs.into_iter().filter(|s| module.as_ref().is_none_or(|m| &s.module == m)).collect())
        })
        .await
    }

    pub(super) fn spec_or_not_found(&self, name: &Name) -> AppResult<Spec> {
        self.store.spec(name)?.ok_or_else(|| DomainError::not_found("spec", name).into())
    }

    pub async fn generate_key(self: &Arc<Self>, spec: Name) -> AppResult<KeyRecord> {
        self.blocking(move |node| {
            let spec = node.spec_or_not_found(&spec)?;
            let existing: Vec<KeyRecord> = node.store.keys(&spec.name)?.into_iter().map(|(k, _)| k).collect();
            let change = plan_generate(&node.sys_id, &spec.name, &existing, clock::now());
            let wrapped = node.signer.wrap(&random_key(spec.key_len_bytes()))?;
            node.store.apply_key_change(&[], (&change.new_key, &wrapped)).map_err(already_exists)?;
            tracing::info!(key_id = %change.new_key.id, state = change.new_key.state.label(), "key generated");
            Ok(change.new_key)
        })
        .await
    }

    /// Returns (deactivated, new active).
    pub async fn rotate_key(self: &Arc<Self>, spec: Name) -> AppResult<(KeyRecord, KeyRecord)> {
        self.blocking(move |node| {
            let spec = node.spec_or_not_found(&spec)?;
            let existing: Vec<KeyRecord> = node.store.keys(&spec.name)?.into_iter().map(|(k, _)| k).collect();
            let change = plan_rotate(&node.sys_id, &spec.name, &existing, clock::now())?;
            let old =
                change.deactivated.ok_or_else(|| crate::error::AppError::Internal("rotate without old key".into()))?;
            let wrapped = node.signer.wrap(&random_key(spec.key_len_bytes()))?;
            node.store
                .apply_key_change(std::slice::from_ref(&old), (&change.new_key, &wrapped))
                .map_err(already_exists)?;
            tracing::info!(deactivated = %old.id, active = %change.new_key.id, "key rotated");
            Ok((old, change.new_key))
        })
        .await
    }

    pub async fn keys(self: &Arc<Self>, spec: Name) -> AppResult<Vec<KeyRecord>> {
        self.blocking(move |node| {
            let spec = node.spec_or_not_found(&spec)?;
            Ok(node.store.keys(&spec.name)?.into_iter().map(|(k, _)| k).collect())
        })
        .await
    }

    /// Adds `count` rotations to `spec` in one transaction per 1,000 keys.
    /// For benchmarks and load tests that need many key versions quickly.
    #[doc(hidden)]
    pub async fn seed_rotations(self: &Arc<Self>, spec: Name, count: u32) -> AppResult<()> {
        self.blocking(move |node| {
            let spec = node.spec_or_not_found(&spec)?;
            let mut existing: Vec<KeyRecord> = node.store.keys(&spec.name)?.into_iter().map(|(k, _)| k).collect();
            let mut batch = Vec::new();
            for i in 0..count {
                let now = clock::now();
                let change = if existing.is_empty() {
                    plan_generate(&node.sys_id, &spec.name, &existing, now)
                } else {
                    plan_rotate(&node.sys_id, &spec.name, &existing, now)?
                };
                let wrapped = node.signer.wrap(&random_key(spec.key_len_bytes()))?;
                if let Some(old) = change.deactivated {
                    if let Some(slot) = existing.iter_mut().find(|k| k.id == old.id) {
                        *slot = old.clone();
                    }
                    if let Some(row) = batch.iter_mut().find(|(k, _): &&mut (KeyRecord, _)| k.id == old.id) {
                        row.0 = old;
                    } else {
                        let (_, w) = node.store.key(&old.id)?.ok_or_else(|| DomainError::not_found("key", &old.id))?;
                        batch.push((old, w));
                    }
                }
                existing.push(change.new_key.clone());
                batch.push((change.new_key, wrapped));
                if batch.len() >= 1000 || i + 1 == count {
                    node.store.put_keys(&batch)?;
                    batch.clear();
                }
            }
            Ok(())
        })
        .await
    }
}
