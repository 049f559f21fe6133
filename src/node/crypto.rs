//! Encrypt and decrypt with the instance's keys. Ciphertext = header naming
//! the key || nonce || ciphertext || tag; the AEAD's associated data is the
//! header followed by the caller's associated data.

use std::sync::Arc;

use super::Node;
use crate::domain::DomainError;
use crate::domain::auth::Caller;
use crate::domain::ciphertext;
use crate::domain::ids::{KeyId, Name};
use crate::domain::policy::Operation;
use crate::error::{AppError, AppResult};
use crate::signer::CryptoError;
use crate::signer::primitives::{gcm_open, gcm_seal};

/// Largest plaintext one Encrypt call accepts.
pub const MAX_PLAINTEXT: usize = 4 * 1024 * 1024;

impl Node {
    pub async fn encrypt(
        self: &Arc<Self>,
        caller: &Caller,
        spec: Name,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(DomainError::invalid("plaintext", "larger than 4 MiB").into());
        }
        let caller = caller.clone();
        self.blocking(move |node| {
            let spec = node.spec_or_not_found(&spec)?;
            node.check_access(&caller, &spec.name, Operation::Encrypt)?;
            let keys = node.store.keys(&spec.name)?;
            let (key, wrapped) = keys
                .into_iter()
                .find(|(k, _)| k.state.can_encrypt())
                .ok_or_else(|| DomainError::FailedPrecondition(format!("spec {} has no Active key", spec.name)))?;
            let dek = node.signer.unwrap(&wrapped)?;
            let mut out = ciphertext::encode_header(&key.id);
            let header = out.clone();
            gcm_seal(dek.expose(), &[&header, &aad], &plaintext, &mut out)?;
            Ok((out, key.id))
        })
        .await
    }

    pub async fn decrypt(
        self: &Arc<Self>,
        caller: &Caller,
        sealed: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        let caller = caller.clone();
        self.blocking(move |node| {
            let (key_id, header, body) = ciphertext::parse(&sealed)?;
            node.spec_or_not_found(&key_id.spec)?;
            node.check_access(&caller, &key_id.spec, Operation::Decrypt)?;
            let (key, wrapped) = node
                .store
                .key(&key_id)?
                .ok_or_else(|| DomainError::not_found("key", format!("{key_id} (not on this instance)")))?;
            if !key.state.can_decrypt() {
                return Err(DomainError::FailedPrecondition(format!(
                    "key {key_id} is {} and cannot decrypt",
                    key.state.label()
                ))
                .into());
            }
            let dek = node.signer.unwrap(&wrapped)?;
            let plaintext = gcm_open(dek.expose(), &[header, &aad], body).map_err(|e| match e {
                CryptoError::Failed(reason) => AppError::Domain(DomainError::invalid("ciphertext", reason)),
                other => other.into(),
            })?;
            Ok((plaintext.to_vec(), key_id))
        })
        .await
    }
}
