//! Who is calling, for the RPC edge: the caller a verified certificate
//! names (parsed once per certificate and kept; a certificate's identity
//! never changes, so the cache is harmless when stale), whether the TLS
//! configuration in use refuses that certificate now, and the audit of a
//! refused call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Audit;
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::domain::auth::Caller;
use crate::node::context::Context;
use crate::node::ports::TlsNow;

/// Most certificate identities kept at once (the map is emptied when full).
const MAX_CALLERS: usize = 1024;

pub struct Access {
    audit: Arc<Audit>,
    clock: Arc<dyn Clock>,
    /// The TLS configuration in use; None in an instance built without one.
    tls: Option<Arc<dyn TlsNow>>,
    /// Certificate DER -> caller.
    callers: Mutex<HashMap<Vec<u8>, Caller>>,
}

impl Access {
    pub fn new(ctx: &Context, audit: Arc<Audit>, tls: Option<Arc<dyn TlsNow>>) -> Self {
        Access { audit, clock: Arc::clone(&ctx.clock), tls, callers: Mutex::default() }
    }

    /// The caller a verified certificate names, parsed once per certificate.
    pub fn caller_for_cert(
        &self,
        cert_der: &[u8],
        parse: impl FnOnce(&[u8]) -> Result<Caller, DomainError>,
    ) -> Result<Caller, DomainError> {
        if let Some(c) = self.callers.lock().unwrap_or_else(|p| p.into_inner()).get(cert_der).cloned() {
            return Ok(c);
        }
        let c = parse(cert_der)?;
        let mut callers = self.callers.lock().unwrap_or_else(|p| p.into_inner());
        if callers.len() >= MAX_CALLERS {
            callers.clear();
        }
        callers.insert(cert_der.to_vec(), c.clone());
        Ok(c)
    }

    /// Why a call by the client that presented `cert_der` must be refused now
    /// (its certificate revoked since the handshake; see `TlsNow::refusal`).
    /// None without a TLS configuration.
    pub fn tls_refusal(&self, cert_der: &[u8]) -> Option<String> {
        self.tls.as_ref()?.refusal(cert_der, self.clock.now())
    }

    /// Records a refused call (the caller's identity, the method, the reason).
    pub async fn audit_refusal(&self, actor: String, method: String, reason: String) {
        self.audit.audit_refusal(actor, method, reason).await;
    }

    /// Records a refused call with its own scope and subject (the metrics listener).
    pub async fn audit_call_refusal(&self, actor: String, scope: String, subject: String, reason: String) {
        self.audit.audit_call_refusal(actor, scope, subject, reason).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::domain::health::CrlFacts;
    use crate::domain::ids::UnixMillis;
    use crate::node::testing::{Instance, test_ca};

    /// A TLS configuration that refuses one certificate.
    struct RefusesOne(Vec<u8>);

    impl TlsNow for RefusesOne {
        fn certificate_der(&self) -> Vec<u8> {
            Vec::new()
        }
        fn crl(&self) -> Option<CrlFacts> {
            None
        }
        fn refusal(&self, cert_der: &[u8], _now: UnixMillis) -> Option<String> {
            (cert_der == self.0.as_slice()).then(|| "revoked".to_owned())
        }
    }

    fn access(tls: Option<Arc<dyn TlsNow>>) -> (Access, Instance) {
        let instance = Instance::new(&test_ca(), "access");
        let s = &instance.services;
        let clock: Arc<dyn Clock> = instance.clock.clone();
        let access = Access { audit: Arc::clone(&s.audit), clock, tls, callers: Mutex::default() };
        (access, instance)
    }

    #[tokio::test]
    async fn a_certificate_is_parsed_once_and_its_caller_kept() {
        let (access, _instance) = access(None);
        let parsed = AtomicU32::new(0);
        let parse = |_: &[u8]| {
            parsed.fetch_add(1, Ordering::SeqCst);
            Ok(Caller::Operator { name: "ops".into(), roles: Vec::new() })
        };
        for _ in 0..3 {
            let caller = access.caller_for_cert(b"cert-a", parse).expect("caller");
            assert_eq!(caller.actor(), Caller::Operator { name: "ops".into(), roles: Vec::new() }.actor());
        }
        assert_eq!(parsed.load(Ordering::SeqCst), 1, "parsed once, then served from the cache");
        access.caller_for_cert(b"cert-b", parse).expect("caller");
        assert_eq!(parsed.load(Ordering::SeqCst), 2, "another certificate is parsed");
    }

    #[tokio::test]
    async fn a_certificate_that_does_not_name_a_caller_is_refused_and_not_kept() {
        let (access, _instance) = access(None);
        let refuse = |_: &[u8]| Err(DomainError::PermissionDenied("no identity".into()));
        assert!(access.caller_for_cert(b"bad", refuse).is_err());
        let ok = |_: &[u8]| Ok(Caller::Operator { name: "later".into(), roles: Vec::new() });
        assert!(access.caller_for_cert(b"bad", ok).is_ok(), "a refusal is not cached");
    }

    #[tokio::test]
    async fn the_cache_is_emptied_when_full_and_still_answers() {
        let (access, _instance) = access(None);
        let ok = |_: &[u8]| Ok(Caller::Operator { name: "n".into(), roles: Vec::new() });
        for i in 0..=MAX_CALLERS {
            access.caller_for_cert(format!("cert-{i}").as_bytes(), ok).expect("caller");
        }
        let held = access.callers.lock().unwrap_or_else(|p| p.into_inner()).len();
        assert!(held <= MAX_CALLERS, "bounded: {held}");
    }

    #[tokio::test]
    async fn the_tls_configuration_in_use_refuses_a_revoked_certificate() {
        let (without, _a) = access(None);
        assert_eq!(without.tls_refusal(b"any"), None, "no TLS configuration: nothing is refused here");
        let (with, _b) = access(Some(Arc::new(RefusesOne(b"revoked-cert".to_vec()))));
        assert_eq!(with.tls_refusal(b"revoked-cert").as_deref(), Some("revoked"));
        assert_eq!(with.tls_refusal(b"good-cert"), None);
    }
}
