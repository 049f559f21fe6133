//! Policies: module access policies and the explain call (the MAP debugger).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::DomainError;
use crate::domain::auth::{Caller, Permission, Role};
use crate::domain::ids::{Host, SysId};
use crate::domain::policy::{AccessDecision, Subject};
use crate::node::audit::Access;
use crate::node::catalog::Catalog;
use crate::rpc::caller::authorize;
use crate::rpc::convert;
use crate::rpc::convert_clone::clone_approval_from;
use crate::rpc::convert_policy::{operation, policy_from, policy_pb, result_pb};
use crate::rpc::pb::{self, policies_server::Policies};

pub struct PoliciesService {
    pub access: Arc<Access>,
    pub catalog: Arc<Catalog>,
}

fn decision_pb(d: &AccessDecision) -> pb::ExplainAccessResponse {
    pb::ExplainAccessResponse {
        allowed: d.allowed,
        reason: d.reason.clone(),
        evaluated: d
            .evaluated
            .iter()
            .map(|e| pb::EvaluatedPolicy {
                policy: e.policy.to_string(),
                result: result_pb(e.result) as i32,
                matched: e.matched,
                why: e.why.clone(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl Policies for PoliciesService {
    async fn create_policy(
        &self,
        req: Request<pb::CreatePolicyRequest>,
    ) -> Result<Response<pb::CreatePolicyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let p = req.get_ref().policy.as_ref().ok_or_else(|| DomainError::invalid("policy", "missing"))?;
        let created = self.catalog.create_policy(&auth.caller, policy_from(p)?).await?;
        Ok(Response::new(pb::CreatePolicyResponse { policy: Some(policy_pb(&created)) }))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let m = &req.get_ref().module;
        let module = if m.is_empty() { None } else { Some(convert::name(m, "module")?) };
        let list = self.catalog.policies(module).await?;
        Ok(Response::new(pb::ListPoliciesResponse { policies: list.iter().map(policy_pb).collect() }))
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Result<Response<pb::GetPolicyResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let r = req.get_ref();
        let p = self.catalog.policy(convert::name(&r.module, "module")?, convert::name(&r.name, "name")?).await?;
        Ok(Response::new(pb::GetPolicyResponse { policy: Some(policy_pb(&p)) }))
    }

    async fn update_policy(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let r = req.get_ref();
        let (module, name) = (convert::name(&r.module, "module")?, convert::name(&r.name, "name")?);
        let p = self.catalog.set_policy_active(&auth.caller, module, name, r.active).await?;
        Ok(Response::new(pb::UpdatePolicyResponse { policy: Some(policy_pb(&p)) }))
    }

    async fn explain_access(
        &self,
        req: Request<pb::ExplainAccessRequest>,
    ) -> Result<Response<pb::ExplainAccessResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::Read).await?;
        let r = req.get_ref();
        if !r.as_exchange_target_sys_id.is_empty() {
            let d = self
                .catalog
                .explain_exchange(
                    convert::name(&r.spec, "spec")?,
                    SysId::parse(&r.as_exchange_target_sys_id)?,
                    Host::parse_dialable(&r.as_exchange_target_host, "as_exchange_target_host")?,
                    clone_approval_from(r.as_exchange_frequency, "as_exchange_frequency")?,
                )
                .await?;
            return Ok(Response::new(decision_pb(&d)));
        }
        let subject = if r.as_system {
            Subject::System
        } else if r.as_operator.is_empty() {
            Subject::from(&auth.caller)
        } else {
            let roles = r.as_roles.iter().map(|x| Role::parse(x)).collect::<Result<Vec<_>, _>>()?;
            Subject::from(&Caller::Operator { name: r.as_operator.clone(), roles })
        };
        let d = self.catalog.explain_access(subject, convert::name(&r.spec, "spec")?, operation(r.operation)?).await?;
        Ok(Response::new(decision_pb(&d)))
    }
}
