//! Encrypt, decrypt and rewrap with the instance's keys, one at a time or in
//! batches. Ciphertext = header naming the key || nonce || ciphertext || tag;
//! the AEAD's associated data is the header followed by the caller's.
//!
//! A `Session` caches, for one call, the access decisions per (spec,
//! operation) and the unwrapped keys, so a batch of 10,000 items checks
//! policies and unwraps each key once (and audits a denial once).

use std::collections::HashMap;
use std::sync::Arc;

use super::Node;
use crate::domain::DomainError;
use crate::domain::auth::Caller;
use crate::domain::ciphertext;
use crate::domain::ids::{KeyId, Name};
use crate::domain::key::DataKey;
use crate::domain::policy::Operation;
use crate::error::{AppError, AppResult};
use crate::signer::CryptoError;
use crate::signer::primitives::{GcmSealer, gcm_open};

/// Largest plaintext one item accepts.
pub const MAX_PLAINTEXT: usize = 4 * 1024 * 1024;
/// Most items one batch call accepts.
pub const MAX_BATCH: usize = 10_000;

/// One item of an encrypt batch.
#[derive(Clone, Debug)]
pub struct SealItem {
    pub spec: Name,
    pub plaintext: Vec<u8>,
    pub aad: Vec<u8>,
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

/// Per-call caches (see the module docs).
struct Session<'a> {
    node: &'a Node,
    caller: &'a Caller,
    access: HashMap<(Name, Operation), Result<(), DomainError>>,
    active: HashMap<Name, Result<(KeyId, Arc<DataKey>), DomainError>>,
    keys: HashMap<KeyId, Result<Arc<DataKey>, DomainError>>,
    /// Per spec: its current key, the encoded header and a ready GCM context.
    sealing: HashMap<Name, Sealing>,
}

struct Sealing {
    key_id: KeyId,
    header: Vec<u8>,
    sealer: GcmSealer,
}

fn domain_of(e: AppError) -> Result<DomainError, AppError> {
    match e {
        AppError::Domain(d) => Ok(d),
        other => Err(other),
    }
}

impl<'a> Session<'a> {
    fn new(node: &'a Node, caller: &'a Caller) -> Self {
        Session {
            node,
            caller,
            access: HashMap::new(),
            active: HashMap::new(),
            keys: HashMap::new(),
            sealing: HashMap::new(),
        }
    }

    fn allow(&mut self, spec: &Name, op: Operation) -> AppResult<()> {
        if let Some(r) = self.access.get(&(spec.clone(), op)) {
            return r.clone().map_err(Into::into);
        }
        // check_access also refuses an unknown spec (NOT_FOUND).
        let r = match self.node.check_access(self.caller, spec, op) {
            Ok(()) => Ok(()),
            Err(e) => Err(domain_of(e)?),
        };
        self.access.insert((spec.clone(), op), r.clone());
        r.map_err(Into::into)
    }

    fn active_key(&mut self, spec: &Name) -> AppResult<(KeyId, Arc<DataKey>)> {
        if let Some(r) = self.active.get(spec) {
            return r.clone().map_err(Into::into);
        }
        let g = self.node.store.generation();
        let r = match self.node.hot.current(g, spec) {
            Some(hit) => Ok(hit),
            None => match self.node.store.keys(spec)?.into_iter().find(|(k, _)| k.state.can_encrypt()) {
                Some((k, wrapped)) => {
                    let hit = (k.id, Arc::new(self.node.signer.unwrap(&wrapped)?));
                    self.node.hot.put_current(g, spec.clone(), hit.clone());
                    Ok(hit)
                }
                None => Err(DomainError::FailedPrecondition(format!("spec {spec} has no Active key"))),
            },
        };
        self.active.insert(spec.clone(), r.clone());
        r.map_err(Into::into)
    }

    fn key(&mut self, id: &KeyId) -> AppResult<Arc<DataKey>> {
        if let Some(r) = self.keys.get(id) {
            return r.clone().map_err(Into::into);
        }
        let g = self.node.store.generation();
        if let Some(hit) = self.node.hot.key(g, id) {
            return Ok(hit);
        }
        let r = match self.node.store.key(id)? {
            None => Err(DomainError::not_found("key", format!("{id} (not on this instance)"))),
            Some((k, _)) if !k.state.can_decrypt() => {
                Err(DomainError::FailedPrecondition(format!("key {id} is {} and cannot decrypt", k.state.label())))
            }
            Some((_, wrapped)) => {
                let dek = Arc::new(self.node.signer.unwrap(&wrapped)?);
                self.node.hot.put_key(g, id.clone(), dek.clone());
                Ok(dek)
            }
        };
        self.keys.insert(id.clone(), r.clone());
        r.map_err(Into::into)
    }

