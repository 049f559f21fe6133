//! Rekey after import: a One Time Clone configured with rekey on the source;
//! after the clone and its exchange, the target moves every cloned record
//! to its own key, says so in `protected.script.values.kmf.rekeyed`, retries
//! a failed rekey after `rekey.retry_interval`, and at the request's expiry
//! destroys only the imported keys no record needs.

use std::sync::Arc;
use std::time::Duration;

use kmf::app::StartOptions;
use kmf::clock::ManualClock;
use kmf::domain::ids::{KeyId, UnixMillis};
use kmf::domain::record::{RecordAddress, StoredRecord};
use kmf::node::jobs::JobSettings;
use kmf::rpc::pb;
use kmf::rpc::pb::clones_client::ClonesClient;
use kmf::rpc::pb::rekeys_client::RekeysClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::clone::{admin_channel, finished, put_records};
use crate::clone_exchange::{config, ended_requests, opens_every_record, set_auto};
use crate::support::{Ops, Pki, TestNode};

const REKEYED: &str = "protected.script.values.kmf.rekeyed";
const HOUR_MS: i64 = 3_600_000;

/// A target on a manual clock; failed rekeys are retried after an hour.
async fn target_on(pki: &Pki, clock: &Arc<ManualClock>) -> TestNode {
    let jobs = JobSettings::for_interval(Duration::from_millis(100)).with_rekey_retry(Duration::from_secs(3600));
    let options = StartOptions { clock: clock.clone(), jobs: Some(jobs), ..Default::default() };
    TestNode::start_opts(pki, None, None, options).await
}

/// A record on `node` (table `junk`) that names `key` but does not decrypt:
/// damaged data a rekey cannot move.
async fn put_damaged_record(node: &TestNode, key: &str) {
    let key_id = KeyId::parse(key).expect("key id");
    let mut ciphertext = kmf::domain::ciphertext::encode_header(&key_id);
    ciphertext.extend_from_slice(&[7u8; 60]);
    let rec = StoredRecord {
        address: RecordAddress::parse("junk", "f", "damaged").expect("address"),
        ciphertext,
        key_id,
        updated_at: UnixMillis(1),
    };
    let store = kmf::store::RecordStore::new(node.running().services.store());
    store.put_record(rec).await.expect("put the damaged record");
}

/// A source with `records` records of spec `pay` and a One Time Clone with
/// rekey for `target`.
async fn source_for(pki: &Pki, target: &TestNode, records: usize) -> (TestNode, Ops) {
    let source = TestNode::start(pki).await;
    let mut src = source.admin(pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, records).await;
    set_auto(&mut src, "false").await;
    let made = src.exchange.create_clone_exchange(config(pb::Frequency::OneTimeClone, target, &["pay"], true));
    made.await.expect("configure a One Time Clone with rekey");
    (source, src)
}

async fn clone_from(target: &TestNode, source: &TestNode, pki: &Pki) {
    let mut clones = ClonesClient::new(admin_channel(target, pki).await);
    let start = pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: source.host.to_string() };
    let run = clones.start_clone(start).await.expect("start").into_inner().clone.expect("clone");
    assert_eq!(finished(&mut clones, &run.clone_id).await.state, "completed");
}

async fn rekeys(target: &TestNode, pki: &Pki) -> RekeysClient<Channel> {
    RekeysClient::new(admin_channel(target, pki).await)
}

