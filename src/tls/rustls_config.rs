//! rustls configurations: TLS 1.3 only, ring provider, client certificate
//! required on every listener, and on outbound peer calls a check that the
//! server's certificate names the sys_id we meant to reach.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use zeroize::Zeroizing;

use super::TlsError;
use super::identity::instance_sys_id;
use super::wrong_instance::WrongInstance;
use crate::domain::ids::SysId;

/// The PEM material of one identity plus the CA that anchors trust.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Zeroizing<Vec<u8>>,
    /// The CA's revocation list (PEM); when set, certificates it lists are
    /// refused on both sides of every handshake.
    pub crl_pem: Option<Vec<u8>>,
    /// `tls.crl_enforce_next_update`: a CRL past its nextUpdate fails every
    /// handshake, both sides (rustls `enforce_revocation_expiration`), until
    /// a fresh one is loaded. Off by default: such a CRL is still used (and
    /// the diagnosis says Degraded).
    pub crl_enforce_next_update: bool,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles { key: [redacted] }")
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File { path: path.display().to_string(), reason: e.to_string() })
}

impl TlsFiles {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let files = TlsFiles {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: Zeroizing::new(read(key)?),
            crl_pem: None,
            crl_enforce_next_update: false,
        };
        files.roots()?;
        files.chain()?;
        files.private_key()?;
        Ok(files)
    }

    /// As `load`, with the revocation list at `crl` when given.
    pub fn load_with_crl(ca: &Path, cert: &Path, key: &Path, crl: Option<&Path>) -> Result<Self, TlsError> {
        let mut files = Self::load(ca, cert, key)?;
        if let Some(path) = crl {
            let pem = read(path)?;
            super::crl::crl_ders(&pem)
                .map_err(|e| TlsError::File { path: path.display().to_string(), reason: e.to_string() })?;
            files.crl_pem = Some(pem);
        }
        Ok(files)
    }

    fn crls(&self) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, TlsError> {
        match &self.crl_pem {
            Some(pem) => super::crl::crl_ders(pem),
            None => Ok(Vec::new()),
        }
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&self.ca_pem) {
            let cert = cert.map_err(|e| TlsError::Certificate(format!("CA file: {e}")))?;
            roots.add(cert).map_err(|e| TlsError::Certificate(format!("CA file: {e}")))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Certificate("CA file holds no certificate".into()));
        }
        Ok(roots)
    }

    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let chain: Vec<_> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Certificate(format!("certificate file: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Certificate("certificate file holds no certificate".into()));
        }
        Ok(chain)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        // The parse error is not echoed: it could quote key bytes.
        PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|_| TlsError::Certificate("key file holds no usable PEM private key".into()))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: TLS 1.3, client certificate from our CA required, ALPN h2.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(files.roots()?), provider.clone())
        .with_crls(files.crls()?);
    if files.crl_enforce_next_update {
        verifier = verifier.enforce_revocation_expiration();
    }
    let verifier = verifier.build().map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(files.chain()?, files.private_key()?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Client side: TLS 1.3 with our identity; when `expected` is set, the
/// server's certificate must name that instance sys_id.
pub fn client_config(files: &TlsFiles, expected: Option<SysId>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut inner = WebPkiServerVerifier::builder_with_provider(Arc::new(files.roots()?), provider.clone())
        .with_crls(files.crls()?);
    if files.crl_enforce_next_update {
        inner = inner.enforce_revocation_expiration();
    }
    let inner = inner.build().map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier { inner, expected }))
        .with_client_auth_cert(files.chain()?, files.private_key()?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// WebPKI verification plus the sys_id check.
#[derive(Debug)]
struct PeerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: Option<SysId>,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        if let Some(expected) = &self.expected
            && instance_sys_id(end_entity).as_ref() != Some(expected)
        {
            return Err(WrongInstance { expected: expected.clone() }.into_rustls());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
