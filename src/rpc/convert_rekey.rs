//! Rekey runs and key debt to their protobuf form.

use prost_types::Duration;

use super::convert::{opt_ts, ts};
use super::pb;
use crate::domain::ids::UnixMillis;
use crate::domain::rekey::{KeyDebt, RekeyRun, RekeyState};

pub fn key_debt(d: &KeyDebt) -> pb::KeyDebt {
    pb::KeyDebt { key_id: d.key_id.to_string(), records: d.records }
}

fn state(s: RekeyState) -> pb::RekeyState {
    match s {
        RekeyState::Pending => pb::RekeyState::RekeyPending,
        RekeyState::Running => pb::RekeyState::RekeyRunning,
        RekeyState::Failed => pb::RekeyState::RekeyFailed,
        RekeyState::Completed => pb::RekeyState::RekeyCompleted,
        RekeyState::Expired => pb::RekeyState::RekeyExpired,
    }
}

/// A run as of `now`, with the current debt of its keys.
pub fn rekey(r: &RekeyRun, debt: &[KeyDebt], now: UnixMillis) -> pb::Rekey {
    pb::Rekey {
        request_id: r.request_id.to_string(),
        source_sys_id: r.source.to_string(),
        specs: r.specs.iter().map(|s| s.to_string()).collect(),
        state: state(r.state) as i32,
        attempts: r.attempts,
        records_done: r.records_done,
        records_total: r.records_total,
        records_per_second: r.rate(now),
        eta: r.eta_millis(now).map(|ms| Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 }),
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        finished_at: opt_ts(r.finished_at),
        next_attempt_at: opt_ts(r.next_attempt_at),
        last_error: r.last_error.clone().unwrap_or_default(),
        expires_at: Some(ts(r.expires_at)),
        debt: debt.iter().map(key_debt).collect(),
        kept_keys: r.kept_keys.iter().map(key_debt).collect(),
        destroyed_keys: r.destroyed_keys.iter().map(|k| k.to_string()).collect(),
    }
}
