//! The store port: what the use cases read and write, in transactions shaped
//! by use case. Written once against the `Engine` port (`engine.rs`), which
//! redb (the embedded default) and an in-memory engine implement; no redb
//! type appears outside `redb_engine.rs` and `migrate_v1.rs`.
//!
//! Rules every method keeps:
//! - a change that touches several rows is one transaction, with its audit
//!   entries in the same transaction;
//! - state changes that depend on what the caller read are **conditional**:
//!   they name the version they read and fail with `StoreError::Stale` when
//!   the row moved on (see `requests.rs`, `jobs.rs`);
//! - a transaction that loses an optimistic race (`Conflict`) is run again
//!   here, up to `MAX_ATTEMPTS`;
//! - large tables (keys, requests, records, audit, jobs) are read in pages
//!   with a cursor, never whole;
//! - what changed is published as change tokens, per-subject versions the
//!   store derives from the tables each committed transaction wrote
//!   (`changes.rs`; no caller names a change), so caches drop only what a
//!   write touched.
//!
//! The store is split by subject (`subject_stores!`: `CatalogStore`,
//! `RequestStore`, ...). A subject's methods are `async fn`s: each runs
//! its transaction on the blocking pool itself (`offload`), so callers never
//! carry a blocking boundary. `Store` itself keeps only opening, identity,
//! change tokens and the transaction runners.

mod audit;
mod byok;
mod catalog;
mod changes;
mod clone;
mod clone_exchanges;
mod clone_runs;
mod clone_schedules;
mod diagnostics;
pub mod engine;
mod error;
pub(crate) mod fuzzing;
mod jobs;
mod memory_engine;
mod migrate_v1;
mod migrate_v2;
mod policies;
mod properties;
mod record_debt;
mod records;
mod redb_engine;
mod rekeys;
mod requests;
mod stored_records;
pub mod tuple;

use std::path::Path;
use std::sync::Arc;

use serde::{Serialize, de::DeserializeOwned};

use crate::domain::ids::{Host, SysId};
use crate::offload;
use engine::{Engine, ReadTxn, Table, WriteTxn};
use records::{decode, encode};

pub use changes::ChangeTokens;
use changes::Recording;
pub use clone::{SnapshotRead, SystemApproval};
pub use clone_exchanges::UseUp;
pub use clone_runs::{CloneSwap, clone_job_id};
pub use clone_schedules::{DueRun, clone_schedule_job_id};
pub use diagnostics::StoreCounts;
pub use error::{BackendError, RowKind, StoreError};
pub use memory_engine::MemoryEngine;
pub use redb_engine::RedbEngine;
pub use rekeys::{RekeyEnd, RekeyPage, rekey_job_id};
pub use requests::{BundleChange, RequestCursor, RequestEffects};

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// A row and the version it had when read; conditional writes name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: u64,
}

/// How often a transaction that keeps losing optimistic races is retried.
const MAX_ATTEMPTS: usize = 200;

const SCHEMA_VERSION: &str = "3";
const META_SYS_ID: &str = "sys_id";
const META_HOST: &str = "host";
const META_SCHEMA: &str = "schema_version";

pub struct Store {
    engine: Box<dyn Engine>,
    changes: ChangeTokens,
    sys_id: SysId,
    host: Host,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("engine", &self.engine.kind()).field("sys_id", &self.sys_id).finish()
    }
}

impl Store {
    /// A new redb database with the instance identity. Refuses an existing file.
    pub fn create_redb(path: &Path, sys_id: &SysId, host: &Host) -> Result<Self> {
        Self::create(Box::new(RedbEngine::create(path)?), sys_id, host)
    }

    /// Opens an existing redb database.
    pub fn open_redb(path: &Path) -> Result<Self> {
        Self::open(Box::new(RedbEngine::open(path)?))
    }

    /// A store that lives in memory only (tests).
    pub fn in_memory(sys_id: &SysId, host: &Host) -> Result<Self> {
        Self::create(Box::new(MemoryEngine::default()), sys_id, host)
    }

    /// Writes the identity into a fresh engine.
    pub fn create(engine: Box<dyn Engine>, sys_id: &SysId, host: &Host) -> Result<Self> {
        let mut tx = engine.begin_write()?;
        if tx.get(Table::Meta, META_SYS_ID.as_bytes())?.is_some() {
            return Err(StoreError::AlreadyInitialised(engine.kind().to_owned()));
        }
        tx.put(Table::Meta, META_SYS_ID.as_bytes(), sys_id.as_str().as_bytes())?;
        tx.put(Table::Meta, META_HOST.as_bytes(), host.to_string().as_bytes())?;
        tx.put(Table::Meta, META_SCHEMA.as_bytes(), SCHEMA_VERSION.as_bytes())?;
        record_debt::mark_debt_built(tx.as_mut())?;
        tx.commit()?;
        Self::open(engine)
    }

