//! Clone, source side: the registered clone targets, and the snapshot a
//! clone is served from (one read transaction, so one consistent view,
//! streamed part by part: nothing but one part is held in memory).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::audit::append_audit;
use super::catalog::{modules_in, specs_in};
use super::clone_exchanges::read_exchange;
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::policies::policies_in;
use super::properties::{properties_in, property_in};
use super::records::decode;
use super::stored_records::{active_records, record_from_row};
use super::tuple::{KeyReader, str_key};
use super::{BackendError, CloneStore, Result, StoreError, corrupt, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::clone::{
    CloneGrant, CloneTarget, GrantBasis, SnapshotCatalog, SnapshotHeader, SnapshotPart, SystemApprovalFacts,
    system_approval_refusal,
};
use crate::domain::clone_exchange::ExchangePlan;
use crate::domain::exchange::Frequency;
use crate::domain::ids::{Host, Name, SysId, UnixMillis};
use crate::domain::property::{AUTO_KEY_EXCHANGE, is_protected, schema};
use crate::offload;

#[derive(Serialize, Deserialize)]
pub(super) struct CloneTargetRow {
    v: u8,
    host: String,
    added_at: i64,
    added_by: String,
}

impl From<&CloneTarget> for CloneTargetRow {
    fn from(t: &CloneTarget) -> Self {
        CloneTargetRow { v: 1, host: t.host.to_string(), added_at: t.added_at.0, added_by: t.added_by.clone() }
    }
}

pub(super) fn target_from(sys_id: SysId, r: CloneTargetRow) -> Result<CloneTarget> {
    Ok(CloneTarget {
        sys_id,
        host: Host::parse(&r.host).map_err(corrupt)?,
        added_at: UnixMillis(r.added_at),
        added_by: r.added_by,
    })
}

#[derive(Serialize, Deserialize)]
pub(super) struct CloneGrantRow {
    v: u8,
    specs: Vec<String>,
    granted_at: i64,
    expires_at: i64,
    /// Absent in rows written before grants had ids (the schema-3 migration
    /// deletes those; a row without one approves nothing).
    #[serde(default)]
    id: String,
    /// "registered" or "configuration".
    #[serde(default)]
    basis: String,
    /// Frequencies whose approval used the grant.
    #[serde(default)]
    used: Vec<String>,
}

impl From<&CloneGrant> for CloneGrantRow {
    fn from(g: &CloneGrant) -> Self {
        CloneGrantRow {
            v: 2,
            specs: g.specs.iter().map(ToString::to_string).collect(),
            granted_at: g.granted_at.0,
            expires_at: g.expires_at.0,
            id: g.id.clone(),
            basis: match g.basis {
                GrantBasis::Registered => "registered".into(),
                GrantBasis::Configuration => "configuration".into(),
            },
            used: g.used.iter().map(|f| f.label().to_owned()).collect(),
        }
    }
}

pub(super) fn grant_from(target: SysId, r: CloneGrantRow) -> Result<CloneGrant> {
    let specs = r.specs.iter().map(|s| Name::parse(s, "spec").map_err(corrupt)).collect::<Result<_>>()?;
    let frequencies = [Frequency::Adhoc, Frequency::Automatic, Frequency::OneTimeClone, Frequency::RecurringClone];
    let used = r
        .used
        .iter()
        .map(|u| frequencies.into_iter().find(|f| f.label() == u).ok_or_else(|| corrupt(format!("frequency {u}"))))
        .collect::<Result<_>>()?;
    Ok(CloneGrant {
        id: r.id,
        target,
        specs,
        basis: if r.basis == "configuration" { GrantBasis::Configuration } else { GrantBasis::Registered },
        granted_at: UnixMillis(r.granted_at),
        expires_at: UnixMillis(r.expires_at),
        used,
    })
}

pub(super) fn grant_in(tx: &mut dyn ReadTxn, target: &SysId) -> Result<Option<CloneGrant>> {
    get_row::<CloneGrantRow>(tx, Table::CloneGrants, &str_key(target.as_str()))?
        .map(|r| grant_from(target.clone(), r))
        .transpose()
}

/// Deletes the target's clone grant (with its target or configuration).
pub(super) fn delete_grant_in(tx: &mut dyn WriteTxn, target: &SysId) -> Result<bool> {
    tx.delete(Table::CloneGrants, &str_key(target.as_str()))
}

/// A request after a clone approved without a person (see
/// `RequestEffects::system_approval`): re-checked and used up in the
/// approving transaction.
#[derive(Clone, Debug)]
pub struct SystemApproval {
    pub target: SysId,
    pub frequency: Frequency,
    /// The grant id the request echoed.
    pub presented: Option<String>,
    pub specs: Vec<Name>,
    pub at: UnixMillis,
}

/// Checks, in the approving transaction, that `a` may still be approved
/// without a person (`domain::clone::system_approval_refusal` on the rows as
/// they are now: the source's own automatic-exchange property, the clone
/// target, the configuration, the grant), then marks the grant used for the
/// request's frequency. Refused: `GrantRefused(why)`, and nothing is written.
pub(super) fn system_approval_in(tx: &mut dyn WriteTxn, a: &SystemApproval) -> Result<()> {
    let mut grant = match check_system_approval(tx, a)? {
        Ok(grant) => grant,
        Err(why) => return Err(StoreError::GrantRefused(why)),
    };
    grant.used.push(a.frequency);
    put_row(tx, Table::CloneGrants, &str_key(a.target.as_str()), &CloneGrantRow::from(&grant))
}

/// The grant that approves `a` as the rows stand in `tx`, or why none does.
fn check_system_approval(tx: &mut dyn ReadTxn, a: &SystemApproval) -> Result<std::result::Result<CloneGrant, String>> {
    let stored = property_in(tx, AUTO_KEY_EXCHANGE)?.map(|p| p.value);
    let source_auto_enabled = stored.as_deref().or(schema(AUTO_KEY_EXCHANGE).1) == Some("true");
    let registered = tx.get(Table::CloneTargets, &str_key(a.target.as_str()))?.is_some();
    let configuration = read_exchange(tx, &a.target)?;
    let grant = grant_in(tx, &a.target)?;
    let facts = SystemApprovalFacts {
        frequency: a.frequency,
        presented: a.presented.as_deref(),
        specs: &a.specs,
        now: a.at,
        source_auto_enabled,
        registered,
        configuration: configuration.as_ref(),
        grant: grant.as_ref(),
    };
    if let Err(why) = system_approval_refusal(&facts) {
        return Ok(Err(why));
    }
    Ok(grant.ok_or_else(|| "no clone grant".to_owned()))
}

pub(super) fn target_in(tx: &mut dyn ReadTxn, sys_id: &SysId) -> Result<Option<CloneTarget>> {
    get_row::<CloneTargetRow>(tx, Table::CloneTargets, &str_key(sys_id.as_str()))?
        .map(|r| target_from(sys_id.clone(), r))
        .transpose()
}

/// Every row of `table` (keyed by one string), each made by `row` from its
/// key and its value.
pub(super) fn every_row<T>(
    tx: &mut dyn ReadTxn,
    table: Table,
    mut row: impl FnMut(String, &[u8]) -> Result<T>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    tx.visit(table, &KeyRange::all(), &mut |k, v| {
        out.push(row(KeyReader::new(k).str()?, v)?);
        Ok(Visit::Continue)
    })?;
    Ok(out)
}

/// Parts the snapshot's read hands over ahead of the one being taken.
const PARTS_AHEAD: usize = 1;

/// A snapshot being read (`CloneStore::snapshot`): one read transaction,
/// so one consistent view, on the blocking pool, handing its parts over a
/// small channel in order. Each `next` is one page.
pub struct SnapshotRead {
    parts: mpsc::Receiver<SnapshotPart>,
    read: tokio::task::JoinHandle<Result<bool>>,
}

impl std::fmt::Debug for SnapshotRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotRead").finish_non_exhaustive()
    }
}

