//! The redb store: the only module that imports redb. One `Database` per
//! daemon. Records are encoded by `records` (own versioned JSON rows, never
//! protobuf bytes). Every multi-row change is one write transaction.

mod diagnostics;
mod policies;
mod properties;
mod records;
mod stored_records;
mod tables;

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use thiserror::Error;

use crate::domain::audit::{AuditEntry, AuditEvent, GENESIS};
use crate::domain::exchange::ExchangeRequest;
use crate::domain::ids::{Host, KeyId, Name, RequestId, SysId};
use crate::domain::key::{KeyRecord, KeyState, LifecyclePolicy, WrappedKey};
use crate::domain::policy::AccessPolicy;
use crate::domain::spec::{Module, Spec};
use records::{KeyRow, LifecyclePolicyRow, ModuleRow, OutboxRow, RequestRow, SpecRow, decode, encode, scope_key};
use tables::*;

pub use diagnostics::StoreCounts;
pub use records::OutboxItem;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
    #[error("{what} already exists: {id}")]
    AlreadyExists { what: &'static str, id: String },
    #[error("instance already initialised at {0}")]
    AlreadyInitialised(String),
    #[error("no instance at {0} (run `kmfd init` first)")]
    NotInitialised(String),
}

macro_rules! backend_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Backend(e.to_string()) }
        }
    )*};
}
backend_errors!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

type Result<T> = std::result::Result<T, StoreError>;

/// Key rows to insert in an import, with whether each was new.
pub struct ImportOutcome {
    pub inserted: Vec<KeyId>,
    pub already_present: Vec<KeyId>,
}

pub struct RedbStore {
    db: Database,
    /// Bumped by every committed write; readers' caches compare it.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedbStore")
    }
}

