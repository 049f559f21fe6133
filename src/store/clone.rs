//! Clone, source side: the registered clone targets, and the snapshot a
//! clone is served from (one read transaction, so one consistent view,
//! streamed part by part: nothing but one part is held in memory).

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::catalog::{modules_in, specs_in};
use super::clone_exchanges::read_exchange;
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::policies::policies_in;
use super::properties::{properties_in, property_in};
use super::records::decode;
use super::stored_records::{active_records, record_from_row};
use super::tuple::{KeyReader, str_key};
use super::{Result, Store, StoreError, corrupt, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::clone::{
    CloneGrant, CloneTarget, GrantBasis, SnapshotCatalog, SnapshotHeader, SnapshotPart, SystemApprovalFacts,
    system_approval_refusal,
};
use crate::domain::clone_exchange::ExchangePlan;
use crate::domain::exchange::Frequency;
use crate::domain::ids::{Host, Name, SysId, UnixMillis};
use crate::domain::property::{AUTO_KEY_EXCHANGE, is_protected, schema};

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

/// The refusal of a system approval inside its transaction: nothing is written.
pub const GRANT_REFUSED: &str = "clone grant";

/// Checks, in the approving transaction, that `a` may still be approved
/// without a person (`domain::clone::system_approval_refusal` on the rows as
/// they are now: the source's own automatic-exchange property, the clone
/// target, the configuration, the grant), then marks the grant used for the
/// request's frequency. Refused: `Stale { what: GRANT_REFUSED, id: why }`.
pub(super) fn system_approval_in(tx: &mut dyn WriteTxn, a: &SystemApproval) -> Result<()> {
    let mut grant = match check_system_approval(tx, a)? {
        Ok(grant) => grant,
        Err(why) => return Err(StoreError::Stale { what: GRANT_REFUSED, id: why }),
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

/// Whether the receiver still wants parts (false: it went away; stop).
pub type Emit<'a> = dyn FnMut(SnapshotPart) -> bool + 'a;

impl Store {
    /// Registers `target` (or replaces its host), with its audit entry.
    pub fn put_clone_target(&self, target: &CloneTarget, audit: &[AuditEvent]) -> Result<()> {
        let row = CloneTargetRow::from(target);
        self.write_blocking(|tx| {
            put_row(tx, Table::CloneTargets, &str_key(target.sys_id.as_str()), &row)?;
            append_audit(tx, audit)
        })
    }

    /// Returns whether the target was registered.
    pub fn remove_clone_target(&self, sys_id: &SysId, audit: &[AuditEvent]) -> Result<bool> {
        self.write_blocking(|tx| {
            let removed = tx.delete(Table::CloneTargets, &str_key(sys_id.as_str()))?;
            // Its grant goes with it: nothing approves that target's requests any more.
            delete_grant_in(tx, sys_id)?;
            if removed {
                append_audit(tx, audit)?;
            }
            Ok(removed)
        })
    }

    /// Records (or replaces) the grant of a complete clone, with its audit entry.
    pub fn put_clone_grant(&self, grant: &CloneGrant, audit: &[AuditEvent]) -> Result<()> {
        let row = CloneGrantRow::from(grant);
        self.write_blocking(|tx| {
            put_row(tx, Table::CloneGrants, &str_key(grant.target.as_str()), &row)?;
            append_audit(tx, audit)
        })
    }

    /// Why `a` may not be approved without a person as the rows stand now
    /// (the approving transaction checks again), or Ok.
    pub fn system_approval_refusal(&self, a: &SystemApproval) -> Result<std::result::Result<(), String>> {
        self.read_blocking(|tx| Ok(check_system_approval(tx, a)?.map(|_| ())))
    }

    pub fn clone_grant(&self, target: &SysId) -> Result<Option<CloneGrant>> {
        self.read_blocking(|tx| grant_in(tx, target))
    }

    pub fn clone_target(&self, sys_id: &SysId) -> Result<Option<CloneTarget>> {
        self.read_blocking(|tx| {
            get_row::<CloneTargetRow>(tx, Table::CloneTargets, &str_key(sys_id.as_str()))?
                .map(|r| target_from(sys_id.clone(), r))
                .transpose()
        })
    }

    pub fn clone_targets(&self) -> Result<Vec<CloneTarget>> {
        self.read_blocking(|tx| {
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
    /// the end (naming `grant`). Never reads a key. Returns whether the end was emitted
    /// (false: `emit` asked to stop). Blocking: holds a read transaction
    /// while `emit` waits for the receiver.
    pub fn snapshot(
        &self,
        taken_at: UnixMillis,
        per_part: usize,
        exchange: Option<ExchangePlan>,
        grant: Option<String>,
        emit: &mut Emit<'_>,
    ) -> Result<bool> {
        let per_part = per_part.max(1);
        self.read_blocking(|tx| {
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
            Ok(emit(SnapshotPart::End { records: sent, grant }))
        })
    }
}

// Transitional: async forms of the methods another service group calls,
// run on the blocking pool; the sync forms go when no blocking closure is left.
impl super::CloneStore {
    pub async fn system_approval_refusal(&self, a: SystemApproval) -> Result<std::result::Result<(), String>> {
        self.store.call(move |s| s.system_approval_refusal(&a)).await
    }

    pub async fn clone_target(&self, sys_id: SysId) -> Result<Option<CloneTarget>> {
        self.store.call(move |s| s.clone_target(&sys_id)).await
    }
}
