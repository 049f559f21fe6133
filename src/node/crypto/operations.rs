//! Encrypt, decrypt and rewrap with the instance's keys, one at a time or in
//! batches; sign/verify, MAC/verify and wrap/unwrap one at a time. Every call
//! runs in a `Session` (session.rs), which checks the spec's purpose
//! and the module access policies and caches keys for the call.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::Crypto;
use super::session::{Cipher, Session, compute};
use crate::domain::DomainError;
use crate::domain::auth::Caller;
use crate::domain::ids::{KeyId, Name};
use crate::domain::policy::Operation;
use crate::domain::spec::Scheme;
use crate::error::{AppError, AppResult};
use crate::signer::async_signer::off_the_workers;

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

/// Work a rewrap queues for its next CPU run (see `Crypto::rewrap_items`).
enum Step {
    /// Open item `i` and seal it again.
    Both(usize),
    /// Seal item `i` again, opened already.
    Seal(usize, Zeroizing<Vec<u8>>, KeyId),
    /// Open item `i`; if it opens, the seal side's error (decided already,
    /// without side effects) is its answer.
    Unsealable(usize, AppError),
}

/// Encrypts `plaintext` again under its spec's current key; the plaintext
/// never leaves the cipher.
fn seal_again(c: &mut Cipher, plaintext: &[u8], previous_key_id: KeyId, aad: &[u8]) -> AppResult<Rewrapped> {
    let (ciphertext, key_id) = c.seal(&previous_key_id.spec, Operation::Encrypt, plaintext, aad)?;
    Ok(Rewrapped { ciphertext, key_id, previous_key_id })
}

impl Step {
    fn run(self, c: &mut Cipher, items: &[OpenItem]) -> (usize, AppResult<Rewrapped>) {
        let open = |c: &mut Cipher, i: usize| c.open(&items[i].ciphertext, Operation::Decrypt, &items[i].aad);
        match self {
            Step::Both(i) => (i, open(c, i).and_then(|(p, previous)| seal_again(c, &p, previous, &items[i].aad))),
            Step::Seal(i, p, previous) => (i, seal_again(c, &p, previous, &items[i].aad)),
            Step::Unsealable(i, e) => (i, open(c, i).and(Err(e))),
        }
    }
}

type Opened = AppResult<(Zeroizing<Vec<u8>>, KeyId)>;

/// Runs the queued steps, then opens item `open`, in one go: inline for one
/// light item, else off the workers. The steps' answers go into `answers`;
/// returns what opening `open` gave.
async fn run_steps(
    cipher: &mut Cipher,
    items: &Arc<Vec<OpenItem>>,
    queue: Vec<Step>,
    open: Option<usize>,
    answers: &mut [Option<AppResult<Rewrapped>>],
) -> AppResult<Option<Opened>> {
    if queue.is_empty() && open.is_none() {
        return Ok(None);
    }
    let inline = items.len() == 1 && cipher.light(items[0].ciphertext.len());
    let (mut c, shared) = (std::mem::take(cipher), Arc::clone(items));
    let (c, done, opened) = compute(inline, move || {
        let done: Vec<_> = queue.into_iter().map(|step| step.run(&mut c, &shared)).collect();
        let opened = open.map(|i| c.open(&shared[i].ciphertext, Operation::Decrypt, &shared[i].aad));
        Ok((c, done, opened))
    })
    .await?;
    *cipher = c;
    for (i, answer) in done {
        answers[i] = Some(answer);
    }
    Ok(opened)
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
        &self,
        caller: &Caller,
        spec: Name,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        Session::new(self, caller).seal_one(spec, Operation::Encrypt, plaintext, aad).await
    }

    pub async fn decrypt(&self, caller: &Caller, sealed: Vec<u8>, aad: Vec<u8>) -> AppResult<(Vec<u8>, KeyId)> {
        let (plaintext, key_id) = Session::new(self, caller).open_one(sealed, Operation::Decrypt, aad).await?;
        Ok((plaintext.to_vec(), key_id))
    }

    pub async fn rewrap(&self, caller: &Caller, sealed: Vec<u8>, aad: Vec<u8>) -> AppResult<Rewrapped> {
        let mut answers = self.rewrap_items(caller, vec![OpenItem { ciphertext: sealed, aad }]).await?;
        answers.pop().ok_or_else(|| AppError::Internal("empty batch".into()))?
    }

    /// Each item succeeds or fails on its own.
    pub async fn encrypt_batch(
        &self,
        caller: &Caller,
        items: Vec<SealItem>,
    ) -> AppResult<Vec<AppResult<(Vec<u8>, KeyId)>>> {
        check_batch(items.len())?;
        let mut s = Session::new(self, caller);
        let mut ready = Vec::with_capacity(items.len());
        for i in &items {
            ready.push(s.prepare_seal(&i.spec, Operation::Encrypt).await);
        }
        let mut cipher = s.cipher;
        let inline = items.len() == 1 && cipher.light(items[0].plaintext.len());
        compute(inline, move || {
            Ok(items
                .iter()
                .zip(ready)
                .map(|(i, ready)| ready.and_then(|()| cipher.seal(&i.spec, Operation::Encrypt, &i.plaintext, &i.aad)))
                .collect())
        })
        .await
    }

    pub async fn decrypt_batch(
        &self,
        caller: &Caller,
        items: Vec<OpenItem>,
    ) -> AppResult<Vec<AppResult<(Vec<u8>, KeyId)>>> {
        check_batch(items.len())?;
        let mut s = Session::new(self, caller);
        let mut ready = Vec::with_capacity(items.len());
        for i in &items {
            ready.push(s.prepare_open(&i.ciphertext, Operation::Decrypt).await);
        }
        let cipher = s.cipher;
        let inline = items.len() == 1 && cipher.light(items[0].ciphertext.len());
        compute(inline, move || {
            Ok(items
                .iter()
                .zip(ready)
                .map(|(i, ready)| {
                    let (p, k) = ready.and_then(|_| cipher.open(&i.ciphertext, Operation::Decrypt, &i.aad))?;
                    Ok((p.to_vec(), k))
                })
                .collect())
        })
        .await
    }

    pub async fn rewrap_batch(&self, caller: &Caller, items: Vec<OpenItem>) -> AppResult<Vec<AppResult<Rewrapped>>> {
        check_batch(items.len())?;
        self.rewrap_items(caller, items).await
    }

    /// Rewraps each item (decrypts, encrypts again under its spec's current
    /// key) with the same checks, in the same order, as one item at a time:
    /// an item's Encrypt access is checked (and a refusal audited) only once
    /// it has opened. The CPU work is queued and run in one go; only the
    /// first item of a spec whose Encrypt access is not decided yet runs
    /// (opens) before the items after it are looked at.
    async fn rewrap_items(&self, caller: &Caller, items: Vec<OpenItem>) -> AppResult<Vec<AppResult<Rewrapped>>> {
        let n = items.len();
        let items = Arc::new(items);
        let mut s = Session::new(self, caller);
        let mut answers: Vec<Option<AppResult<Rewrapped>>> = (0..n).map(|_| None).collect();
        let mut queue = Vec::new();
        for i in 0..n {
            let previous = match s.prepare_open(&items[i].ciphertext, Operation::Decrypt).await {
                Ok(id) => id,
                Err(e) => {
                    answers[i] = Some(Err(e));
                    continue;
                }
            };
            if s.decided(&previous.spec, Operation::Encrypt) {
                // Asking again audits nothing: set the seal side up now.
                queue.push(match s.prepare_seal(&previous.spec, Operation::Encrypt).await {
                    Ok(()) => Step::Both(i),
                    Err(e) => Step::Unsealable(i, e),
                });
                continue;
            }
            let opened = run_steps(&mut s.cipher, &items, std::mem::take(&mut queue), Some(i), &mut answers).await?;
            answers[i] = match opened {
                Some(Ok((plaintext, previous))) => match s.prepare_seal(&previous.spec, Operation::Encrypt).await {
                    Ok(()) => {
                        queue.push(Step::Seal(i, plaintext, previous));
                        None
                    }
                    Err(e) => Some(Err(e)),
                },
                Some(Err(e)) => Some(Err(e)),
                None => None,
            };
        }
        run_steps(&mut s.cipher, &items, queue, None, &mut answers).await?;
        answers.into_iter().map(|a| a.ok_or_else(|| AppError::Internal("a rewrap item was lost".into()))).collect()
    }
}

