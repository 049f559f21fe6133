//! Encrypt, decrypt and rewrap with the instance's keys, one at a time or in
//! batches; sign/verify, MAC/verify and wrap/unwrap one at a time. Every call
//! runs in a `Session` (session.rs), which checks the spec's purpose
//! and the module access policies and caches keys for the call.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::Crypto;
use super::session::Session;
use crate::domain::DomainError;
use crate::domain::auth::Caller;
use crate::domain::ids::{KeyId, Name};
use crate::domain::policy::Operation;
use crate::domain::spec::Scheme;
use crate::error::{AppError, AppResult};
use crate::node::context::Blocking;

/// Most items one batch call accepts.
pub const MAX_BATCH: usize = 10_000;

/// One item of an encrypt batch.
#[derive(Clone)]
pub struct SealItem {
    pub spec: Name,
    pub plaintext: Vec<u8>,
    pub aad: Vec<u8>,
}

impl std::fmt::Debug for SealItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealItem({}, [{} bytes redacted])", self.spec, self.plaintext.len())
    }
}

/// One item of a decrypt or rewrap batch.
#[derive(Clone, Debug)]
pub struct OpenItem {
    pub ciphertext: Vec<u8>,
    pub aad: Vec<u8>,
}

/// A rewrapped ciphertext and the keys before and after.
#[derive(Clone, Debug)]
pub struct Rewrapped {
    pub ciphertext: Vec<u8>,
    pub key_id: KeyId,
    pub previous_key_id: KeyId,
}

/// Decrypts and encrypts again under the spec's current key; the plaintext
/// never leaves this function.
fn rewrap(s: &mut Session<'_>, sealed: &[u8], aad: &[u8]) -> AppResult<Rewrapped> {
    let (plaintext, previous_key_id) = s.open(sealed, Operation::Decrypt, aad)?;
    let (ciphertext, key_id) = s.seal(&previous_key_id.spec, Operation::Encrypt, &plaintext, aad)?;
    Ok(Rewrapped { ciphertext, key_id, previous_key_id })
}

/// The public half of an RSA key.
#[derive(Clone, Debug)]
pub struct PublicKey {
    /// SubjectPublicKeyInfo DER.
    pub der: Vec<u8>,
    pub pem: String,
    pub key_id: KeyId,
    pub scheme: String,
}

fn check_batch(len: usize) -> AppResult<()> {
    if len == 0 || len > MAX_BATCH {
        return Err(DomainError::invalid("items", format!("a batch holds 1 to {MAX_BATCH} items")).into());
    }
    Ok(())
}

impl Crypto {
    pub async fn encrypt(
        self: &Arc<Self>,
        caller: &Caller,
        spec: Name,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        // On the worker only when the hot cache holds everything (spec,
        // policies, key) and the caller is allowed; else on the blocking pool.
        match Session::inline(self, caller).seal(&spec, Operation::Encrypt, &plaintext, &aad) {
            Err(AppError::WouldBlock) => {}
            done => return done,
        }
        let caller = caller.clone();
        self.blocking(move |this| Session::new(this, &caller).seal(&spec, Operation::Encrypt, &plaintext, &aad)).await
    }

    pub async fn decrypt(
        self: &Arc<Self>,
        caller: &Caller,
        sealed: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        match Session::inline(self, caller).open(&sealed, Operation::Decrypt, &aad) {
            Err(AppError::WouldBlock) => {}
            done => return done.map(|(plaintext, key_id)| (plaintext.to_vec(), key_id)),
        }
        let caller = caller.clone();
        self.blocking(move |this| {
            let (plaintext, key_id) = Session::new(this, &caller).open(&sealed, Operation::Decrypt, &aad)?;
            Ok((plaintext.to_vec(), key_id))
        })
        .await
    }

    pub async fn rewrap(self: &Arc<Self>, caller: &Caller, sealed: Vec<u8>, aad: Vec<u8>) -> AppResult<Rewrapped> {
        let caller = caller.clone();
        self.blocking(move |this| rewrap(&mut Session::new(this, &caller), &sealed, &aad)).await
    }

    /// Each item succeeds or fails on its own.
    pub async fn encrypt_batch(
        self: &Arc<Self>,
        caller: &Caller,
        items: Vec<SealItem>,
    ) -> AppResult<Vec<AppResult<(Vec<u8>, KeyId)>>> {
        check_batch(items.len())?;
        let caller = caller.clone();
        self.blocking(move |this| {
            let mut s = Session::new(this, &caller);
            Ok(items.iter().map(|i| s.seal(&i.spec, Operation::Encrypt, &i.plaintext, &i.aad)).collect())
        })
        .await
    }

