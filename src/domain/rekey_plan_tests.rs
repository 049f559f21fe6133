use super::*;
use crate::domain::fixtures::{name, sys};
use crate::domain::ids::RequestId;
use crate::domain::rekey::RekeyState;

fn key(spec: &str, v: u32) -> KeyId {
    KeyId { origin: sys(1), spec: name(spec), version: v }
}

fn debt(spec: &str, v: u32, records: u64) -> KeyDebt {
    KeyDebt { key_id: key(spec, v), records }
}

fn run(state: RekeyState) -> RekeyRun {
    let mut r =
        RekeyRun::new(RequestId::from_random([2; 16]), sys(1), vec![name("pay")], UnixMillis(1000), UnixMillis(0));
    r.state = state;
    r
}

fn record(ciphertext: Vec<u8>, key_id: KeyId) -> StoredRecord {
    StoredRecord {
        address: RecordAddress::parse("t", "f", "r1").unwrap(),
        ciphertext,
        key_id,
        updated_at: UnixMillis(0),
    }
}

#[test]
fn a_claimed_rekey_finishes_expires_or_attempts() {
    assert_eq!(rekey_step(None, UnixMillis(5)), RekeyStep::Finish);
    for s in [RekeyState::Completed, RekeyState::Expired] {
        assert_eq!(rekey_step(Some(&run(s)), UnixMillis(5000)), RekeyStep::Finish, "{s:?} even when overdue");
    }
    for s in [RekeyState::Pending, RekeyState::Running, RekeyState::Failed] {
        assert_eq!(rekey_step(Some(&run(s)), UnixMillis(999)), RekeyStep::Attempt, "{s:?}");
        assert_eq!(rekey_step(Some(&run(s)), UnixMillis(1000)), RekeyStep::Expire, "{s:?}");
    }
}

#[test]
fn only_owed_specs_need_a_key_each_once_in_order() {
    let debts = [debt("pay", 1, 3), debt("hr", 1, 1), debt("pay", 2, 5), debt("ops", 1, 0)];
    assert_eq!(specs_needing_keys(&debts), vec![&name("hr"), &name("pay")]);
    assert_eq!(total_debt(&debts), 9);
    assert!(specs_needing_keys(&[]).is_empty());
    assert_eq!(total_debt(&[]), 0);
}

#[test]
fn batches_carry_the_cursor_and_commit_durably_at_the_end_and_every_sixteenth() {
    let a = RecordAddress::parse("t", "f", "a").unwrap();
    let b = RecordAddress::parse("t", "f", "b").unwrap();
    assert_eq!(batch_after_page(Some(a.clone()), Some(b.clone()), 1, false), (Some(b.clone()), false));
    assert_eq!(batch_after_page(Some(a.clone()), None, 2, false), (Some(a.clone()), false), "nothing scanned");
    assert_eq!(batch_after_page(None, None, 3, true), (None, true), "the last batch");
    assert!(batch_after_page(None, Some(b), DURABLE_EVERY, false).1);
    assert!(!batch_after_page(None, None, DURABLE_EVERY + 1, false).1);
    assert_eq!(SCAN_LIMIT, 32_000);
}

#[test]
fn a_record_moves_only_from_a_kmf_ciphertext_of_its_rows_key() {
    let k = key("pay", 1);
    let mut ct = ciphertext::encode_header(&k);
    ct.extend_from_slice(b"body");
    let rec = record(ct.clone(), k.clone());
    let (id, header, body) = record_source(&rec).unwrap();
    assert_eq!((id, header.len(), body), (k.clone(), ct.len() - 4, &b"body"[..]));
    let other = record(ct, key("pay", 2));
    assert_eq!(record_source(&other), Err("record t/f/r1 names another key than its row".into()));
    let junk = record(b"nope".to_vec(), k.clone());
    let why = record_source(&junk).unwrap_err();
    assert!(why.starts_with("record t/f/r1 is not a kmf ciphertext: malformed ciphertext"), "{why}");
    assert_eq!(
        undecryptable(&rec, &k, "tag mismatch"),
        format!("record t/f/r1 does not decrypt under {k}: tag mismatch")
    );
}

#[test]
fn a_pass_fails_on_unmovable_records_else_counts_the_debt() {
    let end = pass_end(&["first why".into(), "second".into()]);
    let says = "2 record(s) could not be re-encrypted and stay under imported keys; the first: first why";
    assert_eq!(end, PassEnd::Fail(DomainError::FailedPrecondition(says.into())));
    assert_eq!(pass_end(&[]), PassEnd::CountDebt);
    assert!(completes(0));
    assert!(!completes(1));
    assert_eq!(
        passes_exhausted(4).to_string(),
        "4 record(s) are still under imported keys after 3 passes (written while the rekey ran)"
    );
}

#[test]
fn the_ends_say_what_happened() {
    assert_eq!(failure_reason("signer down", false), "signer down");
    assert_eq!(failure_reason("internal error: x", true), "an internal error (see the daemon's log)");
    let mut r = run(RekeyState::Completed);
    r.records_done = 12;
    r.attempts = 2;
    assert_eq!(
        completed_details(&r),
        format!("12 record(s) moved to this instance's keys in 2 attempt(s); {REKEYED} = true")
    );
    assert_eq!(
        failed_details("signer down", UnixMillis(77)),
        format!("signer down; {REKEYED} = false; next attempt at 77")
    );
    r.destroyed_keys = vec![key("pay", 1), key("pay", 2)];
    r.kept_keys = vec![debt("pay", 3, 4)];
    let d = expired_details(&r);
    assert!(d.contains(&format!("destroyed (no record needed them): [{} {}]", key("pay", 1), key("pay", 2))), "{d}");
    assert!(d.ends_with(&format!("kept (records still need them): [{} (4 records)]", key("pay", 3))), "{d}");
}
