//! Policies: module access policies and the explain call (the MAP debugger).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::DomainError;
use crate::domain::auth::{Caller, Permission, Role};
use crate::domain::ids::{Host, SysId};
use crate::domain::policy::{AccessDecision, AccessPolicy, ApprovalType, Operation, PolicyResult, PolicyType, Subject};
use crate::node::Node;
use crate::rpc::caller::authorize;
use crate::rpc::convert;
use crate::rpc::pb::{self, policies_server::Policies};

pub struct PoliciesService(pub Arc<Node>);

fn operation(v: i32) -> Result<Operation, DomainError> {
    Ok(match pb::Operation::try_from(v) {
        Ok(pb::Operation::OpEncrypt) => Operation::Encrypt,
        Ok(pb::Operation::OpDecrypt) => Operation::Decrypt,
        Ok(pb::Operation::OpSign) => Operation::Sign,
        Ok(pb::Operation::OpVerify) => Operation::Verify,
        Ok(pb::Operation::OpMac) => Operation::Mac,
        Ok(pb::Operation::OpVerifyMac) => Operation::VerifyMac,
        Ok(pb::Operation::OpWrap) => Operation::Wrap,
        Ok(pb::Operation::OpUnwrap) => Operation::Unwrap,
        _ => return Err(DomainError::invalid("operation", "unspecified or unknown")),
    })
}

fn operation_pb(o: Operation) -> pb::Operation {
    match o {
        Operation::Encrypt => pb::Operation::OpEncrypt,
        Operation::Decrypt => pb::Operation::OpDecrypt,
        Operation::Sign => pb::Operation::OpSign,
        Operation::Verify => pb::Operation::OpVerify,
        Operation::Mac => pb::Operation::OpMac,
        Operation::VerifyMac => pb::Operation::OpVerifyMac,
        Operation::Wrap => pb::Operation::OpWrap,
        Operation::Unwrap => pb::Operation::OpUnwrap,
    }
}

fn result_pb(r: PolicyResult) -> pb::PolicyResult {
    match r {
        PolicyResult::Track => pb::PolicyResult::Track,
        PolicyResult::Reject => pb::PolicyResult::RejectUnlessTracked,
        PolicyResult::StrictReject => pb::PolicyResult::StrictReject,
    }
}

fn policy_from(p: &pb::AccessPolicy) -> Result<AccessPolicy, DomainError> {
    let kind = match pb::PolicyType::try_from(p.r#type) {
        Ok(pb::PolicyType::Role) => PolicyType::Role(Role::parse(&p.role)?),
        Ok(pb::PolicyType::Script) => PolicyType::Script(p.script.clone()),
        Ok(pb::PolicyType::System) => PolicyType::System,
        Ok(pb::PolicyType::ResourceExchange) => PolicyType::ResourceExchange {
            target_sys_id: SysId::parse(&p.target_sys_id)?,
            target_host: Host::parse(&p.target_host)?,
            approval: match pb::ApprovalType::try_from(p.approval_type) {
                Ok(pb::ApprovalType::OneTime) => ApprovalType::OneTime,
                Ok(pb::ApprovalType::Recurring) => ApprovalType::Recurring,
                _ => return Err(DomainError::invalid("approval_type", "set ONE_TIME or RECURRING")),
            },
        },
        _ => return Err(DomainError::invalid("type", "set ROLE, SCRIPT, SYSTEM or RESOURCE_EXCHANGE")),
    };
    let result = match pb::PolicyResult::try_from(p.result) {
        Ok(pb::PolicyResult::Track) => PolicyResult::Track,
        Ok(pb::PolicyResult::RejectUnlessTracked) => PolicyResult::Reject,
        Ok(pb::PolicyResult::StrictReject) => PolicyResult::StrictReject,
        _ => return Err(DomainError::invalid("result", "set TRACK, REJECT_UNLESS_TRACKED or STRICT_REJECT")),
    };
    let mut operations = Vec::new();
    for o in &p.operations {
        let o = operation(*o)?;
        if !operations.contains(&o) {
            operations.push(o);
        }
    }
    Ok(AccessPolicy {
        name: convert::name(&p.name, "name")?,
        module: convert::name(&p.module, "module")?,
        kind,
        result,
        spec: if p.spec.is_empty() { None } else { Some(convert::name(&p.spec, "spec")?) },
        operations,
        active: true,
        created_at: crate::clock::now(),
    })
}

