//! The refusal of a server whose certificate chains to our CA but names
//! another instance, as a type: the peer verifier returns it inside
//! rustls's error, and the peer client finds it again by walking the error's
//! sources (never by matching the text).

use std::error::Error;
use std::sync::Arc;

use rustls::{CertificateError, OtherError};
use thiserror::Error;

use crate::domain::ids::SysId;

/// The server's certificate does not name `expected`, the instance we dialled.
#[derive(Debug, Clone, Error)]
#[error("peer certificate does not name instance {expected}")]
pub struct WrongInstance {
    pub expected: SysId,
}

impl WrongInstance {
    /// The error the verifier returns: a certificate error of rustls's, so
    /// the handshake ends with a bad_certificate alert.
    pub fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// The refusal inside `err`, if `err` or any of its sources is one. A
/// `std::io::Error`'s `source()` skips the error it wraps (tokio-rustls wraps
/// rustls's error in one), so that one is looked into as well.
pub fn wrong_instance_in<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a WrongInstance> {
    if let Some(found) = err.downcast_ref::<WrongInstance>() {
        return Some(found);
    }
    if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
        err.downcast_ref::<rustls::Error>()
    {
        return wrong_instance_in(inner.as_ref());
    }
    if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
        && let Some(found) = wrong_instance_in(inner)
    {
        return Some(found);
    }
    err.source().and_then(wrong_instance_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys_id() -> SysId {
        SysId::parse("0123456789abcdef0123456789abcdef").expect("sys_id")
    }

    /// An error with a source, as tonic's and hyper's transport errors are.
    #[derive(Debug, Error)]
    #[error("transport error")]
    struct Wrapper(#[source] Box<dyn Error + Send + Sync>);

    #[test]
    fn found_through_rustls_io_and_wrapping_errors() {
        let refusal = WrongInstance { expected: sys_id() };
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, refusal.clone().into_rustls());
        let wrapped = Wrapper(Box::new(Wrapper(Box::new(io))));
        let found = wrong_instance_in(&wrapped).expect("the refusal is found");
        assert_eq!(found.expected, sys_id());
        assert_eq!(refusal.to_string(), format!("peer certificate does not name instance {}", sys_id()));
    }

    #[test]
    fn other_certificate_errors_and_the_same_text_are_not_a_refusal() {
        let expired = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert!(wrong_instance_in(&Wrapper(Box::new(expired))).is_none());
        // The text alone proves nothing: a server could put it in any error.
        let text = rustls::Error::General(WrongInstance { expected: sys_id() }.to_string());
        assert!(wrong_instance_in(&Wrapper(Box::new(text))).is_none());
    }
}
