//! Modules, specs, keys and lifecycle policies.

use super::audit::append_audit;
use super::engine::{KeyRange, ReadTxn, Table, Visit, WriteTxn, scan};
use super::records::{KeyRow, LifecyclePolicyRow, ModuleRow, SpecRow, decode, scope_key};
use super::tuple::{KeyBuf, str_key};
use super::{CatalogStore, Result, RowKind, StoreError, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::ids::{KeyId, Name};
use crate::domain::key::{KeyRecord, KeyState, LifecycleDefinition, LifecyclePolicy, WrappedKey, effective_cap};
use crate::domain::policy::AccessPolicy;
use crate::domain::spec::{Module, Spec};

pub(crate) fn key_key(id: &KeyId) -> Vec<u8> {
    KeyBuf::new().str(id.spec.as_str()).str(id.origin.as_str()).u32(id.version).done()
}

pub(super) fn spec_prefix(spec: &Name) -> Vec<u8> {
    KeyBuf::new().str(spec.as_str()).done()
}

pub(super) fn decode_key(bytes: &[u8]) -> Result<(KeyRecord, WrappedKey)> {
    decode::<KeyRow>(bytes)?.try_into()
}

fn all_rows<T>(tx: &mut dyn ReadTxn, table: Table, mut f: impl FnMut(&[u8]) -> Result<T>) -> Result<Vec<T>> {
    let mut out = Vec::new();
    tx.visit(table, &KeyRange::all(), &mut |_, v| {
        out.push(f(v)?);
        Ok(Visit::Continue)
    })?;
    Ok(out)
}

/// Inserts keys in one bulk write; the ids of those that already existed
/// (and were not written).
pub(crate) fn insert_new_keys(tx: &mut dyn WriteTxn, rows: &[(KeyRecord, WrappedKey)]) -> Result<Vec<KeyId>> {
    let encoded: Vec<(Vec<u8>, Vec<u8>)> =
        rows.iter().map(|(rec, w)| (key_key(&rec.id), super::records::encode(&KeyRow::new(rec, w)))).collect();
    let inserted = tx.insert_absent(Table::Keys, &encoded)?;
    Ok(rows.iter().zip(inserted).filter(|(_, new)| !new).map(|((rec, _), _)| rec.id.clone()).collect())
}

impl CatalogStore {
    // === modules and specs ===

    /// Inserts a module and its initial access policies.
    pub async fn insert_module(
        &self,
        module: Module,
        policies: Vec<AccessPolicy>,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                put_new_row(tx, Table::Modules, RowKind::Module, &module.name, &ModuleRow::from(&module))?;
                super::policies::put_new_policies(tx, &policies)?;
                append_audit(tx, &audit)
            })
            .await
    }

    pub async fn module(&self, name: Name) -> Result<Option<Module>> {
        self.store
            .read(move |tx| {
                get_row::<ModuleRow>(tx, Table::Modules, &str_key(name.as_str()))?.map(TryInto::try_into).transpose()
            })
            .await
    }

    pub async fn modules(&self) -> Result<Vec<Module>> {
        self.store.read(modules_in).await
    }

    pub async fn insert_spec(&self, spec: Spec, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                put_new_row(tx, Table::Specs, RowKind::Spec, &spec.name, &SpecRow::from(&spec))?;
                append_audit(tx, &audit)
            })
            .await
    }

    /// Replaces an existing spec, conditionally: the stored spec must still
    /// be `read` (else `Stale`; `Missing` when it is gone).
    pub async fn update_spec(&self, read: Spec, spec: Spec, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                check_spec_in(tx, &read)?;
                put_row(tx, Table::Specs, &str_key(spec.name.as_str()), &SpecRow::from(&spec))?;
                append_audit(tx, &audit)
            })
            .await
    }

    /// Sets `read`'s lifecycle definition, conditionally, in one
    /// transaction: the stored spec must still be `read`, and the cap of the
    /// lifecycle policies in force for its module (read here) must still be
    /// `cap_checked`, the cap the caller checked `lifecycle` against (else
    /// `Stale`: the caller reads again and decides again). Returns the spec.
    pub async fn set_spec_lifecycle(
        &self,
        read: Spec,
        lifecycle: LifecycleDefinition,
        cap_checked: Option<i64>,
        audit: Vec<AuditEvent>,
    ) -> Result<Spec> {
        self.store
            .write(move |tx| {
                check_spec_in(tx, &read)?;
                let policies = lifecycle_policies_in(tx)?;
                if effective_cap(&policies, &read.module) != cap_checked {
                    return Err(StoreError::Stale { kind: RowKind::LifecyclePolicyCap, id: read.module.to_string() });
                }
                let spec = Spec { lifecycle, ..read.clone() };
                put_row(tx, Table::Specs, &str_key(spec.name.as_str()), &SpecRow::from(&spec))?;
                append_audit(tx, &audit)?;
                Ok(spec)
            })
            .await
    }

    pub async fn spec(&self, name: Name) -> Result<Option<Spec>> {
        self.store.read(move |tx| spec_in(tx, &name)).await
    }

    pub async fn specs(&self) -> Result<Vec<Spec>> {
        self.store.read(specs_in).await
    }

    // === keys ===

    /// Every key of `spec` with its wrapped material, ordered by origin and
    /// version. For one spec's listing; bulk readers use `keys_page`.
    pub async fn keys(&self, spec: Name) -> Result<Vec<(KeyRecord, WrappedKey)>> {
        self.keys_page(spec, None, usize::MAX).await
    }

    /// Up to `limit` keys of `spec` after the key `after` (a cursor), in order.
    pub async fn keys_page(
        &self,
        spec: Name,
        after: Option<KeyId>,
        limit: usize,
    ) -> Result<Vec<(KeyRecord, WrappedKey)>> {
        self.store.read(move |tx| keys_page_in(tx, &spec, after.as_ref(), limit)).await
    }

    /// How many keys `spec` has (rows are counted, not decoded).
    pub async fn count_keys_of(&self, spec: Name) -> Result<u64> {
        self.store.read(move |tx| count_keys_of_in(tx, &spec)).await
    }

    /// The first key of `spec` (in key order) that `pick` accepts.
    pub async fn find_key(
        &self,
        spec: Name,
        pick: impl Fn(&KeyRecord) -> bool + Send + 'static,
    ) -> Result<Option<(KeyRecord, WrappedKey)>> {
        self.store.read(move |tx| find_key_in(tx, &spec, pick)).await
    }

    pub async fn key(&self, id: KeyId) -> Result<Option<(KeyRecord, WrappedKey)>> {
        self.store.read(move |tx| key_in(tx, &id)).await
    }

    /// Inserts new key rows in one transaction (refusing existing ids).
    pub async fn insert_keys(&self, rows: Vec<(KeyRecord, WrappedKey)>, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                if let Some(id) = insert_new_keys(tx, &rows)?.first() {
                    return Err(StoreError::AlreadyExists { kind: RowKind::Key, id: id.to_string() });
                }
                append_audit(tx, &audit)
            })
            .await
    }

    /// A planned key change, conditionally: every key in `updated` must still
    /// be as it was in `read` (the records the plan was made from), and the
    /// new key must not exist. A key moving to Destroyed loses its wrapped
    /// material here.
    pub async fn apply_key_change(
        &self,
        read: Vec<KeyRecord>,
        updated: Vec<KeyRecord>,
        new_key: Option<(KeyRecord, WrappedKey)>,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                for rec in &updated {
                    let k = key_key(&rec.id);
                    let stored = tx.get(Table::Keys, &k)?;
                    let (current, wrapped) = match stored {
                        Some(b) => decode_key(&b)?,
                        None => return Err(StoreError::Missing { kind: RowKind::Key, id: rec.id.to_string() }),
                    };
                    if read.iter().find(|r| r.id == rec.id) != Some(&current) {
                        return Err(StoreError::Stale { kind: RowKind::Key, id: rec.id.to_string() });
                    }
                    let wrapped = if rec.state == KeyState::Destroyed { WrappedKey(Vec::new()) } else { wrapped };
                    put_row(tx, Table::Keys, &k, &KeyRow::new(rec, &wrapped))?;
                }
                if let Some(new) = &new_key
                    && let Some(id) = insert_new_keys(tx, std::slice::from_ref(new))?.first()
                {
                    return Err(StoreError::AlreadyExists { kind: RowKind::Key, id: id.to_string() });
                }
                append_audit(tx, &audit)
            })
            .await
    }

    /// Writes key rows, new or changed, without conditions. Only for seeding
    /// benchmarks and load tests with many versions quickly.
    #[doc(hidden)]
    pub async fn seed_keys(&self, rows: Vec<(KeyRecord, WrappedKey)>, audit: Vec<AuditEvent>) -> Result<()> {
        self.store
            .write(move |tx| {
                for (rec, wrapped) in &rows {
                    put_row(tx, Table::Keys, &key_key(&rec.id), &KeyRow::new(rec, wrapped))?;
                }
                append_audit(tx, &audit)
            })
            .await
    }

    pub async fn count_keys(&self) -> Result<u64> {
        self.store.read(|tx| tx.len(Table::Keys)).await
    }

    // === lifecycle policies ===

    pub async fn lifecycle_policies(&self) -> Result<Vec<LifecyclePolicy>> {
        self.store.read(lifecycle_policies_in).await
    }

    /// Writes the lifecycle policy of `policy.scope`, conditionally: the
    /// stored policy of that scope must still be `read` (None: there was
    /// none), else `Stale`.
    pub async fn put_lifecycle_policy(
        &self,
        read: Option<LifecyclePolicy>,
        policy: LifecyclePolicy,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                let k = str_key(&scope_key(&policy.scope));
                let stored: Option<LifecyclePolicy> = get_row::<LifecyclePolicyRow>(tx, Table::LifecyclePolicies, &k)?
                    .map(TryInto::try_into)
                    .transpose()?;
                if stored != read {
                    return Err(StoreError::Stale { kind: RowKind::LifecyclePolicy, id: scope_key(&policy.scope) });
                }
                put_row(tx, Table::LifecyclePolicies, &k, &LifecyclePolicyRow::from(&policy))?;
                append_audit(tx, &audit)
            })
            .await
    }
}

