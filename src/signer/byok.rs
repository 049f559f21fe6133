//! BYOK wrapping in the format cloud KMSs and Vault use (RSA_AES_KEY_WRAP):
//! `RSA-OAEP(K) || AES-KWP_K(material)` (RFC 5649), K a fresh AES-256 key,
//! OAEP with the same digest for the hash and MGF1 and no label. Built from
//! `primitives` only; the import side opens the RSA part with the signer's
//! one-time transport key.

use openssl::pkey::{Id, PKey, Public};
use zeroize::Zeroizing;

use super::material::check_material;
use super::primitives::{kwp_unwrap, kwp_wrap, random_key, rsa_oaep_encrypt_to, sha256};
use super::{CryptoError, Signer};
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::key::DataKey;
use crate::domain::spec::MaterialShape;

/// The RSA part of an import: the import keys are RSA-3072.
pub const IMPORT_RSA_BYTES: usize = 384;
/// The smallest recipient key ExportKey wraps for.
pub const MIN_EXPORT_BITS: u32 = 2048;
/// The largest recipient key ExportKey accepts (a bound on the work a caller can ask for).
pub const MAX_EXPORT_BITS: u32 = 16_384;
/// The AES key wrapped by RSA.
const AES_KEY_BYTES: usize = 32;

/// The PEM ("PUBLIC KEY") of a SubjectPublicKeyInfo DER public key.
pub fn public_pem(spki_der: &[u8]) -> Result<String, CryptoError> {
    let key = PKey::public_key_from_der(spki_der)?;
    String::from_utf8(key.public_key_to_pem()?).map_err(|_| CryptoError::Failed("public key PEM is not UTF-8"))
}

/// A checked recipient public key for an export.
pub struct Recipient {
    key: PKey<Public>,
    pub bits: u32,
    /// SHA-256 of its SubjectPublicKeyInfo DER (what the audit names).
    pub spki_sha256: [u8; 32],
}

/// Parses a PEM SubjectPublicKeyInfo RSA key of 2048 to 16384 bits; the
/// error is the reason to give the caller.
pub fn recipient(pem: &str) -> Result<Recipient, String> {
    if pem.len() > 16 * 1024 {
        return Err("public key PEM is over 16 KiB".into());
    }
    let key = PKey::public_key_from_pem(pem.as_bytes())
        .map_err(|_| "not a PEM public key (-----BEGIN PUBLIC KEY-----, SubjectPublicKeyInfo)".to_owned())?;
    if key.id() != Id::RSA {
        return Err("the public key is not RSA".into());
    }
    let bits = key.bits();
    if !(MIN_EXPORT_BITS..=MAX_EXPORT_BITS).contains(&bits) {
        return Err(format!("the RSA key is {bits} bits; at least {MIN_EXPORT_BITS} (at most {MAX_EXPORT_BITS})"));
    }
    let der = key.public_key_to_der().map_err(|_| "the public key does not encode".to_owned())?;
    Ok(Recipient { spki_sha256: sha256(&der), key, bits })
}

/// Wraps `material` for `to`: RSA-OAEP-SHA-256(K) || KWP_K(material).
pub fn wrap_for(to: &Recipient, material: &DataKey) -> Result<Vec<u8>, CryptoError> {
    let aes = random_key(AES_KEY_BYTES);
    let mut out = rsa_oaep_encrypt_to(&to.key, WrappingAlgorithm::RsaAesKeyWrapSha256, aes.expose())?;
    out.extend_from_slice(&kwp_wrap(aes.expose(), material.expose())?);
    Ok(out)
}

