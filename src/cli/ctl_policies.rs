//! kmfctl: module access policies and the explain call.

use clap::Subcommand;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create a Role, Script, System or Resource Exchange policy.
    Create {
        name: String,
        #[arg(long)]
        module: String,
        /// role, script, system or resource-exchange (inbound exchange
        /// requests from one target instance, for clone flows).
        #[arg(long = "type", value_parser = ["role", "script", "system", "resource-exchange"])]
        kind: String,
        /// track, reject or strict-reject.
        #[arg(long, value_parser = ["track", "reject", "strict-reject"])]
        result: String,
        /// For --type role.
        #[arg(long, default_value = "")]
        role: String,
        /// For --type script: the caller identity (operator name).
        #[arg(long, default_value = "")]
        script: String,
        /// Only this spec.
        #[arg(long, default_value = "")]
        spec: String,
        /// Only these operations (encrypt, decrypt, sign, verify, mac, verify_mac, wrap, unwrap, export).
        #[arg(long = "operation")]
        operations: Vec<String>,
        /// For --type resource-exchange: the target instance's sys_id.
        #[arg(long, default_value = "")]
        target_sys_id: String,
        /// For --type resource-exchange: the host:port the target's requests name.
        #[arg(long, default_value = "")]
        target_host: String,
        /// For --type resource-exchange: one-time or recurring.
        #[arg(long, value_parser = ["one-time", "recurring"])]
        approval: Option<String>,
    },
    /// One policy.
    Get {
        name: String,
        #[arg(long)]
        module: String,
    },
    List {
        #[arg(long, default_value = "")]
        module: String,
    },
    Activate {
        name: String,
        #[arg(long)]
        module: String,
    },
    Deactivate {
        name: String,
        #[arg(long)]
        module: String,
    },
    /// Show every policy evaluated for an operation on a spec, and the decision.
    Explain {
        #[arg(long)]
        spec: String,
        /// The key operation (encrypt, decrypt, ..., export); not with --exchange-target-sys-id.
        #[arg(long, required_unless_present = "exchange_target_sys_id")]
        operation: Option<String>,
        /// Explain an inbound exchange request from this target instead of an operation.
        #[arg(long, requires = "exchange_target_host")]
        exchange_target_sys_id: Option<String>,
        /// The host:port the target's request names.
        #[arg(long)]
        exchange_target_host: Option<String>,
        /// one-time or recurring (the clone frequency of the request).
        #[arg(long, default_value = "one-time")]
        exchange_frequency: String,
        /// Evaluate as this operator name (default: yourself).
        #[arg(long, default_value = "")]
        as_operator: String,
        #[arg(long = "as-role")]
        as_roles: Vec<String>,
    },
}

fn operation(text: &str) -> anyhow::Result<pb::Operation> {
    pb::Operation::from_str_name(&format!("OP_{}", text.to_ascii_uppercase()))
        .ok_or_else(|| anyhow::anyhow!("unknown operation `{text}`"))
}

fn result_label(v: i32) -> &'static str {
    match pb::PolicyResult::try_from(v) {
        Ok(pb::PolicyResult::Track) => "Track",
        Ok(pb::PolicyResult::RejectUnlessTracked) => "Reject",
        Ok(pb::PolicyResult::StrictReject) => "StrictReject",
        _ => "?",
    }
}

fn who(p: &pb::AccessPolicy) -> String {
    match pb::PolicyType::try_from(p.r#type) {
        Ok(pb::PolicyType::Role) => format!("role {}", p.role),
        Ok(pb::PolicyType::Script) => format!("script {}", p.script),
        Ok(pb::PolicyType::System) => "system".into(),
        Ok(pb::PolicyType::ResourceExchange) => format!("exchange {} @ {}", p.target_sys_id, p.target_host),
        _ => "?".into(),
    }
}

fn print_policies(list: &[pb::AccessPolicy]) {
    let ops = |p: &pb::AccessPolicy| {
        let v: Vec<String> = p
            .operations
            .iter()
            .filter_map(|o| pb::Operation::try_from(*o).ok())
            .map(|o| o.as_str_name().trim_start_matches("OP_").to_ascii_lowercase())
            .collect();
        if v.is_empty() { "all".to_owned() } else { v.join(",") }
    };
    {
        let rows: Vec<_> = list
            .iter()
            .map(|p| {
                let spec = if p.spec.is_empty() { "all".to_owned() } else { p.spec.clone() };
                vec![
                    p.module.clone(),
                    p.name.clone(),
                    who(p),
                    result_label(p.result).into(),
                    spec,
                    ops(p),
                    p.active.to_string(),
                ]
            })
            .collect();
        print::table(&["MODULE", "NAME", "WHO", "RESULT", "SPEC", "OPERATIONS", "ACTIVE"], &rows);
    }
}

