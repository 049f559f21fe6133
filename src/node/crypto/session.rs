//! The per-call context of every crypto operation. A `Session` caches, for
//! one call, the access decisions per (spec, operation), the loaded keys and
//! one sealing context per spec, so a batch of 10,000 items checks policies
//! and unwraps each key once (and audits a denial once).
//!
//! A session is async where it reads: a spec, a policy decision or a key
//! missing from the caches is awaited (the catalog, the store, the signer's
//! unwrap); a cache hit is answered on the spot. The keys a call uses end up
//! in its `Cipher`, which owns them, so the call's CPU work (`compute`) runs
//! inline for one small symmetric item and off the workers otherwise.
//!
//! Protected content is always `header || body`: the header names the key
//! (`domain::ciphertext`) and is the first part of the associated data (for
//! encryption and wrapping); signatures and MACs cover the message alone, so
//! an RSA-PSS signature verifies outside kmf with the public key.

use std::collections::HashMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::Crypto;
use crate::domain::DomainError;
use crate::domain::auth::Caller;
use crate::domain::ciphertext;
use crate::domain::ids::{KeyId, Name};
use crate::domain::key::WrappedKey;
use crate::domain::policy::Operation;
use crate::domain::spec::{MAX_PLAINTEXT, MAX_WRAP_PAYLOAD, Scheme, Spec};
use crate::error::{AppError, AppResult};
use crate::signer::CryptoError;
use crate::signer::async_signer::off_the_workers;
use crate::signer::primitives::GcmSealer;
use crate::signer::schemes::LoadedKey;

/// An access decision, kept for the rest of the call.
type Decision = Result<(), DomainError>;

/// The most bytes one item's symmetric crypto handles on the async worker
/// (tens of microseconds of AES-GCM); a larger item, an RSA key (a
/// private-key operation takes milliseconds) or a batch runs off the workers.
pub(super) const INLINE_BYTES: usize = 64 * 1024;

fn is_rsa(scheme: Scheme) -> bool {
    matches!(scheme, Scheme::RsaOaep { .. } | Scheme::RsaAesKeyWrap { .. } | Scheme::RsaPss { .. })
}

/// Whether one item of `bytes` under `scheme` is light enough for the worker.
pub(super) fn light(bytes: usize, scheme: Scheme) -> bool {
    bytes <= INLINE_BYTES && !is_rsa(scheme)
}

/// Runs a call's CPU-bound crypto: on the calling worker when `inline`, else
/// off the workers (`off_the_workers`).
pub(super) async fn compute<T: Send + 'static>(
    inline: bool,
    f: impl FnOnce() -> AppResult<T> + Send + 'static,
) -> AppResult<T> {
    if inline {
        return f();
    }
    off_the_workers(move || Ok(f())).await?
}

pub(super) struct Session<'a> {
    crypto: &'a Crypto,
    caller: &'a Caller,
    /// Specs looked up in this call (one catalog read per spec).
    specs: HashMap<Name, Spec>,
    /// Per spec, the decision for each operation asked for (looked up by
    /// `&Name`, so a batch item costs no allocation).
    access: HashMap<Name, Vec<(Operation, Decision)>>,
    active: HashMap<Name, Result<(KeyId, Arc<LoadedKey>), DomainError>>,
    keys: HashMap<KeyId, Result<Arc<LoadedKey>, DomainError>>,
    /// The keys this call seals and opens with, owned (its CPU work takes
    /// them off the workers and gives them back).
    pub cipher: Cipher,
}

/// What a call's CPU work needs, owned: per spec a sealing context, per key
/// id an opening key. Filled by `Session::prepare_seal` / `prepare_open`.
#[derive(Default)]
pub(super) struct Cipher {
    sealing: HashMap<Name, Sealing>,
    opening: HashMap<KeyId, Arc<LoadedKey>>,
}

