//! Module access policy rows, keyed "<module>/<name>".

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn};
use super::records::decode;
use super::tuple::str_key;
use super::{PolicyStore, Result, RowKind, StoreError, corrupt, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::auth::Role;
use crate::domain::ids::{Host, Name, SysId, UnixMillis};
use crate::domain::policy::{AccessPolicy, ApprovalType, Operation, PolicyResult, PolicyType};

#[derive(Serialize, Deserialize)]
pub(super) struct PolicyRow {
    v: u8,
    name: String,
    module: String,
    kind: String,
    /// Role name, script identity, or target sys_id.
    who: String,
    target_host: String,
    approval: String,
    result: String,
    spec: Option<String>,
    operations: Vec<String>,
    active: bool,
    created_at: i64,
}

fn key(module: &Name, name: &Name) -> String {
    format!("{module}/{name}")
}

impl From<&AccessPolicy> for PolicyRow {
    fn from(p: &AccessPolicy) -> Self {
        let (kind, who, target_host, approval) = match &p.kind {
            PolicyType::Role(r) => ("role", r.as_str().to_owned(), String::new(), String::new()),
            PolicyType::Script(s) => ("script", s.clone(), String::new(), String::new()),
            PolicyType::System => ("system", String::new(), String::new(), String::new()),
            PolicyType::ResourceExchange { target_sys_id, target_host, approval } => (
                "resource_exchange",
                target_sys_id.to_string(),
                target_host.to_string(),
                match approval {
                    ApprovalType::OneTime => "one_time".into(),
                    ApprovalType::Recurring => "recurring".into(),
                },
            ),
        };
        PolicyRow {
            v: 1,
            name: p.name.to_string(),
            module: p.module.to_string(),
            kind: kind.into(),
            who,
            target_host,
            approval,
            result: p.result.as_str().into(),
            spec: p.spec.as_ref().map(ToString::to_string),
            operations: p.operations.iter().map(|o| o.as_str().to_owned()).collect(),
            active: p.active,
            created_at: p.created_at.0,
        }
    }
}

impl TryFrom<PolicyRow> for AccessPolicy {
    type Error = StoreError;
    fn try_from(r: PolicyRow) -> Result<Self> {
        let kind = match r.kind.as_str() {
            "role" => PolicyType::Role(Role::parse(&r.who).map_err(corrupt)?),
            "script" => PolicyType::Script(r.who),
            "system" => PolicyType::System,
            "resource_exchange" => PolicyType::ResourceExchange {
                target_sys_id: SysId::parse(&r.who).map_err(corrupt)?,
                target_host: Host::parse(&r.target_host).map_err(corrupt)?,
                approval: if r.approval == "recurring" { ApprovalType::Recurring } else { ApprovalType::OneTime },
            },
            other => return Err(corrupt(format!("policy kind {other}"))),
        };
        let result = match r.result.as_str() {
            "Track" => PolicyResult::Track,
            "Reject" => PolicyResult::Reject,
            "StrictReject" => PolicyResult::StrictReject,
            other => return Err(corrupt(format!("policy result {other}"))),
        };
        Ok(AccessPolicy {
            name: Name::parse(&r.name, "name").map_err(corrupt)?,
            module: Name::parse(&r.module, "module").map_err(corrupt)?,
            kind,
            result,
            spec: r.spec.map(|s| Name::parse(&s, "spec")).transpose().map_err(corrupt)?,
            operations: r
                .operations
                .iter()
                .map(|o| Operation::parse(o).ok_or_else(|| corrupt(format!("operation {o}"))))
                .collect::<Result<_>>()?,
            active: r.active,
            created_at: UnixMillis(r.created_at),
        })
    }
}

impl PolicyStore {
    /// Inserts new policies (refusing existing names), atomically.
    pub async fn insert_policies(&self, policies: Vec<AccessPolicy>, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                put_new_policies(tx, &policies)?;
                append_audit(tx, &audit)
            })
            .await
    }

    /// Activates or deactivates an existing policy, reading and writing it
    /// in one transaction; returns it as written.
    pub async fn set_policy_active(
        &self,
        module: Name,
        name: Name,
        active: bool,
        audit: Vec<AuditEvent>,
    ) -> Result<AccessPolicy> {
        self.store
            .write(move |tx| {
                let p = set_policy_active_in(tx, &module, &name, active)?;
                append_audit(tx, &audit)?;
                Ok(p)
            })
            .await
    }

    /// The policies of `module` (all modules when None).
    pub async fn policies(&self, module: Option<Name>) -> Result<Vec<AccessPolicy>> {
        self.store.read(move |tx| policies_in(tx, module.as_ref())).await
    }
}

/// Activates or deactivates an existing policy inside the caller's transaction.
pub(super) fn set_policy_active_in(
    tx: &mut dyn WriteTxn,
    module: &Name,
    name: &Name,
    active: bool,
) -> Result<AccessPolicy> {
    let id = key(module, name);
    let k = str_key(&id);
    let row: PolicyRow =
        get_row(tx, Table::AccessPolicies, &k)?.ok_or(StoreError::Missing { kind: RowKind::AccessPolicy, id })?;
    let mut p: AccessPolicy = row.try_into()?;
    p.active = active;
    put_row(tx, Table::AccessPolicies, &k, &PolicyRow::from(&p))?;
    Ok(p)
}

/// Deletes a policy inside the caller's transaction; returns whether it existed.
pub(super) fn delete_policy_in(tx: &mut dyn WriteTxn, module: &Name, name: &Name) -> Result<bool> {
    tx.delete(Table::AccessPolicies, &str_key(&key(module, name)))
}

/// Inserts policies inside the caller's transaction, refusing existing names.
pub(super) fn put_new_policies(tx: &mut dyn WriteTxn, policies: &[AccessPolicy]) -> Result<()> {
    for p in policies {
        let k = str_key(&key(&p.module, &p.name));
        if tx.get(Table::AccessPolicies, &k)?.is_some() {
            return Err(StoreError::AlreadyExists { kind: RowKind::AccessPolicy, id: key(&p.module, &p.name) });
        }
        put_row(tx, Table::AccessPolicies, &k, &PolicyRow::from(p))?;
    }
    Ok(())
}

/// The policies of `module` (all modules when None), inside a transaction.
pub(super) fn policies_in(tx: &mut dyn ReadTxn, module: Option<&Name>) -> Result<Vec<AccessPolicy>> {
    let mut out = Vec::new();
    tx.visit(Table::AccessPolicies, &KeyRange::all(), &mut |_, v| {
        let p: AccessPolicy = decode::<PolicyRow>(v)?.try_into()?;
        if module.is_none_or(|m| &p.module == m) {
            out.push(p);
        }
        Ok(Visit::Continue)
    })?;
    Ok(out)
}