impl SnapshotRead {
    /// The next part; None once the read ended (`end` says how).
    pub async fn next(&mut self) -> Option<SnapshotPart> {
        self.parts.recv().await
    }

    /// Stops the read if it still runs (its parts are no longer taken) and
    /// says how it ended: true when the end part was handed over, false when
    /// it stopped before.
    pub async fn end(self) -> Result<bool> {
        drop(self.parts);
        self.read.await.map_err(|e| BackendError::Task(format!("the snapshot read failed: {e}")))?
    }
}

impl CloneStore {
    /// Puts one row with its audit entries, in one transaction.
    async fn put_audited<R>(&self, table: Table, key: Vec<u8>, row: R, audit: Vec<AuditEvent>) -> Result<()>
    where
        R: Serialize + Send + 'static,
    {
        self.store
            .write(move |tx| {
                put_row(tx, table, &key, &row)?;
                append_audit(tx, &audit)
            })
            .await
    }

    /// Registers `target` (or replaces its host), with its audit entry.
    pub async fn put_clone_target(&self, target: CloneTarget, audit: Vec<AuditEvent>) -> Result<()> {
        let key = str_key(target.sys_id.as_str());
        self.put_audited(Table::CloneTargets, key, CloneTargetRow::from(&target), audit).await
    }