/// Per spec: the operation it was set up for, its current key, the encoded
/// header and (for AES-GCM) a reusable cipher context.
struct Sealing {
    op: Operation,
    key_id: KeyId,
    header: Vec<u8>,
    key: Arc<LoadedKey>,
    gcm: Option<GcmSealer>,
}

fn domain_of(e: AppError) -> Result<DomainError, AppError> {
    match e {
        AppError::Domain(d) => Ok(d),
        other => Err(other),
    }
}

/// The request field an operation's input arrives in (for error messages).
fn input_field(op: Operation) -> &'static str {
    match op {
        Operation::Wrap => "key_material",
        Operation::Unwrap => "wrapped_key",
        Operation::Sign | Operation::Mac => "message",
        Operation::Verify => "signature",
        Operation::VerifyMac => "mac",
        Operation::Encrypt => "plaintext",
        Operation::Decrypt => "ciphertext",
        Operation::Export => "key_id",
    }
}

/// Splits protected content into (key id, header, body), naming the
/// request field in the error.
pub(super) fn parse(content: &[u8], op: Operation) -> Result<(KeyId, &[u8], &[u8]), DomainError> {
    ciphertext::parse(content).map_err(|e| match e {
        DomainError::Malformed { reason, .. } => DomainError::malformed(input_field(op), reason),
        other => other,
    })
}

impl<'a> Session<'a> {
    pub fn new(crypto: &'a Crypto, caller: &'a Caller) -> Self {
        Session {
            crypto,
            caller,
            specs: HashMap::new(),
            access: HashMap::new(),
            active: HashMap::new(),
            keys: HashMap::new(),
            cipher: Cipher::default(),
        }
    }

    /// The spec, read once per call (the catalog answers a cached spec at once).
    pub async fn spec(&mut self, name: &Name) -> AppResult<&Spec> {
        if !self.specs.contains_key(name) {
            let spec = self.crypto.catalog.spec_or_not_found(name).await?;
            self.specs.insert(name.clone(), spec);
        }
        self.specs.get(name).ok_or_else(|| AppError::Internal("spec cache lost an entry".into()))
    }

    /// Whether this call already decided `op` on `spec` (asking again has no
    /// effect: no read, no audit entry).
    pub fn decided(&self, spec: &Name, op: Operation) -> bool {
        self.access.get(spec).is_some_and(|ops| ops.iter().any(|(o, _)| *o == op))
    }

    /// The spec exists (NOT_FOUND), serves `op` (INVALID_ARGUMENT) and the
    /// module's access policies let the caller do it (PERMISSION_DENIED).
    pub async fn allow(&mut self, spec: &Name, op: Operation) -> AppResult<()> {
        if let Some((_, r)) = self.access.get(spec).and_then(|ops| ops.iter().find(|(o, _)| *o == op)) {
            return r.clone().map_err(Into::into);
        }
        let r = match self.check_access(spec, op).await {
            Ok(()) => Ok(()),
            Err(e) => Err(domain_of(e)?),
        };
        self.access.entry(spec.clone()).or_default().push((op, r.clone()));
        r.map_err(Into::into)
    }

    async fn check_access(&mut self, spec: &Name, op: Operation) -> AppResult<()> {
        let (crypto, caller) = (self.crypto, self.caller);
        let s = self.spec(spec).await?;
        s.check_operation(op)?;
        crypto.catalog.check_access(caller, s, op).await
    }

    /// Unwraps `wrapped` (a key of `id`'s spec) and loads it for the spec's
    /// scheme, in one hop to the signer.
    async fn load(&mut self, id: &KeyId, wrapped: WrappedKey) -> AppResult<Arc<LoadedKey>> {
        let scheme = self.spec(&id.spec).await?.scheme();
        let key = self.crypto.signer.with_backend(move |b| LoadedKey::load(scheme, b.unwrap(&wrapped)?)).await?;
        Ok(Arc::new(key))
    }

