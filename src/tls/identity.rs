//! Reads who a peer is from its verified certificate's SAN URIs:
//! `kmf://instance/<sys_id>`, or `kmf://operator/<name>` with `kmf://role/<role>`.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::DomainError;
use crate::domain::auth::{Caller, Role};
use crate::domain::ids::SysId;

pub const INSTANCE_PREFIX: &str = "kmf://instance/";
pub const OPERATOR_PREFIX: &str = "kmf://operator/";
pub const ROLE_PREFIX: &str = "kmf://role/";

fn san_uris(cert_der: &[u8]) -> Result<Vec<String>, DomainError> {
    let denied = || DomainError::PermissionDenied("client certificate cannot be parsed".into());
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|_| denied())?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.push((*uri).to_owned());
            }
        }
    }
    Ok(out)
}

/// The DNS names and IP addresses in a certificate's SAN: the hosts the CA
/// vouches the instance is reached at (a source dials only those, or hosts
/// registered for the instance). Empty when it does not parse.
pub fn host_names(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(cert_der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    let ip = |b: &[u8]| match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
        16 => <[u8; 16]>::try_from(b).ok().map(|a| std::net::IpAddr::from(a).to_string()),
        _ => None,
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::IPAddress(bytes) => ip(bytes),
            _ => None,
        })
        .collect()
}

/// The caller named by an end-entity certificate (already verified by rustls).
pub fn caller_from_cert(cert_der: &[u8]) -> Result<Caller, DomainError> {
    let uris = san_uris(cert_der)?;
    let instances: Vec<&str> = uris.iter().filter_map(|u| u.strip_prefix(INSTANCE_PREFIX)).collect();
    let operators: Vec<&str> = uris.iter().filter_map(|u| u.strip_prefix(OPERATOR_PREFIX)).collect();
    match (instances.as_slice(), operators.as_slice()) {
        ([id], []) => SysId::parse(id)
            .map(Caller::Instance)
            .map_err(|_| DomainError::PermissionDenied("certificate names an invalid sys_id".into())),
        ([], [name]) => {
            let roles =
                uris.iter().filter_map(|u| u.strip_prefix(ROLE_PREFIX)).filter_map(|r| Role::parse(r).ok()).collect();
            Ok(Caller::Operator { name: (*name).to_owned(), roles })
        }
        _ => Err(DomainError::PermissionDenied(
            "certificate must name exactly one kmf://instance/ or kmf://operator/ identity".into(),
        )),
    }
}

/// The sys_id of an instance certificate, if it is one.
pub fn instance_sys_id(cert_der: &[u8]) -> Option<SysId> {
    match caller_from_cert(cert_der) {
        Ok(Caller::Instance(id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pki::{create_ca, issue_instance, issue_operator};

    fn der(cert: &crate::tls::pki::IssuedCert) -> Vec<u8> {
        crate::tls::pem_certs(cert.cert_pem.as_bytes()).unwrap().remove(0).to_vec()
    }

    #[test]
    fn host_names_are_the_dns_and_ip_sans() {
        let ca = create_ca("t").unwrap();
        let names = ["kmf-test.example".to_owned(), "10.0.0.5".to_owned(), "::1".to_owned()];
        let instance = issue_instance(&ca, &SysId::from_random([7; 16]), &names).unwrap();
        assert_eq!(host_names(&der(&instance)), names.to_vec(), "the kmf:// URI is not a host");
        let operator = issue_operator(&ca, "op", &[Role::Admin]).unwrap();
        assert!(host_names(&der(&operator)).is_empty());
        assert!(host_names(b"not a certificate").is_empty());
    }
}
