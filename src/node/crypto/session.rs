//! The per-call context of every crypto operation. A `Session` caches, for
//! one call, the access decisions per (spec, operation), the loaded keys and
//! one sealing context per spec, so a batch of 10,000 items checks policies
//! and unwraps each key once (and audits a denial once).
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
use crate::domain::policy::Operation;
use crate::domain::spec::{MAX_PLAINTEXT, MAX_WRAP_PAYLOAD, Scheme, Spec};
use crate::error::{AppError, AppResult};
use crate::signer::CryptoError;
use crate::signer::primitives::GcmSealer;
use crate::signer::schemes::LoadedKey;

/// An access decision, kept for the rest of the call.
type Decision = Result<(), DomainError>;

pub(super) struct Session<'a> {
    crypto: &'a Crypto,
    caller: &'a Caller,
    /// On an async worker: only the hot cache may answer; anything that
    /// needs the store or the signer (a miss, an RSA key, a refusal to
    /// audit) is `AppError::WouldBlock`, and the call runs again off the
    /// workers.
    inline: bool,
    /// Specs looked up in this call (one hot-cache read per spec).
    specs: HashMap<Name, Spec>,
    /// Per spec, the decision for each operation asked for (looked up by
    /// `&Name`, so a batch item costs no allocation).
    access: HashMap<Name, Vec<(Operation, Decision)>>,
    active: HashMap<Name, Result<(KeyId, Arc<LoadedKey>), DomainError>>,
    keys: HashMap<KeyId, Result<Arc<LoadedKey>, DomainError>>,
    /// Per spec: the operation it was set up for, its current key, the
    /// encoded header and (for AES-GCM) a reusable cipher context.
    sealing: HashMap<Name, Sealing>,
}

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
fn parse(content: &[u8], op: Operation) -> Result<(KeyId, &[u8], &[u8]), DomainError> {
    ciphertext::parse(content).map_err(|e| match e {
        DomainError::Malformed { reason, .. } => DomainError::malformed(input_field(op), reason),
        other => other,
    })
}

fn cached_spec<'m>(
    crypto: &Crypto,
    inline: bool,
    specs: &'m mut HashMap<Name, Spec>,
    name: &Name,
) -> AppResult<&'m Spec> {
    if !specs.contains_key(name) {
        let spec = match inline {
            true => crypto.catalog.cached_spec(name).ok_or(AppError::WouldBlock)?,
            false => crypto.catalog.spec_or_not_found_blocking(name)?,
        };
        specs.insert(name.clone(), spec);
    }
    specs.get(name).ok_or_else(|| AppError::Internal("spec cache lost an entry".into()))
}

impl<'a> Session<'a> {
    /// A session on the blocking pool: may read the store and use the signer.
    pub fn new(crypto: &'a Crypto, caller: &'a Caller) -> Self {
        Self::with_mode(crypto, caller, false)
    }

    /// A session on an async worker: answers from the hot cache or gives up
    /// with `WouldBlock`.
    pub fn inline(crypto: &'a Crypto, caller: &'a Caller) -> Self {
        Self::with_mode(crypto, caller, true)
    }

    fn with_mode(crypto: &'a Crypto, caller: &'a Caller, inline: bool) -> Self {
        Session {
            crypto,
            caller,
            inline,
            specs: HashMap::new(),
            access: HashMap::new(),
            active: HashMap::new(),
            keys: HashMap::new(),
            sealing: HashMap::new(),
        }
    }

    /// The spec, read once per call.
    pub fn spec(&mut self, name: &Name) -> AppResult<&Spec> {
        cached_spec(self.crypto, self.inline, &mut self.specs, name)
    }

    /// The spec exists (NOT_FOUND), serves `op` (INVALID_ARGUMENT) and the
    /// module's access policies let the caller do it (PERMISSION_DENIED).
    pub fn allow(&mut self, spec: &Name, op: Operation) -> AppResult<()> {
        if let Some((_, r)) = self.access.get(spec).and_then(|ops| ops.iter().find(|(o, _)| *o == op)) {
            return r.clone().map_err(Into::into);
        }
        let (crypto, inline) = (self.crypto, self.inline);
        let checked = cached_spec(crypto, inline, &mut self.specs, spec).and_then(|s| {
            // RSA private-key operations take milliseconds: never on a worker.
            let rsa =
                matches!(s.scheme(), Scheme::RsaOaep { .. } | Scheme::RsaAesKeyWrap { .. } | Scheme::RsaPss { .. });
            if inline && rsa {
                return Err(AppError::WouldBlock);
            }
            s.check_operation(op)?;
            crypto.catalog.check_access_blocking(self.caller, s, op, inline)
        });
        let r = match checked {
            Ok(()) => Ok(()),
            Err(e) => Err(domain_of(e)?),
        };
        self.access.entry(spec.clone()).or_default().push((op, r.clone()));
        r.map_err(Into::into)
    }