    pub async fn active_key(&mut self, spec: &Name) -> AppResult<(KeyId, Arc<LoadedKey>)> {
        if let Some(r) = self.active.get(spec) {
            return r.clone().map_err(Into::into);
        }
        let g = self.crypto.store.changes().keys_of(spec);
        let r = match self.crypto.hot.current(g, spec) {
            Some(hit) => Ok(hit),
            None => match super::current_key(&self.crypto.keys, spec).await? {
                Some((k, wrapped)) => {
                    let hit = (k.id.clone(), self.load(&k.id, wrapped).await?);
                    self.crypto.hot.put_current(g, spec.clone(), hit.clone());
                    Ok(hit)
                }
                None => Err(DomainError::FailedPrecondition(format!("spec {spec} has no Active key"))),
            },
        };
        self.active.insert(spec.clone(), r.clone());
        r.map_err(Into::into)
    }

    pub async fn key(&mut self, id: &KeyId) -> AppResult<Arc<LoadedKey>> {
        if let Some(r) = self.keys.get(id) {
            return r.clone().map_err(Into::into);
        }
        let g = self.crypto.store.changes().keys_of(&id.spec);
        if let Some(hit) = self.crypto.hot.key(g, id) {
            return Ok(hit);
        }
        let r = match self.crypto.keys.key(id.clone()).await? {
            None => Err(DomainError::not_found("key", format!("{id} (not on this instance)"))),
            Some((k, _)) if !k.state.can_decrypt() => Err(DomainError::FailedPrecondition(format!(
                "key {id} is {} and cannot decrypt, verify or unwrap",
                k.state.label()
            ))),
            Some((_, wrapped)) => {
                let key = self.load(id, wrapped).await?;
                self.crypto.hot.put_key(g, id.clone(), key.clone());
                Ok(key)
            }
        };
        self.keys.insert(id.clone(), r.clone());
        r.map_err(Into::into)
    }

    /// Sets `spec` up for sealing with `op` (`Encrypt` or `Wrap`): on the
    /// first item for the spec in this call, the policy, the current key,
    /// the header and the cipher context.
    pub async fn prepare_seal(&mut self, spec: &Name, op: Operation) -> AppResult<()> {
        if self.cipher.sealing.get(spec).is_some_and(|s| s.op == op) {
            return Ok(());
        }
        self.allow(spec, op).await?;
        let (key_id, key) = self.active_key(spec).await?;
        let header = ciphertext::encode_header(&key_id);
        let gcm = match key.scheme() {
            Scheme::AesGcm { .. } => Some(GcmSealer::new(key.secret())?),
            _ => None,
        };
        self.cipher.sealing.insert(spec.clone(), Sealing { op, key_id, header, key, gcm });
        Ok(())
    }

    /// Sets up opening `sealed` with `op` (`Decrypt` or `Unwrap`): its header
    /// parses, the policy allows `op` on its spec and the key it names can
    /// decrypt. Returns that key's id.
    pub async fn prepare_open(&mut self, sealed: &[u8], op: Operation) -> AppResult<KeyId> {
        let (key_id, _, _) = parse(sealed, op)?;
        self.allow(&key_id.spec, op).await?;
        let key = self.key(&key_id).await?;
        if !self.cipher.opening.contains_key(&key_id) {
            self.cipher.opening.insert(key_id.clone(), key);
        }
        Ok(key_id)
    }

    /// Encrypts (`Encrypt`) or wraps (`Wrap`) one input under the spec's current key.
    pub async fn seal_one(
        mut self,
        spec: Name,
        op: Operation,
        input: impl AsRef<[u8]> + Send + 'static,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        self.prepare_seal(&spec, op).await?;
        let mut cipher = self.cipher;
        let inline = cipher.light(input.as_ref().len());
        compute(inline, move || cipher.seal(&spec, op, input.as_ref(), &aad)).await
    }

    /// Decrypts (`Decrypt`) or unwraps (`Unwrap`) one input with the key its header names.
    pub async fn open_one(
        mut self,
        sealed: Vec<u8>,
        op: Operation,
        aad: Vec<u8>,
    ) -> AppResult<(Zeroizing<Vec<u8>>, KeyId)> {
        self.prepare_open(&sealed, op).await?;
        let cipher = self.cipher;
        let inline = cipher.light(sealed.len());
        compute(inline, move || cipher.open(&sealed, op, &aad)).await
    }