impl RedbStore {
    /// Creates a new database with the instance identity. Refuses an existing file.
    pub fn create(path: &Path, sys_id: &SysId, host: &Host) -> Result<Self> {
        if path.exists() {
            return Err(StoreError::AlreadyInitialised(path.display().to_string()));
        }
        let db = Database::create(path)?;
        let tx = db.begin_write()?;
        {
            create_all_tables(&tx)?;
            let mut meta = tx.open_table(META)?;
            meta.insert(META_SYS_ID, sys_id.as_str())?;
            meta.insert(META_HOST, host.to_string().as_str())?;
            meta.insert(META_SCHEMA, SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(RedbStore { db, generation: Default::default() })
    }

    /// Opens an existing database.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(StoreError::NotInitialised(path.display().to_string()));
        }
        let db = Database::open(path)?;
        let tx = db.begin_write()?;
        create_all_tables(&tx)?;
        tx.commit()?;
        let store = RedbStore { db, generation: Default::default() };
        let schema = store.meta(META_SCHEMA)?;
        if schema != SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!("unsupported schema version {schema}")));
        }
        Ok(store)
    }

    /// Commits a write transaction and bumps the generation.
    fn commit(&self, tx: redb::WriteTransaction) -> Result<()> {
        tx.commit()?;
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Changes whenever anything was written; caches of stored state compare it.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn meta(&self, key: &str) -> Result<String> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(META)?;
        let v = t.get(key)?.map(|g| g.value().to_owned());
        v.ok_or_else(|| StoreError::Corrupt(format!("meta {key} missing")))
    }

    pub fn sys_id(&self) -> Result<SysId> {
        SysId::parse(&self.meta(META_SYS_ID)?).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    pub fn host(&self) -> Result<Host> {
        Host::parse(&self.meta(META_HOST)?).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    // === modules and specs ===

    /// Inserts a module and its initial access policies.
    pub fn insert_module(&self, module: &Module, policies: &[AccessPolicy], audit: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(MODULES)?;
            if t.get(module.name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists { what: "module", id: module.name.to_string() });
            }
            t.insert(module.name.as_str(), encode(&ModuleRow::from(module)).as_slice())?;
        }
        policies::put_new_policies(&tx, policies)?;
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    pub fn module(&self, name: &Name) -> Result<Option<Module>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MODULES)?;
        let row = t.get(name.as_str())?.map(|g| g.value().to_vec());
        row.map(|b| decode::<ModuleRow>(&b)?.try_into()).transpose()
    }

    pub fn modules(&self) -> Result<Vec<Module>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(MODULES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode::<ModuleRow>(v.value())?.try_into()?);
        }
        Ok(out)
    }

    pub fn insert_spec(&self, spec: &Spec, audit: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SPECS)?;
            if t.get(spec.name.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists { what: "spec", id: spec.name.to_string() });
            }
            t.insert(spec.name.as_str(), encode(&SpecRow::from(spec)).as_slice())?;
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    pub fn spec(&self, name: &Name) -> Result<Option<Spec>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SPECS)?;
        let row = t.get(name.as_str())?.map(|g| g.value().to_vec());
        row.map(|b| decode::<SpecRow>(&b)?.try_into()).transpose()
    }

    pub fn specs(&self) -> Result<Vec<Spec>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SPECS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode::<SpecRow>(v.value())?.try_into()?);
        }
        Ok(out)
    }

    // === keys ===

    /// Every key of `spec`, with its wrapped material, ordered by origin and version.
    pub fn keys(&self, spec: &Name) -> Result<Vec<(KeyRecord, WrappedKey)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(KEYS)?;
        let mut out = Vec::new();
        for row in t.range((spec.as_str(), "", 0u32)..)? {
            let (k, v) = row?;
            if k.value().0 != spec.as_str() {
                break;
            }
            out.push(decode::<KeyRow>(v.value())?.try_into()?);
        }
        Ok(out)
    }

    pub fn key(&self, id: &KeyId) -> Result<Option<(KeyRecord, WrappedKey)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(KEYS)?;
        let row = t.get((id.spec.as_str(), id.origin.as_str(), id.version))?.map(|g| g.value().to_vec());
        row.map(|b| decode::<KeyRow>(&b)?.try_into()).transpose()
    }

    /// Writes key rows (new or updated) in one transaction.
    pub fn put_keys(&self, rows: &[(KeyRecord, WrappedKey)], audit: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(KEYS)?;
            for (rec, wrapped) in rows {
                put_key(&mut t, rec, wrapped)?;
            }
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Updates metadata of existing keys (material unchanged) and inserts a new key, atomically.
    /// A key whose state is Destroyed loses its wrapped material here.
    pub fn apply_key_change(
        &self,
        updated: &[KeyRecord],
        new_key: Option<(&KeyRecord, &WrappedKey)>,
        audit: &[AuditEvent],
    ) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(KEYS)?;
            for rec in updated {
                let k = (rec.id.spec.as_str(), rec.id.origin.as_str(), rec.id.version);
                let old = t.get(k)?.map(|g| g.value().to_vec());
                let old = old.ok_or_else(|| StoreError::Corrupt(format!("key {} vanished", rec.id)))?;
                let (_, wrapped): (KeyRecord, WrappedKey) = decode::<KeyRow>(&old)?.try_into()?;
                let wrapped = if rec.state == KeyState::Destroyed { WrappedKey(Vec::new()) } else { wrapped };
                put_key(&mut t, rec, &wrapped)?;
            }
            if let Some((rec, wrapped)) = new_key {
                if t.get((rec.id.spec.as_str(), rec.id.origin.as_str(), rec.id.version))?.is_some() {
                    return Err(StoreError::AlreadyExists { what: "key", id: rec.id.to_string() });
                }
                put_key(&mut t, rec, wrapped)?;
            }
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    pub fn count_keys(&self) -> Result<u64> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(KEYS)?.len()?)
    }

    // === exchange requests ===

    pub fn request(&self, id: &RequestId) -> Result<Option<ExchangeRequest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REQUESTS)?;
        let row = t.get(id.as_str())?.map(|g| g.value().to_vec());
        row.map(|b| decode::<RequestRow>(&b)?.try_into()).transpose()
    }

    pub fn requests(&self) -> Result<Vec<ExchangeRequest>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REQUESTS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode::<RequestRow>(v.value())?.try_into()?);
        }
        out.sort_by_key(|r: &ExchangeRequest| r.created_at);
        Ok(out)
    }

    /// Inserts a new request; refuses an existing id.
    pub fn insert_request(
        &self,
        req: &ExchangeRequest,
        transport_handle: Option<&[u8]>,
        audit: &[AuditEvent],
    ) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(REQUESTS)?;
            if t.get(req.id.as_str())?.is_some() {
                return Err(StoreError::AlreadyExists { what: "request", id: req.id.to_string() });
            }
            t.insert(req.id.as_str(), encode(&RequestRow::from(req)).as_slice())?;
            if let Some(handle) = transport_handle {
                tx.open_table(TRANSPORT_KEYS)?.insert(req.id.as_str(), handle)?;
            }
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Saves a request and sets or clears its outbox item, atomically.
    pub fn update_request(&self, req: &ExchangeRequest, outbox: OutboxChange<'_>, audit: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(REQUESTS)?.insert(req.id.as_str(), encode(&RequestRow::from(req)).as_slice())?;
            let mut o = tx.open_table(OUTBOX)?;
            match outbox {
                OutboxChange::Keep => {}
                OutboxChange::Set(item) => {
                    o.insert(req.id.as_str(), encode(&OutboxRow::from(item)).as_slice())?;
                }
                OutboxChange::Clear => {
                    o.remove(req.id.as_str())?;
                }
            }
            if req.status.is_terminal() {
                tx.open_table(TRANSPORT_KEYS)?.remove(req.id.as_str())?;
            }
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    pub fn transport_handle(&self, id: &RequestId) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(TRANSPORT_KEYS)?;
        Ok(t.get(id.as_str())?.map(|g| g.value().to_vec()))
    }

    pub fn outbox(&self) -> Result<Vec<(RequestId, OutboxItem)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            let id = RequestId::parse(k.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((id, decode::<OutboxRow>(v.value())?.into()));
        }
        Ok(out)
    }

    /// The import: inserts the keys not already present, saves the request and
    /// deletes the transport key, all in one transaction.
    pub fn complete_import(
        &self,
        req: &ExchangeRequest,
        keys: &[(KeyRecord, WrappedKey)],
        audit: &[AuditEvent],
    ) -> Result<ImportOutcome> {
        let tx = self.db.begin_write()?;
        let mut outcome = ImportOutcome { inserted: Vec::new(), already_present: Vec::new() };
        {
            let mut t = tx.open_table(KEYS)?;
            for (rec, wrapped) in keys {
                if t.get((rec.id.spec.as_str(), rec.id.origin.as_str(), rec.id.version))?.is_some() {
                    outcome.already_present.push(rec.id.clone());
                    continue;
                }
                put_key(&mut t, rec, wrapped)?;
                outcome.inserted.push(rec.id.clone());
            }
            tx.open_table(REQUESTS)?.insert(req.id.as_str(), encode(&RequestRow::from(req)).as_slice())?;
            tx.open_table(TRANSPORT_KEYS)?.remove(req.id.as_str())?;
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(outcome)
    }
}

