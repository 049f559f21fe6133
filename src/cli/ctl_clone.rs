//! kmfctl: clone. On a source, the clone targets it serves clones to.

use clap::Subcommand;
use serde_json::json;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum CloneCommand {
    /// The instances this one serves clones to (a snapshot of modules, specs,
    /// policies, properties and encrypted records; never keys).
    #[command(subcommand)]
    Target(CloneTargetCommand),
}

#[derive(Subcommand, Debug)]
pub enum CloneTargetCommand {
    /// Allows instance SYS_ID (whose kmfd is at HOST, host:port) to clone this
    /// instance; adding it again replaces the host.
    Add {
        sys_id: String,
        host: String,
    },
    List,
    /// Stops serving clones to SYS_ID.
    Remove {
        sys_id: String,
    },
}

pub async fn clone(ops: &mut Operator, cmd: CloneCommand, as_json: bool) -> anyhow::Result<()> {
    let CloneCommand::Target(cmd) = cmd;
    let targets = match cmd {
        CloneTargetCommand::Add { sys_id, host } => {
            let req = pb::AddCloneTargetRequest { sys_id, host };
            vec![ops.clones.add_clone_target(req).await?.into_inner().target.unwrap_or_default()]
        }
        CloneTargetCommand::List => {
            ops.clones.list_clone_targets(pb::ListCloneTargetsRequest {}).await?.into_inner().targets
        }
        CloneTargetCommand::Remove { sys_id } => {
            ops.clones.remove_clone_target(pb::RemoveCloneTargetRequest { sys_id: sys_id.clone() }).await?;
            if !as_json {
                println!("clone target {sys_id} removed");
            }
            return Ok(());
        }
    };
    if as_json {
        let v: Vec<_> = targets
            .iter()
            .map(|t| {
                json!({"sys_id": t.sys_id, "host": t.host, "added_at": print::time(&t.added_at),
                "added_by": t.added_by})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        let rows: Vec<_> = targets
            .iter()
            .map(|t| vec![t.sys_id.clone(), t.host.clone(), t.added_by.clone(), print::time(&t.added_at)])
            .collect();
        print::table(&["SYS_ID", "HOST", "ADDED_BY", "ADDED"], &rows);
    }
    Ok(())
}