/// Polls the rekey of `id` until `state` (bounded).
async fn rekey_in(rekeys: &mut RekeysClient<Channel>, id: &str, state: pb::RekeyState) -> pb::Rekey {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = rekeys.get_rekey(pb::GetRekeyRequest { request_id: id.into() }).await;
        if let Ok(r) = got {
            let r = r.into_inner().rekey.expect("rekey");
            if r.state == state as i32 {
                return r;
            }
            assert!(tokio::time::Instant::now() < deadline, "waiting for {state:?}: {r:?}");
        } else {
            assert!(tokio::time::Instant::now() < deadline, "waiting for the rekey of {id}: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    }
}

async fn rekeyed(ops: &mut Ops) -> Result<String, tonic::Status> {
    let got = ops.properties.get_property(pb::GetPropertyRequest { name: REKEYED.into() }).await?;
    Ok(got.into_inner().property.expect("property").value)
}

async fn debt(rekeys: &mut RekeysClient<Channel>) -> pb::ListRekeyDebtResponse {
    rekeys.list_rekey_debt(pb::ListRekeyDebtRequest {}).await.expect("debt").into_inner()
}

async fn record_keys(ops: &mut Ops) -> Vec<String> {
    let page = pb::ListRecordsRequest { table: "hr".into(), page_size: 1_000, ..Default::default() };
    let records = ops.crypto.list_records(page).await.expect("list").into_inner().records;
    records.into_iter().map(|r| r.key_id).collect()
}

/// Scenario 17 and 18: the rekey runs by itself after the import, every
/// record ends up under the target's own (new) key and still opens to its
/// plaintext, the debt is zero and the property, absent before, is true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_import_every_cloned_record_moves_to_the_targets_own_key() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let target = target_on(&pki, &clock).await;
    let (source, _src) = source_for(&pki, &target, 300).await;
    let mut tgt = target.admin(&pki).await;
    let absent = rekeyed(&mut tgt).await.expect_err("absent before the first attempt");
    assert_eq!(absent.code(), Code::NotFound, "{absent}");

    clone_from(&target, &source, &pki).await;
    let [request] = <[_; 1]>::try_from(ended_requests(&mut tgt, 1).await).expect("one request");
    assert_eq!(request.status, pb::RequestStatus::RequestCompleted as i32, "{request:?}");
    assert!(request.rekey_after_import, "the plan's rekey reached the target's request: {request:?}");
    let mut rk = rekeys(&target, &pki).await;
    let done = rekey_in(&mut rk, &request.request_id, pb::RekeyState::RekeyCompleted).await;
    assert_eq!((done.records_done, done.records_total, done.attempts), (300, 300, 1), "{done:?}");
    assert!(done.debt.iter().all(|d| d.records == 0) && !done.debt.is_empty(), "{done:?}");
    assert_eq!(rekeyed(&mut tgt).await.expect("present after the attempt"), "true");
    assert!(debt(&mut rk).await.debts.is_empty(), "no record depends on an imported key");

    // The spec had no key of the target's own: one was generated, and every record is under it.
    let keys = tgt.keys_of("pay").await;
    let own: Vec<&pb::Key> = keys.iter().filter(|k| k.origin_sys_id == target.sys_id).collect();
    let [own] = <[_; 1]>::try_from(own).expect("one key of the target's own");
    assert_eq!(own.state, pb::KeyState::Active as i32, "{own:?}");
    let imported: Vec<&pb::Key> = keys.iter().filter(|k| k.origin_sys_id == source.sys_id).collect();
    assert!(imported.iter().all(|k| k.state == pb::KeyState::Expired as i32) && imported.len() == 1, "{keys:?}");
    let under = record_keys(&mut tgt).await;
    assert_eq!(under.len(), 300);
    assert!(under.iter().all(|k| *k == own.key_id), "every record under {}: {under:?}", own.key_id);
    opens_every_record(&mut tgt, 300).await;
    assert_eq!(tgt.audit_entries("rekey.completed").await.len(), 1);
}

/// Scenario 27: the rekey fails (a damaged record does not decrypt): the
/// records it can move are moved, the damaged one stays under its imported
/// key (still owed), the property is false and the reason recorded, and
/// nothing is retried before `rekey.retry_interval`. Once the record is
/// dealt with and the interval has passed, the retry completes: true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rekey_is_false_with_its_reason_and_succeeds_after_the_retry_interval() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let target = target_on(&pki, &clock).await;
    let (source, _src) = source_for(&pki, &target, 40).await;
    put_damaged_record(&source, &format!("{}:pay:v1", source.sys_id)).await;
    let mut tgt = target.admin(&pki).await;
    clone_from(&target, &source, &pki).await;
    let [request] = <[_; 1]>::try_from(ended_requests(&mut tgt, 1).await).expect("one request");
    let mut rk = rekeys(&target, &pki).await;
    let failed = rekey_in(&mut rk, &request.request_id, pb::RekeyState::RekeyFailed).await;
    assert!(failed.last_error.contains("junk/f/damaged does not decrypt"), "the reason is recorded: {failed:?}");
    assert_eq!((failed.attempts, failed.records_done), (1, 40), "the other records moved: {failed:?}");
    let next = failed.next_attempt_at.expect("next attempt");
    let failed_at = failed.updated_at.expect("updated");
    assert_eq!(next.seconds - failed_at.seconds, 3600, "retried after the interval: {failed:?}");
    assert_eq!(rekeyed(&mut tgt).await.expect("written"), "false");
    let owed = debt(&mut rk).await;
    assert_eq!(owed.total_records, 1, "only the damaged record is owed: {owed:?}");
    assert_eq!(owed.debts[0].key_id, format!("{}:pay:v1", source.sys_id));
    assert_eq!(tgt.audit_entries("rekey.failed").await.len(), 1);
    opens_every_record(&mut tgt, 40).await;

    // Dealt with, but the interval has not passed: the runner leaves it alone.
    let damaged = pb::RecordAddress { table: "junk".into(), field: "f".into(), record_id: "damaged".into() };
    tgt.crypto.delete_record(pb::DeleteRecordRequest { address: Some(damaged) }).await.expect("delete");
    assert_eq!(debt(&mut rk).await.total_records, 0, "the debt follows the records");
    clock.advance_millis(HOUR_MS / 2);
    target.running().services.jobs.wake();
    let jobs = target.running().services.jobs.jobs(100).await.expect("jobs");
    let job = jobs.iter().find(|j| j.id.subject == request.request_id).expect("the rekey job");
    assert_eq!(job.next_due.0 / 1000, next.seconds, "due at the next attempt: {job:?}");
    let still = rk.get_rekey(pb::GetRekeyRequest { request_id: request.request_id.clone() }).await;
    assert_eq!(still.expect("get").into_inner().rekey.expect("rekey").attempts, 1, "not retried early");

    clock.advance_millis(HOUR_MS / 2);
    target.running().services.jobs.wake();
    let done = rekey_in(&mut rk, &request.request_id, pb::RekeyState::RekeyCompleted).await;
    assert_eq!((done.attempts, done.records_done), (2, 40), "{done:?}");
    assert_eq!(rekeyed(&mut tgt).await.expect("written"), "true");
    assert_eq!(tgt.audit_entries("rekey.completed").await.len(), 1);
}

