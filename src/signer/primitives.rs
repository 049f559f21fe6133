//! openssl primitives used by the signers and the node: RFC 5649 key wrap,
//! AES-GCM, RSA-OAEP, ECDSA, SHA-256 and random bytes.

use openssl::cipher::Cipher;
use openssl::cipher_ctx::{CipherCtx, CipherCtxFlags};
use openssl::hash::MessageDigest;
use openssl::md::Md;
use openssl::pkey::{PKey, Private, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use zeroize::Zeroizing;

use super::CryptoError;
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::key::DataKey;

pub const GCM_NONCE_LEN: usize = 12;
pub const GCM_TAG_LEN: usize = 16;

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if openssl::rand::rand_bytes(&mut out).is_err() {
        // The CSPRNG failing is a broken invariant of the platform.
        panic!("openssl RAND_bytes failed");
    }
    out
}

pub fn random_key(len: usize) -> DataKey {
    let mut out = Zeroizing::new(vec![0u8; len]);
    if openssl::rand::rand_bytes(&mut out).is_err() {
        panic!("openssl RAND_bytes failed");
    }
    DataKey::new(out)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

fn kwp_cipher(kek_len: usize) -> Result<&'static openssl::cipher::CipherRef, CryptoError> {
    match kek_len {
        16 => Ok(Cipher::aes_128_wrap_pad()),
        24 => Ok(Cipher::aes_192_wrap_pad()),
        32 => Ok(Cipher::aes_256_wrap_pad()),
        _ => Err(CryptoError::Failed("key-wrap key must be 128, 192 or 256 bits")),
    }
}

/// AES key wrap with padding (RFC 5649).
pub fn kwp_wrap(kek: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut ctx = CipherCtx::new()?;
    ctx.set_flags(CipherCtxFlags::FLAG_WRAP_ALLOW);
    ctx.encrypt_init(Some(kwp_cipher(kek.len())?), Some(kek), None)?;
    let mut out = Vec::with_capacity(plaintext.len() + 16);
    ctx.cipher_update_vec(plaintext, &mut out)?;
    ctx.cipher_final_vec(&mut out)?;
    Ok(out)
}

/// Unwraps RFC 5649; fails if the integrity check fails.
pub fn kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    // RFC 5649 output is at least two semiblocks; openssl would "unwrap" an
    // empty input to an empty key (a PKCS#11 token refuses it, and so do we).
    if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
        return Err(CryptoError::Failed("key unwrap: not an RFC 5649 wrapped key"));
    }
    let mut ctx = CipherCtx::new()?;
    ctx.set_flags(CipherCtxFlags::FLAG_WRAP_ALLOW);
    ctx.decrypt_init(Some(kwp_cipher(kek.len())?), Some(kek), None)?;
    let mut out = Zeroizing::new(Vec::with_capacity(wrapped.len() + 16));
    ctx.cipher_update_vec(wrapped, &mut out).map_err(|_| CryptoError::Failed("key unwrap: integrity check failed"))?;
    ctx.cipher_final_vec(&mut out).map_err(|_| CryptoError::Failed("key unwrap: integrity check failed"))?;
    Ok(out)
}

fn gcm_cipher(key_len: usize) -> Result<&'static openssl::cipher::CipherRef, CryptoError> {
    match key_len {
        16 => Ok(Cipher::aes_128_gcm()),
        24 => Ok(Cipher::aes_192_gcm()),
        32 => Ok(Cipher::aes_256_gcm()),
        _ => Err(CryptoError::Failed("AES-GCM key must be 128, 192 or 256 bits")),
    }
}

