//! kmfctl: One Time / Recurring Clone configurations, on the source
//! (`kmfctl exchange clone-config create|list|delete`).

use clap::Subcommand;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum CloneConfigCommand {
    /// Lets the target receive the keys of these specs after a clone from
    /// this instance, approved by auto-created Resource Exchange policies:
    /// once (one-time) or after every clone (recurring). Also allows the
    /// target to clone this instance.
    Create {
        /// one-time or recurring.
        #[arg(long)]
        frequency: String,
        #[arg(long)]
        target_sys_id: String,
        /// host:port of the target's kmfd.
        #[arg(long)]
        target_host: String,
        #[arg(long = "spec", required = true)]
        specs: Vec<String>,
        /// Re-encrypt the cloned records under the target's own keys after the import.
        #[arg(long)]
        rekey: bool,
    },
    List,
    /// Removes the target's configuration and its policies.
    Delete {
        target_sys_id: String,
    },
}

pub async fn clone_config(ops: &mut Operator, cmd: CloneConfigCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        CloneConfigCommand::Create { frequency, target_sys_id, target_host, specs, rekey } => {
            let frequency = match frequency.as_str() {
                "one-time" => pb::Frequency::OneTimeClone,
                "recurring" => pb::Frequency::RecurringClone,
                other => anyhow::bail!("--frequency: expected one-time or recurring, not {other}"),
            } as i32;
            let req = pb::CreateCloneExchangeRequest {
                frequency,
                target_sys_id,
                target_host,
                spec_names: specs,
                rekey_after_import: rekey,
            };
            let r = ops.exchange.create_clone_exchange(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            show(&r.clone_exchange.into_iter().collect::<Vec<_>>());
        }
        CloneConfigCommand::List => {
            let all = ops.exchange.list_clone_exchanges(pb::ListCloneExchangesRequest {}).await?.into_inner();
            if as_json {
                return print::json(&all);
            }
            show(&all.clone_exchanges);
        }
        CloneConfigCommand::Delete { target_sys_id } => {
            let req = pb::DeleteCloneExchangeRequest { target_sys_id };
            let r = ops.exchange.delete_clone_exchange(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            show(&r.clone_exchange.into_iter().collect::<Vec<_>>());
        }
    }
    Ok(())
}

fn frequency_label(v: i32) -> &'static str {
    match pb::Frequency::try_from(v) {
        Ok(pb::Frequency::OneTimeClone) => "ONE_TIME_CLONE",
        Ok(pb::Frequency::RecurringClone) => "RECURRING_CLONE",
        _ => "?",
    }
}

fn show(list: &[pb::CloneExchange]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            let used = match c.used_by_request_id.as_str() {
                "" => "-".to_owned(),
                id => format!("{id} at {}", print::time(&c.used_at)),
            };
            vec![
                c.target_sys_id.clone(),
                c.target_host.clone(),
                frequency_label(c.frequency).into(),
                c.spec_names.join(","),
                c.rekey_after_import.to_string(),
                used,
            ]
        })
        .collect();
    print::table(&["TARGET", "HOST", "FREQUENCY", "SPECS", "REKEY", "USED BY"], &rows);
}
