//! The TLS configuration of the moment, shared by every door: the acceptors
//! of the gRPC and the metrics listeners (new handshakes), the identity and
//! CRL the peer probe dials with, and the revocation check that every call
//! and every metrics request makes (so a connection opened before a reload
//! is refused on its next call once its certificate is revoked).
//! `tls_reload` installs new files here; everything else reads.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::validity::normalize_serial;
use super::{TlsError, TlsFiles, server_config};
use crate::domain::ids::UnixMillis;

/// What the CRL in use says: its number, the certificates it lists (by
/// issuer and serial), its nextUpdate, and whether a CRL past it is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrlInUse {
    pub number: u64,
    /// (issuer name, DER; serial, lower-case hex) of every listed certificate.
    revoked: HashSet<(Vec<u8>, String)>,
    /// The earliest nextUpdate of the CRLs in the file (none: it gave none).
    pub next_update: Option<UnixMillis>,
    /// `tls.crl_enforce_next_update`: past its nextUpdate, the CRL refuses
    /// every certificate (handshakes and calls) until a fresh one is loaded.
    pub enforced: bool,
}

fn bad(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(format!("CRL: {e}"))
}

impl CrlInUse {
    /// Reads every CRL in `pem`.
    pub fn read(pem: &[u8], enforced: bool) -> Result<Self, TlsError> {
        let mut out = CrlInUse { enforced, ..CrlInUse::default() };
        for der in super::crl::crl_ders(pem)? {
            let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).map_err(bad)?;
            let number = crl.crl_number().and_then(|n| u64::try_from(n.clone()).ok()).unwrap_or(0);
            out.number = out.number.max(number);
            let issuer = crl.issuer().as_raw().to_vec();
            for r in crl.iter_revoked_certificates() {
                out.revoked.insert((issuer.clone(), normalize_serial(&hex::encode(r.raw_serial()))));
            }
            if let Some(next) = crl.next_update() {
                let next = UnixMillis(next.timestamp().saturating_mul(1000));
                out.next_update = Some(out.next_update.map_or(next, |n: UnixMillis| n.min(next)));
            }
        }
        Ok(out)
    }

    /// How many certificates it lists.
    pub fn revoked_count(&self) -> usize {
        self.revoked.len()
    }

    /// Past its nextUpdate at `now`.
    pub fn stale(&self, now: UnixMillis) -> bool {
        self.next_update.is_some_and(|next| now >= next)
    }

    /// The serial of `cert_der` when this CRL lists it.
    pub fn lists(&self, cert_der: &[u8]) -> Option<String> {
        if self.revoked.is_empty() {
            return None;
        }
        let (_, cert) = X509Certificate::from_der(cert_der).ok()?;
        let key = (cert.issuer().as_raw().to_vec(), normalize_serial(&hex::encode(cert.raw_serial())));
        self.revoked.contains(&key).then_some(key.1)
    }

    /// Why a certificate the handshake accepted must be refused now, if it
    /// must: this CRL lists it, or it is enforced and past its nextUpdate.
    pub fn refusal(&self, cert_der: &[u8], now: UnixMillis) -> Option<String> {
        if let Some(serial) = self.lists(cert_der) {
            return Some(format!("certificate serial {serial} is revoked (CRL number {})", self.number));
        }
        if self.enforced && self.stale(now) {
            let next = self.next_update.map(crate::clock::rfc3339).unwrap_or_default();
            return Some(format!(
                "the CRL (number {}) is past its nextUpdate {next} and tls.crl_enforce_next_update is set",
                self.number
            ));
        }
        None
    }
}

struct Current {
    files: TlsFiles,
    crl: Option<Arc<CrlInUse>>,
}

/// The configuration every listener, the probe and the per-call check share.
pub struct LiveTls {
    grpc: Arc<RwLock<TlsAcceptor>>,
    metrics: Arc<RwLock<TlsAcceptor>>,
    current: RwLock<Arc<Current>>,
}

