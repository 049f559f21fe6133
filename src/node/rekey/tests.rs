//! The rekey after an import, in memory: an exchange with rekey imports the
//! source's keys on the target, the source's encrypted records are planted
//! on the target's store as a clone would leave them, and the test runs the
//! target's rekey job after moving the manual clock.

use std::time::Duration;

use crate::domain::ciphertext;
use crate::domain::exchange::{Frequency, PeerRef, RequestStatus};
use crate::domain::ids::{KeyId, RequestId, UnixMillis};
use crate::domain::property::REKEYED;
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::domain::rekey::RekeyState;
use crate::node::exchange::{Decision, PlannedRequest};
use crate::node::testing::{Instance, admin, name, test_ca, test_settings};
use crate::store::RecordStore;

const HOUR: i64 = 3_600_000;

/// A source and a target (whose failed rekeys retry after an hour), each reaching the other.
fn wired() -> (Instance, Instance) {
    let ca = test_ca();
    let source = Instance::new(&ca, "source");
    let settings = test_settings().with_rekey_retry(Duration::from_secs(3600));
    let target = Instance::with_settings(&ca, "target", settings);
    source.reaches(&target);
    target.reaches(&source);
    (source, target)
}

/// The source's `n` records of payroll/salary (under its own key), copied
/// to the target's store as a clone leaves them.
async fn records_on_both(source: &Instance, target: &Instance, n: usize) -> Vec<StoredRecord> {
    for i in 0..n {
        let address = RecordAddress::parse("hr", "pay", &format!("r{i}")).expect("address");
        let text = format!("secret {i}").into_bytes();
        source.services.crypto.put_record(&admin(), address, name("salary"), text).await.expect("put");
    }
    let recs = source.services.crypto.list_records(None, None, None, 1000).await.expect("list");
    RecordStore::new(target.services.store()).put_records(recs.clone()).await.expect("plant the records on the target");
    recs
}

/// A record naming `key` that does not decrypt: damaged data a rekey cannot move.
async fn plant_damaged(target: &Instance, key: &KeyId) {
    let mut bytes = ciphertext::encode_header(key);
    bytes.extend_from_slice(&[7u8; 60]);
    let address = RecordAddress::parse("junk", "f", "damaged").expect("address");
    let rec = StoredRecord { address, ciphertext: bytes, key_id: key.clone(), updated_at: UnixMillis(1) };
    RecordStore::new(target.services.store()).put_record(rec).await.expect("plant the damaged record");
}

/// An exchange with rekey of payroll/salary (lasting `lifetime` ms), approved
/// by a person on the source and delivered: the keys are imported on the target.
async fn import_with_rekey(source: &Instance, target: &Instance, lifetime: i64) -> RequestId {
    let planned = PlannedRequest {
        id: RequestId::from_random([9; 16]),
        frequency: Frequency::Adhoc,
        source: PeerRef { sys_id: source.sys_id.clone(), host: source.host.clone() },
        specs: vec![name("salary")],
        lifetime,
        actor: "test".into(),
        rekey: true,
        clone_grant: None,
    };
    let exchange = &target.services.exchange;
    let (req, public_key) = exchange.insert_target_request(planned).await.expect("target request");
    exchange.open_on_source(req.clone(), public_key).await.expect("opened on the source");
    source.services.exchange.update_request(&admin(), req.id.clone(), Decision::Approve).await.expect("approve");
    assert_eq!(source.run_jobs().await, 1, "the delivery ran");
    let on_target = target.services.exchange.request(req.id.clone()).await.expect("request");
    assert_eq!(on_target.status, RequestStatus::Completed);
    req.id
}

async fn setup(records: usize, lifetime: i64) -> (Instance, Instance, RequestId, Vec<StoredRecord>) {
    let (source, target) = wired();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let recs = records_on_both(&source, &target, records).await;
    let id = import_with_rekey(&source, &target, lifetime).await;
    (source, target, id, recs)
}

async fn rekeyed(target: &Instance) -> Option<String> {
    target.services.catalog.property(REKEYED.into()).await.ok().map(|p| p.value)
}

