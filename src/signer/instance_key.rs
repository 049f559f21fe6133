//! The instance's signing key: the private key of its instance certificate.
//! It signs bundles and receipts; peers verify with the certificate they saw
//! in the mutual-TLS handshake.

use std::fmt;
use std::path::Path;

use openssl::pkey::{PKey, Private};

use super::CryptoError;
use super::primitives::sign_sha256;

pub struct InstanceKey {
    key: PKey<Private>,
}

impl InstanceKey {
    pub fn from_pem(pem: &[u8]) -> Result<Self, CryptoError> {
        let key = PKey::private_key_from_pem(pem)
            .map_err(|_| CryptoError::Failed("instance key is not a PEM private key"))?;
        Ok(InstanceKey { key })
    }

    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let pem = std::fs::read(path)
            .map_err(|e| CryptoError::KeyFile { path: path.display().to_string(), reason: e.kind().to_string() })?;
        Self::from_pem(&pem)
    }

    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        sign_sha256(&self.key, data)
    }
}

impl fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstanceKey([redacted])")
    }
}
