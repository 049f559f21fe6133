//! Clone, target side: clone runs, and the staging that makes a clone
//! atomic. Records live in one of two tables; a clone copies the source's
//! records into the other one (`staging`), part by part, each part in its own
//! transaction, while the previous data stays readable. The swap is one
//! transaction: the snapshot's catalog (modules, specs, access policies,
//! properties) is merged into the target's (`domain::clone_merge`: what the
//! target has stays its own) and the staging table becomes the active one.
//! Keys, identity, requests, jobs and the audit log are never touched.
//! Afterwards the old records are cleared in batches.
//!
//! Every write here is made under the clone job's lease (a runner whose
//! lease was taken over gets `Stale` and changes nothing) and renews it.

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::catalog::{modules_in, specs_in};
use super::clone::every_row;
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::jobs::{finish_job_in, put_job_in, renew_lease_in};
use super::policies::{policies_in, put_new_policies};
use super::properties::{properties_in, property_in, put_property_in};
use super::record_debt::{DebtDelta, clear_debt, debts_in};
use super::records::{ModuleRow, SpecRow, decode};
use super::stored_records::{active_records, record_row, staging_records, swap_records_tables};
use super::tuple::str_key;
use super::{CloneStore, Result, RowKind, StoreError, corrupt, get_row, put_row};
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::clone::{CloneRun, CloneState, FollowUp, SnapshotCatalog};
use crate::domain::clone_exchange::ExchangePlan;
use crate::domain::clone_merge::{merge_catalog, rekeyed_after_clone};
use crate::domain::ids::{CloneId, Host, Name, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind, Lease};
use crate::domain::policy::ApprovalType;
use crate::domain::property::{Property, REKEYED};
use crate::domain::record::StoredRecord;

#[derive(Serialize, Deserialize)]
pub(super) struct CloneRunRow {
    v: u8,
    source: String,
    source_host: String,
    state: String,
    records_total: u64,
    records_copied: u64,
    started_at: i64,
    copy_started_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
    error: Option<String>,
    /// Absent in rows written before configured exchanges: such a clone's
    /// follow-up job, if any, was the automatic exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    follow_up: Option<FollowUpRow>,
}

