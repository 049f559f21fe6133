//! The software signer: a 256-bit KEK read from a file of mode 0600.
//! Transport private keys are kept wrapped under the KEK until import.

use std::fmt;
use std::io::Write;
use std::path::Path;

use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use zeroize::Zeroizing;

use super::primitives::{kwp_unwrap, kwp_wrap, random_bytes, rsa_oaep_decrypt};
use super::{CryptoError, Signer, TransportKey};
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::key::{DataKey, WrappedKey};

const KEK_LEN: usize = 32;

pub struct SoftwareSigner {
    kek: Zeroizing<[u8; KEK_LEN]>,
}

impl fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SoftwareSigner { kek: [redacted] }")
    }
}

fn key_file_error(path: &Path, reason: impl Into<String>) -> CryptoError {
    CryptoError::KeyFile { path: path.display().to_string(), reason: reason.into() }
}

impl SoftwareSigner {
    /// Writes a new random KEK to `path` (mode 0600). Refuses to overwrite.
    pub fn create_key_file(path: &Path) -> Result<(), CryptoError> {
        use std::os::unix::fs::OpenOptionsExt;
        let kek = Zeroizing::new(random_bytes::<KEK_LEN>());
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| key_file_error(path, e.to_string()))?;
        file.write_all(&kek[..]).and_then(|_| file.sync_all()).map_err(|e| key_file_error(path, e.to_string()))?;
        Ok(())
    }

    /// Loads the KEK, refusing a file readable by group or others.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| key_file_error(path, e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(key_file_error(path, "must not be readable by group or others (chmod 600)"));
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| key_file_error(path, e.to_string()))?);
        if bytes.len() != KEK_LEN {
            return Err(key_file_error(path, format!("must hold exactly {KEK_LEN} bytes")));
        }
        let mut kek = Zeroizing::new([0u8; KEK_LEN]);
        kek.copy_from_slice(&bytes);
        Ok(SoftwareSigner { kek })
    }
}

impl Signer for SoftwareSigner {
    fn kind(&self) -> &'static str {
        "software"
    }

    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        Ok(WrappedKey(kwp_wrap(&self.kek[..], key.expose())?))
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        Ok(DataKey::new(kwp_unwrap(&self.kek[..], &wrapped.0)?))
    }

    fn create_transport_key(&self) -> Result<TransportKey, CryptoError> {
        let rsa = Rsa::generate(3072)?;
        let public_der = rsa.public_key_to_der()?;
        let pkey = PKey::from_rsa(rsa)?;
        let private_der = Zeroizing::new(pkey.private_key_to_pkcs8()?);
        let handle = kwp_wrap(&self.kek[..], &private_der)?;
        Ok(TransportKey { handle, public_der, wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256 })
    }

    fn open_transport_key(
        &self,
        handle: &[u8],
        wrapping: WrappingAlgorithm,
        wrapped_aes_key: &[u8],
    ) -> Result<DataKey, CryptoError> {
        let private_der = kwp_unwrap(&self.kek[..], handle)?;
        let pkey = PKey::private_key_from_pkcs8(&private_der)?;
        Ok(DataKey::new(rsa_oaep_decrypt(&pkey, wrapping, wrapped_aes_key)?))
    }

    fn destroy_transport_key(&self, _handle: &[u8]) -> Result<(), CryptoError> {
        // The wrapped private key exists only in the store row the caller
        // deletes in the import transaction; nothing else holds it.
        Ok(())
    }
}
