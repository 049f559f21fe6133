//! Source side: One Time / Recurring Clone configurations, one per target,
//! created together with their Resource Exchange policies (and refused in
//! the same transaction if the automatic-exchange property changed since the
//! caller checked the guard). A One Time configuration is used up in the
//! transaction that completes its first exchange.

use serde::{Deserialize, Serialize};

use super::audit::append_audit;
use super::clone::every_row;
use super::engine::{Table, WriteTxn};
use super::policies::{delete_policy_in, put_new_policies, set_policy_active_in};
use super::properties::property_in;
use super::records::decode;
use super::tuple::str_key;
use super::{CloneStore, Result, RowKind, StoreError, corrupt, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::clone_exchange::{CloneExchange, UsedBy};
use crate::domain::exchange::PeerRef;
use crate::domain::ids::{Host, Name, RequestId, SysId, UnixMillis};
use crate::domain::policy::{AccessPolicy, ApprovalType};
use crate::domain::property::AUTO_KEY_EXCHANGE;

#[derive(Serialize, Deserialize)]
pub(super) struct CloneExchangeRow {
    v: u8,
    host: String,
    /// "one_time" or "recurring".
    approval: String,
    specs: Vec<String>,
    rekey: bool,
    /// "<module>/<policy>" of each policy created with it.
    policies: Vec<(String, String)>,
    created_at: i64,
    created_by: String,
    used_by: Option<(String, i64)>,
}

impl From<&CloneExchange> for CloneExchangeRow {
    fn from(c: &CloneExchange) -> Self {
        CloneExchangeRow {
            v: 1,
            host: c.target.host.to_string(),
            approval: match c.approval {
                ApprovalType::OneTime => "one_time".into(),
                ApprovalType::Recurring => "recurring".into(),
            },
            specs: c.specs.iter().map(ToString::to_string).collect(),
            rekey: c.rekey,
            policies: c.policies.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect(),
            created_at: c.created_at.0,
            created_by: c.created_by.clone(),
            used_by: c.used.as_ref().map(|u| (u.request.to_string(), u.at.0)),
        }
    }
}

pub(super) fn exchange_from(target: SysId, r: CloneExchangeRow) -> Result<CloneExchange> {
    let name = |s: &str, field| Name::parse(s, field).map_err(corrupt);
    Ok(CloneExchange {
        target: PeerRef { sys_id: target, host: Host::parse(&r.host).map_err(corrupt)? },
        approval: match r.approval.as_str() {
            "one_time" => ApprovalType::OneTime,
            "recurring" => ApprovalType::Recurring,
            other => return Err(corrupt(format!("approval type {other}"))),
        },
        specs: r.specs.iter().map(|s| name(s, "spec")).collect::<Result<_>>()?,
        rekey: r.rekey,
        policies: r
            .policies
            .iter()
            .map(|(m, p)| Ok((name(m, "module")?, name(p, "policy")?)))
            .collect::<Result<_>>()?,
        created_at: UnixMillis(r.created_at),
        created_by: r.created_by,
        used: match r.used_by {
            None => None,
            Some((id, at)) => Some(UsedBy { request: RequestId::parse(&id).map_err(corrupt)?, at: UnixMillis(at) }),
        },
    })
}

pub(super) fn read_exchange(tx: &mut dyn super::engine::ReadTxn, target: &SysId) -> Result<Option<CloneExchange>> {
    get_row::<CloneExchangeRow>(tx, Table::CloneExchanges, &str_key(target.as_str()))?
        .map(|r| exchange_from(target.clone(), r))
        .transpose()
}

/// Uses up the target's One Time configuration with the exchange that
/// completes `request` (see `RequestEffects::use_up`).
#[derive(Clone, Debug)]
pub struct UseUp {
    pub target: SysId,
    pub request: RequestId,
    pub at: UnixMillis,
    /// Appended only if a configuration was used up.
    pub audit: AuditEvent,
}

/// Marks the target's unused One Time configuration used and deactivates
/// its policies; returns whether it did.
pub(super) fn use_up_in(tx: &mut dyn WriteTxn, u: &UseUp) -> Result<bool> {
    let Some(mut cfg) = read_exchange(tx, &u.target)? else { return Ok(false) };
    if cfg.approval != ApprovalType::OneTime || cfg.used.is_some() {
        return Ok(false);
    }
    for (module, name) in &cfg.policies {
        match set_policy_active_in(tx, module, name, false) {
            Ok(_) | Err(StoreError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    cfg.used = Some(UsedBy { request: u.request.clone(), at: u.at });
    put_row(tx, Table::CloneExchanges, &str_key(u.target.as_str()), &CloneExchangeRow::from(&cfg))?;
    append_audit(tx, std::slice::from_ref(&u.audit))?;
    Ok(true)
}

impl CloneStore {
    /// Stores a new configuration (one per target, else `AlreadyExists`)
    /// with its policies and audit entry, if the automatic-exchange property
    /// is still `auto_seen` (its stored value; else `Stale`).
    pub async fn create_clone_exchange(
        &self,
        cfg: CloneExchange,
        policies: Vec<AccessPolicy>,
        auto_seen: Option<String>,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                let now_value = property_in(tx, AUTO_KEY_EXCHANGE)?.map(|p| p.value);
                if now_value != auto_seen {
                    return Err(StoreError::Stale { kind: RowKind::Property, id: AUTO_KEY_EXCHANGE.into() });
                }
                if read_exchange(tx, &cfg.target.sys_id)?.is_some() {
                    return Err(StoreError::AlreadyExists {
                        kind: RowKind::CloneExchange,
                        id: cfg.target.sys_id.to_string(),
                    });
                }
                put_new_policies(tx, &policies)?;
                let row = CloneExchangeRow::from(&cfg);
                put_row(tx, Table::CloneExchanges, &str_key(cfg.target.sys_id.as_str()), &row)?;
                append_audit(tx, &audit)
            })
            .await
    }

    pub async fn clone_exchange(&self, target: SysId) -> Result<Option<CloneExchange>> {
        self.store.read(move |tx| read_exchange(tx, &target)).await
    }

    pub async fn clone_exchanges(&self) -> Result<Vec<CloneExchange>> {
        let exchange = |k: String, v: &[u8]| exchange_from(SysId::parse(&k).map_err(corrupt)?, decode(v)?);
        self.store.read(move |tx| every_row(tx, Table::CloneExchanges, exchange)).await
    }

    /// Deletes the target's configuration and the policies made with it;
    /// returns it, or None if there was none (nothing written then).
    pub async fn delete_clone_exchange(&self, target: SysId, audit: Vec<AuditEvent>) -> Result<Option<CloneExchange>> {
        self.store
            .write(move |tx| {
                let Some(cfg) = read_exchange(tx, &target)? else { return Ok(None) };
                for (module, name) in &cfg.policies {
                    delete_policy_in(tx, module, name)?;
                }
                tx.delete(Table::CloneExchanges, &str_key(target.as_str()))?;
                // Its target's grant goes with it (a registered target clones again for a new one).
                super::clone::delete_grant_in(tx, &target)?;
                append_audit(tx, &audit)?;
                Ok(Some(cfg))
            })
            .await
    }
}