pub async fn policy(ops: &mut Operator, cmd: PolicyCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Create {
            name,
            module,
            kind,
            result,
            role,
            script,
            spec,
            operations,
            target_sys_id,
            target_host,
            approval,
        } => {
            let r#type = match kind.as_str() {
                "role" => pb::PolicyType::Role,
                "script" => pb::PolicyType::Script,
                "resource-exchange" => pb::PolicyType::ResourceExchange,
                _ => pb::PolicyType::System,
            };
            let approval_type = match approval.as_deref() {
                Some("one-time") => pb::ApprovalType::OneTime,
                Some(_) => pb::ApprovalType::Recurring,
                None => pb::ApprovalType::Unspecified,
            };
            let result = match result.as_str() {
                "track" => pb::PolicyResult::Track,
                "reject" => pb::PolicyResult::RejectUnlessTracked,
                _ => pb::PolicyResult::StrictReject,
            };
            let operations =
                operations.iter().map(|o| operation(o).map(|o| o as i32)).collect::<anyhow::Result<_>>()?;
            let policy = pb::AccessPolicy {
                name,
                module,
                r#type: r#type as i32,
                result: result as i32,
                role,
                script,
                spec,
                operations,
                target_sys_id,
                target_host,
                approval_type: approval_type as i32,
                ..Default::default()
            };
            let p = ops.policies.create_policy(pb::CreatePolicyRequest { policy: Some(policy) }).await?.into_inner();
            if as_json {
                return print::json(&p);
            }
            print_policies(&p.policy.into_iter().collect::<Vec<_>>());
        }
        PolicyCommand::Get { name, module } => {
            let r = ops.policies.get_policy(pb::GetPolicyRequest { module, name }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_policies(&r.policy.into_iter().collect::<Vec<_>>());
        }
        PolicyCommand::List { module } => {
            let r = ops.policies.list_policies(pb::ListPoliciesRequest { module }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_policies(&r.policies);
        }
        PolicyCommand::Activate { name, module } => set_active(ops, module, name, true, as_json).await?,
        PolicyCommand::Deactivate { name, module } => set_active(ops, module, name, false, as_json).await?,
        PolicyCommand::Explain {
            spec,
            operation: op,
            exchange_target_sys_id,
            exchange_target_host,
            exchange_frequency,
            as_operator,
            as_roles,
        } => {
            let as_exchange_frequency = match exchange_frequency.as_str() {
                "one-time" => pb::Frequency::OneTimeClone,
                "recurring" => pb::Frequency::RecurringClone,
                other => anyhow::bail!("--exchange-frequency: expected one-time or recurring, not {other}"),
            } as i32;
            let operation = match (&op, &exchange_target_sys_id) {
                (Some(op), None) => operation(op)? as i32,
                (None, Some(_)) => pb::Operation::Unspecified as i32,
                _ => anyhow::bail!("give either --operation or --exchange-target-sys-id"),
            };
            let req = pb::ExplainAccessRequest {
                spec,
                operation,
                as_operator,
                as_roles,
                as_system: false,
                as_exchange_target_sys_id: exchange_target_sys_id.unwrap_or_default(),
                as_exchange_target_host: exchange_target_host.unwrap_or_default(),
                as_exchange_frequency,
            };
            let d = ops.policies.explain_access(req).await?.into_inner();
            if as_json {
                print::json(&d)?;
            } else {
                let rows: Vec<_> = d
                    .evaluated
                    .iter()
                    .map(|e| {
                        vec![e.policy.clone(), result_label(e.result).into(), e.matched.to_string(), e.why.clone()]
                    })
                    .collect();
                print::table(&["POLICY", "RESULT", "MATCHED", "WHY"], &rows);
                println!("decision: {} ({})", if d.allowed { "ALLOW" } else { "DENY" }, d.reason);
            }
        }
    }
    Ok(())
}

async fn set_active(
    ops: &mut Operator,
    module: String,
    name: String,
    active: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let p = ops.policies.update_policy(pb::UpdatePolicyRequest { module, name, active }).await?.into_inner();
    if as_json {
        return print::json(&p);
    }
    print_policies(&p.policy.into_iter().collect::<Vec<_>>());
    Ok(())
}
