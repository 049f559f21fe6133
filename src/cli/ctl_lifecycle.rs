//! kmfctl: key lifecycle actions, spec lifecycle definitions, lifecycle
//! policies, and the audit log.

use clap::Subcommand;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum LifecycleCommand {
    /// Set a spec's key lifecycle definition.
    Spec {
        spec: String,
        /// Keys expire this long after activation (e.g. 365d).
        #[arg(long)]
        expire_after: Option<String>,
        /// Deactivated keys are destroyed after this long (e.g. 90d).
        #[arg(long)]
        destroy_after_idle: Option<String>,
    },
    /// Set the instance lifecycle policy, or a module's exception with --module.
    SetPolicy {
        #[arg(long)]
        module: Option<String>,
        /// Longest expire_after a spec may set (e.g. 730d).
        #[arg(long)]
        max_expire_after: Option<String>,
        /// Store the policy inactive.
        #[arg(long)]
        inactive: bool,
    },
    /// List lifecycle policies.
    Policies,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// List entries (oldest first).
    List {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only actions starting with this, e.g. "exchange.".
        #[arg(long, default_value = "")]
        action: String,
    },
    /// Walk the hash chain; exit 1 and name the first broken link if any.
    Verify,
}

fn duration(text: Option<String>, flag: &str) -> anyhow::Result<Option<prost_types::Duration>> {
    text.map(|t| {
        let d = humantime::parse_duration(&t).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?;
        Ok(prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
    })
    .transpose()
}

fn days(d: &Option<prost_types::Duration>) -> String {
    d.as_ref().map_or_else(|| "-".into(), |d| format!("{}d", d.seconds / 86_400))
}

/// `key activate|renew|suspend|resume|revoke|compromise KEY_ID`.
pub async fn key_action(
    ops: &mut Operator,
    key_id: String,
    action: pb::KeyAction,
    reason: String,
    as_json: bool,
) -> anyhow::Result<()> {
    let req = pb::ChangeKeyStateRequest { key_id, action: action as i32, reason };
    let r = ops.keys.change_key_state(req).await?.into_inner();
    if as_json {
        return print::json(&r);
    }
    print::keys(&r.keys);
    Ok(())
}

pub async fn lifecycle(ops: &mut Operator, cmd: LifecycleCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        LifecycleCommand::Spec { spec, expire_after, destroy_after_idle } => {
            let req = pb::SetSpecLifecycleRequest {
                spec,
                expire_after: duration(expire_after, "expire-after")?,
                destroy_after_idle: duration(destroy_after_idle, "destroy-after-idle")?,
            };
            let r = ops.keys.set_spec_lifecycle(req).await?.into_inner();
            if as_json {
                print::json(&r)?;
            } else {
                let s = r.spec.unwrap_or_default();
                print::table(
                    &["SPEC", "EXPIRE_AFTER", "DESTROY_AFTER_IDLE"],
                    &[vec![s.name, days(&s.expire_after), days(&s.destroy_after_idle)]],
                );
            }
        }
        LifecycleCommand::SetPolicy { module, max_expire_after, inactive } => {
            let policy = pb::LifecyclePolicy {
                module: module.unwrap_or_default(),
                active: !inactive,
                max_expire_after: duration(max_expire_after, "max-expire-after")?,
            };
            let req = pb::SetLifecyclePolicyRequest { policy: Some(policy) };
            let r = ops.keys.set_lifecycle_policy(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_policies(&r.policy.into_iter().collect::<Vec<_>>());
        }
        LifecycleCommand::Policies => {
            let r = ops.keys.list_lifecycle_policies(pb::ListLifecyclePoliciesRequest {}).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_policies(&r.policies);
        }
    }
    Ok(())
}

fn print_policies(list: &[pb::LifecyclePolicy]) {
    let scope = |p: &pb::LifecyclePolicy| {
        if p.module.is_empty() { "instance".to_owned() } else { format!("module {}", p.module) }
    };
    let rows: Vec<_> = list.iter().map(|p| vec![scope(p), p.active.to_string(), days(&p.max_expire_after)]).collect();
    print::table(&["SCOPE", "ACTIVE", "MAX_EXPIRE_AFTER"], &rows);
}

pub async fn audit(ops: &mut Operator, cmd: AuditCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::List { after, limit, action } => {
            let req =
                pb::ListAuditEntriesRequest { after_seq: after, limit, action_prefix: action, ..Default::default() };
            let r = ops.audit.list_audit_entries(req).await?.into_inner();
            if as_json {
                print::json(&r)?;
            } else {
                let rows: Vec<_> = r
                    .entries
                    .iter()
                    .map(|e| {
                        let details: String = e.details.chars().take(80).collect();
                        vec![
                            e.seq.to_string(),
                            print::time(&e.at),
                            e.actor.clone(),
                            e.action.clone(),
                            e.subject.clone(),
                            e.outcome.clone(),
                            details,
                        ]
                    })
                    .collect();
                print::table(&["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "OUTCOME", "DETAILS"], &rows);
            }
        }
        AuditCommand::Verify => {
            let r = ops.audit.verify_audit_chain(pb::VerifyAuditChainRequest {}).await?.into_inner();
            if as_json {
                print::json(&r)?;
            } else if r.intact {
                println!("audit chain intact: {} entries verified", r.entries_verified);
            } else {
                println!(
                    "audit chain BROKEN at entry {}: {} ({} entries before it verified)",
                    r.broken_at_seq, r.reason, r.entries_verified
                );
            }
            if !r.intact {
                anyhow::bail!("audit chain broken at entry {}", r.broken_at_seq);
            }
        }
    }
    Ok(())
}
