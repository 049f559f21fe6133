//! Errors of the domain. Messages name fields, states and ids, never key material.

use thiserror::Error;

/// Everything the domain can refuse. The RPC layer maps each variant to one
/// gRPC status code (`rpc::status`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DomainError {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{what} not found: {id}")]
    NotFound { what: &'static str, id: String },
    #[error("{what} already exists: {id}")]
    AlreadyExists { what: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Bytes from the network or the store that do not decode.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

impl DomainError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DomainError::InvalidArgument { field, reason: reason.into() }
    }

    pub fn not_found(what: &'static str, id: impl ToString) -> Self {
        DomainError::NotFound { what, id: id.to_string() }
    }

    pub fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        DomainError::Malformed { what, reason: reason.into() }
    }
}