    /// Returns whether the target was registered.
    pub async fn remove_clone_target(&self, sys_id: SysId, audit: Vec<AuditEvent>) -> Result<bool> {
        self.store
            .write(move |tx| {
                let removed = tx.delete(Table::CloneTargets, &str_key(sys_id.as_str()))?;
                // Its grant goes with it: nothing approves that target's requests any more.
                delete_grant_in(tx, &sys_id)?;
                if removed {
                    append_audit(tx, &audit)?;
                }
                Ok(removed)
            })
            .await
    }

    /// Records (or replaces) the grant of a complete clone, with its audit entry.
    pub async fn put_clone_grant(&self, grant: CloneGrant, audit: Vec<AuditEvent>) -> Result<()> {
        let key = str_key(grant.target.as_str());
        self.put_audited(Table::CloneGrants, key, CloneGrantRow::from(&grant), audit).await
    }

    /// Why `a` may not be approved without a person as the rows stand now
    /// (the approving transaction checks again), or Ok.
    pub async fn system_approval_refusal(&self, a: SystemApproval) -> Result<std::result::Result<(), String>> {
        self.store.read(move |tx| Ok(check_system_approval(tx, &a)?.map(|_| ()))).await
    }

    pub async fn clone_grant(&self, target: SysId) -> Result<Option<CloneGrant>> {
        self.store.read(move |tx| grant_in(tx, &target)).await
    }

    pub async fn clone_target(&self, sys_id: SysId) -> Result<Option<CloneTarget>> {
        self.store.read(move |tx| target_in(tx, &sys_id)).await
    }

    pub async fn clone_targets(&self) -> Result<Vec<CloneTarget>> {
        let target = |k: String, v: &[u8]| target_from(SysId::parse(&k).map_err(corrupt)?, decode(v)?);
        self.store.read(move |tx| every_row(tx, Table::CloneTargets, target)).await
    }

    /// Starts reading one consistent snapshot (returns at once; the parts
    /// come through the `SnapshotRead`): the header, the catalog parts, the
    /// records `per_part` at a time in address order, the end (naming
    /// `grant`). Never reads a key. The read holds its transaction on the
    /// blocking pool while the taker is slow, and stops when it is dropped.
    pub fn snapshot(
        &self,
        taken_at: UnixMillis,
        per_part: usize,
        exchange: Option<ExchangePlan>,
        grant: Option<String>,
    ) -> SnapshotRead {
        let (parts, taken) = mpsc::channel(PARTS_AHEAD);
        let store = Arc::clone(&self.store);
        let read = tokio::spawn(offload::run(move || {
            let source = store.sys_id.clone();
            let mut emit = |part: SnapshotPart| parts.blocking_send(part).is_ok();
            store.read_blocking(|tx| read_snapshot(tx, source, taken_at, per_part, exchange, grant, &mut emit))
        }));
        SnapshotRead { parts: taken, read }
    }
}

/// Emits the snapshot `tx` sees (see `CloneStore::snapshot`); false when
/// `emit` asked to stop.
fn read_snapshot(
    tx: &mut dyn ReadTxn,
    source: SysId,
    taken_at: UnixMillis,
    per_part: usize,
    exchange: Option<ExchangePlan>,
    grant: Option<String>,
    emit: &mut dyn FnMut(SnapshotPart) -> bool,
) -> Result<bool> {
    let per_part = per_part.max(1);
    let table = active_records(tx)?;
    let records = tx.len(table)?;
    let header = SnapshotHeader { source, taken_at, records, exchange };
    if !emit(SnapshotPart::Header(header)) {
        return Ok(false);
    }
    let catalog = SnapshotCatalog {
        modules: modules_in(tx)?,
        specs: specs_in(tx)?,
        policies: policies_in(tx, None)?,
        // Protected properties are the instance's own: never sent.
        properties: properties_in(tx)?.into_iter().filter(|p| !is_protected(&p.name)).collect(),
    };
    for part in catalog.into_parts() {
        if !emit(SnapshotPart::Catalog(part)) {
            return Ok(false);
        }
    }
    let (mut batch, mut sent, mut open) = (Vec::with_capacity(per_part), 0u64, true);
    tx.visit(table, &KeyRange::all(), &mut |k, v| {
        batch.push(record_from_row(k, v)?);
        if batch.len() >= per_part {
            sent += batch.len() as u64;
            open = emit(SnapshotPart::Records(std::mem::replace(&mut batch, Vec::with_capacity(per_part))));
        }
        Ok(if open { Visit::Continue } else { Visit::Stop })
    })?;
    if !open {
        return Ok(false);
    }
    if !batch.is_empty() {
        sent += batch.len() as u64;
        if !emit(SnapshotPart::Records(batch)) {
            return Ok(false);
        }
    }
    Ok(emit(SnapshotPart::End { records: sent, grant }))
}
