//! One-time RSA-3072 transport key pairs on the token. The private key is a
//! token object (it must outlive sessions and restarts until the import)
//! labelled `kmf-transport-<32 hex>`, sensitive, non-extractable, decrypt and
//! unwrap only; the label is the handle the store keeps. The public key is a
//! session object, read (modulus, exponent) and destroyed at once.

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::Session;
use openssl::bn::BigNum;
use openssl::rsa::Rsa;
use zeroize::Zeroizing;

use super::module::{find_by_label, is_stale};
use super::session_pool::SessionPool;
use crate::domain::bundle::WrappingAlgorithm;
use crate::signer::CryptoError;
use crate::signer::primitives::random_bytes;

const LABEL_PREFIX: &str = "kmf-transport-";
const MODULUS_BITS: u64 = 3072;

/// The label a handle names, refusing anything we did not make.
pub(super) fn label_of(handle: &[u8]) -> Result<&str, CryptoError> {
    let label = std::str::from_utf8(handle).map_err(|_| CryptoError::Failed("not a pkcs11 transport key handle"))?;
    let ok = label
        .strip_prefix(LABEL_PREFIX)
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok { Ok(label) } else { Err(CryptoError::Failed("not a pkcs11 transport key handle")) }
}

/// Generates the pair; returns the private key's label and the public key
/// as SubjectPublicKeyInfo DER.
pub(super) fn create(pool: &SessionPool) -> Result<(String, Vec<u8>), CryptoError> {
    let label = format!("{LABEL_PREFIX}{}", hex::encode(random_bytes::<16>()));
    let public_template = [
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::ModulusBits(MODULUS_BITS.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Encrypt(true),
        Attribute::Wrap(false),
        Attribute::Verify(false),
    ];
    let private_template = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(true),
        Attribute::Unwrap(true),
        Attribute::Sign(false),
        Attribute::SignRecover(false),
        Attribute::Derive(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(label.as_bytes().to_vec()),
    ];
    let (modulus, exponent) = pool.run("generating the transport key", |s| {
        // A retry after a lost session must not leave a first private key behind.
        destroy_all(s, &label)?;
        let (public, private) =
            s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public_template, &private_template)?;
        let attrs = s.get_attributes(public, &[AttributeType::Modulus, AttributeType::PublicExponent]);
        let _ = s.destroy_object(public);
        let attrs = match attrs {
            Ok(attrs) => attrs,
            Err(e) => {
                let _ = s.destroy_object(private);
                return Err(e);
            }
        };
        let (mut n, mut e) = (None, None);
        for attr in attrs {
            match attr {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        match n.zip(e) {
            Some(pair) => Ok(pair),
            None => {
                let _ = s.destroy_object(private);
                Err(Error::Pkcs11(RvError::AttributeTypeInvalid, cryptoki::context::Function::GetAttributeValue))
            }
        }
    })?;
    let public_der = spki_der(&modulus, &exponent).inspect_err(|_| {
        let _ = destroy(pool, &label);
    })?;
    Ok((label, public_der))
}

fn spki_der(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let rsa = Rsa::from_public_components(BigNum::from_slice(modulus)?, BigNum::from_slice(exponent)?)?;
    Ok(rsa.public_key_to_der()?)
}

pub(super) fn oaep(wrapping: WrappingAlgorithm) -> Mechanism<'static> {
    let (hash, mgf) = match wrapping {
        WrappingAlgorithm::RsaAesKeyWrapSha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        WrappingAlgorithm::RsaAesKeyWrapSha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

/// What decrypting with a transport key gave.
pub(super) enum Opened {
    Plain(Zeroizing<Vec<u8>>),
    /// The token refused (wrong key, tampered data, unsupported parameters).
    Refused(Error),
    /// No transport key with that label (destroyed, or never made here).
    Missing,
}

/// RSA-OAEP decryption on the token with the transport key `label`.
pub(super) fn decrypt(
    pool: &SessionPool,
    label: &str,
    wrapping: WrappingAlgorithm,
    data: &[u8],
) -> Result<Opened, CryptoError> {
    let mechanism = oaep(wrapping);
    pool.run("transport key decryption", |s| {
        let Some(key) = find_by_label(s, ObjectClass::PRIVATE_KEY, label)?.first().copied() else {
            return Ok(Opened::Missing);
        };
        match s.decrypt(&mechanism, key, data) {
            Ok(plain) => Ok(Opened::Plain(Zeroizing::new(plain))),
            Err(e) if is_stale(&e) => Err(e),
            Err(e) => Ok(Opened::Refused(e)),
        }
    })
}

fn destroy_all(s: &Session, label: &str) -> Result<(), Error> {
    for key in find_by_label(s, ObjectClass::PRIVATE_KEY, label)? {
        s.destroy_object(key)?;
    }
    Ok(())
}

/// Destroys the transport private key (every object with its label).
pub(super) fn destroy(pool: &SessionPool, label: &str) -> Result<(), CryptoError> {
    pool.run("destroying the transport key", |s| destroy_all(s, label))
}
