//! Signer backends: where the key-encryption key (KEK) lives and where the
//! one-time transport private keys of imports live. `software` keeps a KEK in
//! a 0600 file; `pkcs11` (issue 4) keeps it on a token.
//!
//! Also home of the openssl primitives (`primitives`) and the instance's
//! signing key (`instance_key`), and `delayed`, a signer slow to unwrap that
//! benchmarks use. `async_signer` is the async face the services hold: it
//! runs every backend call and signature on the blocking pool. Depends on
//! `domain` (and `offload`) only.

pub mod aead;
pub mod async_signer;
pub mod byok;
#[doc(hidden)]
pub mod delayed;
pub mod instance_key;
pub mod material;
pub mod pkcs11;
pub mod primitives;
pub mod schemes;
pub mod software;

use thiserror::Error;

use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::key::{DataKey, WrappedKey};

/// Crypto failures. Messages never include key material.
#[derive(Debug, Error)]
pub enum CryptoError {
    #[error("cryptographic operation failed: {0}")]
    Failed(&'static str),
    #[error("signature does not verify")]
    BadSignature,
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    /// A PKCS#11 token failed or is unreachable (names the token and the
    /// PKCS#11 return value, never a PIN).
    #[error("PKCS#11 signer: {0}")]
    Token(String),
}

impl From<openssl::error::ErrorStack> for CryptoError {
    fn from(_: openssl::error::ErrorStack) -> Self {
        // The stack can name internal state; callers add context.
        CryptoError::Failed("openssl")
    }
}

/// A one-time transport key pair made for an import.
pub struct TransportKey {
    /// Opaque handle the store keeps until import (wrapped private key for the
    /// software signer, an object label for pkcs11). Contains no plaintext.
    pub handle: Vec<u8>,
    /// SubjectPublicKeyInfo DER of the RSA-3072 public key.
    pub public_der: Vec<u8>,
    pub wrapping: WrappingAlgorithm,
}

/// The KEK backend.
pub trait Signer: Send + Sync + 'static {
    /// "software" or "pkcs11".
    fn kind(&self) -> &'static str;
    /// Wraps a data key under the KEK (RFC 5649).
    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, CryptoError>;
    /// Unwraps a data key wrapped by `wrap`.
    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptoError>;
    /// Creates a one-time RSA-3072 transport key pair.
    fn create_transport_key(&self) -> Result<TransportKey, CryptoError>;
    /// Recovers the AES transport key that the source wrapped for `handle`.
    fn open_transport_key(
        &self,
        handle: &[u8],
        wrapping: WrappingAlgorithm,
        wrapped_aes_key: &[u8],
    ) -> Result<DataKey, CryptoError>;
    /// Destroys the transport private key behind `handle`.
    fn destroy_transport_key(&self, handle: &[u8]) -> Result<(), CryptoError>;
}