/// Why an import blob was refused.
#[derive(Debug)]
pub enum OpenError {
    /// The caller's bytes: wrong size, RSA part that does not decrypt, a KWP
    /// integrity failure. The reason never includes material.
    Malformed(&'static str),
    /// The signer failed (a token away, a damaged handle).
    Signer(CryptoError),
}

/// Opens an import blob with the signer's transport key `handle`.
pub fn open_import(
    signer: &dyn Signer,
    handle: &[u8],
    wrapping: WrappingAlgorithm,
    blob: &[u8],
) -> Result<DataKey, OpenError> {
    if blob.len() < IMPORT_RSA_BYTES + 16 || !(blob.len() - IMPORT_RSA_BYTES).is_multiple_of(8) {
        return Err(OpenError::Malformed(
            "wrapped_key must be 384 bytes of RSA-OAEP then an RFC 5649 wrapped key (a multiple of 8 bytes, at least 16)",
        ));
    }
    let (rsa_part, kwp_part) = blob.split_at(IMPORT_RSA_BYTES);
    let aes = match signer.open_transport_key(handle, wrapping, rsa_part) {
        Ok(k) => k,
        Err(CryptoError::Failed("transport key unwrap failed")) => {
            return Err(OpenError::Malformed("the RSA part does not decrypt with the import key"));
        }
        Err(e) => return Err(OpenError::Signer(e)),
    };
    if aes.expose().len() != AES_KEY_BYTES {
        return Err(OpenError::Malformed("the RSA part must hold a 256-bit AES key"));
    }
    let material: Zeroizing<Vec<u8>> = kwp_unwrap(aes.expose(), kwp_part)
        .map_err(|_| OpenError::Malformed("the key wrap does not verify (RFC 5649 integrity check failed)"))?;
    Ok(DataKey::new(material))
}

/// Checks imported material against the spec's `shape`. Unlike a bundle's
/// keys (signed by a peer that made them), an operator's RSA key is also put
/// through openssl's consistency check. The reason never includes material.
pub fn check_imported(shape: MaterialShape, material: &DataKey) -> Result<(), String> {
    check_material(shape, material)?;
    if let MaterialShape::RsaPrivate { .. } = shape {
        let consistent = PKey::private_key_from_pkcs8(material.expose())
            .and_then(|k| k.rsa())
            .and_then(|r| r.check_key())
            .unwrap_or(false);
        if !consistent {
            return Err("the RSA private key fails its consistency check".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::software::SoftwareSigner;

    fn signer() -> (tempfile::TempDir, SoftwareSigner) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        SoftwareSigner::create_key_file(&path).unwrap();
        let s = SoftwareSigner::load(&path).unwrap();
        (dir, s)
    }

    #[test]
    fn export_format_opens_as_an_import_and_tampering_is_refused() {
        let (_dir, signer) = signer();
        let t = signer.create_transport_key().unwrap();
        let pem = public_pem(&t.public_der).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
        let to = recipient(&pem).unwrap();
        assert_eq!((to.bits, to.spki_sha256), (3072, sha256(&t.public_der)));
        let material = DataKey::new(Zeroizing::new(vec![7u8; 32]));
        let blob = wrap_for(&to, &material).unwrap();
        assert_eq!(blob.len(), IMPORT_RSA_BYTES + 40);
        let opened = open_import(&signer, &t.handle, t.wrapping, &blob).unwrap();
        assert_eq!(opened.expose(), material.expose());
        for at in [0, IMPORT_RSA_BYTES + 3] {
            let mut bad = blob.clone();
            bad[at] ^= 1;
            assert!(matches!(open_import(&signer, &t.handle, t.wrapping, &bad), Err(OpenError::Malformed(_))), "{at}");
        }
        let short = &blob[..IMPORT_RSA_BYTES + 4];
        assert!(matches!(open_import(&signer, &t.handle, t.wrapping, short), Err(OpenError::Malformed(_))));
    }

    #[test]
    fn imported_rsa_keys_are_checked() {
        let shape = MaterialShape::RsaPrivate { bits: 2048 };
        let good = crate::signer::material::generate_material(shape).unwrap();
        assert_eq!(check_imported(shape, &good), Ok(()));
        let secret = MaterialShape::Secret { len: 32 };
        let e = check_imported(secret, &DataKey::new(Zeroizing::new(vec![1; 16]))).unwrap_err();
        assert_eq!(e, "key is 128 bits, spec wants 256");
    }

    #[test]
    fn recipients_are_rsa_of_2048_bits_or_more() {
        let small = PKey::from_rsa(openssl::rsa::Rsa::generate(1024).unwrap()).unwrap();
        let pem = String::from_utf8(small.public_key_to_pem().unwrap()).unwrap();
        assert!(recipient(&pem).err().unwrap().contains("1024 bits"));
        let ec = openssl::ec::EcKey::generate(
            &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
        )
        .unwrap();
        let pem = String::from_utf8(PKey::from_ec_key(ec).unwrap().public_key_to_pem().unwrap()).unwrap();
        assert_eq!(recipient(&pem).err().unwrap(), "the public key is not RSA");
        assert!(recipient("junk").is_err());
    }
}
