//! The signer as async code uses it: every call of the KEK backend (an
//! openssl unwrap, a PKCS#11 round trip) and every signature of the instance
//! key runs on the blocking pool (`offload`), never on an async worker. The
//! `Signer` trait stays synchronous; this is the adapter the services hold.

use std::sync::Arc;

use super::instance_key::InstanceKey;
use super::{CryptoError, Signer, TransportKey};
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::key::{DataKey, WrappedKey};
use crate::offload::{self, TaskFailed};

impl From<TaskFailed> for CryptoError {
    fn from(_: TaskFailed) -> Self {
        CryptoError::Failed("the signer's task failed")
    }
}

/// The KEK backend behind an async face. Cheap to clone.
#[derive(Clone)]
pub struct AsyncSigner {
    backend: Arc<dyn Signer>,
}

impl std::fmt::Debug for AsyncSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSigner").field("backend", &self.backend.kind()).finish()
    }
}

impl AsyncSigner {
    pub fn new(backend: Arc<dyn Signer>) -> Self {
        AsyncSigner { backend }
    }

    /// "software" or "pkcs11".
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// Runs `f` with the backend on the blocking pool: for a batch that
    /// mixes backend calls with other CPU-bound work (one hop, not one a key).
    pub async fn with_backend<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Signer) -> Result<T, CryptoError> + Send + 'static,
    ) -> Result<T, CryptoError> {
        let backend = Arc::clone(&self.backend);
        offload::run(move || f(backend.as_ref())).await
    }

    pub async fn wrap(&self, key: DataKey) -> Result<WrappedKey, CryptoError> {
        self.with_backend(move |b| b.wrap(&key)).await
    }

    pub async fn unwrap(&self, wrapped: WrappedKey) -> Result<DataKey, CryptoError> {
        self.with_backend(move |b| b.unwrap(&wrapped)).await
    }

    pub async fn create_transport_key(&self) -> Result<TransportKey, CryptoError> {
        self.with_backend(|b| b.create_transport_key()).await
    }

    pub async fn open_transport_key(
        &self,
        handle: Vec<u8>,
        wrapping: WrappingAlgorithm,
        wrapped_aes_key: Vec<u8>,
    ) -> Result<DataKey, CryptoError> {
        self.with_backend(move |b| b.open_transport_key(&handle, wrapping, &wrapped_aes_key)).await
    }

    pub async fn destroy_transport_key(&self, handle: Vec<u8>) -> Result<(), CryptoError> {
        self.with_backend(move |b| b.destroy_transport_key(&handle)).await
    }
}

/// The instance's signing key behind an async face (an RSA signature takes
/// milliseconds). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AsyncInstanceKey {
    key: Arc<InstanceKey>,
}

impl AsyncInstanceKey {
    pub fn new(key: Arc<InstanceKey>) -> Self {
        AsyncInstanceKey { key }
    }

    pub async fn sign(&self, data: Vec<u8>) -> Result<Vec<u8>, CryptoError> {
        let key = Arc::clone(&self.key);
        offload::run(move || key.sign(&data)).await
    }
}

/// Runs CPU-bound crypto on owned data (a bundle's key wraps, a batch of
/// record re-encryptions) on the blocking pool.
pub async fn off_the_workers<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CryptoError> + Send + 'static,
) -> Result<T, CryptoError> {
    offload::run(f).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::primitives::random_key;
    use crate::signer::software::SoftwareSigner;

    #[tokio::test]
    async fn every_call_runs_off_the_worker_and_round_trips() {
        let dir = tempfile::tempdir().expect("dir");
        let kek = dir.path().join("kek");
        SoftwareSigner::create_key_file(&kek).expect("KEK");
        let signer = AsyncSigner::new(Arc::new(SoftwareSigner::load(&kek).expect("signer")));
        let key = random_key(32);
        let plain = key.expose().to_vec();
        let wrapped = signer.wrap(key).await.expect("wrap");
        let back = signer.unwrap(wrapped).await.expect("unwrap");
        assert_eq!(back.expose(), &plain[..]);
        let worker = std::thread::current().id();
        let ran_on = signer.with_backend(|_| Ok(std::thread::current().id())).await.expect("ran");
        assert_ne!(ran_on, worker);
        assert_eq!(signer.kind(), "software");
    }
}
