//! `kmfctl exchange approve --wait`: UpdateRequest may answer while the
//! delivery still runs in the background (REQUEST_APPROVED); `--wait` polls
//! GetRequest every 200 ms, at most `--timeout`, until the request ends, with
//! a spinner on stderr when it is a terminal. kmfctl then prints the request
//! and exits non-zero unless it ended REQUEST_COMPLETED.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::time::Instant;

use super::kmfctl::Operator;
use super::print::status_label;
use crate::rpc::pb;

/// How often `--wait` asks for the request.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// Pending and Approved requests still move; every other status is final.
fn in_progress(r: &pb::ExchangeRequest) -> bool {
    matches!(
        pb::RequestStatus::try_from(r.status),
        Ok(pb::RequestStatus::RequestPending | pb::RequestStatus::RequestApproved)
    )
}

/// Polls GetRequest until `r` is final or `timeout` has passed (every call
/// is bounded by it too); returns the last request seen.
pub async fn wait_until_final(
    ops: &mut Operator,
    mut r: pb::ExchangeRequest,
    timeout: Duration,
) -> anyhow::Result<pb::ExchangeRequest> {
    if !in_progress(&r) {
        return Ok(r);
    }
    let deadline = Instant::now() + timeout;
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = ProgressBar::new_spinner();
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let show = |r: &pb::ExchangeRequest| {
        if let Some(s) = &spinner {
            s.set_message(format!("request {} is {}; waiting for the delivery", r.request_id, status_label(r.status)));
        }
    };
    show(&r);
    while in_progress(&r) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(POLL_EVERY.min(deadline - now)).await;
        let req = pb::GetRequestRequest { request_id: r.request_id.clone() };
        match tokio::time::timeout_at(deadline, ops.exchange.get_request(req)).await {
            Ok(answer) => r = answer?.into_inner().request.unwrap_or_default(),
            Err(_) => break,
        }
        show(&r);
    }
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok(r)
}

/// Ok when `r` ended REQUEST_COMPLETED; else the error kmfctl exits with
/// (after the request was printed).
pub fn outcome(r: &pb::ExchangeRequest, timeout: Duration) -> anyhow::Result<()> {
    let (id, status) = (&r.request_id, status_label(r.status));
    if r.status == pb::RequestStatus::RequestCompleted as i32 {
        Ok(())
    } else if in_progress(r) {
        anyhow::bail!(
            "request {id} is still {status} after {}s; delivery continues in the background — check with `kmfctl exchange get {id}`",
            timeout.as_secs_f64()
        )
    } else {
        match r.history.last().map(|t| t.note.as_str()).filter(|n| !n.is_empty()) {
            Some(note) => anyhow::bail!("request {id} ended {status}: {note}"),
            None => anyhow::bail!("request {id} ended {status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(status: pb::RequestStatus, note: &str) -> pb::ExchangeRequest {
        let history = vec![pb::Transition { status: status as i32, note: note.into(), ..Default::default() }];
        pb::ExchangeRequest { request_id: "ab".into(), status: status as i32, history, ..Default::default() }
    }

    #[test]
    fn only_completed_succeeds_and_messages_name_the_status() {
        let minute = Duration::from_secs(60);
        assert!(outcome(&request(pb::RequestStatus::RequestCompleted, ""), minute).is_ok());
        let still = outcome(&request(pb::RequestStatus::RequestApproved, ""), minute).unwrap_err().to_string();
        assert_eq!(
            still,
            "request ab is still REQUEST_APPROVED after 60s; delivery continues in the background — check with `kmfctl exchange get ab`"
        );
        let short = outcome(&request(pb::RequestStatus::RequestApproved, ""), Duration::from_millis(1500));
        assert!(short.unwrap_err().to_string().contains("after 1.5s;"));
        let failed = outcome(&request(pb::RequestStatus::ErrorOnRemoteInstance, "refused"), minute);
        assert_eq!(failed.unwrap_err().to_string(), "request ab ended ERROR_ON_REMOTE_INSTANCE: refused");
        let rejected = outcome(&request(pb::RequestStatus::RequestRejected, ""), minute);
        assert_eq!(rejected.unwrap_err().to_string(), "request ab ended REQUEST_REJECTED");
    }
}
