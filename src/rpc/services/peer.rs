//! KeyExchange: the peer service other daemons call. The caller's sys_id is
//! the one in its verified certificate. A call refused for who is calling (a
//! claimed sys_id that is not the certificate's, a status notice or a bundle
//! from an instance that is not the request's peer) is audited as
//! `call.refused` with the certificate's identity and logged at warn, as
//! operator refusals are (`rpc::caller`).

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};

use crate::domain::DomainError;
use crate::domain::auth::{Caller, Permission};
use crate::domain::exchange::SignedBlob;
use crate::domain::ids::{Host, RequestId, SysId};
use crate::node::audit::Access;
use crate::node::exchange::Exchange;
use crate::node::ports::OpenRequest;
use crate::rpc::caller::{RpcPath, authorize};
use crate::rpc::convert;
use crate::rpc::pb::{self, key_exchange_server::KeyExchange};

pub struct KeyExchangeService {
    pub access: Arc<Access>,
    pub exchange: Arc<Exchange>,
}

pub(super) async fn instance<T>(access: &Access, req: &Request<T>) -> Result<(SysId, Vec<u8>), Status> {
    let auth = authorize(access, req, Permission::PeerExchange).await?;
    match auth.caller {
        Caller::Instance(id) => Ok((id, auth.cert_der)),
        Caller::Operator { .. } => Err(Status::permission_denied("instance certificate required")),
    }
}

/// Audits and logs `result` when it is a refusal (PERMISSION_DENIED) of the
/// instance `caller` calling `method`; returns it unchanged.
async fn audit_refusal<T>(
    access: &Access,
    caller: &SysId,
    method: String,
    result: Result<T, Status>,
) -> Result<T, Status> {
    if let Err(status) = &result
        && status.code() == Code::PermissionDenied
    {
        let actor = Caller::Instance(caller.clone()).actor();
        tracing::warn!(caller = %actor, %method, "peer call refused: {}", status.message());
        access.audit_refusal(actor, method, status.message().to_owned()).await;
    }
    result
}

fn method_of<T>(req: &Request<T>) -> String {
    req.extensions().get::<RpcPath>().map_or_else(|| "unknown".to_owned(), |p| p.0.clone())
}

#[tonic::async_trait]
impl KeyExchange for KeyExchangeService {
    async fn open_request(
        &self,
        req: Request<pb::OpenRequestRequest>,
    ) -> Result<Response<pb::OpenRequestResponse>, Status> {
        let (caller, cert) = instance(&self.access, &req).await?;
        let method = method_of(&req);
        let result = self.open(caller.clone(), cert, req.into_inner()).await;
        audit_refusal(&self.access, &caller, method, result).await
    }

    async fn deliver_bundle(
        &self,
        req: Request<pb::DeliverBundleRequest>,
    ) -> Result<Response<pb::DeliverBundleResponse>, Status> {
        let (caller, cert) = instance(&self.access, &req).await?;
        let method = method_of(&req);
        let r = req.into_inner();
        let result = self
            .exchange
            .receive_bundle(caller.clone(), cert, SignedBlob { bytes: r.bundle, signature: r.signature })
            .await
            .map(|receipt| {
                Response::new(pb::DeliverBundleResponse { receipt: receipt.bytes, signature: receipt.signature })
            })
            .map_err(Status::from);
        audit_refusal(&self.access, &caller, method, result).await
    }

    async fn notify_status(
        &self,
        req: Request<pb::NotifyStatusRequest>,
    ) -> Result<Response<pb::NotifyStatusResponse>, Status> {
        let (caller, _) = instance(&self.access, &req).await?;
        let method = method_of(&req);
        let result = self.notify(caller.clone(), req.into_inner()).await;
        audit_refusal(&self.access, &caller, method, result).await
    }
}

impl KeyExchangeService {
    async fn open(
        &self,
        caller: SysId,
        cert: Vec<u8>,
        r: pb::OpenRequestRequest,
    ) -> Result<Response<pb::OpenRequestResponse>, Status> {
        if r.target_sys_id != caller.as_str() {
            return Err(Status::permission_denied("claimed target_sys_id differs from the certificate"));
        }
        let open = OpenRequest {
            request_id: RequestId::parse(&r.request_id)?,
            target_sys_id: SysId::parse(&r.target_sys_id)?,
            target_host: Host::parse_dialable(&r.target_host, "target_host")?,
            source_sys_id: SysId::parse(&r.source_sys_id)?,
            spec_names: crate::domain::exchange::validate_spec_names(&r.spec_names)?,
            expires_at: convert::from_ts(
                r.expires_at.as_ref().ok_or_else(|| DomainError::invalid("expires_at", "missing"))?,
            ),
            transport_public_key: r.transport_public_key,
            wrapping: convert::wrapping_from(r.wrapping_algorithm)?,
            frequency: convert::frequency_from(r.frequency)?,
            clone_grant: crate::domain::clone::parse_grant_id(&r.clone_grant_id)?,
        };
        let cert_hosts = crate::tls::identity::host_names(&cert);
        let view = self.exchange.open_request_from_peer(caller, cert, cert_hosts, open).await?;
        let mut request = pb::ExchangeRequest {
            status: convert::status(view.status) as i32,
            total_key_count: view.total_key_count,
            ..Default::default()
        };
        request.lines = view.lines.iter().map(convert::line).collect();
        Ok(Response::new(pb::OpenRequestResponse { request: Some(request) }))
    }

    async fn notify(
        &self,
        caller: SysId,
        r: pb::NotifyStatusRequest,
    ) -> Result<Response<pb::NotifyStatusResponse>, Status> {
        if SysId::parse(&r.source_sys_id)? != caller {
            return Err(Status::permission_denied("claimed source_sys_id differs from the certificate"));
        }
        let status = convert::status_from(r.status)?.ok_or_else(|| DomainError::invalid("status", "unspecified"))?;
        self.exchange.receive_status(caller, RequestId::parse(&r.request_id)?, status, r.reason).await?;
        Ok(Response::new(pb::NotifyStatusResponse {}))
    }
}
