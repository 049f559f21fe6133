//! BYOK import keys (`Table::ImportKeys`): made with their audit entry,
//! used up by the one transaction that stores the key they brought.

use super::audit::append_audit;
use super::catalog::{decode_key, insert_new_keys, spec_prefix};
use super::engine::{KeyRange, Table, Visit};
use super::records::{ImportKeyRow, decode};
use super::tuple::str_key;
use super::{ByokStore, Result, RowKind, StoreError, get_row, put_row};
use crate::domain::audit::AuditEvent;
use crate::domain::byok::ImportKey;
use crate::domain::ids::{ImportToken, Name, UnixMillis};
use crate::domain::key::{KeyRecord, WrappedKey};

fn token_key(token: &ImportToken) -> Vec<u8> {
    str_key(token.as_str())
}

impl ByokStore {
    /// Stores a new import key and deletes the expired ones named in
    /// `expired` (those still there), with the audit entries, in one
    /// transaction.
    pub async fn insert_import_key(
        &self,
        key: ImportKey,
        expired: Vec<ImportToken>,
        audit: Vec<AuditEvent>,
    ) -> Result<()> {
        self.store
            .write(move |tx| {
                let k = token_key(&key.token);
                if tx.get(Table::ImportKeys, &k)?.is_some() {
                    return Err(StoreError::AlreadyExists { kind: RowKind::ImportKey, id: key.token.to_string() });
                }
                put_row(tx, Table::ImportKeys, &k, &ImportKeyRow::from(&key))?;
                for t in &expired {
                    tx.delete(Table::ImportKeys, &token_key(t))?;
                }
                append_audit(tx, &audit)
            })
            .await
    }

    pub async fn import_key(&self, token: ImportToken) -> Result<Option<ImportKey>> {
        self.store
            .read(move |tx| {
                get_row::<ImportKeyRow>(tx, Table::ImportKeys, &token_key(&token))?.map(TryInto::try_into).transpose()
            })
            .await
    }

    /// Import keys that expired at `now` (at most `limit`).
    pub async fn expired_import_keys(&self, now: UnixMillis, limit: usize) -> Result<Vec<ImportKey>> {
        self.store
            .read(move |tx| {
                let mut out = Vec::new();
                tx.visit(Table::ImportKeys, &KeyRange::all(), &mut |_, v| {
                    let k: ImportKey = decode::<ImportKeyRow>(v)?.try_into()?;
                    if k.is_expired(now) {
                        out.push(k);
                    }
                    Ok(if out.len() >= limit { Visit::Stop } else { Visit::Continue })
                })?;
                Ok(out)
            })
            .await
    }

    pub async fn count_import_keys(&self) -> Result<u64> {
        self.store.read(|tx| tx.len(Table::ImportKeys)).await
    }

    /// The BYOK import, in one transaction conditional on the import key
    /// being there and unexpired at `now` (else `Missing`) and unused (else
    /// `Stale`: used meanwhile): `plan` gets the keys of `spec` as this
    /// transaction reads them and names the new key with its audit entries;
    /// the key is stored with `wrapped` (`AlreadyExists` if its id is taken),
    /// the import key marked used (its handle kept until the caller has
    /// destroyed the signer's key, see `erase_import_handle`; the row stays
    /// until it expires), the audit appended. Planning inside the transaction lets
    /// concurrent imports into one spec each take the next version.
    pub async fn use_import_key(
        &self,
        token: ImportToken,
        now: UnixMillis,
        spec: Name,
        wrapped: WrappedKey,
        plan: impl Fn(&[KeyRecord]) -> (KeyRecord, Vec<AuditEvent>) + Send + 'static,
    ) -> Result<KeyRecord> {
        self.store
            .write(move |tx| {
                let k = token_key(&token);
                let Some(row) = get_row::<ImportKeyRow>(tx, Table::ImportKeys, &k)? else {
                    return Err(StoreError::Missing { kind: RowKind::ImportKey, id: token.to_string() });
                };
                let mut import: ImportKey = row.try_into()?;
                if import.is_expired(now) {
                    return Err(StoreError::Missing { kind: RowKind::ImportKey, id: token.to_string() });
                }
                if import.used.is_some() {
                    return Err(StoreError::Stale { kind: RowKind::ImportKey, id: token.to_string() });
                }
                let mut existing = Vec::new();
                tx.visit(Table::Keys, &KeyRange::prefix_after(spec_prefix(&spec), None), &mut |_, v| {
                    existing.push(decode_key(v)?.0);
                    Ok(Visit::Continue)
                })?;
                let (key, audit) = plan(&existing);
                if let Some(id) = insert_new_keys(tx, &[(key.clone(), wrapped.clone())])?.first() {
                    return Err(StoreError::AlreadyExists { kind: RowKind::Key, id: id.to_string() });
                }
                import.used = Some((now, key.id.clone()));
                put_row(tx, Table::ImportKeys, &k, &ImportKeyRow::from(&import))?;
                append_audit(tx, &audit)?;
                Ok(key)
            })
            .await
    }

    /// Erases the handle of a used import key once its signer key is
    /// destroyed, conditional on the row still being used with that handle
    /// (else nothing changes). A crash before this leaves the handle, and
    /// the sweep of expired import keys destroys the signer key again
    /// (destroying is idempotent).
    pub async fn erase_import_handle(&self, token: ImportToken, handle: Vec<u8>) -> Result<()> {
        self.store
            .write(move |tx| {
                let k = token_key(&token);
                let Some(row) = get_row::<ImportKeyRow>(tx, Table::ImportKeys, &k)? else { return Ok(()) };
                let mut import: ImportKey = row.try_into()?;
                if import.used.is_none() || import.handle != handle {
                    return Ok(());
                }
                import.handle = Vec::new();
                put_row(tx, Table::ImportKeys, &k, &ImportKeyRow::from(&import))
            })
            .await
    }
}