    /// Reads the identity of an initialised engine and checks its schema.
    pub fn open(engine: Box<dyn Engine>) -> Result<Self> {
        migrate_v2::migrate(engine.as_ref())?;
        let mut tx = engine.begin_read()?;
        let mut meta = |key: &str| -> Result<String> {
            let v = tx.get(Table::Meta, key.as_bytes())?;
            let v = v.ok_or_else(|| StoreError::Corrupt(format!("meta {key} missing")))?;
            String::from_utf8(v).map_err(|_| StoreError::Corrupt(format!("meta {key} is not UTF-8")))
        };
        let schema = meta(META_SCHEMA)?;
        if schema != SCHEMA_VERSION {
            return Err(StoreError::Corrupt(format!("unsupported schema version {schema}")));
        }
        let sys_id = SysId::parse(&meta(META_SYS_ID)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let host = Host::parse(&meta(META_HOST)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let debt_built = record_debt::is_debt_built(tx.as_mut())?;
        drop(tx);
        let store = Store { engine, changes: ChangeTokens::default(), sys_id, host };
        if !debt_built && store.write_blocking(record_debt::build_debt_if_missing)? {
            tracing::info!("record debt index built from the records");
        }
        Ok(store)
    }

    pub fn sys_id(&self) -> Result<SysId> {
        Ok(self.sys_id.clone())
    }

    pub fn host(&self) -> Result<Host> {
        Ok(self.host.clone())
    }

    /// "redb" or "memory".
    pub fn engine_kind(&self) -> &'static str {
        self.engine.kind()
    }

    /// What changed, per kind of data (caches compare these).
    pub fn changes(&self) -> &ChangeTokens {
        &self.changes
    }

    /// Runs `f` with the store on the blocking pool (`offload`): the one way
    /// the async methods below, and every subject store's, leave the worker.
    pub(crate) async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = Arc::clone(self);
        offload::run(move || f(&store)).await
    }

    /// `read_blocking` on the blocking pool: what every subject store's
    /// `async fn` does.
    pub(crate) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn ReadTxn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.call(move |store| store.read_blocking(f)).await
    }

    /// `write_blocking` on the blocking pool.
    pub(crate) async fn write<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnMut(&mut dyn WriteTxn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.call(move |store| store.write_blocking(f)).await
    }

    /// `write_relaxed_blocking` on the blocking pool: the commit need not be
    /// durable by itself.
    pub(crate) async fn write_relaxed<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnMut(&mut dyn WriteTxn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.call(move |store| store.write_relaxed_blocking(f)).await
    }

    /// Runs `f` in one read transaction, on the calling thread.
    pub(crate) fn read_blocking<T>(&self, f: impl FnOnce(&mut dyn ReadTxn) -> Result<T>) -> Result<T> {
        let mut tx = self.engine.begin_read()?;
        f(tx.as_mut())
    }

    /// Runs `f` in one write transaction and commits it, running it again
    /// when it loses an optimistic race; then publishes the change tokens of
    /// what the committed attempt wrote (`changes.rs`).
    pub(crate) fn write_blocking<T>(&self, f: impl FnMut(&mut dyn WriteTxn) -> Result<T>) -> Result<T> {
        self.write_with(false, f)
    }

    /// As `write`, but the commit need not be durable by itself (see
    /// `Engine::begin_write_relaxed`).
    pub(crate) fn write_relaxed_blocking<T>(&self, f: impl FnMut(&mut dyn WriteTxn) -> Result<T>) -> Result<T> {
        self.write_with(true, f)
    }

    fn write_with<T>(&self, relaxed: bool, mut f: impl FnMut(&mut dyn WriteTxn) -> Result<T>) -> Result<T> {
        for _ in 0..MAX_ATTEMPTS {
            let tx = if relaxed { self.engine.begin_write_relaxed()? } else { self.engine.begin_write()? };
            let mut tx = Recording::new(tx);
            let out = f(&mut tx)?;
            match tx.commit_noted() {
                Ok(written) => {
                    self.changes.publish(&written);
                    return Ok(out);
                }
                Err(StoreError::Conflict) => std::thread::yield_now(),
                Err(e) => return Err(e),
            }
        }
        Err(BackendError::Contended(MAX_ATTEMPTS).into())
    }
}

// === the store by subject ===

/// One view of the store per subject. Each holds the store; its methods
/// (in the subject's file) are `async fn`s whose transactions run on the
/// blocking pool. A service holds the views it uses, and no other.
macro_rules! subject_stores {
    ($($(#[$doc:meta])* $view:ident;)*) => {
        $(
            $(#[$doc])*
            #[derive(Clone)]
            pub struct $view {
                store: Arc<Store>,
            }

            impl $view {
                pub fn new(store: &Arc<Store>) -> Self {
                    $view { store: Arc::clone(store) }
                }
            }

            impl std::fmt::Debug for $view {
                fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.debug_struct(stringify!($view)).field("store", &self.store).finish()
                }
            }
        )*

    };
}

subject_stores! {
    /// Modules, specs, keys and lifecycle policies (`catalog.rs`).
    CatalogStore;
    /// Access policies (`policies.rs`).
    PolicyStore;
    /// System properties (`properties.rs`).
    PropertyStore;
    /// The audit chain (`audit.rs`).
    AuditStore;
    /// Exchange requests, their bundles and effects (`requests.rs`).
    RequestStore;
    /// The jobs table and its leases (`jobs.rs`).
    JobStore;
    /// Encrypted records and their rekey debt (`stored_records.rs`, `record_debt.rs`).
    RecordStore;
    /// Clone sources, targets, grants, runs and schedules (`clone*.rs`).
    CloneStore;
    /// Rekey runs (`rekeys.rs`).
    RekeyStore;
    /// BYOK imports (`byok.rs`).
    ByokStore;
    /// Row counts and the engine's health (`diagnostics.rs`).
    DiagnosticsStore;
}

// === row helpers ===

pub(crate) fn get_row<T: DeserializeOwned>(tx: &mut dyn ReadTxn, table: Table, key: &[u8]) -> Result<Option<T>> {
    tx.get(table, key)?.map(|b| decode(&b)).transpose()
}

pub(crate) fn put_row<T: Serialize>(tx: &mut dyn WriteTxn, table: Table, key: &[u8], row: &T) -> Result<()> {
    tx.put(table, key, &encode(row))
}

pub(crate) fn corrupt(e: impl ToString) -> StoreError {
    StoreError::Corrupt(e.to_string())
}
