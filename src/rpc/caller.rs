//! Who is calling: read from the verified client certificate only, checked
//! on every call against the CRL in use (a certificate revoked after its
//! connection's handshake is refused with UNAUTHENTICATED on the next call).
//! A refused call is logged at warn and written to the audit log.

use tonic::{Request, Status};

use crate::domain::auth::{Caller, Permission, authorize as decide};
use crate::node::audit::Access;
use crate::tls::identity::caller_from_cert;

/// The request path (`/kmf.v1.Service/Method`), put into every request's
/// extensions by `record_path` so refusals can name the method.
#[derive(Clone, Debug)]
pub struct RpcPath(pub String);

/// Tower middleware function for `ServiceBuilder::map_request`.
pub fn record_path<B>(mut req: tonic::codegen::http::Request<B>) -> tonic::codegen::http::Request<B> {
    let path = RpcPath(req.uri().path().to_owned());
    req.extensions_mut().insert(path);
    req
}

/// The authenticated caller and its certificate (DER).
pub struct Authenticated {
    pub caller: Caller,
    pub cert_der: Vec<u8>,
}

/// Authenticates the caller from its certificate and checks `permission`.
pub async fn authorize<T>(access: &Access, req: &Request<T>, permission: Permission) -> Result<Authenticated, Status> {
    // Only a refusal needs these; build them then.
    let method = || req.extensions().get::<RpcPath>().map_or_else(|| "unknown".to_owned(), |p| p.0.clone());
    let peer = || req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let caller = match access.caller_for_cert(leaf, caller_from_cert) {
        Ok(c) => c,
        Err(e) => {
            let (method, peer) = (method(), peer());
            tracing::warn!(%peer, %method, "call refused: {e}");
            access.audit_refusal(format!("unidentified@{peer}"), method, e.to_string()).await;
            return Err(Status::permission_denied(e.to_string()));
        }
    };
    if let Some(reason) = access.tls_refusal(leaf) {
        let (method, peer) = (method(), peer());
        tracing::warn!(caller = %caller.actor(), %peer, %method, "call refused: {reason}");
        access.audit_refusal(caller.actor(), method, reason.clone()).await;
        return Err(Status::unauthenticated(reason));
    }
    if let Err(e) = decide(&caller, permission) {
        let (method, peer) = (method(), peer());
        tracing::warn!(caller = %caller.actor(), %peer, %method, "call refused: {e}");
        access.audit_refusal(caller.actor(), method, e.to_string()).await;
        return Err(Status::permission_denied(e.to_string()));
    }
    Ok(Authenticated { caller, cert_der: leaf.to_vec() })
}
