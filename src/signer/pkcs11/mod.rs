//! The PKCS#11 signer: the KEK is a non-extractable AES-256 key on a token
//! (any HSM; SoftHSM2 in tests), used through `cryptoki`. Data keys are
//! wrapped and unwrapped on the token with CKM_AES_KEY_WRAP_PAD, which gives
//! the same RFC 5649 bytes as the software signer's `kwp_wrap`. Transport
//! private keys are generated and used on the token (`transport`). Sessions
//! come from a small pool (`session_pool`) on a process-wide context per
//! module (`module`); `settings` holds the configuration and open errors.

mod module;
mod session_pool;
mod settings;
mod token_setup;
mod transport;

use std::fmt;
use std::sync::OnceLock;

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::Session;
use zeroize::{Zeroize, Zeroizing};

use module::{describe, find_by_label};
use session_pool::SessionPool;
pub use settings::{DEFAULT_KEK_LABEL, OpenError, PinSource, Pkcs11Config};
pub use token_setup::{TokenSetup, ensure_token};
use transport::Opened;

use super::primitives::{random_bytes, rsa_oaep_encrypt};
use super::{CryptoError, Signer, TransportKey};
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::key::{DataKey, WrappedKey};

/// The process-wide, initialised context of `module` that every signer on
/// it shares (tests inspect tokens through it).
pub fn shared_context(module: &std::path::Path) -> Result<cryptoki::context::Pkcs11, String> {
    module::module(module)
}
const KEK_BYTES: u64 = 32;

pub struct Pkcs11Signer {
    pool: SessionPool,
    /// Whether the token's RSA-OAEP takes SHA-256, learnt with the first
    /// transport key; SoftHSM2 2.6 takes SHA-1 only.
    oaep: OnceLock<WrappingAlgorithm>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("module", &self.pool.module_path())
            .field("token", &self.pool.token_label())
            .field("kek", &self.pool.kek_label())
            .field("pin", &"[redacted]")
            .finish()
    }
}

fn kek_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(KEK_BYTES.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Modifiable(false),
    ]
}

/// Refuses a KEK that is not an AES key usable for wrap and unwrap only, or
/// that could leave the token.
fn check_kek(s: &Session, cfg: &Pkcs11Config) -> Result<(), OpenError> {
    let token_err = |e: Error| OpenError::token(format!("token '{}': {}", cfg.token_label, describe(&e)));
    let found = find_by_label(s, ObjectClass::SECRET_KEY, &cfg.kek_label).map_err(token_err)?;
    let kek = match found.as_slice() {
        [kek] => *kek,
        [] => {
            return Err(OpenError::kek(format!(
                "no key labelled '{}' on token '{}' (`kmfd init --signer pkcs11` creates it)",
                cfg.kek_label, cfg.token_label
            )));
        }
        _ => return Err(OpenError::kek(format!("{} keys are labelled '{}'", found.len(), cfg.kek_label))),
    };
    let wanted = [
        AttributeType::KeyType,
        AttributeType::Wrap,
        AttributeType::Unwrap,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
    ];
    let mut problems = Vec::new();
    for attr in s.get_attributes(kek, &wanted).map_err(token_err)? {
        match attr {
            Attribute::KeyType(t) if t != KeyType::AES => problems.push("is not an AES key"),
            Attribute::Wrap(false) => problems.push("cannot wrap"),
            Attribute::Unwrap(false) => problems.push("cannot unwrap"),
            Attribute::Sensitive(false) => problems.push("is not sensitive"),
            Attribute::Extractable(true) => problems.push("is extractable"),
            Attribute::Encrypt(true) | Attribute::Decrypt(true) => problems.push("may encrypt or decrypt data"),
            _ => {}
        }
    }
    problems.dedup();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(OpenError::kek(format!("KEK '{}' {}; refusing to use it", cfg.kek_label, problems.join(", "))))
    }
}

impl Pkcs11Signer {
    /// Loads the module, finds the token by label, logs in and checks the KEK.
    pub fn open(cfg: &Pkcs11Config) -> Result<Self, OpenError> {
        let pool = SessionPool::new(&cfg.module, &cfg.token_label, &cfg.pin, &cfg.kek_label)?;
        check_kek(pool.lease()?.session(), cfg)?;
        Ok(Pkcs11Signer { pool, oaep: OnceLock::new() })
    }

    /// Generates the KEK on the token: AES-256, sensitive, non-extractable,
    /// wrap and unwrap only. Refuses when the label is taken.
    pub fn create_kek(cfg: &Pkcs11Config) -> Result<(), OpenError> {
        let pool = SessionPool::new(&cfg.module, &cfg.token_label, &cfg.pin, &cfg.kek_label)?;
        let lease = pool.lease()?;
        let s = lease.session();
        let token_err = |e: Error| OpenError::token(format!("token '{}': {}", cfg.token_label, describe(&e)));
        let taken = s.find_objects(&[Attribute::Label(cfg.kek_label.as_bytes().to_vec())]).map_err(token_err)?;
        if !taken.is_empty() {
            return Err(OpenError::kek(format!(
                "token '{}' already holds an object labelled '{}' (refusing to overwrite; choose another KEK label)",
                cfg.token_label, cfg.kek_label
            )));
        }
        s.generate_key(&Mechanism::AesKeyGen, &kek_template(&cfg.kek_label))
            .map_err(|e| OpenError::kek(format!("generating the KEK: {}", describe(&e))))?;
        Ok(())
    }

