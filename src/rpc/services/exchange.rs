//! ResourceExchange: exchange requests for operators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::DomainError;
use crate::domain::auth::Permission;
use crate::domain::exchange::{Frequency, PeerRef};
use crate::domain::ids::{Host, Name, RequestId, SysId};
use crate::node::audit::Access;
use crate::node::clone::{Clones, NewCloneExchange};
use crate::node::exchange::{Decision, Exchange, NewRequest};
use crate::rpc::caller::authorize;
use crate::rpc::pb::{self, resource_exchange_server::ResourceExchange};
use crate::rpc::{convert, convert_clone};

pub struct ResourceExchangeService {
    pub access: Arc<Access>,
    pub exchange: Arc<Exchange>,
    pub clone: Arc<Clones>,
}

/// Requests per ListRequests page unless the caller asks otherwise.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[tonic::async_trait]
impl ResourceExchange for ResourceExchangeService {
    async fn create_request(
        &self,
        req: Request<pb::CreateRequestRequest>,
    ) -> Result<Response<pb::CreateRequestResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let r = req.into_inner();
        match convert::frequency_from(r.frequency)? {
            Frequency::Adhoc => {}
            Frequency::Automatic => {
                let why = "AUTOMATIC requests are made by the instance itself after a clone";
                return Err(DomainError::invalid("frequency", why).into());
            }
            Frequency::OneTimeClone | Frequency::RecurringClone => {
                let why = "One Time and Recurring Clone are configured on the source (CreateCloneExchange)";
                return Err(DomainError::invalid("frequency", why).into());
            }
        }
        if r.rekey_after_import {
            let why = "rekey is not available with Adhoc requests; configure a One Time or Recurring Clone with rekey on the source";
            return Err(DomainError::invalid("rekey_after_import", why).into());
        }
        let expires_in_millis = r.expires_in.as_ref().map(convert::duration_millis).transpose()?;
        let new = NewRequest {
            source_sys_id: r.source_sys_id,
            source_host: r.source_host,
            spec_names: r.spec_names,
            expires_in_millis,
        };
        let created = self.exchange.create_request(&auth.caller, new).await?;
        Ok(Response::new(pb::CreateRequestResponse { request: Some(convert::request(&created)) }))
    }

    async fn list_requests(
        &self,
        req: Request<pb::ListRequestsRequest>,
    ) -> Result<Response<pb::ListRequestsResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let r = req.into_inner();
        let filter = convert::status_from(r.status)?;
        let page_size = match r.page_size {
            0 => DEFAULT_PAGE,
            n if !(1..=MAX_PAGE as i32).contains(&n) => {
                return Err(DomainError::invalid("page_size", format!("must be 1..={MAX_PAGE}")).into());
            }
            n => n as usize,
        };
        let (page, next) = self.exchange.requests_page(Some(r.page_token), page_size).await?;
        let requests = page.iter().filter(|r| filter.is_none_or(|s| r.status == s)).map(convert::request).collect();
        Ok(Response::new(pb::ListRequestsResponse { requests, next_page_token: next.unwrap_or_default() }))
    }

    async fn get_request(
        &self,
        req: Request<pb::GetRequestRequest>,
    ) -> Result<Response<pb::GetRequestResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let id = RequestId::parse(&req.get_ref().request_id)?;
        let found = self.exchange.request(id).await?;
        let proof = self.exchange.proof_of(&found)?.map(|p| pb::RequestProof {
            receipt: p.receipt.bytes,
            receipt_signature: p.receipt.signature,
            bundle_sha256: p.decoded.bundle_sha256.to_vec(),
            signed_by_sys_id: p.decoded.target.to_string(),
            signer_certificate: p.signer_certificate,
            imported_key_ids: p.decoded.imported.iter().map(ToString::to_string).collect(),
            imported_at: Some(convert::ts(p.decoded.imported_at)),
        });
        Ok(Response::new(pb::GetRequestResponse { request: Some(convert::request(&found)), proof }))
    }

    async fn update_request(
        &self,
        req: Request<pb::UpdateRequestRequest>,
    ) -> Result<Response<pb::UpdateRequestResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let r = req.into_inner();
        let id = RequestId::parse(&r.request_id)?;
        let decision = match pb::Decision::try_from(r.decision) {
            Ok(pb::Decision::Approve) => Decision::Approve,
            Ok(pb::Decision::Reject) if r.reason.trim().is_empty() => {
                return Err(DomainError::invalid("reason", "a rejection needs a reason").into());
            }
            Ok(pb::Decision::Reject) => Decision::Reject { reason: r.reason },
            Ok(pb::Decision::Retry) => Decision::Retry,
            _ => return Err(DomainError::invalid("decision", "set APPROVE, REJECT or RETRY").into()),
        };
        let updated = self.exchange.update_request(&auth.caller, id, decision).await?;
        Ok(Response::new(pb::UpdateRequestResponse { request: Some(convert::request(&updated)) }))
    }

    async fn create_clone_exchange(
        &self,
        req: Request<pb::CreateCloneExchangeRequest>,
    ) -> Result<Response<pb::CreateCloneExchangeResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let r = req.into_inner();
        let approval = convert_clone::clone_approval_from(r.frequency, "frequency")?;
        let target = PeerRef {
            sys_id: SysId::parse(&r.target_sys_id)?,
            host: Host::parse_dialable(&r.target_host, "target_host")?,
        };
        let specs =
            r.spec_names.iter().map(|s| Name::parse(s, "spec_names")).collect::<Result<Vec<_>, DomainError>>()?;
        let new = NewCloneExchange { target, approval, specs, rekey: r.rekey_after_import };
        let created = self.clone.create_clone_exchange(&auth.caller, new).await?;
        Ok(Response::new(pb::CreateCloneExchangeResponse {
            clone_exchange: Some(convert_clone::clone_exchange(&created)),
        }))
    }

    async fn list_clone_exchanges(
        &self,
        req: Request<pb::ListCloneExchangesRequest>,
    ) -> Result<Response<pb::ListCloneExchangesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let all = self.clone.clone_exchanges().await?;
        Ok(Response::new(pb::ListCloneExchangesResponse {
            clone_exchanges: all.iter().map(convert_clone::clone_exchange).collect(),
        }))
    }

    async fn delete_clone_exchange(
        &self,
        req: Request<pb::DeleteCloneExchangeRequest>,
    ) -> Result<Response<pb::DeleteCloneExchangeResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let target = SysId::parse(&req.get_ref().target_sys_id)?;
        let deleted = self.clone.delete_clone_exchange(&auth.caller, target).await?;
        Ok(Response::new(pb::DeleteCloneExchangeResponse {
            clone_exchange: Some(convert_clone::clone_exchange(&deleted)),
        }))
    }
}
