//! Who is calling: read from the verified client certificate only.

use tonic::{Request, Status};

use crate::domain::auth::{Caller, Permission, authorize};
use crate::tls::identity::caller_from_cert;

/// The authenticated caller and its certificate (DER).
pub struct Authenticated {
    pub caller: Caller,
    pub cert_der: Vec<u8>,
}

/// Authenticates the caller from its certificate and checks `permission`.
pub fn authorize_request<T>(req: &Request<T>, permission: Permission) -> Result<Authenticated, Status> {
    let certs = req.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let caller = caller_from_cert(leaf).map_err(|e| Status::permission_denied(e.to_string()))?;
    if let Err(e) = authorize(&caller, permission) {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(caller = %caller.actor(), %peer, ?permission, "call refused: {e}");
        return Err(Status::permission_denied(e.to_string()));
    }
    Ok(Authenticated { caller, cert_der: leaf.to_vec() })
}
