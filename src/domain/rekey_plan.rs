//! The rekey job's decisions, their pure half: what a claimed job does
//! (finish, expire, attempt), which specs need an Active key first, how a
//! pass is cut into batches (cursor, durability), which records can be
//! moved, when an attempt completes, fails or passes again, and the audit
//! details of its ends. The service reads, re-encrypts, calls these and
//! writes under the job's lease.

use super::DomainError;
use super::ciphertext;
use super::ids::{KeyId, Name, UnixMillis};
use super::property::REKEYED;
use super::record::{RecordAddress, StoredRecord};
use super::rekey::{BATCH_RECORDS, KeyDebt, MAX_PASSES, RekeyRun};

/// Records one page may look at while looking for records to move.
pub const SCAN_LIMIT: usize = BATCH_RECORDS * 16;
/// Every this many batches the commit is durable (the others ride on it).
pub const DURABLE_EVERY: u32 = 16;

/// What a claimed rekey job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RekeyStep {
    /// No run, or a final one: the job ends.
    Finish,
    /// The request expired first: end the run as expired.
    Expire,
    /// Make an attempt (a failure of it ends the attempt as failed, unless
    /// the job's lease was lost).
    Attempt,
}

/// The step for the run as read (`None`: it is gone).
pub fn rekey_step(run: Option<&RekeyRun>, now: UnixMillis) -> RekeyStep {
    match run {
        None => RekeyStep::Finish,
        Some(r) if r.state.is_final() => RekeyStep::Finish,
        Some(r) if r.is_expired_at(now) => RekeyStep::Expire,
        Some(_) => RekeyStep::Attempt,
    }
}

/// The specs whose records are owed (some debt left), sorted, each once:
/// each needs an Active key of this instance before the first pass.
pub fn specs_needing_keys(debts: &[KeyDebt]) -> Vec<&Name> {
    let mut specs: Vec<&Name> = debts.iter().filter(|d| d.records > 0).map(|d| &d.key_id.spec).collect();
    specs.sort();
    specs.dedup();
    specs
}

/// Records still owed over all the run's keys.
pub fn total_debt(debts: &[KeyDebt]) -> u64 {
    debts.iter().map(|d| d.records).sum()
}

/// The cursor after a page (its last scanned address, else the one
/// before), and whether its batch (the `batches`-th of the pass) commits
/// durably: the last one, and every `DURABLE_EVERY`-th.
pub fn batch_after_page(
    cursor: Option<RecordAddress>,
    last_scanned: Option<RecordAddress>,
    batches: u32,
    at_end: bool,
) -> (Option<RecordAddress>, bool) {
    (last_scanned.or(cursor), at_end || batches.is_multiple_of(DURABLE_EVERY))
}

/// Where the record's ciphertext says it is encrypted, split into (key,
/// header, body), or why the record cannot be moved (it stays under its
/// imported key): the ciphertext is not kmf's, or names another key than
/// the record's row.
pub fn record_source(rec: &StoredRecord) -> Result<(KeyId, &[u8], &[u8]), String> {
    let where_ = || format!("record {}/{}/{}", rec.address.table, rec.address.field, rec.address.record_id);
    match ciphertext::parse(&rec.ciphertext) {
        Ok(parts) if parts.0 == rec.key_id => Ok(parts),
        Ok(_) => Err(format!("{} names another key than its row", where_())),
        Err(e) => Err(format!("{} is not a kmf ciphertext: {e}", where_())),
    }
}

/// Why a record that does not decrypt under `key` stays where it is.
pub fn undecryptable(rec: &StoredRecord, key: &KeyId, error: &str) -> String {
    format!(
        "record {}/{}/{} does not decrypt under {key}: {error}",
        rec.address.table, rec.address.field, rec.address.record_id
    )
}

/// What ends a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassEnd {
    /// Records could not be moved: the attempt fails with this.
    Fail(DomainError),
    /// Read the debt left; `after_debt` says what it means.
    CountDebt,
}

/// A pass ended with `unmovable` records (their reasons, in order).
pub fn pass_end(unmovable: &[String]) -> PassEnd {
    match unmovable.first() {
        Some(first) => PassEnd::Fail(DomainError::FailedPrecondition(format!(
            "{} record(s) could not be re-encrypted and stay under imported keys; the first: {first}",
            unmovable.len()
        ))),
        None => PassEnd::CountDebt,
    }
}

/// Whether the debt `left` after a clean pass completes the run (when the
/// completing write finds records arrived meanwhile, pass again).
pub fn completes(left: u64) -> bool {
    left == 0
}

/// The failure of an attempt whose passes ran out with `left` records owed.
pub fn passes_exhausted(left: u64) -> DomainError {
    DomainError::FailedPrecondition(format!(
        "{left} record(s) are still under imported keys after {MAX_PASSES} passes (written while the rekey ran)"
    ))
}

/// The reason a failed attempt records (`internal`: an internal error,
/// whose text goes to the log only).
pub fn failure_reason(error: &str, internal: bool) -> String {
    if internal { "an internal error (see the daemon's log)".to_owned() } else { error.to_owned() }
}

/// The details of `rekey.completed`.
pub fn completed_details(run: &RekeyRun) -> String {
    format!(
        "{} record(s) moved to this instance's keys in {} attempt(s); {REKEYED} = true",
        run.records_done, run.attempts
    )
}

/// The details of `rekey.failed`.
pub fn failed_details(reason: &str, next: UnixMillis) -> String {
    format!("{reason}; {REKEYED} = false; next attempt at {}", next.0)
}

/// The details of `rekey.expired` (the run as its end left it).
pub fn expired_details(run: &RekeyRun) -> String {
    let gone: Vec<String> = run.destroyed_keys.iter().map(|k| k.to_string()).collect();
    let kept: Vec<String> = run.kept_keys.iter().map(|d| format!("{} ({} records)", d.key_id, d.records)).collect();
    format!(
        "the request expired before the rekey completed; destroyed (no record needed them): [{}]; kept (records still need them): [{}]",
        gone.join(" "),
        kept.join(" ")
    )
}

#[cfg(test)]
#[path = "rekey_plan_tests.rs"]
mod tests;
