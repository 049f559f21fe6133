//! Encrypted records: put (encrypt under the spec's current key with the
//! address as associated data), get (decrypt, policies apply), list, delete.

use std::sync::Arc;

use super::Node;
use super::crypto::{OpenItem, SealItem};
use crate::domain::DomainError;
use crate::domain::auth::Caller;
use crate::domain::ids::Name;
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::error::AppResult;

/// Most records one list page returns.
pub const MAX_PAGE: usize = 1000;

impl Node {
    pub async fn put_record(
        self: &Arc<Self>,
        caller: &Caller,
        address: RecordAddress,
        spec: Name,
        plaintext: Vec<u8>,
    ) -> AppResult<StoredRecord> {
        let item = SealItem { spec, plaintext, aad: address.associated_data() };
        let mut results = self.encrypt_batch(caller, vec![item]).await?;
        let (ciphertext, key_id) =
            results.pop().ok_or_else(|| crate::error::AppError::Internal("empty batch".into()))??;
        self.blocking(move |node| {
            let rec = StoredRecord { address, ciphertext, key_id, updated_at: node.now() };
            node.store.put_record(&rec)?;
            Ok(rec)
        })
        .await
    }

    pub async fn get_record(
        self: &Arc<Self>,
        caller: &Caller,
        address: RecordAddress,
    ) -> AppResult<(StoredRecord, Vec<u8>)> {
        let a = address.clone();
        let rec = self
            .blocking(move |node| {
                node.store.record(&a)?.ok_or_else(|| DomainError::not_found("record", format!("{a:?}")).into())
            })
            .await?;
        let item = OpenItem { ciphertext: rec.ciphertext.clone(), aad: address.associated_data() };
        let mut results = self.decrypt_batch(caller, vec![item]).await?;
        let (plaintext, _) = results.pop().ok_or_else(|| crate::error::AppError::Internal("empty batch".into()))??;
        Ok((rec, plaintext))
    }

    pub async fn list_records(
        self: &Arc<Self>,
        table: Option<Name>,
        field: Option<Name>,
        after: Option<RecordAddress>,
        limit: usize,
    ) -> AppResult<Vec<StoredRecord>> {
        let limit = limit.clamp(1, MAX_PAGE);
        self.blocking(move |node| Ok(node.store.records(table.as_ref(), field.as_ref(), after.as_ref(), limit)?)).await
    }

    pub async fn delete_record(self: &Arc<Self>, address: RecordAddress) -> AppResult<()> {
        self.blocking(move |node| {
            if node.store.delete_record(&address)? {
                Ok(())
            } else {
                Err(DomainError::not_found("record", format!("{address:?}")).into())
            }
        })
        .await
    }
}