    pub async fn decrypt_batch(
        self: &Arc<Self>,
        caller: &Caller,
        items: Vec<OpenItem>,
    ) -> AppResult<Vec<AppResult<(Vec<u8>, KeyId)>>> {
        check_batch(items.len())?;
        let caller = caller.clone();
        self.blocking(move |this| {
            let mut s = Session::new(this, &caller);
            Ok(items
                .iter()
                .map(|i| s.open(&i.ciphertext, Operation::Decrypt, &i.aad).map(|(p, k)| (p.to_vec(), k)))
                .collect())
        })
        .await
    }

    pub async fn rewrap_batch(
        self: &Arc<Self>,
        caller: &Caller,
        items: Vec<OpenItem>,
    ) -> AppResult<Vec<AppResult<Rewrapped>>> {
        check_batch(items.len())?;
        let caller = caller.clone();
        self.blocking(move |this| {
            let mut s = Session::new(this, &caller);
            Ok(items.iter().map(|i| rewrap(&mut s, &i.ciphertext, &i.aad)).collect())
        })
        .await
    }
}

impl Crypto {
    /// Signs `message` (RSA-PSS) with the spec's current key.
    pub async fn sign(self: &Arc<Self>, caller: &Caller, spec: Name, message: Vec<u8>) -> AppResult<(Vec<u8>, KeyId)> {
        let caller = caller.clone();
        self.blocking(move |this| Session::new(this, &caller).authenticate(&spec, Operation::Sign, &message)).await
    }

    /// Checks a signature made by `sign`; `false` if it does not verify.
    pub async fn verify(
        self: &Arc<Self>,
        caller: &Caller,
        signature: Vec<u8>,
        message: Vec<u8>,
    ) -> AppResult<(bool, KeyId)> {
        let caller = caller.clone();
        self.blocking(move |this| Session::new(this, &caller).check(&signature, Operation::Verify, &message)).await
    }

    /// MACs `message` (HMAC-SHA-2) with the spec's current key.
    pub async fn mac(self: &Arc<Self>, caller: &Caller, spec: Name, message: Vec<u8>) -> AppResult<(Vec<u8>, KeyId)> {
        match Session::inline(self, caller).authenticate(&spec, Operation::Mac, &message) {
            Err(AppError::WouldBlock) => {}
            done => return done,
        }
        let caller = caller.clone();
        self.blocking(move |this| Session::new(this, &caller).authenticate(&spec, Operation::Mac, &message)).await
    }

    /// Checks a MAC made by `mac` (constant-time); `false` if it does not match.
    pub async fn verify_mac(
        self: &Arc<Self>,
        caller: &Caller,
        mac: Vec<u8>,
        message: Vec<u8>,
    ) -> AppResult<(bool, KeyId)> {
        match Session::inline(self, caller).check(&mac, Operation::VerifyMac, &message) {
            Err(AppError::WouldBlock) => {}
            done => return done,
        }
        let caller = caller.clone();
        self.blocking(move |this| Session::new(this, &caller).check(&mac, Operation::VerifyMac, &message)).await
    }

    /// Wraps caller-supplied key material under the spec's current key.
    pub async fn wrap(
        self: &Arc<Self>,
        caller: &Caller,
        spec: Name,
        key_material: Zeroizing<Vec<u8>>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        if key_material.is_empty() {
            return Err(DomainError::invalid("key_material", "is empty").into());
        }
        let caller = caller.clone();
        self.blocking(move |this| Session::new(this, &caller).seal(&spec, Operation::Wrap, &key_material, &aad)).await
    }

    /// Unwraps what `wrap` made, with the same associated data.
    pub async fn unwrap(
        self: &Arc<Self>,
        caller: &Caller,
        wrapped: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Zeroizing<Vec<u8>>, KeyId)> {
        let caller = caller.clone();
        self.blocking(move |this| Session::new(this, &caller).open(&wrapped, Operation::Unwrap, &aad)).await
    }

    /// The current key's public half (SubjectPublicKeyInfo DER) of an RSA
    /// spec. Needs the access that uses it: verify for signature specs,
    /// encrypt or wrap for the others.
    pub async fn public_key(self: &Arc<Self>, caller: &Caller, spec: Name) -> AppResult<PublicKey> {
        let caller = caller.clone();
        self.blocking(move |this| {
            let mut session = Session::new(this, &caller);
            let s = session.spec(&spec)?;
            let op = match s.scheme() {
                Scheme::RsaPss { .. } => Operation::Verify,
                Scheme::RsaOaep { .. } => Operation::Encrypt,
                Scheme::RsaAesKeyWrap { .. } => Operation::Wrap,
                _ => {
                    return Err(DomainError::invalid(
                        "spec",
                        format!("spec {spec} is {}: symmetric keys have no public half", s.algorithm.as_str()),
                    )
                    .into());
                }
            };
            session.allow(&spec, op)?;
            let (key_id, key) = session.active_key(&spec)?;
            let (der, pem) = key.public_key()?;
            Ok(PublicKey { der, pem, key_id, scheme: key.scheme().label() })
        })
        .await
    }
}