/// Scenario 26: the rekey keeps failing until the request expires; then the
/// request is REQUEST_EXPIRED, the imported key no record needs is
/// destroyed (material erased), the one a record still needs is kept and
/// reported, and the records moved before still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_expiry_only_the_imported_keys_no_record_needs_are_destroyed() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let target = target_on(&pki, &clock).await;
    let (source, mut src) = source_for(&pki, &target, 20).await;
    // Two imported keys: v1 with the records (one of them damaged, so the rekey keeps failing), v2 with none.
    put_damaged_record(&source, &format!("{}:pay:v1", source.sys_id)).await;
    src.keys.rotate_key(pb::RotateKeyRequest { spec: "pay".into() }).await.expect("rotate");
    let mut tgt = target.admin(&pki).await;
    clone_from(&target, &source, &pki).await;
    let [request] = <[_; 1]>::try_from(ended_requests(&mut tgt, 1).await).expect("one request");
    assert_eq!(request.imported_key_count, 2, "{request:?}");
    let mut rk = rekeys(&target, &pki).await;
    rekey_in(&mut rk, &request.request_id, pb::RekeyState::RekeyFailed).await;

    // Past the request's expiry (7 days): the next run is the expiry.
    clock.advance_millis(8 * 24 * HOUR_MS);
    target.running().services.jobs.wake();
    let expired = rekey_in(&mut rk, &request.request_id, pb::RekeyState::RekeyExpired).await;
    let v1 = format!("{}:pay:v1", source.sys_id);
    let v2 = format!("{}:pay:v2", source.sys_id);
    assert_eq!(expired.destroyed_keys, vec![v2.clone()], "{expired:?}");
    assert_eq!(expired.kept_keys, vec![pb::KeyDebt { key_id: v1.clone(), records: 1 }], "{expired:?}");
    let on_target = tgt.get(&request.request_id).await;
    assert_eq!(on_target.status, pb::RequestStatus::RequestExpired as i32, "{on_target:?}");
    let keys = tgt.keys_of("pay").await;
    let state_of = |id: &str| keys.iter().find(|k| k.key_id == id).map(|k| k.state);
    assert_eq!(state_of(&v2), Some(pb::KeyState::Destroyed as i32), "{keys:?}");
    assert_eq!(state_of(&v1), Some(pb::KeyState::Expired as i32), "{keys:?}");
    let erased = kmf::store::CatalogStore::new(target.running().services.store())
        .key(kmf::domain::ids::KeyId::parse(&v2).expect("id"))
        .await;
    assert!(erased.expect("read").expect("row").1.0.is_empty(), "the destroyed key's wrapped material is erased");
    assert_eq!(rekeyed(&mut tgt).await.expect("written"), "false");
    let audit = tgt.audit_entries("rekey.expired").await;
    assert!(audit.len() == 1 && audit[0].details.contains(&v2) && audit[0].details.contains(&v1), "{audit:?}");
    opens_every_record(&mut tgt, 20).await;
    let jobs = target.running().services.jobs.jobs(100).await.expect("jobs");
    assert!(!jobs.iter().any(|j| j.id.subject == request.request_id), "the job is done: {jobs:?}");
}

/// The property is written by the system only: an operator's set is
/// PERMISSION_DENIED, audited, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_cannot_write_the_rekeyed_property() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    for value in ["true", "false"] {
        let set = pb::SetPropertyRequest { name: REKEYED.into(), value: value.into() };
        let err = ops.properties.set_property(set).await.expect_err("system only");
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert!(err.message().contains("written by the system only"), "{err}");
    }
    assert_eq!(rekeyed(&mut ops).await.expect_err("still absent").code(), Code::NotFound);
    let refused = ops.audit_entries("property.set").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|e| e.outcome == "refused"), "{refused:?}");
}
