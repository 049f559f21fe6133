//! Clone, source side: the registered clone targets, and the snapshot a
//! clone is served from (one read transaction, so one consistent view,
//! streamed part by part: nothing but one part is held in memory).

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::catalog::{modules_in, specs_in};
use super::engine::{KeyRange, Table, Visit};
use super::policies::policies_in;
use super::properties::properties_in;
use super::records::decode;
use super::stored_records::{active_records, record_from_row};
use super::tuple::{KeyReader, str_key};
use super::{Change, Result, Store, corrupt, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::clone::{CloneGrant, CloneTarget, SnapshotCatalog, SnapshotHeader, SnapshotPart};
use crate::domain::clone_exchange::ExchangePlan;
use crate::domain::ids::{Host, Name, SysId, UnixMillis};
use crate::domain::property::is_protected;

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
}

impl From<&CloneGrant> for CloneGrantRow {
    fn from(g: &CloneGrant) -> Self {
        CloneGrantRow {
            v: 1,
            specs: g.specs.iter().map(ToString::to_string).collect(),
            granted_at: g.granted_at.0,
            expires_at: g.expires_at.0,
        }
    }
}

pub(super) fn grant_from(target: SysId, r: CloneGrantRow) -> Result<CloneGrant> {
    let specs = r.specs.iter().map(|s| Name::parse(s, "spec").map_err(corrupt)).collect::<Result<_>>()?;
    Ok(CloneGrant { target, specs, granted_at: UnixMillis(r.granted_at), expires_at: UnixMillis(r.expires_at) })
}

/// Whether the receiver still wants parts (false: it went away; stop).
pub type Emit<'a> = dyn FnMut(SnapshotPart) -> bool + 'a;

impl Store {
    /// Registers `target` (or replaces its host), with its audit entry.
    pub fn put_clone_target(&self, target: &CloneTarget, audit: &[AuditEvent]) -> Result<()> {
        let row = CloneTargetRow::from(target);
        self.write(&[Change::Other], |tx| {
            put_row(tx, Table::CloneTargets, &str_key(target.sys_id.as_str()), &row)?;
            append_audit(tx, audit)
        })
    }

    /// Returns whether the target was registered.
    pub fn remove_clone_target(&self, sys_id: &SysId, audit: &[AuditEvent]) -> Result<bool> {
        self.write(&[Change::Other], |tx| {
            let removed = tx.delete(Table::CloneTargets, &str_key(sys_id.as_str()))?;
            if removed {
                append_audit(tx, audit)?;
            }
            Ok(removed)
        })
    }

    /// Records (or replaces) the grant of a complete clone, with its audit entry.
    pub fn put_clone_grant(&self, grant: &CloneGrant, audit: &[AuditEvent]) -> Result<()> {
        let row = CloneGrantRow::from(grant);
        self.write(&[Change::Other], |tx| {
            put_row(tx, Table::CloneGrants, &str_key(grant.target.as_str()), &row)?;
            append_audit(tx, audit)
        })
    }

    pub fn clone_grant(&self, target: &SysId) -> Result<Option<CloneGrant>> {
        self.read(|tx| {
            get_row::<CloneGrantRow>(tx, Table::CloneGrants, &str_key(target.as_str()))?
                .map(|r| grant_from(target.clone(), r))
                .transpose()
        })
    }

    pub fn clone_target(&self, sys_id: &SysId) -> Result<Option<CloneTarget>> {
        self.read(|tx| {
            get_row::<CloneTargetRow>(tx, Table::CloneTargets, &str_key(sys_id.as_str()))?
                .map(|r| target_from(sys_id.clone(), r))
                .transpose()
        })
    }

    pub fn clone_targets(&self) -> Result<Vec<CloneTarget>> {
        self.read(|tx| {
            let mut out = Vec::new();
            tx.visit(Table::CloneTargets, &KeyRange::all(), &mut |k, v| {
                let id = SysId::parse(&KeyReader::new(k).str()?).map_err(corrupt)?;
                out.push(target_from(id, decode(v)?)?);
                Ok(Visit::Continue)
            })?;
            Ok(out)
        })
    }

    /// Streams one consistent snapshot through `emit`: the header, the
    /// catalog parts, the records `per_part` at a time in address order,
    /// the end. Never reads a key. Returns whether the end was emitted
    /// (false: `emit` asked to stop). Blocking: holds a read transaction
    /// while `emit` waits for the receiver.
    pub fn snapshot(
        &self,
        taken_at: UnixMillis,
        per_part: usize,
        exchange: Option<ExchangePlan>,
        emit: &mut Emit<'_>,
    ) -> Result<bool> {
        let per_part = per_part.max(1);
        self.read(|tx| {
            let table = active_records(tx)?;
            let records = tx.len(table)?;
            let header = SnapshotHeader { source: self.sys_id.clone(), taken_at, records, exchange };
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
            Ok(emit(SnapshotPart::End { records: sent }))
        })
    }
}
