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

/// "serial <hex>, valid until <rfc3339>" of a DER certificate (kmfctl pki
/// prints it; the TLS reload logs it).
pub fn summary(cert_der: &[u8]) -> Result<String, TlsError> {
    let (_, not_after) = validity(cert_der)?;
    Ok(format!("serial {}, valid until {}", serial_hex(cert_der)?, crate::clock::rfc3339(not_after)))
}

/// The serial number of a DER certificate, lower-case hex without separators
/// (what `kmfctl pki revoke --serial` takes).
pub fn serial_hex(cert_der: &[u8]) -> Result<String, TlsError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| TlsError::Certificate(format!("cannot be parsed: {e}")))?;
    Ok(normalize_serial(&hex::encode(cert.raw_serial())))
}

/// A serial as hex, lower case, without the leading zero bytes DER may add.
pub fn normalize_serial(hex_text: &str) -> String {
    let mut s = hex_text.trim().to_ascii_lowercase().replace(':', "");
    while s.len() > 2 && s.starts_with("00") {
        s.drain(..2);
    }
    s
}
