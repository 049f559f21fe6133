//! kmfctl: clone schedules, on the target (`kmfctl clone schedule
//! create|list|delete`). Each run is a clone of the source followed by the
//! exchange the source approves (a Recurring Clone configured there).

use clap::Subcommand;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum CloneScheduleCommand {
    /// Clones SOURCE_SYS_ID at SOURCE_HOST (host:port) by itself, every
    /// interval (--every 6h, one minute at least) or by a five-field cron
    /// expression in UTC (--cron "0 2 * * *"). A run due while a clone is
    /// running is skipped.
    Create {
        /// A name for the schedule (1 to 64 of A-Z a-z 0-9 _ . -).
        #[arg(long)]
        name: String,
        #[arg(long)]
        source_sys_id: String,
        #[arg(long)]
        source_host: String,
        /// An interval: 90m, 6h, 1day ...
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "cron", required_unless_present = "cron")]
        every: Option<std::time::Duration>,
        /// minute hour day-of-month month day-of-week, in UTC.
        #[arg(long)]
        cron: Option<String>,
    },
    List,
    /// Stops the schedule (a clone it started goes on).
    Delete {
        name: String,
    },
}

pub async fn schedule(ops: &mut Operator, cmd: CloneScheduleCommand, as_json: bool) -> anyhow::Result<()> {
    let schedules = match cmd {
        CloneScheduleCommand::Create { name, source_sys_id, source_host, every, cron } => {
            let every = every.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos() as i32,
            });
            let req = pb::CreateCloneScheduleRequest {
                name,
                source_sys_id,
                source_host,
                every,
                cron: cron.unwrap_or_default(),
            };
            let r = ops.clones.create_clone_schedule(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            r.schedule.into_iter().collect()
        }
        CloneScheduleCommand::List => {
            let r = ops.clones.list_clone_schedules(pb::ListCloneSchedulesRequest {}).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            r.schedules
        }
        CloneScheduleCommand::Delete { name } => {
            let req = pb::DeleteCloneScheduleRequest { name: name.clone() };
            let r = ops.clones.delete_clone_schedule(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            println!("clone schedule {name} deleted");
            return Ok(());
        }
    };
    show(&schedules);
    Ok(())
}

fn cadence(s: &pb::CloneSchedule) -> String {
    match &s.every {
        Some(d) => format!("every {}", humantime::format_duration(std::time::Duration::from_secs(d.seconds as u64))),
        None => format!("cron {} (UTC)", s.cron),
    }
}

fn show(list: &[pb::CloneSchedule]) {
    {
        let rows: Vec<_> = list
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.source_sys_id.clone(),
                    cadence(s),
                    print::time(&s.next_run_at),
                    format!("{}/{}", s.runs, s.skipped),
                    s.last_outcome.clone(),
                ]
            })
            .collect();
        print::table(&["NAME", "SOURCE", "CADENCE", "NEXT_RUN", "RUNS/SKIPPED", "LAST"], &rows);
    }
}