#[tokio::test]
async fn the_rekey_moves_every_record_to_the_targets_own_key() {
    let (source, target, id, recs) = setup(3, 7 * 24 * HOUR).await;
    let run = target.services.rekey.rekey_run(id.clone()).await.expect("a rekey run with the import");
    assert_eq!(run.state, RekeyState::Pending);
    assert_eq!(target.services.rekey.rekey_debt().await.expect("debt").iter().map(|d| d.records).sum::<u64>(), 3);

    assert_eq!(target.run_jobs().await, 1, "the rekey ran");
    let done = target.services.rekey.rekey_run(id).await.expect("run");
    assert_eq!(done.state, RekeyState::Completed, "{:?}", done.last_error);
    assert_eq!(done.records_done, 3);
    assert!(target.services.rekey.rekey_debt().await.expect("debt").is_empty(), "nothing is owed");
    assert_eq!(rekeyed(&target).await.as_deref(), Some("true"));
    for rec in &recs {
        let (now, plaintext) =
            target.services.crypto.get_record(&admin(), rec.address.clone()).await.expect("decrypts after");
        assert_eq!(now.key_id.origin, target.sys_id, "under the target's own key");
        assert_ne!(now.ciphertext, rec.ciphertext);
        assert!(plaintext.starts_with(b"secret "));
    }
    let own = target.services.catalog.keys(name("salary")).await.expect("keys");
    assert_eq!(own.iter().filter(|k| k.id.origin == target.sys_id).count(), 1, "one key generated for the rekey");
    assert_eq!(target.run_jobs().await, 0, "nothing is left to run");
    let _ = source;
}

#[tokio::test]
async fn a_record_that_does_not_decrypt_fails_the_attempt_with_the_reason() {
    let (_source, target, id, recs) = setup(2, 7 * 24 * HOUR).await;
    plant_damaged(&target, &recs[0].key_id).await;
    target.run_jobs().await;
    let failed = target.services.rekey.rekey_run(id).await.expect("run");
    assert_eq!(failed.state, RekeyState::Failed);
    let error = failed.last_error.unwrap_or_default();
    assert!(error.contains("junk/f/damaged") && error.contains("could not be re-encrypted"), "{error}");
    assert_eq!(failed.next_attempt_at, Some(target.now().plus_millis(HOUR)), "retried after rekey_retry");
    assert_eq!(rekeyed(&target).await.as_deref(), Some("false"));
    // The good records moved anyway; only the damaged one is still owed.
    let debt = target.services.rekey.rekey_debt().await.expect("debt");
    assert_eq!(debt.iter().map(|d| d.records).sum::<u64>(), 1, "{debt:?}");
}

#[tokio::test]
async fn a_failed_rekey_runs_again_after_the_retry_interval_and_completes() {
    let (_source, target, id, recs) = setup(2, 7 * 24 * HOUR).await;
    plant_damaged(&target, &recs[0].key_id).await;
    target.run_jobs().await;
    assert_eq!(target.services.rekey.rekey_run(id.clone()).await.expect("run").state, RekeyState::Failed);
    assert_eq!(target.advance_and_run(HOUR - 1_000).await, 0, "not before the retry interval");

    let damaged = RecordAddress::parse("junk", "f", "damaged").expect("address");
    let removed = RecordStore::new(target.services.store()).delete_record(damaged).await;
    removed.expect("the operator removes the damaged record");
    assert_eq!(target.advance_and_run(1_000).await, 1, "the retry ran");
    let done = target.services.rekey.rekey_run(id).await.expect("run");
    assert_eq!((done.state, done.attempts), (RekeyState::Completed, 2), "{:?}", done.last_error);
    assert_eq!(rekeyed(&target).await.as_deref(), Some("true"));
}

#[tokio::test]
async fn a_rekey_still_owed_at_the_requests_expiry_ends_expired_and_keeps_the_needed_key() {
    let (_source, target, id, recs) = setup(1, 2 * HOUR).await;
    plant_damaged(&target, &recs[0].key_id).await;
    target.run_jobs().await;
    let failed = target.services.rekey.rekey_run(id.clone()).await.expect("run");
    assert_eq!(failed.state, RekeyState::Failed);
    target.advance_and_run(HOUR).await;
    assert_eq!(target.services.rekey.rekey_run(id.clone()).await.expect("run").state, RekeyState::Failed);

    target.advance_and_run(HOUR + 1_000).await;
    let expired = target.services.rekey.rekey_run(id).await.expect("run");
    assert_eq!(expired.state, RekeyState::Expired);
    let kept: Vec<&KeyId> = expired.kept_keys.iter().map(|d| &d.key_id).collect();
    assert_eq!(kept, [&recs[0].key_id], "the damaged record still needs the imported key");
    assert!(expired.destroyed_keys.is_empty());
    assert_eq!(target.run_jobs().await, 0, "an expired rekey runs no more");
}
