//! Revocation: the deployment CA's certificate revocation list (PEM). `kmfctl
//! pki revoke` makes and extends it; a daemon given `tls.crl` refuses every
//! certificate it lists at the handshake (operators and peers calling in,
//! peers it dials), and reloads it without a restart.

use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber};
use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::TlsError;
use super::pki::IssuedCert;
use super::validity::normalize_serial;
use crate::domain::ids::UnixMillis;

/// How long a CRL says it is current (rustls does not refuse a CRL past its
/// nextUpdate unless asked to; re-run `kmfctl pki crl` to refresh it).
pub const CRL_DAYS: u32 = 30;

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// Lower-case hex, without leading zero bytes (as `pki` prints serials).
    pub serial: String,
    pub at: UnixMillis,
}

/// What a CRL says: its number and the certificates it lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrlContents {
    pub number: u64,
    pub revoked: Vec<Revoked>,
}

fn bad(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(format!("CRL: {e}"))
}

/// The DER CRLs in a PEM text (at least one).
pub fn crl_ders(pem: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    if crls.is_empty() {
        return Err(bad("the file holds no X509 CRL"));
    }
    Ok(crls)
}

/// Reads the number and the revoked serials of the first CRL in `pem`.
pub fn read_crl(pem: &[u8]) -> Result<CrlContents, TlsError> {
    let ders = crl_ders(pem)?;
    let der = ders.first().ok_or_else(|| bad("empty"))?;
    let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).map_err(bad)?;
    let number = crl.crl_number().and_then(|n| u64::try_from(n.clone()).ok()).unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: normalize_serial(&hex::encode(r.raw_serial())),
            at: UnixMillis(r.revocation_date.timestamp().saturating_mul(1000)),
        })
        .collect();
    Ok(CrlContents { number, revoked })
}

/// Signs a CRL listing `contents.revoked`, numbered `contents.number`, current from `now`.
pub fn issue_crl(ca: &IssuedCert, contents: &CrlContents, now: UnixMillis) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(bad)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(bad)?;
    let date = |t: UnixMillis| {
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_millis(u64::try_from(t.0).unwrap_or(0))
    };
    let revoked_certs = contents
        .revoked
        .iter()
        .map(|r| {
            let bytes = hex::decode(&r.serial).map_err(|_| bad(format!("serial {} is not hex", r.serial)))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: date(r.at),
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, TlsError>>()?;
    let params = CertificateRevocationListParams {
        this_update: date(now),
        next_update: date(UnixMillis(now.0 + i64::from(CRL_DAYS) * 24 * 3600 * 1000)),
        crl_number: SerialNumber::from(contents.number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params.signed_by(&issuer).map_err(bad)?.pem().map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crl_reads_back_what_was_issued() {
        let ca = crate::tls::pki::create_ca("t").expect("ca");
        let revoked = vec![
            Revoked { serial: "47d5c56efc49a9a8f9a35c46d879770e".into(), at: UnixMillis(1_800_000_000_000) },
            Revoked { serial: "0a".into(), at: UnixMillis(1_800_000_001_000) },
        ];
        let pem = issue_crl(&ca, &CrlContents { number: 7, revoked: revoked.clone() }, UnixMillis(1_800_000_002_000))
            .expect("issue");
        assert_eq!(read_crl(pem.as_bytes()).expect("read"), CrlContents { number: 7, revoked });
        assert!(matches!(read_crl(b"not a crl"), Err(TlsError::Certificate(m)) if m.contains("no X509 CRL")));
        let bad = CrlContents { number: 1, revoked: vec![Revoked { serial: "xyz".into(), at: UnixMillis(0) }] };
        assert!(matches!(issue_crl(&ca, &bad, UnixMillis(0)), Err(TlsError::Certificate(m)) if m.contains("not hex")));
    }
}
