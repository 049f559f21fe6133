//! Module access policies between protobuf and the domain (the Policies
//! service and the clone snapshot both carry them).

use crate::domain::DomainError;
use crate::domain::auth::Role;
use crate::domain::ids::{Host, SysId};
use crate::domain::policy::{AccessPolicy, ApprovalType, Operation, PolicyResult, PolicyType};
use crate::rpc::pb;

pub fn operation(v: i32) -> Result<Operation, DomainError> {
    Ok(match pb::Operation::try_from(v) {
        Ok(pb::Operation::OpEncrypt) => Operation::Encrypt,
        Ok(pb::Operation::OpDecrypt) => Operation::Decrypt,
        Ok(pb::Operation::OpSign) => Operation::Sign,
        Ok(pb::Operation::OpVerify) => Operation::Verify,
        Ok(pb::Operation::OpMac) => Operation::Mac,
        Ok(pb::Operation::OpVerifyMac) => Operation::VerifyMac,
        Ok(pb::Operation::OpWrap) => Operation::Wrap,
        Ok(pb::Operation::OpUnwrap) => Operation::Unwrap,
        Ok(pb::Operation::OpExport) => Operation::Export,
        _ => return Err(DomainError::invalid("operation", "unspecified or unknown")),
    })
}

pub fn operation_pb(o: Operation) -> pb::Operation {
    match o {
        Operation::Encrypt => pb::Operation::OpEncrypt,
        Operation::Decrypt => pb::Operation::OpDecrypt,
        Operation::Sign => pb::Operation::OpSign,
        Operation::Verify => pb::Operation::OpVerify,
        Operation::Mac => pb::Operation::OpMac,
        Operation::VerifyMac => pb::Operation::OpVerifyMac,
        Operation::Wrap => pb::Operation::OpWrap,
        Operation::Unwrap => pb::Operation::OpUnwrap,
        Operation::Export => pb::Operation::OpExport,
    }
}

pub fn result_pb(r: PolicyResult) -> pb::PolicyResult {
    match r {
        PolicyResult::Track => pb::PolicyResult::Track,
        PolicyResult::Reject => pb::PolicyResult::RejectUnlessTracked,
        PolicyResult::StrictReject => pb::PolicyResult::StrictReject,
    }
}

pub fn policy_from(p: &pb::AccessPolicy) -> Result<AccessPolicy, DomainError> {
    let kind = match pb::PolicyType::try_from(p.r#type) {
        Ok(pb::PolicyType::Role) => PolicyType::Role(Role::parse(&p.role)?),
        Ok(pb::PolicyType::Script) => PolicyType::Script(p.script.clone()),
        Ok(pb::PolicyType::System) => PolicyType::System,
        Ok(pb::PolicyType::ResourceExchange) => PolicyType::ResourceExchange {
            target_sys_id: SysId::parse(&p.target_sys_id)?,
            target_host: Host::parse_dialable(&p.target_host, "target_host")?,
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
        name: super::convert::name(&p.name, "name")?,
        module: super::convert::name(&p.module, "module")?,
        kind,
        result,
        spec: if p.spec.is_empty() { None } else { Some(super::convert::name(&p.spec, "spec")?) },
        operations,
        active: true,
        created_at: crate::clock::now(),
    })
}

pub fn policy_pb(p: &AccessPolicy) -> pb::AccessPolicy {
    let mut out = pb::AccessPolicy {
        name: p.name.to_string(),
        module: p.module.to_string(),
        result: result_pb(p.result) as i32,
        spec: p.spec.as_ref().map(ToString::to_string).unwrap_or_default(),
        operations: p.operations.iter().map(|o| operation_pb(*o) as i32).collect(),
        active: p.active,
        created_at: Some(super::convert::ts(p.created_at)),
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
