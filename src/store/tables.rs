//! Every table of the database, created together at open.

use redb::{TableDefinition, WriteTransaction};

use super::StoreError;

pub const SCHEMA_VERSION: &str = "1";
pub const META_SYS_ID: &str = "sys_id";
pub const META_HOST: &str = "host";
pub const META_SCHEMA: &str = "schema_version";

/// (spec, origin sys_id, version)
pub type KeyTableKey<'a> = (&'a str, &'a str, u32);

pub const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
pub const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
pub const SPECS: TableDefinition<&str, &[u8]> = TableDefinition::new("specs");
pub const KEYS: TableDefinition<KeyTableKey<'static>, &[u8]> = TableDefinition::new("keys");
pub const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
/// Target side: request id -> transport key handle, until import.
pub const TRANSPORT_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("transport_keys");
/// Source side: request id -> message still to deliver to the target.
pub const OUTBOX: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox");
/// "instance" or "module:<name>" -> lifecycle policy row.
pub const LIFECYCLE_POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("lifecycle_policies");
/// "<module>/<name>" -> module access policy row.
pub const ACCESS_POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("access_policies");
/// (table, field, record_id) -> encrypted record row.
pub const RECORDS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("records");
/// Property name -> property row.
pub const PROPERTIES: TableDefinition<&str, &[u8]> = TableDefinition::new("properties");
/// Sequence number -> encoded audit entry (append-only, hash-chained).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Diagnostics rows (the store check's heartbeat: name -> unix millis).
pub const DIAGNOSTICS: TableDefinition<&str, i64> = TableDefinition::new("diagnostics");

pub fn create_all_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(META)?;
    tx.open_table(MODULES)?;
    tx.open_table(SPECS)?;
    tx.open_table(KEYS)?;
    tx.open_table(REQUESTS)?;
    tx.open_table(TRANSPORT_KEYS)?;
    tx.open_table(OUTBOX)?;
    tx.open_table(AUDIT)?;
    tx.open_table(LIFECYCLE_POLICIES)?;
    tx.open_table(PROPERTIES)?;
    tx.open_table(ACCESS_POLICIES)?;
    tx.open_table(RECORDS)?;
    tx.open_table(DIAGNOSTICS)?;
    Ok(())
}
