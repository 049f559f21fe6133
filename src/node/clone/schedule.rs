//! Clone schedules, target side: create, list and delete them, and the
//! recurring job that runs each. A run starts a clone like `start_clone`'s
//! (its follow-up exchange is whatever the source approves: a Recurring
//! Clone configured there); the clone id is derived from the schedule and the
//! due time, and the run is one transaction, so a restart or a second runner
//! neither loses nor doubles it.

use super::Clones;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::clone::CloneRun;
use crate::domain::clone_schedule::{Cadence, CloneSchedule, ScheduledRun};
use crate::domain::ids::{Host, Name, SysId};
use crate::error::AppResult;
use crate::node::jobs::{JobOutcome, JobRun};
use crate::store::DueRun;

/// A new schedule, as an operator asks for it.
#[derive(Clone, Debug)]
pub struct NewCloneSchedule {
    pub name: Name,
    pub source: SysId,
    pub source_host: Host,
    pub cadence: Cadence,
}

/// The clone a schedule starts for the run due at `due`: the same id each
/// time that run is made.
pub use crate::domain::clone_decide::scheduled_clone_id;

impl Clones {
    pub async fn create_clone_schedule(&self, caller: &Caller, new: NewCloneSchedule) -> AppResult<CloneSchedule> {
        if new.source == self.sys_id {
            return Err(DomainError::invalid("source_sys_id", "an instance cannot clone itself").into());
        }
        let actor = caller.actor();
        let now = self.now();
        let s = CloneSchedule::new(new.name, new.source, new.source_host, new.cadence, now, actor.clone())?;
        let audit = AuditEvent::new(now, actor, "clone_schedule.create", s.name.as_str(), Outcome::Success)
            .with_details(format!("clone {} at {} {}", s.source, s.source_host, s.cadence.describe()));
        self.clone_store.create_clone_schedule(s.clone(), vec![audit]).await?;
        self.signals.wake();
        Ok(s)
    }

    pub async fn clone_schedules(&self) -> AppResult<Vec<CloneSchedule>> {
        Ok(self.clone_store.clone_schedules().await?)
    }

    pub async fn delete_clone_schedule(&self, caller: &Caller, name: Name) -> AppResult<CloneSchedule> {
        let actor = caller.actor();
        let audit = AuditEvent::new(self.now(), actor, "clone_schedule.delete", name.as_str(), Outcome::Success);
        self.clone_store
            .delete_clone_schedule(name.clone(), vec![audit])
            .await?
            .ok_or_else(|| DomainError::not_found("clone schedule", name.as_str()).into())
    }

    /// The schedule's job: makes the run it was claimed for.
    pub(super) async fn run_clone_schedule(&self, job_run: &JobRun) -> AppResult<JobOutcome> {
        let (job, lease) = (&job_run.job, job_run.lease.clone());
        let name = Name::parse(&job.id.subject, "schedule")?;
        let due = job.next_due;
        let actor = format!("system (schedule {name})");
        let audit = move |clone: &CloneRun| {
            AuditEvent::new(clone.started_at, actor.clone(), "clone.start", clone.id.as_str(), Outcome::Success)
                .with_details(format!("from {} at {}", clone.source, clone.source_host))
        };
        let clone_id = scheduled_clone_id(&name, due);
        let run = DueRun { schedule: name, lease, due, now: self.now(), clone_id };
        let ran = self.clone_store.run_clone_schedule(run, audit).await?;
        match ran {
            Some(ScheduledRun::Started(id)) => {
                tracing::info!(clone = %id, job = %job.id, "scheduled clone started");
                self.signals.wake();
            }
            Some(ScheduledRun::Skipped(running)) => {
                tracing::warn!(job = %job.id, running = %running, "scheduled clone skipped: a clone is running");
            }
            None => tracing::info!(job = %job.id, "clone schedule deleted; its job ends"),
        }
        // The run (or the end of a deleted schedule) was one transaction with the job.
        Ok(JobOutcome::Settled)
    }
}
