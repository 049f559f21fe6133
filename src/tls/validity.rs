//! The validity window of a certificate, read with x509-parser.

use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;
use crate::domain::ids::UnixMillis;

/// notBefore and notAfter of a DER certificate.
pub fn validity(cert_der: &[u8]) -> Result<(UnixMillis, UnixMillis), TlsError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| TlsError::Certificate(format!("cannot be parsed: {e}")))?;
    let v = cert.validity();
    let millis = |secs: i64| UnixMillis(secs.saturating_mul(1000));
    Ok((millis(v.not_before.timestamp()), millis(v.not_after.timestamp())))
}
