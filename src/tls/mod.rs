//! Trust: the deployment PKI (rcgen), rustls configurations for TLS 1.3 with
//! required client certificates, and identities read from verified
//! certificates. Depends on `domain` only.

pub mod identity;
pub mod pki;
mod rustls_config;
pub mod validity;

pub use rustls_config::{TlsFiles, client_config, server_config};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("tls configuration: {0}")]
    Config(String),
}
