//! Converts a database of the first schema (typed redb tables, an outbox)
//! into the engine's byte tables (schema 2), in one write transaction, at
//! open. Rows keep their encoding; keys are re-encoded (`tuple.rs`); each
//! outbox item becomes a due job (a bundle is kept in `bundles`).

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Deserialize;

use super::engine::{Table, WriteTxn};
use super::jobs::put_job_in;
use super::records::{RequestRow, decode, hex_bytes};
use super::requests::encode_blob;
use super::tuple::{KeyBuf, str_key};
use super::{META_SCHEMA, META_SYS_ID, Result, SCHEMA_VERSION, StoreError};
use crate::domain::exchange::SignedBlob;
use crate::domain::ids::{RequestId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind};

type StrTable = TableDefinition<'static, &'static str, &'static [u8]>;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const KEYS: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("keys");
const RECORDS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("records");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const DIAGNOSTICS: TableDefinition<&str, i64> = TableDefinition::new("diagnostics");
const OUTBOX: StrTable = TableDefinition::new("outbox");
/// Tables keyed by one string, moved as they are.
const BY_NAME: [(&str, Table); 6] = [
    ("modules", Table::Modules),
    ("specs", Table::Specs),
    ("transport_keys", Table::TransportKeys),
    ("lifecycle_policies", Table::LifecyclePolicies),
    ("access_policies", Table::AccessPolicies),
    ("properties", Table::Properties),
];
const OLD_TABLES: [&str; 13] = [
    "meta",
    "modules",
    "specs",
    "keys",
    "requests",
    "transport_keys",
    "outbox",
    "lifecycle_policies",
    "access_policies",
    "records",
    "properties",
    "audit",
    "diagnostics",
];

#[derive(Deserialize)]
pub(super) struct OutboxRow {
    kind: String,
    #[serde(with = "hex_bytes")]
    bytes: Vec<u8>,
    #[serde(with = "hex_bytes")]
    signature: Vec<u8>,
}

/// Migrates when the file still has the first schema's `meta` table.
pub(super) fn migrate(db: &Database) -> Result<()> {
    let old = {
        let rx = db.begin_read()?;
        let names: Vec<String> = rx.list_tables()?.map(|h| h.name().to_owned()).collect();
        names.iter().any(|n| n == "meta")
    };
    if !old {
        return Ok(());
    }
    let tx = db.begin_write()?;
    let mut kv = super::redb_engine::wrap_write_unowned(&tx);
    copy(&tx, kv.as_mut())?;
    drop(kv);
    let stale: Vec<redb::UntypedTableHandle> = tx.list_tables()?.filter(|h| OLD_TABLES.contains(&h.name())).collect();
    for handle in stale {
        tx.delete_table(handle)?;
    }
    tx.commit()?;
    tracing::info!("store migrated from schema 1 to schema {SCHEMA_VERSION}");
    Ok(())
}

fn copy(tx: &redb::WriteTransaction, kv: &mut dyn WriteTxn) -> Result<()> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("schema 1 row: {e}"));
    for row in tx.open_table(META)?.iter()? {
        let (k, v) = row?;
        let value = if k.value() == META_SCHEMA { SCHEMA_VERSION } else { v.value() };
        kv.put(Table::Meta, k.value().as_bytes(), value.as_bytes())?;
    }
    if kv.get(Table::Meta, META_SYS_ID.as_bytes())?.is_none() {
        return Err(StoreError::Corrupt("schema 1 database without a sys_id".into()));
    }
    for (name, table) in BY_NAME {
        for row in tx.open_table(StrTable::new(name))?.iter()? {
            let (k, v) = row?;
            kv.put(table, &str_key(k.value()), v.value())?;
        }
    }
    for row in tx.open_table(KEYS)?.iter()? {
        let (k, v) = row?;
        let (spec, origin, version) = k.value();
        kv.put(Table::Keys, &KeyBuf::new().str(spec).str(origin).u32(version).done(), v.value())?;
    }
    for row in tx.open_table(StrTable::new("requests"))?.iter()? {
        let (k, v) = row?;
        let r: RequestRow = decode(v.value())?;
        let created_at = r.created_at_millis();
        kv.put(Table::Requests, &str_key(k.value()), v.value())?;
        kv.put(Table::RequestsByCreated, &KeyBuf::new().i64(created_at).str(k.value()).done(), &[])?;
    }
    for row in tx.open_table(OUTBOX)?.iter()? {
        let (k, v) = row?;
        let id = RequestId::parse(k.value()).map_err(|e| corrupt(&e))?;
        let item: OutboxRow = decode(v.value())?;
        let kind = if item.kind == "bundle" {
            let blob = SignedBlob { bytes: item.bytes, signature: item.signature };
            kv.put(Table::Bundles, &str_key(k.value()), &encode_blob(&blob))?;
            JobKind::Deliver
        } else {
            JobKind::Notify
        };
        put_job_in(kv, &Job::new(JobId::for_request(kind, &id), UnixMillis(0), UnixMillis(0)))?;
    }
    for row in tx.open_table(RECORDS)?.iter()? {
        let (k, v) = row?;
        let (t, f, r) = k.value();
        kv.put(Table::Records, &KeyBuf::new().str(t).str(f).str(r).done(), v.value())?;
    }
    for row in tx.open_table(AUDIT)?.iter()? {
        let (k, v) = row?;
        kv.put(Table::Audit, &KeyBuf::new().u64(k.value()).done(), v.value())?;
    }
    for row in tx.open_table(DIAGNOSTICS)?.iter()? {
        let (k, v) = row?;
        kv.put(Table::Diagnostics, &str_key(k.value()), &v.value().to_be_bytes())?;
    }
    Ok(())
}