impl Crypto {
    /// Signs `message` (RSA-PSS) with the spec's current key.
    pub async fn sign(&self, caller: &Caller, spec: Name, message: Vec<u8>) -> AppResult<(Vec<u8>, KeyId)> {
        Session::new(self, caller).authenticate(spec, Operation::Sign, message).await
    }

    /// Checks a signature made by `sign`; `false` if it does not verify.
    pub async fn verify(&self, caller: &Caller, signature: Vec<u8>, message: Vec<u8>) -> AppResult<(bool, KeyId)> {
        Session::new(self, caller).check(signature, Operation::Verify, message).await
    }

    /// MACs `message` (HMAC-SHA-2) with the spec's current key.
    pub async fn mac(&self, caller: &Caller, spec: Name, message: Vec<u8>) -> AppResult<(Vec<u8>, KeyId)> {
        Session::new(self, caller).authenticate(spec, Operation::Mac, message).await
    }

    /// Checks a MAC made by `mac` (constant-time); `false` if it does not match.
    pub async fn verify_mac(&self, caller: &Caller, mac: Vec<u8>, message: Vec<u8>) -> AppResult<(bool, KeyId)> {
        Session::new(self, caller).check(mac, Operation::VerifyMac, message).await
    }

    /// Wraps caller-supplied key material under the spec's current key.
    pub async fn wrap(
        &self,
        caller: &Caller,
        spec: Name,
        key_material: Zeroizing<Vec<u8>>,
        aad: Vec<u8>,
    ) -> AppResult<(Vec<u8>, KeyId)> {
        if key_material.is_empty() {
            return Err(DomainError::invalid("key_material", "is empty").into());
        }
        Session::new(self, caller).seal_one(spec, Operation::Wrap, key_material, aad).await
    }

    /// Unwraps what `wrap` made, with the same associated data.
    pub async fn unwrap(
        &self,
        caller: &Caller,
        wrapped: Vec<u8>,
        aad: Vec<u8>,
    ) -> AppResult<(Zeroizing<Vec<u8>>, KeyId)> {
        Session::new(self, caller).open_one(wrapped, Operation::Unwrap, aad).await
    }

    /// The current key's public half (SubjectPublicKeyInfo DER) of an RSA
    /// spec. Needs the access that uses it: verify for signature specs,
    /// encrypt or wrap for the others.
    pub async fn public_key(&self, caller: &Caller, spec: Name) -> AppResult<PublicKey> {
        let mut session = Session::new(self, caller);
        let s = session.spec(&spec).await?;
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
        session.allow(&spec, op).await?;
        let (key_id, key) = session.active_key(&spec).await?;
        let scheme = key.scheme().label();
        let (der, pem) = off_the_workers(move || key.public_key()).await?;
        Ok(PublicKey { der, pem, key_id, scheme })
    }
}
