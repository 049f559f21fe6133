//! The clone service. Source side: the registered clone targets and serving
//! a snapshot (`source.rs`), the One Time / Recurring Clone configurations
//! with their Resource Exchange policies (`configurations.rs`). Target side:
//! the clone job that copies and swaps a snapshot in, and the exchange it
//! leads to (`target.rs`), and the clone schedules (`schedule.rs`).

mod configurations;
mod schedule;
mod source;
mod target;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_faults;

use std::sync::Arc;

use super::context::{Context, JobSettings, JobSignals, lease_until};
use super::exchange::Exchange;
use super::jobs::{JobFuture, JobHandler, JobRun};
use super::ports::PeerLink;
use crate::clock::Clock;
use crate::domain::ids::{SysId, UnixMillis};
use crate::domain::job::JobKind;
use crate::store::{AuditStore, CatalogStore, CloneStore, PropertyStore, RequestStore};
pub use configurations::NewCloneExchange;
pub use schedule::{NewCloneSchedule, scheduled_clone_id};
pub use source::SnapshotParts;

pub struct Clones {
    sys_id: SysId,
    clone_store: CloneStore,
    specs: CatalogStore,
    requests: RequestStore,
    audit_store: AuditStore,
    properties: PropertyStore,
    peers: Arc<dyn PeerLink>,
    clock: Arc<dyn Clock>,
    signals: Arc<JobSignals>,
    settings: JobSettings,
    exchange: Arc<Exchange>,
}

impl Clones {
    pub fn new(ctx: &Context, exchange: Arc<Exchange>) -> Self {
        Clones {
            sys_id: ctx.sys_id.clone(),
            clone_store: CloneStore::new(&ctx.store),
            specs: CatalogStore::new(&ctx.store),
            requests: RequestStore::new(&ctx.store),
            audit_store: AuditStore::new(&ctx.store),
            properties: PropertyStore::new(&ctx.store),
            peers: Arc::clone(&ctx.peers),
            clock: Arc::clone(&ctx.clock),
            signals: Arc::clone(&ctx.signals),
            settings: ctx.settings.clone(),
            exchange,
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// Until when a long job's lease is renewed by each of its steps.
    fn lease_until(&self) -> UnixMillis {
        lease_until(&*self.clock, &self.settings)
    }
}

/// The clone job, the exchange after a clone, and the clone schedules.
impl JobHandler for Clones {
    fn kinds(&self) -> &'static [JobKind] {
        &[JobKind::Clone, JobKind::AutoExchange, JobKind::CloneSchedule]
    }

    fn run(self: Arc<Self>, run: JobRun) -> JobFuture {
        Box::pin(async move {
            match run.job.id.kind {
                JobKind::Clone => self.run_clone(&run).await,
                JobKind::AutoExchange => self.run_auto_exchange(&run).await,
                _ => self.run_clone_schedule(&run).await,
            }
        })
    }
}