fn policy_pb(p: &AccessPolicy) -> pb::AccessPolicy {
    let mut out = pb::AccessPolicy {
        name: p.name.to_string(),
        module: p.module.to_string(),
        result: result_pb(p.result) as i32,
        spec: p.spec.as_ref().map(ToString::to_string).unwrap_or_default(),
        operations: p.operations.iter().map(|o| operation_pb(*o) as i32).collect(),
        active: p.active,
        created_at: Some(convert::ts(p.created_at)),
        ..Default::default()
    };
    match &p.kind {
        PolicyType::Role(r) => {
            out.r#type = pb::PolicyType::Role as i32;
            out.role = r.as_str().to_owned();
        }
        PolicyType::Script(s) => {
            out.r#type = pb::PolicyType::Script as i32;
            out.script = s.clone();
        }
        PolicyType::System => out.r#type = pb::PolicyType::System as i32,
        PolicyType::ResourceExchange { target_sys_id, target_host, approval } => {
            out.r#type = pb::PolicyType::ResourceExchange as i32;
            out.target_sys_id = target_sys_id.to_string();
            out.target_host = target_host.to_string();
            out.approval_type = match approval {
                ApprovalType::OneTime => pb::ApprovalType::OneTime,
                ApprovalType::Recurring => pb::ApprovalType::Recurring,
            } as i32;
        }
    }
    out
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
        let auth = authorize(&self.0, &req, Permission::ManageKeys).await?;
        let p = req.get_ref().policy.as_ref().ok_or_else(|| DomainError::invalid("policy", "missing"))?;
        let created = self.0.create_policy(&auth.caller, policy_from(p)?).await?;
        Ok(Response::new(pb::CreatePolicyResponse { policy: Some(policy_pb(&created)) }))
    }

    async fn list_policies(
        &self,
        req: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        authorize(&self.0, &req, Permission::Read).await?;
        let m = &req.get_ref().module;
        let module = if m.is_empty() { None } else { Some(convert::name(m, "module")?) };
        let list = self.0.policies(module).await?;
        Ok(Response::new(pb::ListPoliciesResponse { policies: list.iter().map(policy_pb).collect() }))
    }

    async fn get_policy(&self, req: Request<pb::GetPolicyRequest>) -> Result<Response<pb::GetPolicyResponse>, Status> {
        authorize(&self.0, &req, Permission::Read).await?;
        let r = req.get_ref();
        let p = self.0.policy(convert::name(&r.module, "module")?, convert::name(&r.name, "name")?).await?;
        Ok(Response::new(pb::GetPolicyResponse { policy: Some(policy_pb(&p)) }))
    }

    async fn update_policy(
        &self,
        req: Request<pb::UpdatePolicyRequest>,
    ) -> Result<Response<pb::UpdatePolicyResponse>, Status> {
        let auth = authorize(&self.0, &req, Permission::ManageKeys).await?;
        let r = req.get_ref();
        let (module, name) = (convert::name(&r.module, "module")?, convert::name(&r.name, "name")?);
        let p = self.0.set_policy_active(&auth.caller, module, name, r.active).await?;
        Ok(Response::new(pb::UpdatePolicyResponse { policy: Some(policy_pb(&p)) }))
    }

    async fn explain_access(
        &self,
        req: Request<pb::ExplainAccessRequest>,
    ) -> Result<Response<pb::ExplainAccessResponse>, Status> {
        let auth = authorize(&self.0, &req, Permission::Read).await?;
        let r = req.get_ref();
        let subject = if r.as_system {
            Subject::System
        } else if r.as_operator.is_empty() {
            Subject::from(&auth.caller)
        } else {
            let roles = r.as_roles.iter().map(|x| Role::parse(x)).collect::<Result<Vec<_>, _>>()?;
            Subject::from(&Caller::Operator { name: r.as_operator.clone(), roles })
        };
        let d = self.0.explain_access(subject, convert::name(&r.spec, "spec")?, operation(r.operation)?).await?;
        Ok(Response::new(decision_pb(&d)))
    }
}