/// Writes `row` under `name` unless the table has a row there (`AlreadyExists`).
fn put_new_row<T: serde::Serialize>(
    tx: &mut dyn WriteTxn,
    table: Table,
    kind: RowKind,
    name: &Name,
    row: &T,
) -> Result<()> {
    let k = str_key(name.as_str());
    if tx.get(table, &k)?.is_some() {
        return Err(StoreError::AlreadyExists { kind, id: name.to_string() });
    }
    put_row(tx, table, &k, row)
}

fn spec_in(tx: &mut dyn ReadTxn, name: &Name) -> Result<Option<Spec>> {
    get_row::<SpecRow>(tx, Table::Specs, &str_key(name.as_str()))?.map(TryInto::try_into).transpose()
}

fn key_in(tx: &mut dyn ReadTxn, id: &KeyId) -> Result<Option<(KeyRecord, WrappedKey)>> {
    tx.get(Table::Keys, &key_key(id))?.map(|b| decode_key(&b)).transpose()
}

fn keys_page_in(
    tx: &mut dyn ReadTxn,
    spec: &Name,
    after: Option<&KeyId>,
    limit: usize,
) -> Result<Vec<(KeyRecord, WrappedKey)>> {
    let range = KeyRange::prefix_after(spec_prefix(spec), after.map(key_key));
    let mut out = Vec::new();
    tx.visit(Table::Keys, &range, &mut |_, v| {
        out.push(decode_key(v)?);
        Ok(if out.len() >= limit { Visit::Stop } else { Visit::Continue })
    })?;
    Ok(out)
}