    /// Signs (`Sign`) or MACs (`Mac`) with the spec's current key.
    pub async fn authenticate(mut self, spec: Name, op: Operation, message: Vec<u8>) -> AppResult<(Vec<u8>, KeyId)> {
        if message.len() > MAX_PLAINTEXT {
            return Err(DomainError::invalid("message", "larger than 4 MiB").into());
        }
        self.allow(&spec, op).await?;
        let (key_id, key) = self.active_key(&spec).await?;
        compute(light(message.len(), key.scheme()), move || {
            let mut out = ciphertext::encode_header(&key_id);
            out.extend_from_slice(&key.authenticate(&message)?);
            Ok((out, key_id))
        })
        .await
    }

    /// Checks a signature (`Verify`) or MAC (`VerifyMac`) made by
    /// `authenticate`, with the key its header names.
    pub async fn check(mut self, tagged: Vec<u8>, op: Operation, message: Vec<u8>) -> AppResult<(bool, KeyId)> {
        let (key_id, _, _) = parse(&tagged, op)?;
        self.allow(&key_id.spec, op).await?;
        let key = self.key(&key_id).await?;
        compute(light(message.len(), key.scheme()), move || {
            let (key_id, _, tag) = parse(&tagged, op)?;
            Ok((key.check(&message, tag)?, key_id))
        })
        .await
    }
}

impl Cipher {
    /// Whether one item of `bytes` with the keys set up so far is light
    /// enough for the async worker (see `INLINE_BYTES`).
    pub fn light(&self, bytes: usize) -> bool {
        let sealing = self.sealing.values().map(|s| s.key.scheme());
        let mut schemes = sealing.chain(self.opening.values().map(|k| k.scheme()));
        bytes <= INLINE_BYTES && schemes.all(|s| !is_rsa(s))
    }

    /// Encrypts (`Encrypt`) or wraps (`Wrap`) under the spec's current key,
    /// set up by `Session::prepare_seal`.
    pub fn seal(&mut self, spec: &Name, op: Operation, input: &[u8], aad: &[u8]) -> AppResult<(Vec<u8>, KeyId)> {
        let s = self
            .sealing
            .get_mut(spec)
            .filter(|s| s.op == op)
            .ok_or_else(|| AppError::Internal("sealing context vanished".into()))?;
        let max = match op {
            Operation::Wrap => s.key.scheme().max_input().min(MAX_WRAP_PAYLOAD),
            _ => s.key.scheme().max_input(),
        };
        if input.len() > max {
            let scheme = s.key.scheme().label();
            return Err(DomainError::invalid(input_field(op), format!("{scheme} takes at most {max} bytes")).into());
        }
        let mut out = Vec::with_capacity(s.header.len() + input.len() + 64);
        out.extend_from_slice(&s.header);
        match &mut s.gcm {
            Some(gcm) => gcm.seal(&[&s.header, aad], input, &mut out)?,
            None => s.key.seal(&[&s.header, aad], input, &mut out)?,
        }
        Ok((out, s.key_id.clone()))
    }

    /// Decrypts (`Decrypt`) or unwraps (`Unwrap`) with the key the header
    /// names, set up by `Session::prepare_open`.
    pub fn open(&self, sealed: &[u8], op: Operation, aad: &[u8]) -> AppResult<(Zeroizing<Vec<u8>>, KeyId)> {
        let (key_id, header, body) = parse(sealed, op)?;
        let key = self.opening.get(&key_id).ok_or_else(|| AppError::Internal("opening key vanished".into()))?;
        let plaintext = key.open(&[header, aad], body).map_err(|e| match e {
            CryptoError::Failed(reason) => AppError::Domain(DomainError::invalid(input_field(op), reason)),
            other => other.into(),
        })?;
        Ok((plaintext, key_id))
    }
}
