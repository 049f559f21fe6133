//! The deployment PKI, minted with rcgen: a CA, instance certificates (server
//! and client EKUs, SAN URI kmf://instance/<sys_id> plus the host's DNS or IP
//! name) and operator certificates (kmf://operator/<name>, kmf://role/<role>).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::identity::{INSTANCE_PREFIX, OPERATOR_PREFIX, ROLE_PREFIX};
use super::{TlsError, TlsFiles};
use crate::domain::auth::Role;
use crate::domain::ids::{Host, SysId, UnixMillis};

/// Default lifetimes, in days (each settable where a certificate is issued).
pub const CA_DAYS: u32 = 3650;
pub const INSTANCE_DAYS: u32 = 365;
pub const OPERATOR_DAYS: u32 = 90;
/// notBefore is this far before the moment of issue, for clocks slightly behind.
const SKEW_MILLIS: i64 = 5 * 60 * 1000;
const DAY_MILLIS: i64 = 24 * 3600 * 1000;

/// Valid from `now` (minus a small skew) for `days` days.
pub fn valid_for(now: UnixMillis, days: u32) -> (UnixMillis, UnixMillis) {
    (UnixMillis(now.0 - SKEW_MILLIS), UnixMillis(now.0 + i64::from(days) * DAY_MILLIS))
}

/// Sets the validity window (unix millis; times before 1970 clamp to 1970).
fn set_validity(params: &mut CertificateParams, (from, until): (UnixMillis, UnixMillis)) {
    let at = |t: UnixMillis| {
        rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_millis(u64::try_from(t.0).unwrap_or(0))
    };
    params.not_before = at(from);
    params.not_after = at(until);
}

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuedCert { key: [redacted] }")
    }
}

fn err(e: rcgen::Error) -> TlsError {
    TlsError::Certificate(e.to_string())
}

fn err_text(e: String) -> TlsError {
    TlsError::Certificate(e)
}

fn uri(text: String) -> Result<SanType, TlsError> {
    Ok(SanType::URI(text.try_into().map_err(err)?))
}

/// Creates a new CA (ECDSA P-256), valid for `CA_DAYS` from now.
pub fn create_ca(common_name: &str) -> Result<IssuedCert, TlsError> {
    create_ca_valid(common_name, valid_for(crate::clock::now(), CA_DAYS))
}

/// As `create_ca`, valid from..until (unix millis).
pub fn create_ca_valid(common_name: &str, valid: (UnixMillis, UnixMillis)) -> Result<IssuedCert, TlsError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    set_validity(&mut params, valid);
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

fn issuer(ca: &IssuedCert) -> Result<Issuer<'static, KeyPair>, TlsError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(err)?;
    Issuer::from_ca_cert_pem(&ca.cert_pem, key).map_err(err)
}

/// A leaf certificate valid from..until (unix millis).
fn leaf(
    ca: &IssuedCert,
    cn: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    valid: (UnixMillis, UnixMillis),
) -> Result<IssuedCert, TlsError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    set_validity(&mut params, valid);
    // A random serial (rcgen's default is derived from the key): what `pki revoke` names.
    let mut serial = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| err_text("no random bytes for a serial".into()))?;
    serial[0] = (serial[0] & 0x3f) | 0x40; // positive, 16 bytes, no DER padding byte
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = ekus;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer(ca)?).map_err(err)?;
    Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues an instance certificate for `sys_id` reachable at `host_names`
/// (DNS names or IP addresses), valid for `INSTANCE_DAYS` from now.
pub fn issue_instance(ca: &IssuedCert, sys_id: &SysId, host_names: &[String]) -> Result<IssuedCert, TlsError> {
    let (from, until) = valid_for(crate::clock::now(), INSTANCE_DAYS);
    issue_instance_valid(ca, sys_id, host_names, from, until)
}