/// AES-GCM: appends nonce || ciphertext || tag to `out`.
pub fn gcm_seal(key: &[u8], aad: &[&[u8]], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
    let nonce: [u8; GCM_NONCE_LEN] = random_bytes();
    let mut ctx = CipherCtx::new()?;
    ctx.encrypt_init(Some(gcm_cipher(key.len())?), Some(key), Some(&nonce))?;
    for a in aad {
        ctx.cipher_update(a, None)?;
    }
    out.extend_from_slice(&nonce);
    ctx.cipher_update_vec(plaintext, out)?;
    ctx.cipher_final_vec(out)?;
    let mut tag = [0u8; GCM_TAG_LEN];
    ctx.tag(&mut tag)?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// AES-GCM sealing with one key many times: the key schedule is set up once
/// and only the nonce changes per message (for batches).
pub struct GcmSealer {
    ctx: CipherCtx,
}

impl GcmSealer {
    pub fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let mut ctx = CipherCtx::new()?;
        ctx.encrypt_init(Some(gcm_cipher(key.len())?), Some(key), None)?;
        Ok(GcmSealer { ctx })
    }

    /// Appends nonce || ciphertext || tag to `out`, exactly as `gcm_seal`.
    pub fn seal(&mut self, aad: &[&[u8]], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce: [u8; GCM_NONCE_LEN] = random_bytes();
        self.ctx.encrypt_init(None, None, Some(&nonce))?;
        for a in aad {
            self.ctx.cipher_update(a, None)?;
        }
        out.extend_from_slice(&nonce);
        self.ctx.cipher_update_vec(plaintext, out)?;
        self.ctx.cipher_final_vec(out)?;
        let mut tag = [0u8; GCM_TAG_LEN];
        self.ctx.tag(&mut tag)?;
        out.extend_from_slice(&tag);
        Ok(())
    }
}

/// Opens nonce || ciphertext || tag.
pub fn gcm_open(key: &[u8], aad: &[&[u8]], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let fail = CryptoError::Failed("decryption failed: wrong key, associated data or tampered ciphertext");
    if sealed.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return Err(fail);
    }
    let (nonce, rest) = sealed.split_at(GCM_NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - GCM_TAG_LEN);
    let mut ctx = CipherCtx::new()?;
    ctx.decrypt_init(Some(gcm_cipher(key.len())?), Some(key), Some(nonce))?;
    for a in aad {
        ctx.cipher_update(a, None)?;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 16));
    ctx.cipher_update_vec(body, &mut out)?;
    ctx.set_tag(tag)?;
    ctx.cipher_final_vec(&mut out).map_err(|_| fail)?;
    Ok(out)
}

fn oaep_md(wrapping: WrappingAlgorithm) -> &'static openssl::md::MdRef {
    match wrapping {
        WrappingAlgorithm::RsaAesKeyWrapSha256 => Md::sha256(),
        WrappingAlgorithm::RsaAesKeyWrapSha1 => Md::sha1(),
    }
}

/// RSA-OAEP encryption to a SubjectPublicKeyInfo DER public key.
pub fn rsa_oaep_encrypt(public_der: &[u8], wrapping: WrappingAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let key: PKey<Public> = PKey::public_key_from_der(public_der)
        .map_err(|_| CryptoError::Failed("transport public key is not valid DER"))?;
    let bits = key.rsa().map_err(|_| CryptoError::Failed("transport key is not RSA"))?.size() * 8;
    if bits < 3072 {
        return Err(CryptoError::Failed("transport key must be RSA of at least 3072 bits"));
    }
    rsa_oaep_encrypt_to(&key, wrapping, data)
}

/// RSA-OAEP encryption (the digest for OAEP and MGF1 alike, no label) to a
/// key the caller has checked.
pub fn rsa_oaep_encrypt_to(
    key: &PKey<Public>,
    wrapping: WrappingAlgorithm,
    data: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut ctx = PkeyCtx::new(key)?;
    ctx.encrypt_init()?;
    ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
    ctx.set_rsa_oaep_md(oaep_md(wrapping))?;
    ctx.set_rsa_mgf1_md(oaep_md(wrapping))?;
    let mut out = Vec::new();
    ctx.encrypt_to_vec(data, &mut out)?;
    Ok(out)
}

pub fn rsa_oaep_decrypt(
    key: &PKey<Private>,
    wrapping: WrappingAlgorithm,
    data: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut ctx = PkeyCtx::new(key)?;
    ctx.decrypt_init()?;
    ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
    ctx.set_rsa_oaep_md(oaep_md(wrapping))?;
    ctx.set_rsa_mgf1_md(oaep_md(wrapping))?;
    let mut out = Zeroizing::new(Vec::new());
    ctx.decrypt_to_vec(data, &mut out).map_err(|_| CryptoError::Failed("transport key unwrap failed"))?;
    Ok(out)
}

/// ECDSA/RSA signature with SHA-256 (DER-encoded for ECDSA).
pub fn sign_sha256(key: &PKey<Private>, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), key)?;
    signer.update(data)?;
    Ok(signer.sign_to_vec()?)
}

