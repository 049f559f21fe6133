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