    fn seal(&mut self, spec: &Name, plaintext: &[u8], aad: &[u8]) -> AppResult<(Vec<u8>, KeyId)> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(DomainError::invalid("plaintext", "larger than 4 MiB").into());
        }
        if !self.sealing.contains_key(spec) {
            // First item for this spec in this call: policy, key, header, context.
            self.allow(spec, Operation::Encrypt)?;
            let (key_id, dek) = self.active_key(spec)?;
            let header = ciphertext::encode_header(&key_id);
            let sealer = GcmSealer::new(dek.expose())?;
            self.sealing.insert(spec.clone(), Sealing { key_id, header, sealer });
        }
        let s = self.sealing.get_mut(spec).ok_or_else(|| AppError::Internal("sealing context vanished".into()))?;
        let mut out = Vec::with_capacity(s.header.len() + plaintext.len() + 28);
        out.extend_from_slice(&s.header);
        s.sealer.seal(&[&s.header, aad], plaintext, &mut out)?;
        Ok((out, s.key_id.clone()))
    }

    fn open(&mut self, sealed: &[u8], aad: &[u8]) -> AppResult<(zeroize::Zeroizing<Vec<u8>>, KeyId)> {
        let (key_id, header, body) = ciphertext::parse(sealed)?;
        self.allow(&key_id.spec, Operation::Decrypt)?;
        let dek = self.key(&key_id)?;
        let plaintext = gcm_open(dek.expose(), &[header, aad], body).map_err(|e| match e {
            CryptoError::Failed(reason) => AppError::Domain(DomainError::invalid("ciphertext", reason)),
            other => other.into(),
        })?;
        Ok((plaintext, key_id))
    }

    /// Decrypts and encrypts again under the spec's current key; the
    /// plaintext never leaves this function.
    fn rewrap(&mut self, sealed: &[u8], aad: &[u8]) -> AppResult<Rewrapped> {
        let (plaintext, previous_key_id) = self.open(sealed, aad)?;
        let (ciphertext, key_id) = self.seal(&previous_key_id.spec.clone(), &plaintext, aad)?;
        Ok(Rewrapped { ciphertext, key_id, previous_key_id })
    }
}

fn check_batch(len: usize) -> AppResult<()> {
    if len == 0 || len > MAX_BATCH {
        return Err(DomainError::invalid("items", format!("a batch holds 1 to {MAX_BATCH} items")).into());
    }
    Ok(())
}

impl Node {
    pub async fn encrypt(
        self: &Arc<Self>,
        caller: &Caller,
        spec: Name,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        // Single calls run inline: with warm caches they touch no disk, and a
        // cache miss is a short read of redb's memory-mapped pages.
        Session::new(self, caller).seal(&spec, &plaintext, &aad)
    }

    pub async fn decrypt(
        self: &Arc<Self>,
        caller: &Caller,
        sealed: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        let (plaintext, key_id) = Session::new(self, caller).open(&sealed, &aad)?;
        Ok((plaintext.to_vec(), key_id))
    }

    pub async fn rewrap(self: &Arc<Self>, caller: &Caller, sealed: Vec<u8>, aad: Vec<u8>) -> AppResult<Rewrapped> {
        let caller = caller.clone();
        self.blocking(move |node| Session::new(node, &caller).rewrap(&sealed, &aad)).await
    }

    /// Each item succeeds or fails on its own.
    pub async fn encrypt_batch(
        self: &Arc<Self>,
        caller: &Caller,
        items: Vec<SealItem>,
    ) -> AppResult<Vec<AppResult<(Vec<u8>, KeyId)>>> {
        check_batch(items.len())?;
        let caller = caller.clone();
        self.blocking(move |node| {
            let mut s = Session::new(node, &caller);
            Ok(items.iter().map(|i| s.seal(&i.spec, &i.plaintext, &i.aad)).collect())
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
        self.blocking(move |node| {
            let mut s = Session::new(node, &caller);
            Ok(items.iter().map(|i| s.open(&i.ciphertext, &i.aad).map(|(p, k)| (p.to_vec(), k))).collect())
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
        self.blocking(move |node| {
            let mut s = Session::new(node, &caller);
            Ok(items.iter().map(|i| s.rewrap(&i.ciphertext, &i.aad)).collect())
        })
        .await
    }
}