    fn load(&mut self, id: &KeyId, wrapped: &crate::domain::key::WrappedKey) -> AppResult<Arc<LoadedKey>> {
        let scheme = self.spec(&id.spec)?.scheme();
        Ok(Arc::new(LoadedKey::load(scheme, self.crypto.signer.unwrap(wrapped)?)?))
    }

    pub fn active_key(&mut self, spec: &Name) -> AppResult<(KeyId, Arc<LoadedKey>)> {
        if let Some(r) = self.active.get(spec) {
            return r.clone().map_err(Into::into);
        }
        let g = self.crypto.store.changes().keys_of(spec);
        let r = match self.crypto.hot.current(g, spec) {
            Some(hit) => Ok(hit),
            None if self.inline => return Err(AppError::WouldBlock),
            None => match self.crypto.store.find_key(spec, |k| k.state.can_encrypt())? {
                Some((k, wrapped)) => {
                    let hit = (k.id.clone(), self.load(&k.id, &wrapped)?);
                    self.crypto.hot.put_current(g, spec.clone(), hit.clone());
                    Ok(hit)
                }
                None => Err(DomainError::FailedPrecondition(format!("spec {spec} has no Active key"))),
            },
        };
        self.active.insert(spec.clone(), r.clone());
        r.map_err(Into::into)
    }

    fn key(&mut self, id: &KeyId) -> AppResult<Arc<LoadedKey>> {
        if let Some(r) = self.keys.get(id) {
            return r.clone().map_err(Into::into);
        }
        let g = self.crypto.store.changes().keys_of(&id.spec);
        if let Some(hit) = self.crypto.hot.key(g, id) {
            return Ok(hit);
        }
        if self.inline {
            return Err(AppError::WouldBlock);
        }
        let r = match self.crypto.store.key(id)? {
            None => Err(DomainError::not_found("key", format!("{id} (not on this instance)"))),
            Some((k, _)) if !k.state.can_decrypt() => Err(DomainError::FailedPrecondition(format!(
                "key {id} is {} and cannot decrypt, verify or unwrap",
                k.state.label()
            ))),
            Some((_, wrapped)) => {
                let key = self.load(id, &wrapped)?;
                self.crypto.hot.put_key(g, id.clone(), key.clone());
                Ok(key)
            }
        };
        self.keys.insert(id.clone(), r.clone());
        r.map_err(Into::into)
    }

    fn sealing(&mut self, spec: &Name, op: Operation) -> AppResult<&mut Sealing> {
        if self.sealing.get(spec).is_none_or(|s| s.op != op) {
            // First item for this spec in this call: policy, key, header, context.
            self.allow(spec, op)?;
            let (key_id, key) = self.active_key(spec)?;
            let header = ciphertext::encode_header(&key_id);
            let gcm = match key.scheme() {
                Scheme::AesGcm { .. } => Some(GcmSealer::new(key.secret())?),
                _ => None,
            };
            self.sealing.insert(spec.clone(), Sealing { op, key_id, header, key, gcm });
        }
        self.sealing.get_mut(spec).ok_or_else(|| AppError::Internal("sealing context vanished".into()))
    }

    /// Encrypts (`Encrypt`) or wraps (`Wrap`) under the spec's current key.
    pub fn seal(&mut self, spec: &Name, op: Operation, input: &[u8], aad: &[u8]) -> AppResult<(Vec<u8>, KeyId)> {
        let s = self.sealing(spec, op)?;
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

    /// Decrypts (`Decrypt`) or unwraps (`Unwrap`) with the key the header names.
    pub fn open(&mut self, sealed: &[u8], op: Operation, aad: &[u8]) -> AppResult<(Zeroizing<Vec<u8>>, KeyId)> {
        let (key_id, header, body) = parse(sealed, op)?;
        self.allow(&key_id.spec, op)?;
        let key = self.key(&key_id)?;
        let plaintext = key.open(&[header, aad], body).map_err(|e| match e {
            CryptoError::Failed(reason) => AppError::Domain(DomainError::invalid(input_field(op), reason)),
            other => other.into(),
        })?;
        Ok((plaintext, key_id))
    }

    /// Signs (`Sign`) or MACs (`Mac`) with the spec's current key.
    pub fn authenticate(&mut self, spec: &Name, op: Operation, message: &[u8]) -> AppResult<(Vec<u8>, KeyId)> {
        if message.len() > MAX_PLAINTEXT {
            return Err(DomainError::invalid("message", "larger than 4 MiB").into());
        }
        self.allow(spec, op)?;
        let (key_id, key) = self.active_key(spec)?;
        let mut out = ciphertext::encode_header(&key_id);
        out.extend_from_slice(&key.authenticate(message)?);
        Ok((out, key_id))
    }

    /// Checks a signature (`Verify`) or MAC (`VerifyMac`) made by
    /// `authenticate`, with the key its header names.
    pub fn check(&mut self, tagged: &[u8], op: Operation, message: &[u8]) -> AppResult<(bool, KeyId)> {
        let (key_id, _, tag) = parse(tagged, op)?;
        self.allow(&key_id.spec, op)?;
        let key = self.key(&key_id)?;
        Ok((key.check(message, tag)?, key_id))
    }
}
