//! The catalog service: modules, specs, keys and their lifecycle (with the
//! lifecycle sweep job), module access policies (with the check every crypto
//! call passes) and system properties. Every change is written together
//! with its audit entry.

mod keys;
pub mod policies;
pub mod properties;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_policies;

use std::sync::Arc;
use std::time::Duration;

use super::audit::Audit;
use super::cache::CatalogCache;
use super::context::Context;
use super::jobs::{JobFuture, JobHandler, JobOutcome, JobRun, next_run};
use crate::clock::Clock;
use crate::domain::ids::{Name, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind};
use crate::domain::spec::Spec;
use crate::signer::async_signer::AsyncSigner;
use crate::store::{AuditStore, CatalogStore, PolicyStore, PropertyStore, Store};
pub use keys::DefaultAccess;

pub struct Catalog {
    sys_id: SysId,
    /// For its change tokens (the hot cache compares them).
    store: Arc<Store>,
    specs: CatalogStore,
    policies: PolicyStore,
    properties: PropertyStore,
    audit_store: AuditStore,
    signer: AsyncSigner,
    clock: Arc<dyn Clock>,
    audit: Arc<Audit>,
    sweep_every: Duration,
    hot: CatalogCache,
}

impl Catalog {
    pub fn new(ctx: &Context, audit: Arc<Audit>) -> Self {
        Catalog {
            sys_id: ctx.sys_id.clone(),
            store: Arc::clone(&ctx.store),
            specs: CatalogStore::new(&ctx.store),
            policies: PolicyStore::new(&ctx.store),
            properties: PropertyStore::new(&ctx.store),
            audit_store: AuditStore::new(&ctx.store),
            signer: ctx.async_signer(),
            clock: Arc::clone(&ctx.clock),
            audit,
            sweep_every: ctx.settings.sweep_every,
            hot: CatalogCache::default(),
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// The spec from the cache, when the store's specs are unchanged since
    /// it was put there (on an async worker: no store read).
    pub fn cached_spec(&self, name: &Name) -> Option<Spec> {
        self.hot.spec(self.store.changes().specs(), name)
    }
}

/// The lifecycle sweep: destroys Deactivated keys idle past their spec's
/// `destroy_after_idle`, every `sweep_every`.
impl JobHandler for Catalog {
    fn kinds(&self) -> &'static [JobKind] {
        &[JobKind::LifecycleSweep]
    }

    fn startup_jobs(&self, now: UnixMillis) -> Vec<Job> {
        vec![Job::new(JobId::singleton(JobKind::LifecycleSweep), now, now)]
    }

    fn run(self: Arc<Self>, run: JobRun) -> JobFuture {
        Box::pin(async move {
            self.sweep_lifecycle().await?;
            Ok(JobOutcome::RunAgainAt(next_run(run.job.next_due, self.sweep_every, self.now())))
        })
    }
}
