//! What a pkcs11 signer is configured with, and why opening one failed.

use std::path::PathBuf;

use cryptoki::types::AuthPin;

use crate::signer::CryptoError;

pub const DEFAULT_KEK_LABEL: &str = "kmf-kek";

/// Where the KEK lives. The PIN is named by its source, never held here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
    pub module: PathBuf,
    /// The token's label (slots are found by label: their ids change).
    pub token_label: String,
    pub pin: PinSource,
    /// The label of the KEK object on the token.
    pub kek_label: String,
}

/// Where the PIN comes from; named in errors, never the PIN itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one trailing newline is ignored); mode 0600.
    File(PathBuf),
    /// The name of an environment variable holding the PIN.
    Env(String),
}

impl std::fmt::Display for PinSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "pin_file {}", p.display()),
            PinSource::Env(v) => write!(f, "pin_env ${v}"),
        }
    }
}

impl PinSource {
    /// Reads the PIN. Errors name the source, never the value.
    pub(super) fn read(&self) -> Result<AuthPin, String> {
        let text = match self {
            PinSource::File(path) => {
                use std::os::unix::fs::PermissionsExt;
                let meta = std::fs::metadata(path).map_err(|e| e.kind().to_string())?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err("must not be readable by group or others (chmod 600)".into());
                }
                zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| e.kind().to_string())?)
            }
            PinSource::Env(var) => zeroize::Zeroizing::new(std::env::var(var).map_err(|_| "is not set".to_owned())?),
        };
        let pin = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if pin.is_empty() {
            return Err("holds an empty PIN".into());
        }
        Ok(AuthPin::from(pin.to_owned()))
    }
}

/// Why a signer could not be opened or a KEK created, naming the config
/// field to fix (`module`, `token_label`, `pin_file`/`pin_env`, `kek_label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    pub field: &'static str,
    pub reason: String,
}

impl OpenError {
    pub(super) fn pin(source: &PinSource, reason: impl std::fmt::Display) -> Self {
        let field = match source {
            PinSource::File(_) => "pin_file",
            PinSource::Env(_) => "pin_env",
        };
        OpenError { field, reason: format!("{source}: {reason}") }
    }

    pub(super) fn token(reason: String) -> Self {
        OpenError { field: "token_label", reason }
    }

    pub(super) fn kek(reason: String) -> Self {
        OpenError { field: "kek_label", reason }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "signer.{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for OpenError {}

impl From<OpenError> for CryptoError {
    fn from(e: OpenError) -> Self {
        CryptoError::Token(e.to_string())
    }
}
