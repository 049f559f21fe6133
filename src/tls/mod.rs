//! Trust: the deployment PKI (rcgen), rustls configurations for TLS 1.3 with
//! required client certificates, and identities read from verified
//! certificates. Depends on `domain` (and `clock` for the moment of issue).

pub mod crl;
pub mod identity;
pub mod live;
pub mod pki;
mod rustls_config;
pub mod validity;
mod wrong_instance;

pub use rustls_config::{TlsFiles, client_config, server_config};
pub use wrong_instance::{WrongInstance, wrong_instance_in};

use thiserror::Error;

/// The DER certificates of a PEM text.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(format!("PEM: {e}")))
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("tls configuration: {0}")]
    Config(String),
}
