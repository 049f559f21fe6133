//! A signer that is slow to unwrap, for benchmarks: it stands for a slow HSM.
//! Every method delegates to the signer inside; `unwrap` first sleeps for
//! `unwrap_delay` on the calling thread (the trait is synchronous and the node
//! calls it from the blocking pool). Not for production use.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{CryptoError, Signer, TransportKey};
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::key::{DataKey, WrappedKey};

/// Wraps `inner`, delaying each `unwrap` by `unwrap_delay`.
pub struct DelayedSigner {
    pub inner: Arc<dyn Signer>,
    pub unwrap_delay: Duration,
}

impl fmt::Debug for DelayedSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names the inner backend only; its own Debug is not asked for.
        f.debug_struct("DelayedSigner")
            .field("inner", &self.inner.kind())
            .field("unwrap_delay", &self.unwrap_delay)
            .finish()
    }
}

impl Signer for DelayedSigner {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn wrap(&self, key: &DataKey) -> Result<WrappedKey, CryptoError> {
        self.inner.wrap(key)
    }

    fn unwrap(&self, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        std::thread::sleep(self.unwrap_delay);
        self.inner.unwrap(wrapped)
    }

    fn create_transport_key(&self) -> Result<TransportKey, CryptoError> {
        self.inner.create_transport_key()
    }

    fn open_transport_key(
        &self,
        handle: &[u8],
        wrapping: WrappingAlgorithm,
        wrapped_aes_key: &[u8],
    ) -> Result<DataKey, CryptoError> {
        self.inner.open_transport_key(handle, wrapping, wrapped_aes_key)
    }

    fn destroy_transport_key(&self, handle: &[u8]) -> Result<(), CryptoError> {
        self.inner.destroy_transport_key(handle)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use zeroize::Zeroizing;

    use super::*;
    use crate::signer::software::SoftwareSigner;

    #[test]
    fn delegates_and_delays_unwrap_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        SoftwareSigner::create_key_file(&path).unwrap();
        let inner: Arc<dyn Signer> = Arc::new(SoftwareSigner::load(&path).unwrap());
        let signer = DelayedSigner { inner, unwrap_delay: Duration::from_millis(30) };
        let key = DataKey::new(Zeroizing::new(vec![0xAB; 32]));
        let wrapped = signer.wrap(&key).unwrap();
        let started = Instant::now();
        let back = signer.unwrap(&wrapped).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(back.expose(), key.expose());
        assert_eq!(signer.kind(), "software");
        let debug = format!("{signer:?}");
        assert!(debug.contains("software") && !debug.contains("171") && !debug.contains("kek"), "{debug}");
    }
}