/// The gRPC acceptor (ALPN h2), the metrics one (h2 and HTTP/1.1) and the CRL of `files`.
fn build(files: &TlsFiles) -> Result<(TlsAcceptor, TlsAcceptor, Option<Arc<CrlInUse>>), TlsError> {
    let grpc = server_config(files)?;
    let mut metrics = (*grpc).clone();
    metrics.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let crl = match &files.crl_pem {
        Some(pem) => Some(Arc::new(CrlInUse::read(pem, files.crl_enforce_next_update)?)),
        None => None,
    };
    Ok((TlsAcceptor::from(grpc), TlsAcceptor::from(Arc::new(metrics)), crl))
}

impl LiveTls {
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let (grpc, metrics, crl) = build(&files)?;
        Ok(Arc::new(LiveTls {
            grpc: Arc::new(RwLock::new(grpc)),
            metrics: Arc::new(RwLock::new(metrics)),
            current: RwLock::new(Arc::new(Current { files, crl })),
        }))
    }

    /// Uses `files` from now on, everywhere at once; when they do not make a
    /// valid configuration nothing changes.
    pub fn install(&self, files: TlsFiles) -> Result<(), TlsError> {
        let (grpc, metrics, crl) = build(&files)?;
        *self.grpc.write().unwrap_or_else(PoisonError::into_inner) = grpc;
        *self.metrics.write().unwrap_or_else(PoisonError::into_inner) = metrics;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Current { files, crl });
        Ok(())
    }

    /// The gRPC listener's acceptor (swapped by `install`).
    pub fn grpc_acceptor(&self) -> Arc<RwLock<TlsAcceptor>> {
        Arc::clone(&self.grpc)
    }

    /// The metrics listener's acceptor (swapped by `install`).
    pub fn metrics_acceptor(&self) -> Arc<RwLock<TlsAcceptor>> {
        Arc::clone(&self.metrics)
    }

    fn now_current(&self) -> Arc<Current> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The identity and CRL in use.
    pub fn files(&self) -> TlsFiles {
        self.now_current().files.clone()
    }

    /// The CRL in use, if one is configured.
    pub fn crl(&self) -> Option<Arc<CrlInUse>> {
        self.now_current().crl.clone()
    }

    /// Why a call on a connection whose client presented `cert_der` must be
    /// refused now (see `CrlInUse::refusal`); none without a CRL.
    pub fn refusal(&self, cert_der: &[u8], now: UnixMillis) -> Option<String> {
        self.crl().and_then(|crl| crl.refusal(cert_der, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::auth::Role;
    use crate::tls::crl::{CrlContents, Revoked, issue_crl};
    use crate::tls::pki::{create_ca, issue_operator};

    #[test]
    fn the_crl_in_use_refuses_what_it_lists_and_when_enforced_and_stale() {
        const DAY: i64 = 24 * 3600 * 1000;
        let ca = create_ca("t").expect("ca");
        let (alice, bob) = (
            issue_operator(&ca, "alice", &[Role::Admin]).expect("alice"),
            issue_operator(&ca, "bob", &[Role::Admin]).expect("bob"),
        );
        let der = |pem: &str| crate::tls::pem_certs(pem.as_bytes()).expect("pem").remove(0);
        let serial = crate::tls::validity::serial_hex(&der(&alice.cert_pem)).expect("serial");
        let at = UnixMillis(1_800_000_000_000);
        let contents = CrlContents { number: 4, revoked: vec![Revoked { serial: serial.clone(), at }] };
        let pem = issue_crl(&ca, &contents, at).expect("crl");
        let crl = CrlInUse::read(pem.as_bytes(), false).expect("read");
        assert_eq!((crl.number, crl.revoked_count()), (4, 1));
        assert_eq!(crl.next_update, Some(at.plus_millis(30 * DAY)));
        let refusal = crl.refusal(&der(&alice.cert_pem), at).expect("alice is listed");
        assert_eq!(refusal, format!("certificate serial {serial} is revoked (CRL number 4)"));
        assert_eq!(crl.refusal(&der(&bob.cert_pem), at), None);
        // Past nextUpdate: refused only when enforced.
        let late = at.plus_millis(31 * DAY);
        assert!(crl.stale(late) && !crl.stale(at));
        assert_eq!(crl.refusal(&der(&bob.cert_pem), late), None);
        let enforced = CrlInUse { enforced: true, ..crl };
        assert!(enforced.refusal(&der(&bob.cert_pem), late).expect("refused").contains("past its nextUpdate"));
        assert_eq!(enforced.refusal(&der(&bob.cert_pem), at), None);
    }
}
