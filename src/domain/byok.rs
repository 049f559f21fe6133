//! Bring your own key: the one-time import keys operators wrap key material
//! for (`KeyManagement.GetImportParameters` / `ImportKey`). An import key is
//! for one spec, expires, and is used up by the transaction that stores the
//! key it brought (the row is kept, marked used, until it expires, then
//! swept). Its private half lives with the signer (`handle`).

use super::DomainError;
use super::bundle::WrappingAlgorithm;
use super::ids::{ImportToken, KeyId, Name, UnixMillis};

/// How long an import key stays usable unless the caller asks otherwise.
pub const DEFAULT_IMPORT_TTL_MS: i64 = 24 * 3_600_000;
/// The longest an import key may stay usable.
pub const MAX_IMPORT_TTL_MS: i64 = 7 * 24 * 3_600_000;

/// A stored import key.
#[derive(Clone, PartialEq, Eq)]
pub struct ImportKey {
    pub token: ImportToken,
    pub spec: Name,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
    /// The signer's handle of the RSA private key (a KEK-wrapped key or a
    /// token object label); no plaintext.
    pub handle: Vec<u8>,
    /// The RSA-OAEP digest the signer's key takes (SHA-256; a token that
    /// cannot do OAEP with SHA-256 gets SHA-1, and says so).
    pub wrapping: WrappingAlgorithm,
    /// When it brought its key; the signer's key is destroyed after that
    /// commit and then `handle` erased (a crash between leaves the handle for
    /// the expiry sweep). The row stays until its expiry so a second use is
    /// told "already used" rather than "unknown".
    pub used: Option<(UnixMillis, KeyId)>,
}

impl std::fmt::Debug for ImportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportKey")
            .field("token", &self.token)
            .field("spec", &self.spec)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The lifetime asked for (None: the default), checked.
pub fn import_ttl(asked_ms: Option<i64>) -> Result<i64, DomainError> {
    match asked_ms {
        None => Ok(DEFAULT_IMPORT_TTL_MS),
        Some(ms) if ms > 0 && ms <= MAX_IMPORT_TTL_MS => Ok(ms),
        Some(_) => Err(DomainError::invalid("expires_in", "must be more than 0 and at most 7 days")),
    }
}

impl ImportKey {
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        now >= self.expires_at
    }

    /// Whether this import key may bring a key of `spec` at `now`.
    pub fn check_use(&self, spec: &Name, now: UnixMillis) -> Result<(), DomainError> {
        if let Some((_, key)) = &self.used {
            return Err(DomainError::FailedPrecondition(format!(
                "import token {} was already used (it brought {key}); ask for new import parameters",
                self.token
            )));
        }
        if self.is_expired(now) {
            return Err(DomainError::FailedPrecondition(format!(
                "import token {} expired; ask for new import parameters",
                self.token
            )));
        }
        if &self.spec != spec {
            return Err(DomainError::invalid(
                "spec",
                format!("import token {} is for spec {}, not {spec}", self.token, self.spec),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_and_use() {
        assert_eq!(import_ttl(None), Ok(DEFAULT_IMPORT_TTL_MS));
        assert_eq!(import_ttl(Some(1000)), Ok(1000));
        assert!(import_ttl(Some(0)).is_err() && import_ttl(Some(MAX_IMPORT_TTL_MS + 1)).is_err());
        let spec = Name::parse("s", "spec").unwrap();
        let k = ImportKey {
            token: ImportToken::from_random([1; 16]),
            spec: spec.clone(),
            created_at: UnixMillis(0),
            expires_at: UnixMillis(100),
            handle: vec![1, 2],
            wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256,
            used: None,
        };
        assert_eq!(k.check_use(&spec, UnixMillis(99)), Ok(()));
        assert!(matches!(k.check_use(&spec, UnixMillis(100)), Err(DomainError::FailedPrecondition(_))));
        let other = Name::parse("t", "spec").unwrap();
        assert!(matches!(k.check_use(&other, UnixMillis(1)), Err(DomainError::InvalidArgument { .. })));
        assert!(!format!("{k:?}").contains("handle"));
        let used =
            ImportKey { used: Some((UnixMillis(5), KeyId::parse(&format!("{}:s:v1", "a".repeat(32))).unwrap())), ..k };
        let e = used.check_use(&spec, UnixMillis(6)).unwrap_err();
        assert!(matches!(&e, DomainError::FailedPrecondition(m) if m.contains("already used")), "{e:?}");
    }
}
