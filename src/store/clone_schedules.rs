//! Target side: clone schedules and the recurring job that runs each. A due
//! run is one transaction, conditional on the job's lease: it starts the
//! clone (run row and clone job) unless another clone is running, records
//! the run on the schedule, and moves the job to the next due time. So a
//! crash either leaves the run to be made again or has made it whole, and a
//! run is never made twice.

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::clone::every_row;
use super::clone_runs::{clone_job_id, put_run, read_run, running_clone_in};
use super::engine::{ReadTxn, Table, WriteTxn};
use super::jobs::{finish_job_in, held_job, put_job_in};
use super::records::decode;
use super::tuple::str_key;
use super::{CloneStore, Result, RowKind, StoreError, corrupt, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::clone::CloneRun;
use crate::domain::clone_decide::{self, DueRun as DueStep};
use crate::domain::clone_schedule::{Cadence, CloneSchedule, ScheduledRun};
use crate::domain::ids::{CloneId, Host, Name, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind, Lease};

#[derive(Serialize, Deserialize)]
pub(super) struct CloneScheduleRow {
    v: u8,
    source: String,
    source_host: String,
    every_millis: Option<i64>,
    cron: Option<String>,
    next_run_at: i64,
    created_at: i64,
    created_by: String,
    runs: u64,
    skipped: u64,
    last_run_at: Option<i64>,
    last_clone: Option<String>,
    last_outcome: Option<String>,
}

impl From<&CloneSchedule> for CloneScheduleRow {
    fn from(s: &CloneSchedule) -> Self {
        CloneScheduleRow {
            v: 1,
            source: s.source.to_string(),
            source_host: s.source_host.to_string(),
            every_millis: s.cadence.every_millis(),
            cron: s.cadence.cron_text().map(str::to_owned),
            next_run_at: s.next_run_at.0,
            created_at: s.created_at.0,
            created_by: s.created_by.clone(),
            runs: s.runs,
            skipped: s.skipped,
            last_run_at: s.last_run_at.map(|t| t.0),
            last_clone: s.last_clone.as_ref().map(ToString::to_string),
            last_outcome: s.last_outcome.clone(),
        }
    }
}

pub(super) fn schedule_from(name: Name, r: CloneScheduleRow) -> Result<CloneSchedule> {
    let cadence = match (r.every_millis, r.cron.as_deref()) {
        (Some(millis), None) => Cadence::every(millis),
        (None, Some(text)) => Cadence::cron(text),
        _ => return Err(corrupt(format!("clone schedule {name}: neither or both of interval and cron"))),
    }
    .map_err(corrupt)?;
    Ok(CloneSchedule {
        name,
        source: SysId::parse(&r.source).map_err(corrupt)?,
        source_host: Host::parse(&r.source_host).map_err(corrupt)?,
        cadence,
        next_run_at: UnixMillis(r.next_run_at),
        created_at: UnixMillis(r.created_at),
        created_by: r.created_by,
        runs: r.runs,
        skipped: r.skipped,
        last_run_at: r.last_run_at.map(UnixMillis),
        last_clone: r.last_clone.as_deref().map(CloneId::parse).transpose().map_err(corrupt)?,
        last_outcome: r.last_outcome,
    })
}

pub fn clone_schedule_job_id(name: &Name) -> JobId {
    JobId::new(JobKind::CloneSchedule, name.as_str())
}

fn read_schedule(tx: &mut dyn ReadTxn, name: &Name) -> Result<Option<CloneSchedule>> {
    get_row::<CloneScheduleRow>(tx, Table::CloneSchedules, &str_key(name.as_str()))?
        .map(|r| schedule_from(name.clone(), r))
        .transpose()
}

fn put_schedule(tx: &mut dyn WriteTxn, s: &CloneSchedule) -> Result<()> {
    put_row(tx, Table::CloneSchedules, &str_key(s.name.as_str()), &CloneScheduleRow::from(s))
}

/// A due run, as the schedule's job hands it to the store.
#[derive(Clone, Debug)]
pub struct DueRun {
    pub schedule: Name,
    pub lease: Lease,
    /// The due time the job was claimed for.
    pub due: UnixMillis,
    pub now: UnixMillis,
    /// The id of the clone to start, derived from (schedule, due).
    pub clone_id: CloneId,
}

impl CloneStore {
    /// Records a new schedule and its job; `AlreadyExists` if the name is taken.
    pub async fn create_clone_schedule(&self, s: CloneSchedule, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                if read_schedule(tx, &s.name)?.is_some() {
                    return Err(StoreError::AlreadyExists { kind: RowKind::CloneSchedule, id: s.name.to_string() });
                }
                put_schedule(tx, &s)?;
                put_job_in(tx, &Job::new(clone_schedule_job_id(&s.name), s.next_run_at, s.created_at))?;
                append_audit(tx, &audit)
            })
            .await
    }

    pub async fn clone_schedules(&self) -> Result<Vec<CloneSchedule>> {
        let schedule = |k: String, v: &[u8]| schedule_from(Name::parse(&k, "schedule").map_err(corrupt)?, decode(v)?);
        self.store.read(move |tx| every_row(tx, Table::CloneSchedules, schedule)).await
    }

    /// Deletes a schedule and, unless a runner holds it, its job (a held job
    /// finds the schedule gone and ends itself). None if there was none.
    pub async fn delete_clone_schedule(&self, name: Name, audit: Vec<AuditEvent>) -> Result<Option<CloneSchedule>> {
        self.store
            .write(move |tx| {
                let Some(s) = read_schedule(tx, &name)? else { return Ok(None) };
                tx.delete(Table::CloneSchedules, &str_key(name.as_str()))?;
                let job_id = clone_schedule_job_id(&name);
                if let Some(job) = super::jobs::read_job(tx, &job_id)?
                    && job.lease.is_none()
                {
                    super::jobs::delete_job_in(tx, &job)?;
                }
                append_audit(tx, &audit)?;
                Ok(Some(s))
            })
            .await
    }

    /// Makes the run `due` describes, if its lease still holds the job:
    /// starts the clone unless one is running (audited with what `audit`
    /// makes of it), records the run and moves the job on. None when the
    /// schedule was deleted (the job is removed then).
    pub async fn run_clone_schedule(
        &self,
        due: DueRun,
        audit: impl Fn(&CloneRun) -> AuditEvent + Send + 'static,
    ) -> Result<Option<ScheduledRun>> {
        self.store
            .write(move |tx| {
                let job_id = clone_schedule_job_id(&due.schedule);
                let mut job = held_job(tx, &job_id, &due.lease)?;
                let Some(mut schedule) = read_schedule(tx, &due.schedule)? else {
                    finish_job_in(tx, &job_id, &due.lease)?;
                    return Ok(None);
                };
                // Whether the clone exists; only when it does not, whether another is running.
                let exists = read_run(tx, &due.clone_id)?.is_some();
                let running = if exists { None } else { running_clone_in(tx)? };
                let run = match clone_decide::due_run(exists, running) {
                    // Started by an earlier run of this same due time.
                    DueStep::AlreadyStarted => ScheduledRun::Started(due.clone_id.clone()),
                    DueStep::Skip(running) => ScheduledRun::Skipped(running),
                    DueStep::Start => {
                        let clone = CloneRun::started(
                            due.clone_id.clone(),
                            schedule.source.clone(),
                            schedule.source_host.clone(),
                            due.now,
                        );
                        put_run(tx, &clone)?;
                        put_job_in(tx, &Job::new(clone_job_id(&clone.id), due.now, due.now))?;
                        append_audit(tx, &[audit(&clone)])?;
                        ScheduledRun::Started(clone.id)
                    }
                };
                let next = schedule.ran(&run, due.due, due.now).map_err(corrupt)?;
                put_schedule(tx, &schedule)?;
                job.reschedule(next);
                put_job_in(tx, &job)?;
                Ok(Some(run))
            })
            .await
    }
}