fn count_keys_of_in(tx: &mut dyn ReadTxn, spec: &Name) -> Result<u64> {
    let mut n = 0u64;
    tx.visit(Table::Keys, &KeyRange::prefix(spec_prefix(spec)), &mut |_, _| {
        n += 1;
        Ok(Visit::Continue)
    })?;
    Ok(n)
}

fn find_key_in(
    tx: &mut dyn ReadTxn,
    spec: &Name,
    pick: impl Fn(&KeyRecord) -> bool,
) -> Result<Option<(KeyRecord, WrappedKey)>> {
    let mut found = None;
    tx.visit(Table::Keys, &KeyRange::prefix(spec_prefix(spec)), &mut |_, v| {
        let row = decode_key(v)?;
        if pick(&row.0) {
            found = Some(row);
            return Ok(Visit::Stop);
        }
        Ok(Visit::Continue)
    })?;
    Ok(found)
}

/// The stored spec must be `read` (else `Stale`, or `Missing`).
fn check_spec_in(tx: &mut dyn ReadTxn, read: &Spec) -> Result<()> {
    let stored: Option<Spec> =
        get_row::<SpecRow>(tx, Table::Specs, &str_key(read.name.as_str()))?.map(TryInto::try_into).transpose()?;
    match stored {
        None => Err(StoreError::Missing { kind: RowKind::Spec, id: read.name.to_string() }),
        Some(s) if &s != read => Err(StoreError::Stale { kind: RowKind::Spec, id: read.name.to_string() }),
        Some(_) => Ok(()),
    }
}

fn lifecycle_policies_in(tx: &mut dyn ReadTxn) -> Result<Vec<LifecyclePolicy>> {
    all_rows(tx, Table::LifecyclePolicies, |v| decode::<LifecyclePolicyRow>(v)?.try_into())
}

/// Up to `limit` raw rows of a table (diagnostics and migration tests).
#[allow(dead_code)]
pub(crate) fn first_rows(tx: &mut dyn ReadTxn, table: Table, limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    scan(tx, table, &KeyRange::all(), limit)
}

pub(super) fn modules_in(tx: &mut dyn ReadTxn) -> Result<Vec<Module>> {
    all_rows(tx, Table::Modules, |v| decode::<ModuleRow>(v)?.try_into())
}

pub(super) fn specs_in(tx: &mut dyn ReadTxn) -> Result<Vec<Spec>> {
    all_rows(tx, Table::Specs, |v| decode::<SpecRow>(v)?.try_into())
}
