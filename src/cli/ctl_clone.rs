//! kmfctl: clone. On a source, the clone targets it serves clones to; on a
//! target, clones of a source and their progress. `--watch` follows a clone
//! to its end: a progress bar on a terminal (stderr), plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::ctl_clone_schedule::{CloneScheduleCommand, schedule};
use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum CloneCommand {
    /// The instances this one serves clones to (a snapshot of modules, specs,
    /// policies, properties and encrypted records; never keys).
    #[command(subcommand)]
    Target(CloneTargetCommand),
    /// Clones that start by themselves, on an interval or a cron expression.
    #[command(subcommand)]
    Schedule(CloneScheduleCommand),
    /// Clones this instance from SOURCE_SYS_ID at SOURCE_HOST (host:port):
    /// its modules, specs, policies, properties and encrypted records replace
    /// this instance's once all have arrived. The source must list this
    /// instance as a clone target.
    Start {
        source_sys_id: String,
        source_host: String,
        /// Follow the clone until it completes or fails (`--json`: the last
        /// GetClone response seen).
        #[arg(long)]
        watch: bool,
    },
    /// One clone's state and progress.
    Get {
        clone_id: String,
        #[arg(long)]
        watch: bool,
    },
    /// This instance's clones, newest first.
    List,
}

/// How often `--watch` asks for progress.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// `--watch` gives up after this long (the clone goes on).
const WATCH_AT_MOST: Duration = Duration::from_secs(24 * 3600);

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
    let (clone, watch) = match cmd {
        CloneCommand::Target(cmd) => return target(ops, cmd, as_json).await,
        CloneCommand::Schedule(cmd) => return schedule(ops, cmd, as_json).await,
        CloneCommand::Start { source_sys_id, source_host, watch } => {
            let req = pb::StartCloneRequest { source_sys_id, source_host };
            let r = ops.clones.start_clone(req).await?.into_inner();
            if as_json && !watch {
                print::json(&r)?;
            }
            (r.clone.unwrap_or_default(), watch)
        }
        CloneCommand::Get { clone_id, watch } => {
            let r = ops.clones.get_clone(pb::GetCloneRequest { clone_id }).await?.into_inner();
            if as_json && !watch {
                print::json(&r)?;
            }
            (r.clone.unwrap_or_default(), watch)
        }
        CloneCommand::List => {
            let r = ops.clones.list_clones(pb::ListClonesRequest {}).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_clones(&r.clones);
            return Ok(());
        }
    };
    let clone = if watch { follow(ops, clone, as_json).await? } else { clone };
    if !as_json {
        print_clones(std::slice::from_ref(&clone));
    } else if watch {
        // The last GetClone answer seen while watching.
        print::json(&pb::GetCloneResponse { clone: Some(clone.clone()) })?;
    }
    match clone.state.as_str() {
        "failed" => anyhow::bail!("clone {} failed: {}", clone.clone_id, clone.error),
        _ => Ok(()),
    }
}

/// Polls the clone until it is no longer running.
async fn follow(ops: &mut Operator, mut c: pb::CloneInfo, as_json: bool) -> anyhow::Result<pb::CloneInfo> {
    let bar = (std::io::stderr().is_terminal() && !as_json).then(|| {
        let b = ProgressBar::new(c.records_total.max(1));
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} clone {msg} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})")
        {
            b.set_style(style);
        }
        b.enable_steady_tick(Duration::from_millis(100));
        b
    });
    let deadline = tokio::time::Instant::now() + WATCH_AT_MOST;
    let mut last_line = String::new();
    while c.state == "running" && tokio::time::Instant::now() < deadline {
        match &bar {
            Some(b) => {
                b.set_length(c.records_total.max(1));
                b.set_position(c.records_copied);
                b.set_message(c.clone_id.chars().take(8).collect::<String>());
            }
            None if !as_json => {
                let line = progress_line(&c);
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            }
            None => {}
        }
        // Progress is polled (GetClone); the loop is bounded by WATCH_AT_MOST.
        tokio::time::sleep(WATCH_EVERY).await;
        let req = pb::GetCloneRequest { clone_id: c.clone_id.clone() };
        c = ops.clones.get_clone(req).await?.into_inner().clone.unwrap_or_default();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(c)
}

fn progress_line(c: &pb::CloneInfo) -> String {
    let retry = if c.error.is_empty() { String::new() } else { format!(" (retrying: {})", c.error) };
    format!(
        "clone {} {}: {}/{} records, {:.0} records/s{retry}",
        c.clone_id, c.state, c.records_copied, c.records_total, c.records_per_second
    )
}

fn print_clones(list: &[pb::CloneInfo]) {
    {
        let rows: Vec<_> = list
            .iter()
            .map(|c| {
                vec![
                    c.clone_id.clone(),
                    c.source_sys_id.clone(),
                    c.state.clone(),
                    format!("{}/{}", c.records_copied, c.records_total),
                    format!("{:.0}", c.records_per_second),
                    print::time(&c.started_at),
                    c.error.clone(),
                ]
            })
            .collect();
        print::table(&["CLONE_ID", "SOURCE", "STATE", "RECORDS", "PER_SEC", "STARTED", "ERROR"], &rows);
    }
}

async fn target(ops: &mut Operator, cmd: CloneTargetCommand, as_json: bool) -> anyhow::Result<()> {
    let targets = match cmd {
        CloneTargetCommand::Add { sys_id, host } => {
            let r = ops.clones.add_clone_target(pb::AddCloneTargetRequest { sys_id, host }).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            r.target.into_iter().collect()
        }
        CloneTargetCommand::List => {
            let r = ops.clones.list_clone_targets(pb::ListCloneTargetsRequest {}).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            r.targets
        }
        CloneTargetCommand::Remove { sys_id } => {
            let req = pb::RemoveCloneTargetRequest { sys_id: sys_id.clone() };
            let r = ops.clones.remove_clone_target(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            println!("clone target {sys_id} removed");
            return Ok(());
        }
    };
    let rows: Vec<_> = targets
        .iter()
        .map(|t: &pb::CloneTarget| {
            vec![
                t.sys_id.clone(),
                t.host.clone(),
                t.added_by.clone(),
                print::time(&t.added_at),
                t.authorised_by.clone(),
            ]
        })
        .collect();
    print::table(&["SYS_ID", "HOST", "ADDED_BY", "ADDED", "AUTHORISED_BY"], &rows);
    Ok(())
}
