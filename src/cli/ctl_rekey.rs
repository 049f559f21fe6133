//! kmfctl: rekey (target side). The rekey that follows an import configured
//! with rekey, its progress (`--watch`: a progress bar on a terminal, plain
//! lines otherwise) and the rekey debt: how many records still depend on
//! each imported key.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum RekeyCommand {
    /// One rekey (by the request it follows; the newest when none is named).
    /// Exits 1 when it is failed (it will be retried) or expired. `--json`
    /// prints it as a GetRekey response (with `--watch`, the last one seen).
    Status {
        request_id: Option<String>,
        /// Follow it until it completes, fails or expires.
        #[arg(long)]
        watch: bool,
    },
    /// Every rekey, newest first.
    List,
    /// Imported keys that records still depend on, and how many records each.
    Debt,
}

/// How often `--watch` asks for progress.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// `--watch` gives up after this long (the rekey goes on).
const WATCH_AT_MOST: Duration = Duration::from_secs(24 * 3600);

fn state(r: &pb::Rekey) -> &'static str {
    match pb::RekeyState::try_from(r.state) {
        Ok(pb::RekeyState::RekeyPending) => "pending",
        Ok(pb::RekeyState::RekeyRunning) => "running",
        Ok(pb::RekeyState::RekeyFailed) => "failed",
        Ok(pb::RekeyState::RekeyCompleted) => "completed",
        Ok(pb::RekeyState::RekeyExpired) => "expired",
        _ => "unknown",
    }
}

fn in_progress(r: &pb::Rekey) -> bool {
    matches!(state(r), "pending" | "running")
}

pub async fn rekey(ops: &mut Operator, cmd: RekeyCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        RekeyCommand::List => {
            let r = ops.rekeys.list_rekeys(pb::ListRekeysRequest {}).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print_rekeys(&r.rekeys);
            Ok(())
        }
        RekeyCommand::Debt => {
            let d = ops.rekeys.list_rekey_debt(pb::ListRekeyDebtRequest {}).await?.into_inner();
            if as_json {
                print::json(&d)?;
            } else {
                let rows: Vec<_> = d.debts.iter().map(|k| vec![k.key_id.clone(), k.records.to_string()]).collect();
                print::table(&["IMPORTED_KEY", "RECORDS"], &rows);
                println!("{} record(s) depend on imported keys", d.total_records);
            }
            Ok(())
        }
        RekeyCommand::Status { request_id, watch } => {
            let mut r = match request_id {
                Some(request_id) => ops
                    .rekeys
                    .get_rekey(pb::GetRekeyRequest { request_id })
                    .await?
                    .into_inner()
                    .rekey
                    .unwrap_or_default(),
                None => {
                    let list = ops.rekeys.list_rekeys(pb::ListRekeysRequest {}).await?.into_inner().rekeys;
                    list.into_iter().next().ok_or_else(|| anyhow::anyhow!("this instance has no rekey"))?
                }
            };
            if watch {
                r = follow(ops, r, as_json).await?;
            }
            if as_json {
                print::json(&pb::GetRekeyResponse { rekey: Some(r.clone()) })?;
            } else {
                print_rekeys(std::slice::from_ref(&r));
            }
            match state(&r) {
                "failed" => {
                    anyhow::bail!("rekey of {} failed (it will be tried again): {}", r.request_id, r.last_error)
                }
                "expired" => anyhow::bail!("rekey of {} expired before it completed", r.request_id),
                _ => Ok(()),
            }
        }
    }
}

/// Polls the rekey until it is no longer pending or running.
async fn follow(ops: &mut Operator, mut r: pb::Rekey, as_json: bool) -> anyhow::Result<pb::Rekey> {
    let bar = (std::io::stderr().is_terminal() && !as_json).then(|| {
        let b = ProgressBar::new(r.records_total.max(1));
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} rekey {msg} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})")
        {
            b.set_style(style);
        }
        b.enable_steady_tick(Duration::from_millis(100));
        b
    });
    let deadline = tokio::time::Instant::now() + WATCH_AT_MOST;
    let mut last_line = String::new();
    while in_progress(&r) && tokio::time::Instant::now() < deadline {
        match &bar {
            Some(b) => {
                b.set_length(r.records_total.max(1));
                b.set_position(r.records_done);
                b.set_message(r.request_id.chars().take(8).collect::<String>());
            }
            None if !as_json => {
                let line = progress_line(&r);
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            }
            None => {}
        }
        // Progress is polled (GetRekey); the loop is bounded by WATCH_AT_MOST.
        tokio::time::sleep(WATCH_EVERY).await;
        let req = pb::GetRekeyRequest { request_id: r.request_id.clone() };
        r = ops.rekeys.get_rekey(req).await?.into_inner().rekey.unwrap_or_default();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(r)
}

fn eta(r: &pb::Rekey) -> String {
    r.eta.as_ref().map(|d| format!("{}s", d.seconds)).unwrap_or_default()
}

fn progress_line(r: &pb::Rekey) -> String {
    format!(
        "rekey {} {}: {}/{} records, {:.0} records/s, eta {}",
        r.request_id,
        state(r),
        r.records_done,
        r.records_total,
        r.records_per_second,
        if eta(r).is_empty() { "-".to_owned() } else { eta(r) }
    )
}

fn debt_list(d: &[pb::KeyDebt]) -> String {
    d.iter().map(|k| format!("{}={}", k.key_id, k.records)).collect::<Vec<_>>().join(" ")
}

fn print_rekeys(list: &[pb::Rekey]) {
    {
        let rows: Vec<_> = list
            .iter()
            .map(|r| {
                vec![
                    r.request_id.clone(),
                    state(r).to_owned(),
                    format!("{}/{}", r.records_done, r.records_total),
                    format!("{:.0}", r.records_per_second),
                    r.attempts.to_string(),
                    print::time(&r.next_attempt_at),
                    debt_list(&r.debt),
                    r.last_error.clone(),
                ]
            })
            .collect();
        print::table(
            &["REQUEST_ID", "STATE", "RECORDS", "PER_SEC", "ATTEMPTS", "NEXT_ATTEMPT", "DEBT", "ERROR"],
            &rows,
        );
    }
}