#[derive(Serialize, Deserialize)]
struct FollowUpRow {
    automatic: bool,
    plan: Option<PlanRow>,
    /// The specs that came with the clone (absent in rows written before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    specs: Option<Vec<String>>,
    /// The clone grant the snapshot's end named (absent in rows of earlier versions).
    #[serde(default)]
    grant: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct PlanRow {
    /// "one_time" or "recurring".
    approval: String,
    specs: Vec<String>,
    rekey: bool,
}

impl From<&ExchangePlan> for PlanRow {
    fn from(p: &ExchangePlan) -> Self {
        PlanRow {
            approval: match p.approval {
                ApprovalType::OneTime => "one_time".into(),
                ApprovalType::Recurring => "recurring".into(),
            },
            specs: p.specs.iter().map(ToString::to_string).collect(),
            rekey: p.rekey,
        }
    }
}

fn plan_from(r: PlanRow) -> Result<ExchangePlan> {
    Ok(ExchangePlan {
        approval: match r.approval.as_str() {
            "one_time" => ApprovalType::OneTime,
            "recurring" => ApprovalType::Recurring,
            other => return Err(corrupt(format!("approval type {other}"))),
        },
        specs: r.specs.iter().map(|s| Name::parse(s, "spec").map_err(corrupt)).collect::<Result<_>>()?,
        rekey: r.rekey,
    })
}

impl From<&CloneRun> for CloneRunRow {
    fn from(r: &CloneRun) -> Self {
        CloneRunRow {
            v: 1,
            source: r.source.to_string(),
            source_host: r.source_host.to_string(),
            state: r.state.label().to_owned(),
            records_total: r.records_total,
            records_copied: r.records_copied,
            started_at: r.started_at.0,
            copy_started_at: r.copy_started_at.0,
            updated_at: r.updated_at.0,
            finished_at: r.finished_at.map(|t| t.0),
            error: r.error.clone(),
            follow_up: r.follow_up.as_ref().map(|f| FollowUpRow {
                automatic: f.automatic,
                plan: f.plan.as_ref().map(PlanRow::from),
                specs: f.specs.as_ref().map(|s| s.iter().map(ToString::to_string).collect()),
                grant: f.grant.clone(),
            }),
        }
    }
}

pub(super) fn run_from(id: CloneId, r: CloneRunRow) -> Result<CloneRun> {
    Ok(CloneRun {
        id,
        source: SysId::parse(&r.source).map_err(corrupt)?,
        source_host: Host::parse(&r.source_host).map_err(corrupt)?,
        state: CloneState::parse(&r.state).ok_or_else(|| corrupt(format!("clone state {}", r.state)))?,
        records_total: r.records_total,
        records_copied: r.records_copied,
        started_at: UnixMillis(r.started_at),
        copy_started_at: UnixMillis(r.copy_started_at),
        updated_at: UnixMillis(r.updated_at),
        finished_at: r.finished_at.map(UnixMillis),
        error: r.error,
        follow_up: match r.follow_up {
            None => None,
            Some(f) => Some(FollowUp {
                automatic: f.automatic,
                plan: f.plan.map(plan_from).transpose()?,
                specs: f
                    .specs
                    .map(|s| s.iter().map(|n| Name::parse(n, "spec").map_err(corrupt)).collect::<Result<_>>())
                    .transpose()?,
                grant: f.grant,
            }),
        },
    })
}

/// What a clone swaps in.
#[derive(Clone, Debug)]
pub struct CloneSwap {
    pub catalog: SnapshotCatalog,
    /// Scheduled in the swap's transaction (the exchanges after the clone).
    pub follow_up: Option<Job>,
    /// What that job requests, kept with the run.
    pub exchanges: Option<FollowUp>,
    pub now: UnixMillis,
    /// The clone job's lease is renewed until then.
    pub lease_until: UnixMillis,
}

pub fn clone_job_id(id: &CloneId) -> JobId {
    JobId::new(JobKind::Clone, id.as_str())
}

pub(super) fn read_run(tx: &mut dyn ReadTxn, id: &CloneId) -> Result<Option<CloneRun>> {
    get_row::<CloneRunRow>(tx, Table::CloneRuns, &str_key(id.as_str()))?.map(|r| run_from(id.clone(), r)).transpose()
}

pub(super) fn put_run(tx: &mut dyn WriteTxn, run: &CloneRun) -> Result<()> {
    put_row(tx, Table::CloneRuns, &str_key(run.id.as_str()), &CloneRunRow::from(run))
}

/// The run, if the clone job's `lease` still holds it (renewed until
/// `lease_until`), and it is still Running.
fn held_run(tx: &mut dyn WriteTxn, id: &CloneId, lease: &Lease, lease_until: UnixMillis) -> Result<CloneRun> {
    renew_lease_in(tx, &clone_job_id(id), lease, lease_until)?;
    match read_run(tx, id)? {
        Some(run) if run.state == CloneState::Running => Ok(run),
        Some(run) => Err(StoreError::Stale { kind: RowKind::Clone, id: format!("{id} is {}", run.state.label()) }),
        None => Err(StoreError::Missing { kind: RowKind::Clone, id: id.to_string() }),
    }
}

/// The id of the clone that is running, if one is.
pub(super) fn running_clone_in(tx: &mut dyn ReadTxn) -> Result<Option<String>> {
    let mut running = None;
    tx.visit(Table::CloneRuns, &KeyRange::all(), &mut |k, v| {
        let r: CloneRunRow = decode(v)?;
        if r.state == CloneState::Running.label() {
            running = Some(super::tuple::KeyReader::new(k).str()?);
            return Ok(Visit::Stop);
        }
        Ok(Visit::Continue)
    })?;
    Ok(running)
}

/// After the swap: a finished rekey no longer holds when the records now
/// depend on other instances' keys (`protected.script.values.kmf.rekeyed`
/// becomes false, written by the system, audited); the debt index shows them.
fn rekeyed_after_swap(tx: &mut dyn WriteTxn, own: &SysId, id: &CloneId, now: UnixMillis) -> Result<Option<AuditEvent>> {
    let table = active_records(tx)?;
    let foreign: u64 = debts_in(tx, table)?.iter().filter(|d| &d.key_id.origin != own).map(|d| d.records).sum();
    let current = property_in(tx, REKEYED)?;
    let Some(value) = rekeyed_after_clone(current.as_ref().map(|p| p.value.as_str()), foreign) else {
        return Ok(None);
    };
    let by = "system (clone)";
    put_property_in(
        tx,
        &Property { name: REKEYED.into(), value: value.into(), updated_at: now, updated_by: by.into() },
    )?;
    let details = format!(
        "true -> {value}: clone {id} brought {foreign} record(s) under other instances' keys (see the rekey debt)"
    );
    Ok(Some(AuditEvent::new(now, by, "property.set", REKEYED, Outcome::Success).with_details(details)))
}

/// Deletes the first `limit` rows of `table`; returns how many it deleted.
fn delete_first(tx: &mut dyn WriteTxn, table: Table, limit: usize) -> Result<usize> {
    let mut keys = Vec::new();
    tx.visit(table, &KeyRange::all(), &mut |k, _| {
        keys.push(k.to_vec());
        Ok(if keys.len() >= limit { Visit::Stop } else { Visit::Continue })
    })?;
    for k in &keys {
        tx.delete(table, k)?;
    }
    Ok(keys.len())
}

impl CloneStore {
    /// Records a new clone run and its job, unless another clone is running
    /// (`AlreadyExists` naming it).
    pub async fn start_clone(&self, run: CloneRun, job: Job, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                if let Some(id) = running_clone_in(tx)? {
                    return Err(StoreError::AlreadyExists { kind: RowKind::RunningClone, id });
                }
                put_run(tx, &run)?;
                put_job_in(tx, &job)?;
                append_audit(tx, &audit)
            })
            .await
    }

    pub async fn clone_run(&self, id: CloneId) -> Result<Option<CloneRun>> {
        self.store.read(move |tx| read_run(tx, &id)).await
    }

    /// Every clone run, newest first.
    pub async fn clone_runs(&self) -> Result<Vec<CloneRun>> {
        let run = |k: String, v: &[u8]| run_from(CloneId::parse(&k).map_err(corrupt)?, decode(v)?);
        let mut runs = self.store.read(move |tx| every_row(tx, Table::CloneRuns, run)).await?;
        runs.sort_by(|a, b| b.started_at.cmp(&a.started_at).then_with(|| a.id.cmp(&b.id)));
        Ok(runs)
    }

    /// The specs the automatic exchange after a clone requests: this
    /// instance's specs as they are now, as `follow_up` picks them
    /// (`FollowUp::automatic_specs`).
    pub async fn automatic_specs(&self, follow_up: FollowUp) -> Result<Vec<Name>> {
        self.store.read(move |tx| Ok(follow_up.automatic_specs(specs_in(tx)?.into_iter().map(|s| s.name)))).await
    }

    /// Deletes up to `limit` rows of the staging table; returns how many.
    /// (Before a copy: what a crashed copy left; after a swap: the old data.)
    /// Relaxed: staging lost in a crash is cleared or rewritten again.
    pub async fn clear_staging(
        &self,
        id: CloneId,
        lease: Lease,
        lease_until: UnixMillis,
        limit: usize,
    ) -> Result<usize> {
        self.store
            .write_relaxed(move |tx| {
                renew_lease_in(tx, &clone_job_id(&id), &lease, lease_until)?;
                let table = staging_records(tx)?;
                // What is left of the table is being emptied: none of it counts.
                clear_debt(tx, table)?;
                delete_first(tx, table, limit)
            })
            .await
    }

    /// A copy starts (again): `total` records are coming.
    pub async fn begin_clone_copy(
        &self,
        id: CloneId,
        lease: Lease,
        lease_until: UnixMillis,
        total: u64,
        now: UnixMillis,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                let mut run = held_run(tx, &id, &lease, lease_until)?;
                (run.records_total, run.records_copied, run.copy_started_at, run.updated_at) = (total, 0, now, now);
                put_run(tx, &run)
            })
            .await
    }

    /// Writes one part of the snapshot's records into the staging table.
    pub async fn stage_clone_records(
        &self,
        id: CloneId,
        lease: Lease,
        lease_until: UnixMillis,
        records: Vec<StoredRecord>,
        now: UnixMillis,
    ) -> Result<CloneRun> {
        // Relaxed: a crash before the (durable) swap restarts the copy anyway.
        self.store
            .write_relaxed(move |tx| {
                let mut run = held_run(tx, &id, &lease, lease_until)?;
                let table = staging_records(tx)?;
                let mut debt = DebtDelta::default();
                for rec in &records {
                    let (k, v) = record_row(rec);
                    tx.put(table, &k, &v)?;
                    debt.add(&rec.key_id);
                }
                debt.apply(tx, table)?;
                run.records_copied += records.len() as u64;
                run.updated_at = now;
                put_run(tx, &run)?;
                Ok(run)
            })
            .await
    }

    /// The swap, in one transaction: the snapshot's catalog is merged in,
    /// the staged records become the records, the follow-up job (if any) is
    /// scheduled, the run is Completed.
    pub async fn swap_in_clone(
        &self,
        id: CloneId,
        lease: Lease,
        swap: CloneSwap,
        audit: Vec<AuditEvent>,
    ) -> Result<CloneRun> {
        let own = self.store.sys_id.clone();
        self.store
            .write(move |tx| {
                let CloneSwap { catalog, follow_up, exchanges, now, lease_until } = &swap;
                let (now, lease_until) = (*now, *lease_until);
                let mut run = held_run(tx, &id, &lease, lease_until)?;
                // The catalog is small: merged into the target's as it is in this
                // transaction (what the target has stays its own; see domain::clone_merge).
                let current = SnapshotCatalog {
                    modules: modules_in(tx)?,
                    specs: specs_in(tx)?,
                    policies: policies_in(tx, None)?,
                    properties: properties_in(tx)?,
                };
                let merge = merge_catalog(&current, catalog);
                for m in &merge.add_modules {
                    put_row(tx, Table::Modules, &str_key(m.name.as_str()), &ModuleRow::from(m))?;
                }
                for s in &merge.add_specs {
                    put_row(tx, Table::Specs, &str_key(s.name.as_str()), &SpecRow::from(s))?;
                }
                put_new_policies(tx, &merge.add_policies)?;
                for name in &merge.erase_properties {
                    tx.delete(Table::Properties, &str_key(name))?;
                }
                for p in &merge.set_properties {
                    put_property_in(tx, p)?;
                }
                swap_records_tables(tx)?;
                let mut events = vec![
                    AuditEvent::new(now, "system", "clone.merge", id.as_str(), Outcome::Success)
                        .with_details(merge.describe()),
                ];
                events.extend(rekeyed_after_swap(tx, &own, &id, now)?);
                if let Some(job) = follow_up {
                    put_job_in(tx, job)?;
                }
                run.state = CloneState::Completed;
                run.follow_up = exchanges.clone();
                (run.updated_at, run.finished_at, run.error) = (now, Some(now), None);
                put_run(tx, &run)?;
                append_audit(tx, &audit)?;
                append_audit(tx, &events)?;
                Ok(run)
            })
            .await
    }

    /// The clone is given up: Failed with `error`, its job removed; the
    /// previous data is untouched (the staging is cleared by the next clone).
    pub async fn fail_clone(
        &self,
        id: CloneId,
        lease: Lease,
        error: String,
        now: UnixMillis,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                finish_job_in(tx, &clone_job_id(&id), &lease)?;
                if let Some(mut run) = read_run(tx, &id)? {
                    run.state = CloneState::Failed;
                    (run.updated_at, run.finished_at, run.error) = (now, Some(now), Some(error.clone()));
                    put_run(tx, &run)?;
                }
                append_audit(tx, &audit)
            })
            .await
    }

    /// Notes why the last attempt failed (the job retries it).
    pub async fn note_clone_error(&self, id: CloneId, error: String, now: UnixMillis) -> Result<()> {
        self.store
            .write(move |tx| {
                if let Some(mut run) = read_run(tx, &id)?.filter(|r| r.state == CloneState::Running) {
                    (run.updated_at, run.error) = (now, Some(error.clone()));
                    put_run(tx, &run)?;
                }
                Ok(())
            })
            .await
    }
}