    /// Destroys the KEK (undoing a failed `kmfd init`).
    pub fn destroy_kek(cfg: &Pkcs11Config) -> Result<(), OpenError> {
        let pool = SessionPool::new(&cfg.module, &cfg.token_label, &cfg.pin, &cfg.kek_label)?;
        let lease = pool.lease()?;
        let s = lease.session();
        let token_err = |e: Error| OpenError::token(format!("token '{}': {}", cfg.token_label, describe(&e)));
        for kek in find_by_label(s, ObjectClass::SECRET_KEY, &cfg.kek_label).map_err(token_err)? {
            s.destroy_object(kek).map_err(token_err)?;
        }
        Ok(())
    }

    /// The OAEP hash to announce, probed once with a real round trip on the
    /// first transport key: openssl encrypts with SHA-256, the token decrypts.
    fn wrapping(&self, label: &str, public_der: &[u8]) -> Result<WrappingAlgorithm, CryptoError> {
        if let Some(w) = self.oaep.get() {
            return Ok(*w);
        }
        let probe = Zeroizing::new(random_bytes::<32>());
        let sealed = rsa_oaep_encrypt(public_der, WrappingAlgorithm::RsaAesKeyWrapSha256, &probe[..])?;
        let wrapping = match transport::decrypt(&self.pool, label, WrappingAlgorithm::RsaAesKeyWrapSha256, &sealed)? {
            Opened::Plain(plain) if plain[..] == probe[..] => WrappingAlgorithm::RsaAesKeyWrapSha256,
            Opened::Plain(_) => WrappingAlgorithm::RsaAesKeyWrapSha1,
            Opened::Refused(e) => {
                tracing::debug!(error = %describe(&e), "the token refused RSA-OAEP with SHA-256");
                WrappingAlgorithm::RsaAesKeyWrapSha1
            }
            Opened::Missing => return Err(CryptoError::Failed("the new transport key vanished from the token")),
        };
        tracing::info!(token = %self.pool.token_label(), ?wrapping, "token RSA-OAEP probed");
        Ok(*self.oaep.get_or_init(|| wrapping))
    }
}

/// A session-object template holding a data key; zeroized on drop.
struct SecretTemplate(Vec<Attribute>);

impl Drop for SecretTemplate {
    fn drop(&mut self) {
        for attr in &mut self.0 {
            if let Attribute::Value(v) = attr {
                v.zeroize();
            }
        }
    }
}

fn unwrap_failed(e: &Error) -> bool {
    matches!(
        e,
        Error::Pkcs11(
            RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange,
            _
        )
    )
}

/// A data key as a session object the host may read back (it is only ever
/// on the token for the length of one wrap or unwrap).
fn data_key_attributes() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

impl Signer for Pkcs11Signer {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        let mut template = SecretTemplate(data_key_attributes());
        template.0.push(Attribute::Value(key.expose().to_vec()));
        let wrapped = self.pool.run_with_kek("wrapping a key under the KEK", |s, kek| {
            let object = s.create_object(&template.0)?;
            let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, object);
            let _ = s.destroy_object(object); // a session object: gone with the session anyway
            wrapped
        })?;
        Ok(WrappedKey(wrapped))
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        let template = data_key_attributes();
        let value = self.pool.run_with_kek("unwrapping a key under the KEK", |s, kek| {
            let object = match s.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped.0, &template) {
                Ok(object) => object,
                Err(e) if unwrap_failed(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let attrs = s.get_attributes(object, &[AttributeType::Value]);
            let _ = s.destroy_object(object);
            Ok(attrs?.into_iter().find_map(|a| match a {
                Attribute::Value(v) => Some(Zeroizing::new(v)),
                _ => None,
            }))
        })?;
        let value = value.ok_or(CryptoError::Failed("key unwrap: integrity check failed"))?;
        Ok(DataKey::new(value))
    }

    fn create_transport_key(&self) -> Result<TransportKey, CryptoError> {
        let (label, public_der) = transport::create(&self.pool)?;
        let wrapping = self.wrapping(&label, &public_der).inspect_err(|_| {
            let _ = transport::destroy(&self.pool, &label);
        })?;
        Ok(TransportKey { handle: label.into_bytes(), public_der, wrapping })
    }

    fn open_transport_key(
        &self,
        handle: &[u8],
        wrapping: WrappingAlgorithm,
        wrapped_aes_key: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let label = transport::label_of(handle)?;
        match transport::decrypt(&self.pool, label, wrapping, wrapped_aes_key)? {
            Opened::Plain(plain) => Ok(DataKey::new(plain)),
            Opened::Refused(e) => {
                tracing::warn!(error = %describe(&e), "the token refused to decrypt with the transport key");
                Err(CryptoError::Failed("transport key unwrap failed"))
            }
            Opened::Missing => Err(CryptoError::Failed("transport key not found on the token")),
        }
    }

    fn destroy_transport_key(&self, handle: &[u8]) -> Result<(), CryptoError> {
        transport::destroy(&self.pool, transport::label_of(handle)?)
    }
}
