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
    /// A broken invariant or an unexpected failure; details go to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AppResult<T> = Result<T, AppError>;