/// As `issue_instance`, valid only from `not_before` until `not_after`.
pub fn issue_instance_valid(
    ca: &IssuedCert,
    sys_id: &SysId,
    host_names: &[String],
    not_before: UnixMillis,
    not_after: UnixMillis,
) -> Result<IssuedCert, TlsError> {
    let valid = (not_before, not_after);
    let mut sans = vec![uri(format!("{INSTANCE_PREFIX}{sys_id}"))?];
    for name in host_names {
        sans.push(match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into().map_err(err)?),
        });
    }
    leaf(
        ca,
        &format!("kmf instance {sys_id}"),
        sans,
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        valid,
    )
}

/// The names to put in an instance certificate for `host`.
pub fn host_names(host: &Host) -> Vec<String> {
    vec![host.name().to_owned()]
}

/// Issues an operator certificate (client EKU only), valid for
/// `OPERATOR_DAYS` from now.
pub fn issue_operator(ca: &IssuedCert, name: &str, roles: &[Role]) -> Result<IssuedCert, TlsError> {
    issue_operator_valid(ca, name, roles, valid_for(crate::clock::now(), OPERATOR_DAYS))
}

/// As `issue_operator`, valid from..until (unix millis).
pub fn issue_operator_valid(
    ca: &IssuedCert,
    name: &str,
    roles: &[Role],
    valid: (UnixMillis, UnixMillis),
) -> Result<IssuedCert, TlsError> {
    let name_ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b));
    if !name_ok {
        return Err(TlsError::Certificate("operator name must be 1-64 of A-Z a-z 0-9 _ . - @".into()));
    }
    let mut sans = vec![uri(format!("{OPERATOR_PREFIX}{name}"))?];
    for role in roles {
        sans.push(uri(format!("{ROLE_PREFIX}{}", role.as_str()))?);
    }
    leaf(ca, &format!("kmf operator {name}"), sans, vec![ExtendedKeyUsagePurpose::ClientAuth], valid)
}

/// The TLS material of `leaf`, anchored at `ca`, as the daemon and clients use it.
pub fn tls_files(ca: &IssuedCert, leaf: &IssuedCert) -> TlsFiles {
    TlsFiles {
        ca_pem: ca.cert_pem.clone().into_bytes(),
        cert_pem: leaf.cert_pem.clone().into_bytes(),
        key_pem: zeroize::Zeroizing::new(leaf.key_pem.clone().into_bytes()),
        crl_pem: None,
        crl_enforce_next_update: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::validity::{serial_hex, validity};

    fn window(cert: &IssuedCert) -> (i64, i64, String) {
        let der = crate::tls::pem_certs(cert.cert_pem.as_bytes()).unwrap().remove(0);
        let (from, until) = validity(&der).unwrap();
        (from.0, until.0, serial_hex(&der).unwrap())
    }

    #[test]
    fn default_lifetimes_start_just_before_now() {
        let now = crate::clock::now().0;
        let ca = create_ca("t").unwrap();
        let sys_id = SysId::from_random([7; 16]);
        let instance = issue_instance(&ca, &sys_id, &["h".into()]).unwrap();
        let operator = issue_operator(&ca, "op", &[Role::Admin]).unwrap();
        let other = issue_operator(&ca, "op", &[Role::Admin]).unwrap();
        let day = DAY_MILLIS;
        for (cert, days) in [(&ca, CA_DAYS), (&instance, INSTANCE_DAYS), (&operator, OPERATOR_DAYS)] {
            let (from, until, _) = window(cert);
            // Certificates carry whole seconds.
            assert!((now - SKEW_MILLIS - 2000..=now - SKEW_MILLIS + 2000).contains(&from), "{from} vs {now}");
            let want = now + i64::from(days) * day;
            assert!((want - 2000..=want + 2000).contains(&until), "{days} days: {until} vs {want}");
        }
        assert_eq!((CA_DAYS, INSTANCE_DAYS, OPERATOR_DAYS), (3650, 365, 90));
        let (a, b) = (window(&operator).2, window(&other).2);
        assert_ne!(a, b, "serials are random");
        assert!(a.len() == 32 && !a.starts_with("00"), "{a}");
    }
}