/// Verifies `signature` over `data` with the public key of an X.509 certificate (DER).
pub fn verify_sha256_with_cert(cert_der: &[u8], data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let cert = openssl::x509::X509::from_der(cert_der).map_err(|_| CryptoError::BadSignature)?;
    let key = cert.public_key().map_err(|_| CryptoError::BadSignature)?;
    let mut verifier = openssl::sign::Verifier::new(MessageDigest::sha256(), &key)?;
    verifier.update(data)?;
    match verifier.verify(signature) {
        Ok(true) => Ok(()),
        _ => Err(CryptoError::BadSignature),
    }
}

/// Whether the certificate (DER) was issued by a CA certificate in
/// `ca_pem` and is valid now (OpenSSL's chain verification).
pub fn chains_to(cert_der: &[u8], ca_pem: &[u8]) -> Result<(), String> {
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::{X509, X509StoreContext};
    let cert = X509::from_der(cert_der).map_err(|_| "not an X.509 certificate".to_owned())?;
    let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for ca in X509::stack_from_pem(ca_pem).map_err(|_| "the CA file holds no certificate".to_owned())? {
        store.add_cert(ca).map_err(|e| e.to_string())?;
    }
    let store = store.build();
    let chain = Stack::new().map_err(|e| e.to_string())?;
    let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
    let verified = ctx
        .init(&store, &cert, &chain, |c| Ok(c.verify_cert()?.then_some(()).ok_or(c.error())))
        .map_err(|e| e.to_string())?;
    verified.map_err(|e| e.error_string().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_chains_only_to_its_own_ca() {
        use crate::tls::pki::{create_ca, issue_instance};
        let (ca, other) = (create_ca("ca").unwrap(), create_ca("other").unwrap());
        let sys_id = crate::domain::ids::SysId::parse("0123456789abcdef0123456789abcdef").unwrap();
        let leaf = issue_instance(&ca, &sys_id, &["localhost".into()]).unwrap();
        let der = openssl::x509::X509::from_pem(leaf.cert_pem.as_bytes()).unwrap().to_der().unwrap();
        assert_eq!(chains_to(&der, ca.cert_pem.as_bytes()), Ok(()));
        let another = chains_to(&der, other.cert_pem.as_bytes());
        assert_eq!(another, Err("unable to get local issuer certificate".to_owned()), "another CA did not issue it");
        assert_eq!(chains_to(b"junk", ca.cert_pem.as_bytes()), Err("not an X.509 certificate".to_owned()));
    }

    #[test]
    fn rfc5649_vector() {
        // RFC 5649 §6, 192-bit KEK, 7-byte key.
        let kek = hex::decode("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8").unwrap();
        let key = hex::decode("466f7250617369").unwrap();
        let wrapped = kwp_wrap(&kek, &key).unwrap();
        assert_eq!(hex::encode(&wrapped), "afbeb0f07dfbf5419200f2ccb50bb24f");
        assert_eq!(&kwp_unwrap(&kek, &wrapped).unwrap()[..], &key[..]);
        let mut bad = wrapped;
        bad[3] ^= 1;
        let err = kwp_unwrap(&kek, &bad).err();
        assert!(matches!(err, Some(CryptoError::Failed("key unwrap: integrity check failed"))), "{err:?}");
    }

    #[test]
    fn reused_sealer_matches_one_shot_opening() {
        let key = [3u8; 32];
        let mut sealer = GcmSealer::new(&key).unwrap();
        for msg in [&b"a"[..], b"", b"longer message here"] {
            let mut out = Vec::new();
            sealer.seal(&[b"h", b"x"], msg, &mut out).unwrap();
            assert_eq!(&gcm_open(&key, &[b"h", b"x"], &out).unwrap()[..], msg);
        }
    }

    #[test]
    fn gcm_binds_associated_data() {
        let key = [9u8; 32];
        let mut sealed = Vec::new();
        gcm_seal(&key, &[b"hdr", b"aad"], b"secret", &mut sealed).unwrap();
        assert_eq!(&gcm_open(&key, &[b"hdr", b"aad"], &sealed).unwrap()[..], b"secret");
        let refused = |r: Result<Zeroizing<Vec<u8>>, CryptoError>| {
            matches!(
                r,
                Err(CryptoError::Failed("decryption failed: wrong key, associated data or tampered ciphertext"))
            )
        };
        assert!(refused(gcm_open(&key, &[b"hdr", b"other"], &sealed)), "other associated data");
        assert!(refused(gcm_open(&[8u8; 32], &[b"hdr", b"aad"], &sealed)), "another key");
    }
}
