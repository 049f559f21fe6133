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

fn uri(text: String) -> Result<SanType, TlsError> {
    Ok(SanType::URI(text.try_into().map_err(err)?))
}

/// Creates a new CA (ECDSA P-256).
pub fn create_ca(common_name: &str) -> Result<IssuedCert, TlsError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
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

fn leaf(
    ca: &IssuedCert,
    cn: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> Result<IssuedCert, TlsError> {
    leaf_valid(ca, cn, sans, ekus, None)
}

/// As `leaf`; with `valid`, the certificate is valid only from..until (unix millis).
fn leaf_valid(
    ca: &IssuedCert,
    cn: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    valid: Option<(UnixMillis, UnixMillis)>,
) -> Result<IssuedCert, TlsError> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    if let Some((from, until)) = valid {
        let at = |t: UnixMillis| {
            rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_millis(u64::try_from(t.0).unwrap_or(0))
        };
        params.not_before = at(from);
        params.not_after = at(until);
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    params.extended_key_usages = ekus;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &issuer(ca)?).map_err(err)?;
    Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues an instance certificate for `sys_id` reachable at `host_names`
/// (DNS names or IP addresses).
pub fn issue_instance(ca: &IssuedCert, sys_id: &SysId, host_names: &[String]) -> Result<IssuedCert, TlsError> {
    instance_cert(ca, sys_id, host_names, None)
}

/// As `issue_instance`, valid only from `not_before` until `not_after`
/// (short-lived certificates; tests of the certificate check).
pub fn issue_instance_valid(
    ca: &IssuedCert,
    sys_id: &SysId,
    host_names: &[String],
    not_before: UnixMillis,
    not_after: UnixMillis,
) -> Result<IssuedCert, TlsError> {
    instance_cert(ca, sys_id, host_names, Some((not_before, not_after)))
}

fn instance_cert(
    ca: &IssuedCert,
    sys_id: &SysId,
    host_names: &[String],
    valid: Option<(UnixMillis, UnixMillis)>,
) -> Result<IssuedCert, TlsError> {
    let mut sans = vec![uri(format!("{INSTANCE_PREFIX}{sys_id}"))?];
    for name in host_names {
        sans.push(match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into().map_err(err)?),
        });
    }
    leaf_valid(
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

/// Issues an operator certificate (client EKU only).
pub fn issue_operator(ca: &IssuedCert, name: &str, roles: &[Role]) -> Result<IssuedCert, TlsError> {
    let valid =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b));
    if !valid {
        return Err(TlsError::Certificate("operator name must be 1-64 of A-Z a-z 0-9 _ . - @".into()));
    }
    let mut sans = vec![uri(format!("{OPERATOR_PREFIX}{name}"))?];
    for role in roles {
        sans.push(uri(format!("{ROLE_PREFIX}{}", role.as_str()))?);
    }
    leaf(ca, &format!("kmf operator {name}"), sans, vec![ExtendedKeyUsagePurpose::ClientAuth])
}

/// The TLS material of `leaf`, anchored at `ca`, as the daemon and clients use it.
pub fn tls_files(ca: &IssuedCert, leaf: &IssuedCert) -> TlsFiles {
    TlsFiles {
        ca_pem: ca.cert_pem.clone().into_bytes(),
        cert_pem: leaf.cert_pem.clone().into_bytes(),
        key_pem: zeroize::Zeroizing::new(leaf.key_pem.clone().into_bytes()),
    }
}