impl RedbStore {
    /// Replaces an existing spec (e.g. its lifecycle definition).
    pub fn update_spec(&self, spec: &Spec, audit: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SPECS)?;
            if t.get(spec.name.as_str())?.is_none() {
                return Err(StoreError::Corrupt(format!("spec {} vanished", spec.name)));
            }
            t.insert(spec.name.as_str(), encode(&SpecRow::from(spec)).as_slice())?;
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    pub fn lifecycle_policies(&self) -> Result<Vec<LifecyclePolicy>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LIFECYCLE_POLICIES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(decode::<LifecyclePolicyRow>(v.value())?.try_into()?);
        }
        Ok(out)
    }

    pub fn put_lifecycle_policy(&self, policy: &LifecyclePolicy, audit: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let key = scope_key(&policy.scope);
            tx.open_table(LIFECYCLE_POLICIES)?
                .insert(key.as_str(), encode(&LifecyclePolicyRow::from(policy)).as_slice())?;
        }
        append_audit(&tx, audit)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Appends events on their own (refused calls, failures).
    pub fn append_audit(&self, events: &[AuditEvent]) -> Result<()> {
        let tx = self.db.begin_write()?;
        append_audit(&tx, events)?;
        self.commit(tx)?;
        Ok(())
    }

    /// Raw audit rows (sequence, stored bytes) after `after`, oldest first,
    /// at most `limit`. Decoding is the caller's, so a damaged row can be
    /// reported as a broken link rather than a store failure.
    pub fn audit_rows(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in t.range(after.saturating_add(1)..)?.take(limit) {
            let (k, v) = row?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// Appends `events` to the chain inside the caller's transaction, so an
/// event and the change it describes commit together.
fn append_audit(tx: &redb::WriteTransaction, events: &[AuditEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut t = tx.open_table(AUDIT)?;
    let (mut seq, mut prev) = match t.last()? {
        Some((k, v)) => {
            let bytes = v.value();
            let mut hash = [0u8; 32];
            // The stored form ends with the entry's hash.
            if bytes.len() < 32 {
                return Err(StoreError::Corrupt(format!("audit entry {} is truncated", k.value())));
            }
            hash.copy_from_slice(&bytes[bytes.len() - 32..]);
            (k.value(), hash)
        }
        None => (0, GENESIS),
    };
    for event in events {
        seq += 1;
        let entry = AuditEntry::chain(seq, event.clone(), prev);
        t.insert(seq, entry.encode().as_slice())?;
        prev = entry.hash;
    }
    Ok(())
}

/// What `update_request` does to the request's outbox item.
pub enum OutboxChange<'a> {
    Keep,
    Set(&'a OutboxItem),
    Clear,
}

fn put_key(
    t: &mut redb::Table<'_, KeyTableKey<'static>, &'static [u8]>,
    rec: &KeyRecord,
    wrapped: &WrappedKey,
) -> Result<()> {
    let k = (rec.id.spec.as_str(), rec.id.origin.as_str(), rec.id.version);
    t.insert(k, encode(&KeyRow::new(rec, wrapped)).as_slice())?;
    Ok(())
}
