//! kmfctl: One Time / Recurring Clone configurations, on the source
//! (`kmfctl exchange clone-config create|list|delete`).

use clap::Subcommand;
use serde_json::json;

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
            let made = ops.exchange.create_clone_exchange(req).await?.into_inner().clone_exchange;
            show(&made.into_iter().collect::<Vec<_>>(), as_json);
        }
        CloneConfigCommand::List => {
            let all = ops.exchange.list_clone_exchanges(pb::ListCloneExchangesRequest {}).await?.into_inner();
            show(&all.clone_exchanges, as_json);
        }
        CloneConfigCommand::Delete { target_sys_id } => {
            let req = pb::DeleteCloneExchangeRequest { target_sys_id };
            let gone = ops.exchange.delete_clone_exchange(req).await?.into_inner().clone_exchange;
            show(&gone.into_iter().collect::<Vec<_>>(), as_json);
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

fn show(list: &[pb::CloneExchange], as_json: bool) {
    if as_json {
        let items: Vec<_> = list
            .iter()
            .map(|c| {
                json!({
                    "target_sys_id": c.target_sys_id,
                    "target_host": c.target_host,
                    "frequency": frequency_label(c.frequency),
                    "spec_names": c.spec_names,
                    "rekey_after_import": c.rekey_after_import,
                    "policies": c.policies,
                    "created_at": print::time(&c.created_at),
                    "created_by": c.created_by,
                    "used_by_request_id": c.used_by_request_id,
                    "used_at": print::time(&c.used_at),
                })
            })
            .collect();
        println!("{}", json!(items));
        return;
    }
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
