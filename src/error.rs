//! The application error: every layer's error in one enum. `rpc::status` maps
//! it to a gRPC status in one place.

use thiserror::Error;

use crate::domain::DomainError;
use crate::signer::CryptoError;
use crate::store::StoreError;

/// A peer daemon could not be reached, or refused.
#[derive(Debug, Error, Clone)]
pub enum PeerError {
    #[error("peer {host} unreachable: {reason}")]
    Unreachable { host: String, reason: String },
    #[error("peer refused: {0}")]
    Refused(DomainError),
}

#[derive(Debug, Error)]
pub enum AppError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A conditional write kept finding its read out of date: the use case
    /// read again and decided again `REREAD_ATTEMPTS` times
    /// (`node::context::reread_and_retry`). The caller may try again.
    #[error("aborted: {0}")]
    Aborted(String),
    /// A broken invariant or an unexpected failure; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
    /// One item of a call that fails as a whole (e.g. `records[3]`): the
    /// item's own error, with the same gRPC code, prefixed with where.
    #[error("{at}: {source}")]
    Item { at: String, source: Box<AppError> },
}

impl From<crate::offload::TaskFailed> for AppError {
    fn from(e: crate::offload::TaskFailed) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl AppError {
    /// Whether a conditional write found the row changed since it was read.
    pub fn is_stale(&self) -> bool {
        matches!(self, AppError::Store(StoreError::Stale { .. }))
    }

    /// Names the item (`records[3]`, a record address) this error is about.
    pub fn at(self, at: impl Into<String>) -> AppError {
        AppError::Item { at: at.into(), source: Box::new(self) }
    }
}

pub type AppResult<T> = Result<T, AppError>;
