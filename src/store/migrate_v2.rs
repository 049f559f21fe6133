//! Schema 2 → 3, at open, in one write transaction on either engine: clone
//! grants written before grants had ids (one per target, 7 days, every spec,
//! approving any AUTOMATIC request) are deleted; a target clones again for a
//! grant of the new kind. Every other row is kept as it is.

use super::engine::{Engine, KeyRange, Table, Visit};
use super::{META_SCHEMA, Result, SCHEMA_VERSION};

/// The schema this migration starts from.
const FROM: &str = "2";

/// Migrates an engine at schema 2; leaves any other untouched. Returns the
/// number of grants deleted.
pub(super) fn migrate(engine: &dyn Engine) -> Result<Option<usize>> {
    let at_schema = |tx: &mut dyn super::engine::ReadTxn| -> Result<bool> {
        Ok(tx.get(Table::Meta, META_SCHEMA.as_bytes())?.as_deref() == Some(FROM.as_bytes()))
    };
    if !at_schema(engine.begin_read()?.as_mut())? {
        return Ok(None);
    }
    let mut tx = engine.begin_write()?;
    if !at_schema(tx.as_mut())? {
        // Another opener migrated it meanwhile (a shared store).
        return Ok(None);
    }
    let mut keys = Vec::new();
    tx.visit(Table::CloneGrants, &KeyRange::all(), &mut |k, _| {
        keys.push(k.to_vec());
        Ok(Visit::Continue)
    })?;
    for k in &keys {
        tx.delete(Table::CloneGrants, k)?;
    }
    tx.put(Table::Meta, META_SCHEMA.as_bytes(), SCHEMA_VERSION.as_bytes())?;
    tx.commit()?;
    tracing::info!(grants_deleted = keys.len(), "store migrated from schema {FROM} to schema {SCHEMA_VERSION}");
    Ok(Some(keys.len()))
}
