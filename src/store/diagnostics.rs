//! Reads and the heartbeat write behind `Instance.Diagnose` and the metrics
//! endpoint. Counting decodes only the fields it needs, never key material.

use serde::Deserialize;

use super::engine::{KeyRange, Table, Visit};
use super::record_debt::debts_in;
use super::records::decode;
use super::stored_records::active_records;
use super::tuple::str_key;
use super::{DiagnosticsStore, META_SYS_ID, Result, StoreError};
use crate::domain::exchange::{ALL_STATUSES, ExchangeRole, RequestStatus};
use crate::domain::ids::UnixMillis;
use crate::domain::key::{ALL_STATES, KeyState};
use crate::domain::rekey::KeyDebt;

/// The row the store check overwrites on every diagnosis.
const HEARTBEAT: &str = "heartbeat";

/// Row counts for the metrics gauges; every state and status is present,
/// with 0 when there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreCounts {
    pub requests: Vec<(ExchangeRole, RequestStatus, u64)>,
    pub keys: Vec<(KeyState, u64)>,
    pub audit_entries: u64,
    /// Imported keys that records still depend on, and how many records
    /// each (the rekey debt, from its index).
    pub rekey_debt: Vec<KeyDebt>,
}

/// The fields of a key row that counting needs.
#[derive(Deserialize)]
pub(super) struct KeyStateOnly {
    state: String,
}

/// The fields of a request row that counting needs.
#[derive(Deserialize)]
pub(super) struct RequestStatusOnly {
    role: String,
    status: String,
}

impl DiagnosticsStore {
    /// The store check: a read (the instance identity is there) and a small
    /// write (the time of this check). Returns the previous heartbeat, if any.
    pub async fn heartbeat(&self, now: UnixMillis) -> Result<Option<UnixMillis>> {
        self.store
            .read(|tx| match tx.get(Table::Meta, META_SYS_ID.as_bytes())? {
                Some(_) => Ok(()),
                None => Err(StoreError::Corrupt("meta sys_id missing".into())),
            })
            .await?;
        self.store
            .write(move |tx| {
                let k = str_key(HEARTBEAT);
                let previous = match tx.get(Table::Diagnostics, &k)? {
                    Some(v) => Some(UnixMillis(i64::from_be_bytes(
                        v.as_slice().try_into().map_err(|_| StoreError::Corrupt("heartbeat row".into()))?,
                    ))),
                    None => None,
                };
                tx.put(Table::Diagnostics, &k, &now.0.to_be_bytes())?;
                Ok(previous)
            })
            .await
    }

    /// Requests by role and status, keys by state, and audit entries, from
    /// one read transaction.
    pub async fn counts(&self) -> Result<StoreCounts> {
        let own = self.store.sys_id.clone();
        self.store
            .read(move |tx| {
                let mut requests: Vec<(ExchangeRole, RequestStatus, u64)> =
                    [ExchangeRole::Source, ExchangeRole::Target]
                        .into_iter()
                        .flat_map(|role| ALL_STATUSES.into_iter().map(move |s| (role, s, 0)))
                        .collect();
                tx.visit(Table::Requests, &KeyRange::all(), &mut |_, v| {
                    let r: RequestStatusOnly = decode(v)?;
                    let role = match r.role.as_str() {
                        "source" => ExchangeRole::Source,
                        "target" => ExchangeRole::Target,
                        other => return Err(StoreError::Corrupt(format!("request role {other}"))),
                    };
                    let slot = requests
                        .iter_mut()
                        .find(|(ro, s, _)| *ro == role && s.label() == r.status)
                        .ok_or_else(|| StoreError::Corrupt(format!("request status {}", r.status)))?;
                    slot.2 += 1;
                    Ok(Visit::Continue)
                })?;
                let mut keys: Vec<(KeyState, u64)> = ALL_STATES.into_iter().map(|s| (s, 0)).collect();
                tx.visit(Table::Keys, &KeyRange::all(), &mut |_, v| {
                    let k: KeyStateOnly = decode(v)?;
                    let slot = keys
                        .iter_mut()
                        .find(|(s, _)| s.label() == k.state)
                        .ok_or_else(|| StoreError::Corrupt(format!("key state {}", k.state)))?;
                    slot.1 += 1;
                    Ok(Visit::Continue)
                })?;
                let audit_entries = tx.len(Table::Audit)?;
                let table = active_records(tx)?;
                let mut rekey_debt = debts_in(tx, table)?;
                rekey_debt.retain(|d| d.key_id.origin != own);
                Ok(StoreCounts { requests, keys, audit_entries, rekey_debt })
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{Host, SysId};
    use crate::store::Store;

    #[tokio::test]
    async fn heartbeat_and_counts_on_a_fresh_store() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::create_redb(&dir.path().join("db"), &SysId::from_random([1; 16]), &Host::parse("h:1").unwrap())
                .unwrap();
        let store = DiagnosticsStore::new(&std::sync::Arc::new(store));
        assert_eq!(store.heartbeat(UnixMillis(5)).await.unwrap(), None);
        assert_eq!(store.heartbeat(UnixMillis(9)).await.unwrap(), Some(UnixMillis(5)));
        let c = store.counts().await.unwrap();
        assert_eq!(c.requests.len(), 14);
        assert!(c.requests.iter().all(|r| r.2 == 0));
        assert_eq!(c.keys.len(), ALL_STATES.len());
        assert_eq!(c.audit_entries, 0);
        assert!(c.rekey_debt.is_empty());
    }
}
