//! The store contract: every test runs on both engines — redb (a file in a
//! temporary directory) and the in-memory engine with optimistic
//! concurrency — through the same `Store` port.
#![allow(clippy::unwrap_used, reason = "test fixtures: a failed setup should panic where it happened")]

use std::sync::{Arc, Barrier};

use kmf::domain::audit::{AuditEntry, AuditEvent, Outcome, verify_chain};
use kmf::domain::bundle::WrappingAlgorithm;
use kmf::domain::exchange::{
    ExchangeRequest, ExchangeRole, Frequency, PeerRef, RequestEvent, RequestStatus, SignedBlob, SpecLine,
};
use kmf::domain::ids::{Host, KeyId, Name, RequestId, SysId, UnixMillis};
use kmf::domain::job::{Job, JobId, JobKind};
use kmf::domain::key::{KeyRecord, KeyState, WrappedKey};
use kmf::domain::record::{RecordAddress, StoredRecord};
use kmf::domain::schedule::RetryPolicy;
use kmf::domain::spec::{Module, Spec, SpecChoice};
use kmf::store::engine::{Engine, Table};
use kmf::store::{
    AuditStore, BackendError, BundleChange, CatalogStore, CloneStore, DiagnosticsStore, JobStore, MemoryEngine,
    PropertyStore, RecordStore, RequestEffects, RequestStore, RowKind, Store, StoreError,
};

pub(crate) struct Subject {
    pub(crate) name: &'static str,
    pub(crate) store: Arc<Store>,
    _dir: Option<tempfile::TempDir>,
}

pub(crate) fn sys(n: u8) -> SysId {
    SysId::from_random([n; 16])
}

pub(crate) fn host() -> Host {
    Host::parse("h:1").unwrap()
}

/// One store per engine, each with the same identity.
pub(crate) fn subjects() -> Vec<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let redb = Store::create_redb(&dir.path().join("kmf.redb"), &sys(1), &host()).unwrap();
    let memory = Store::in_memory(&sys(1), &host()).unwrap();
    vec![
        Subject { name: "redb", store: Arc::new(redb), _dir: Some(dir) },
        Subject { name: "memory", store: Arc::new(memory), _dir: None },
    ]
}

pub(crate) fn name(s: &str) -> Name {
    Name::parse(s, "name").unwrap()
}

pub(crate) fn event(action: &str) -> AuditEvent {
    AuditEvent::new(UnixMillis(1), "test", action, "subject", Outcome::Success)
}

fn jobs(store: &Arc<Store>) -> JobStore {
    JobStore::new(store)
}

fn requests(store: &Arc<Store>) -> RequestStore {
    RequestStore::new(store)
}

fn audit_len(store: &Arc<Store>) -> usize {
    crate::support::wait_for(AuditStore::new(store).audit_rows(0, usize::MAX)).unwrap().len()
}

fn spec(n: &str) -> Spec {
    Spec::try_new(name(n), name("m"), SpecChoice::with_defaults(None, None, None, false).unwrap(), UnixMillis(1))
        .unwrap()
}

pub(crate) fn key(spec: &str, origin: u8, version: u32) -> (KeyRecord, WrappedKey) {
    let id = KeyId { origin: sys(origin), spec: name(spec), version };
    let rec = KeyRecord::imported(id, RequestId::from_random([9; 16]), UnixMillis(1), None, None, UnixMillis(2));
    (rec, WrappedKey(vec![version as u8; 40]))
}

pub(crate) fn request(id: u8, created_at: i64) -> ExchangeRequest {
    let peer = PeerRef { sys_id: sys(2), host: host() };
    ExchangeRequest {
        id: RequestId::from_random([id; 16]),
        role: ExchangeRole::Source,
        frequency: Frequency::Adhoc,
        source: PeerRef { sys_id: sys(1), host: host() },
        target: peer,
        status: RequestStatus::Pending,
        lines: vec![SpecLine::pending(name("s"))],
        total_key_count: 0,
        exported_key_count: 0,
        imported_key_count: 0,
        created_at: UnixMillis(created_at),
        updated_at: UnixMillis(created_at),
        expires_at: UnixMillis(i64::MAX / 2),
        history: vec![],
        peer_certificate: vec![],
        receipt: None,
        transport_public_key: vec![1, 2, 3],
        wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256,
        rekey: false,
        clone_grant: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_modules_and_specs() {
    for s in subjects() {
        let st = &s.store;
        assert_eq!((st.sys_id().unwrap(), st.host().unwrap()), (sys(1), host()), "{}", s.name);
        let m = Module { name: name("m"), created_at: UnixMillis(1) };
        let cat = CatalogStore::new(st);
        cat.insert_module(m.clone(), vec![], vec![event("module.create")]).await.unwrap();
        let dup = cat.insert_module(m.clone(), vec![], vec![event("module.create")]).await.unwrap_err();
        assert!(matches!(dup, StoreError::AlreadyExists { kind: RowKind::Module, .. }), "{}: {dup}", s.name);
        assert_eq!(audit_len(st), 1, "{}: a refused insert writes no audit entry", s.name);
        let specs_before = st.changes().specs();
        cat.insert_spec(spec("b"), vec![]).await.unwrap();
        cat.insert_spec(spec("a"), vec![]).await.unwrap();
        assert!(st.changes().specs() > specs_before, "{}", s.name);
        assert!(matches!(cat.insert_spec(spec("a"), vec![]).await, Err(StoreError::AlreadyExists { .. })));
        let names: Vec<String> = cat.specs().await.unwrap().iter().map(|x| x.name.to_string()).collect();
        assert_eq!(names, ["a", "b"], "{}", s.name);
        assert_eq!(cat.module(name("m")).await.unwrap(), Some(m.clone()));
        assert!(cat.spec(name("zz")).await.unwrap().is_none());
        let missing = cat.update_spec(spec("zz"), spec("zz"), vec![]).await;
        assert!(matches!(missing, Err(StoreError::Missing { .. })), "{}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_page_in_order_and_changes_are_conditional() {
    for s in subjects() {
        let st = &s.store;
        // 25 keys of "s" from two origins, 3 of "t" (a prefix of no other spec).
        let mut rows: Vec<_> = (1..=20).map(|v| key("s", 3, v)).chain((1..=5).map(|v| key("s", 4, v))).collect();
        rows.extend((1..=3).map(|v| key("t", 3, v)));
        let (t_before, s_before) = (st.changes().keys_of(&name("t")), st.changes().keys_of(&name("s")));
        let cat = CatalogStore::new(st);
        cat.insert_keys(rows.clone(), vec![event("key.seed")]).await.unwrap();
        assert!(st.changes().keys_of(&name("s")) > s_before, "{}", s.name);
        assert!(st.changes().keys_of(&name("t")) > t_before, "{}", s.name);
        let again = cat.insert_keys(rows[..1].to_vec(), vec![]).await.unwrap_err();
        assert!(matches!(again, StoreError::AlreadyExists { kind: RowKind::Key, .. }), "{}", s.name);

        let mut seen = Vec::new();
        let mut after: Option<KeyId> = None;
        loop {
            let page = cat.keys_page(name("s"), after.clone(), 7).await.unwrap();
            assert!(page.len() <= 7);
            after = page.last().map(|(k, _)| k.id.clone());
            seen.extend(page.into_iter().map(|(k, _)| k.id));
            if after.is_none() {
                break;
            }
        }
        let want: Vec<KeyId> = rows.iter().filter(|(k, _)| k.id.spec == name("s")).map(|(k, _)| k.id.clone()).collect();
        let mut sorted = want.clone();
        sorted.sort_by(|a, b| (a.origin.as_str(), a.version).cmp(&(b.origin.as_str(), b.version)));
        assert_eq!(seen, sorted, "{}: pages in (origin, version) order, no key twice or missing", s.name);
        assert_eq!(cat.count_keys_of(name("s")).await.unwrap(), 25);
        assert_eq!(cat.count_keys_of(name("t")).await.unwrap(), 3);
        assert_eq!(cat.count_keys().await.unwrap(), 28);
        let present = requests(st).existing_keys(vec![key("s", 3, 1).0.id, key("s", 3, 99).0.id]).await.unwrap();
        assert_eq!(present, vec![key("s", 3, 1).0.id], "{}", s.name);
        let wrapped = requests(st).wrapped_keys(vec![key("s", 3, 99).0.id, key("s", 3, 1).0.id]).await.unwrap();
        assert_eq!(wrapped, vec![None, Some(key("s", 3, 1).1)], "{}: the material as stored, in order", s.name);
        let found = cat.find_key(name("s"), |k| k.id.version == 5 && k.id.origin == sys(4)).await.unwrap();
        assert_eq!(found.map(|(k, _)| k.id), Some(key("s", 4, 5).0.id));

        // A change planned from what was read applies once; planned from a
        // stale read it is refused and changes nothing.
        let (read, _) = cat.key(key("s", 3, 1).0.id).await.unwrap().unwrap();
        let mut destroyed = read.clone();
        destroyed.state = KeyState::Destroyed;
        let records_before = st.changes().writes();
        cat.apply_key_change(vec![read.clone()], vec![destroyed.clone()], None, vec![]).await.unwrap();
        assert!(st.changes().writes() > records_before);
        let (now, wrapped) = cat.key(read.id.clone()).await.unwrap().unwrap();
        assert_eq!((now.state, wrapped.0.len()), (KeyState::Destroyed, 0), "{}: destroyed keys lose material", s.name);
        let mut other = read.clone();
        other.state = KeyState::Revoked;
        let stale = cat.apply_key_change(vec![read.clone()], vec![other], None, vec![event("x")]).await.unwrap_err();
        assert!(matches!(stale, StoreError::Stale { kind: RowKind::Key, .. }), "{}: {stale}", s.name);
        assert_eq!(cat.key(read.id.clone()).await.unwrap().unwrap().0.state, KeyState::Destroyed);
        let clash = cat.apply_key_change(vec![], vec![], Some(key("s", 3, 2)), vec![]).await.unwrap_err();
        assert!(matches!(clash, StoreError::AlreadyExists { .. }), "{}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_updates_are_conditional_on_the_version_read() {
    for s in subjects() {
        let st = &s.store;
        let req = request(1, 10);
        requests(st)
            .insert_request(
                req.clone(),
                Some(b"handle".to_vec()),
                RequestEffects::default(),
                vec![event("exchange.open")],
            )
            .await
            .unwrap();
        let dup =
            requests(st).insert_request(req.clone(), None, RequestEffects::default(), Vec::new()).await.unwrap_err();
        assert!(matches!(dup, StoreError::AlreadyExists { kind: RowKind::Request, .. }), "{}", s.name);
        let v1 = requests(st).request(req.id.clone()).await.unwrap().unwrap();
        assert_eq!(v1.value, req);
        assert_eq!(requests(st).transport_handle(req.id.clone()).await.unwrap().as_deref(), Some(&b"handle"[..]));

        let mut approved = v1.value.clone();
        approved.apply(RequestEvent::Approve, "alice", UnixMillis(11)).unwrap();
        let blob = SignedBlob { bytes: vec![7; 1000], signature: vec![8; 64] };
        let deliver = Job::new(JobId::for_request(JobKind::Deliver, &req.id), UnixMillis(11), UnixMillis(11));
        let effects = RequestEffects {
            bundle: BundleChange::Set(blob.clone()),
            schedule: vec![deliver.clone()],
            ..Default::default()
        };
        let v2 = requests(st)
            .update_request(v1.version, approved.clone(), effects, vec![event("exchange.approve")])
            .await
            .unwrap();
        assert_eq!(v2, v1.version + 1);
        assert_eq!(requests(st).bundle(req.id.clone()).await.unwrap(), Some(blob.clone()), "{}", s.name);
        assert_eq!(jobs(st).job(deliver.id.clone()).await.unwrap(), Some(deliver.clone()), "{}", s.name);

        // The second decision read version 1 too: it is refused, nothing written.
        let audit_before = audit_len(st);
        let mut rejected = v1.value.clone();
        rejected.apply(RequestEvent::Reject { reason: "no".into() }, "bob", UnixMillis(12)).unwrap();
        let notice = Job::new(JobId::for_request(JobKind::Notify, &req.id), UnixMillis(12), UnixMillis(12));
        let effects =
            RequestEffects { bundle: BundleChange::Clear, schedule: vec![notice.clone()], ..Default::default() };
        let stale = requests(st)
            .update_request(v1.version, rejected.clone(), effects, vec![event("exchange.reject")])
            .await
            .unwrap_err();
        assert!(matches!(stale, StoreError::Stale { kind: RowKind::Request, .. }), "{}: {stale}", s.name);
        assert_eq!(audit_len(st), audit_before, "{}", s.name);
        assert_eq!(requests(st).request(req.id.clone()).await.unwrap().unwrap().value.status, RequestStatus::Approved);
        assert!(
            requests(st).bundle(req.id.clone()).await.unwrap().is_some()
                && jobs(st).job(notice.id.clone()).await.unwrap().is_none(),
            "{}",
            s.name
        );

        // A terminal status drops the transport key; Clear drops the bundle.
        let mut done = approved.clone();
        done.apply(RequestEvent::Complete, "target", UnixMillis(13)).unwrap();
        let effects = RequestEffects { bundle: BundleChange::Clear, ..Default::default() };
        requests(st).update_request(v2, done.clone(), effects, Vec::new()).await.unwrap();
        assert!(
            requests(st).transport_handle(req.id.clone()).await.unwrap().is_none()
                && requests(st).bundle(req.id.clone()).await.unwrap().is_none()
        );
        let missing =
            requests(st).update_request(0, request(99, 1), RequestEffects::default(), Vec::new()).await.unwrap_err();
        assert!(matches!(missing, StoreError::Missing { .. }), "{}", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_page_in_creation_order() {
    for s in subjects() {
        let st = &s.store;
        // Created out of id order and out of insertion order.
        let times = [50, 10, 40, 20, 30, 10, 60];
        for (i, t) in times.iter().enumerate() {
            requests(st)
                .insert_request(request(i as u8 + 1, *t), None, RequestEffects::default(), Vec::new())
                .await
                .unwrap();
        }
        let (mut seen, mut after) = (Vec::new(), None);
        for _ in 0..10 {
            let (page, next) = requests(st).requests_page(after.clone(), 3).await.unwrap();
            seen.extend(page.iter().map(|r| r.created_at.0));
            match next {
                Some(c) => {
                    assert_eq!(kmf::store::RequestCursor::parse(&c.token()), Some(c.clone()));
                    after = Some(c);
                }
                None => break,
            }
        }
        let mut want = times.to_vec();
        want.sort();
        assert_eq!(seen, want, "{}", s.name);
        assert!(kmf::store::RequestCursor::parse("12.nothex").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_is_conditional_and_keeps_the_receipt() {
    for s in subjects() {
        let st = &s.store;
        let mut req = request(1, 10);
        req.role = ExchangeRole::Target;
        requests(st)
            .insert_request(req.clone(), Some(b"transport".to_vec()), RequestEffects::default(), Vec::new())
            .await
            .unwrap();
        let v = requests(st).request(req.id.clone()).await.unwrap().unwrap();
        let mut done = v.value.clone();
        done.apply(RequestEvent::Approve, "source", UnixMillis(11)).unwrap();
        done.apply(RequestEvent::Complete, "system", UnixMillis(11)).unwrap();
        let keys = vec![key("s", 3, 1), key("s", 3, 2)];
        let digest = [5u8; 32];
        let receipt = SignedBlob { bytes: b"receipt".to_vec(), signature: b"sig".to_vec() };
        assert_eq!(requests(st).receipt_for(digest).await.unwrap(), None);
        requests(st)
            .complete_import(
                v.version,
                done.clone(),
                keys.clone(),
                (digest, receipt.clone()),
                vec![event("exchange.import")],
            )
            .await
            .unwrap();
        assert_eq!(
            requests(st).receipt_for(digest).await.unwrap(),
            Some((req.id.clone(), receipt.clone())),
            "{}",
            s.name
        );
        assert!(requests(st).transport_handle(req.id.clone()).await.unwrap().is_none());
        assert_eq!(CatalogStore::new(st).count_keys_of(name("s")).await.unwrap(), 2);
        // The same import again (a redelivery racing the first) is refused whole.
        let audit_before = audit_len(st);
        let again = requests(st)
            .complete_import(v.version, done.clone(), keys.clone(), ([6u8; 32], receipt.clone()), vec![event("x")])
            .await
            .unwrap_err();
        assert!(matches!(again, StoreError::Stale { .. }), "{}", s.name);
        assert_eq!(
            (audit_len(st), requests(st).receipt_for([6u8; 32]).await.unwrap()),
            (audit_before, None),
            "{}",
            s.name
        );

        // On a fresh request whose keys arrived meanwhile: refused, nothing imported.
        let mut other = request(2, 20);
        other.role = ExchangeRole::Target;
        requests(st).insert_request(other.clone(), None, RequestEffects::default(), Vec::new()).await.unwrap();
        let v = requests(st).request(other.id.clone()).await.unwrap().unwrap();
        let overlap = vec![key("s", 3, 3), key("s", 3, 2)];
        let refused = requests(st)
            .complete_import(v.version, other.clone(), overlap.clone(), ([7u8; 32], receipt.clone()), Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(refused, StoreError::Stale { kind: RowKind::Key, .. }), "{}", s.name);
        assert_eq!(CatalogStore::new(st).count_keys_of(name("s")).await.unwrap(), 2, "{}: all or nothing", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_claimed_under_a_lease_and_fenced() {
    for s in subjects() {
        let st = &s.store;
        let t = |ms: i64| UnixMillis(1_000 + ms);
        let a = Job::new(JobId::new(JobKind::Deliver, "a"), t(0), t(0));
        let b = Job::new(JobId::new(JobKind::Notify, "b"), t(500), t(0));
        assert!(jobs(st).add_job(a.clone()).await.unwrap());
        assert!(jobs(st).add_job(b.clone()).await.unwrap());
        assert!(!jobs(st).add_job(a.clone()).await.unwrap(), "{}: one job per (kind, subject)", s.name);

        assert!(
            jobs(st).claim_due_jobs("r1".into(), t(-1), 1_000, 10).await.unwrap().is_empty(),
            "{}: nothing due yet",
            s.name
        );
        let claimed = jobs(st).claim_due_jobs("r1".into(), t(0), 1_000, 10).await.unwrap();
        assert_eq!(claimed.iter().map(|(j, _)| j.id.clone()).collect::<Vec<_>>(), vec![a.id.clone()], "{}", s.name);
        let lease1 = claimed[0].1.clone();
        // Leased: nobody else gets it until the lease runs out.
        let at_600 = jobs(st).claim_due_jobs("r2".into(), t(600), 1_000, 10).await.unwrap();
        assert_eq!(at_600.iter().map(|(j, _)| j.id.clone()).collect::<Vec<_>>(), vec![b.id.clone()], "{}", s.name);
        let taken = jobs(st).claim_due_jobs("r2".into(), t(1_000), 1_000, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "{}: the lease ran out, r2 takes the job", s.name);
        let lease2 = taken[0].1.clone();
        assert_eq!((lease2.owner.as_str(), lease2.claim), ("r2", 2));
        // The first runner comes back: it can neither finish nor fail the job.
        let stale = jobs(st).finish_job(a.id.clone(), lease1.clone(), None).await.unwrap_err();
        assert!(matches!(stale, StoreError::Stale { kind: RowKind::JobLease, .. }), "{}", s.name);
        let policy = RetryPolicy { base_millis: 100, cap_millis: 1_000 };
        let stale = jobs(st).retry_job(a.id.clone(), lease1.clone(), "x".into(), t(1_000), policy, 0).await.err();
        assert!(matches!(stale, Some(StoreError::Stale { kind: RowKind::JobLease, .. })), "{}: {stale:?}", s.name);
        // The second fails it: retried after the backoff, then finished.
        let retried =
            jobs(st).retry_job(a.id.clone(), lease2.clone(), "target down".into(), t(1_000), policy, 0).await.unwrap();
        assert_eq!((retried.attempts, retried.next_due, retried.lease), (1, t(1_050), None), "{}", s.name);
        assert!(
            jobs(st).claim_due_jobs("r3".into(), t(1_049), 1_000, 10).await.unwrap().iter().all(|(j, _)| j.id != a.id)
        );
        assert!(jobs(st).hasten_job(a.id.clone(), t(1_010)).await.unwrap(), "{}", s.name);
        let again = jobs(st).claim_due_jobs("r3".into(), t(1_010), 1_000, 10).await.unwrap();
        let (job, lease3) = again.into_iter().find(|(j, _)| j.id == a.id).expect("claimed after hasten");
        assert_eq!(job.last_error.as_deref(), Some("target down"));
        jobs(st).finish_job(a.id.clone(), lease3.clone(), None).await.unwrap();
        assert!(jobs(st).job(a.id.clone()).await.unwrap().is_none(), "{}", s.name);
        // A recurring job is rescheduled instead.
        let (_, lease_b) = jobs(st).claim_due_jobs("r3".into(), t(5_000), 1_000, 10).await.unwrap().remove(0);
        jobs(st).finish_job(b.id.clone(), lease_b.clone(), Some(t(9_000))).await.unwrap();
        let b2 = jobs(st).job(b.id.clone()).await.unwrap().unwrap();
        assert_eq!((b2.next_due, b2.lease, b2.claims), (t(9_000), None, 2), "{}", s.name);
        assert_eq!(jobs(st).jobs_by_due(10).await.unwrap().len(), 1);

        // After a crash: an exclusive (embedded) store hands leases back at
        // start; a shared one lets them run out.
        let c = Job::new(JobId::new(JobKind::Deliver, "c"), t(0), t(0));
        jobs(st).add_job(c.clone()).await.unwrap();
        assert_eq!(jobs(st).claim_due_jobs("crashed".into(), t(8_000), 60_000, 10).await.unwrap().len(), 1);
        let released = jobs(st).release_orphaned_leases().await.unwrap();
        let c_now = jobs(st).job(c.id.clone()).await.unwrap().unwrap();
        match s.name {
            "redb" => assert_eq!((released, c_now.due_at(), c_now.lease), (1, t(0), None)),
            _ => assert_eq!((released, c_now.lease.map(|l| l.owner)), (0, Some("crashed".into()))),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_audit_and_change_tokens() {
    for s in subjects() {
        let st = &s.store;
        let (keys_before, specs_before) = (st.changes().keys_of(&name("s")), st.changes().specs());
        for i in 0..5 {
            let address = RecordAddress::parse("t", if i % 2 == 0 { "f" } else { "g" }, &format!("r{i}")).unwrap();
            let rec = StoredRecord {
                address,
                ciphertext: vec![i; 8],
                key_id: key("s", 3, 1).0.id,
                updated_at: UnixMillis(1),
            };
            RecordStore::new(st).put_record(rec).await.unwrap();
        }
        AuditStore::new(st).append_audit(vec![event("call.refused")]).await.unwrap();
        assert_eq!(
            (st.changes().keys_of(&name("s")), st.changes().specs()),
            (keys_before, specs_before),
            "{}: records and audit entries leave key and spec caches warm",
            s.name
        );
        let records = RecordStore::new(st);
        let f = records.records(Some(name("t")), Some(name("f")), None, 10).await.unwrap();
        assert_eq!(f.iter().map(|r| r.address.record_id.as_str()).collect::<Vec<_>>(), ["r0", "r2", "r4"]);
        let page = records.records(Some(name("t")), None, Some(f[0].address.clone()), 2).await.unwrap();
        assert_eq!(page.iter().map(|r| r.address.record_id.as_str()).collect::<Vec<_>>(), ["r2", "r4"], "{}", s.name);
        assert!(records.delete_record(f[0].address.clone()).await.unwrap());
        assert!(!records.delete_record(f[0].address.clone()).await.unwrap());
        let diagnostics = DiagnosticsStore::new(st);
        assert_eq!(diagnostics.heartbeat(UnixMillis(5)).await.unwrap(), None);
        assert_eq!(diagnostics.heartbeat(UnixMillis(9)).await.unwrap(), Some(UnixMillis(5)));
        // Audit rows page from a sequence number.
        AuditStore::new(st).append_audit(vec![event("a"), event("b")]).await.unwrap();
        let rows = AuditStore::new(st).audit_rows(1, 10).await.unwrap();
        assert_eq!(rows.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [2, 3], "{}", s.name);
    }
}

/// Many writers at once: exactly one conditional decision wins, and audit
/// entries appended concurrently form one unbroken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_exactly_one_decision_and_an_unbroken_chain() {
    for s in subjects() {
        let st = Arc::clone(&s.store);
        let req = request(1, 10);
        requests(&st).insert_request(req.clone(), None, RequestEffects::default(), Vec::new()).await.unwrap();
        let v = requests(&st).request(req.id.clone()).await.unwrap().unwrap();
        const WRITERS: usize = 16;
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (st, barrier, v) = (Arc::clone(&st), Arc::clone(&barrier), v.clone());
                std::thread::spawn(move || {
                    let mut mine = v.value.clone();
                    let event_ = if i % 3 == 0 {
                        RequestEvent::Reject { reason: format!("r{i}") }
                    } else {
                        RequestEvent::Approve
                    };
                    mine.apply(event_, &format!("op{i}"), UnixMillis(11)).unwrap();
                    barrier.wait();
                    crate::support::wait_for(AuditStore::new(&st).append_audit(vec![event(&format!("noise{i}"))]))
                        .unwrap();
                    let decision = vec![event(&format!("decide{i}"))];
                    crate::support::wait_for(requests(&st).update_request(
                        v.version,
                        mine,
                        RequestEffects::default(),
                        decision,
                    ))
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{}: {results:?}", s.name);
        assert!(
            results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(StoreError::Stale { .. }))),
            "{}",
            s.name
        );
        let rows = AuditStore::new(&st).audit_rows(0, usize::MAX).await.unwrap();
        let entries: Vec<AuditEntry> = rows.iter().map(|(_, b)| AuditEntry::decode(b).unwrap()).collect();
        assert_eq!(verify_chain(&entries), Ok(WRITERS as u64 + 1), "{}", s.name);
        let winner = requests(&st).request(req.id.clone()).await.unwrap().unwrap().value;
        assert_eq!(winner.history.len(), 1, "{}: one decision recorded", s.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_engine_refuses_a_commit_whose_reads_went_stale() {
    let engine = MemoryEngine::default();
    let mut seed = engine.begin_write().unwrap();
    seed.put(Table::Specs, b"k", b"0").unwrap();
    seed.commit().unwrap();
    let mut a = engine.begin_write().unwrap();
    let mut b = engine.begin_write().unwrap();
    assert_eq!(a.get(Table::Specs, b"k").unwrap().as_deref(), Some(&b"0"[..]));
    assert_eq!(b.get(Table::Specs, b"k").unwrap().as_deref(), Some(&b"0"[..]));
    a.put(Table::Specs, b"k", b"a").unwrap();
    b.put(Table::Specs, b"k", b"b").unwrap();
    // Reads see the transaction's own writes.
    assert_eq!(a.get(Table::Specs, b"k").unwrap().as_deref(), Some(&b"a"[..]));
    a.commit().unwrap();
    assert!(matches!(b.commit(), Err(StoreError::Conflict)));
    let mut r = engine.begin_read().unwrap();
    assert_eq!(r.get(Table::Specs, b"k").unwrap().as_deref(), Some(&b"a"[..]));
    // A blind write to another table does not conflict.
    let mut c = engine.begin_write().unwrap();
    let mut d = engine.begin_write().unwrap();
    c.put(Table::Modules, b"x", b"1").unwrap();
    d.put(Table::Modules, b"y", b"2").unwrap();
    c.commit().unwrap();
    d.commit().unwrap();
    assert_eq!(r.len(Table::Modules).unwrap(), 0, "a read transaction keeps its snapshot");
}

/// A database made by the first schema (typed tables and an outbox) opens
/// as schema 2 with every row kept and its outbox item as a due job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_1_database_is_migrated_at_open() {
    use redb::{Database, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kmf.redb");
    let request_id = RequestId::from_random([4; 16]);
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut meta = tx.open_table(TableDefinition::<&str, &str>::new("meta")).unwrap();
            meta.insert("sys_id", sys(1).as_str()).unwrap();
            meta.insert("host", "h:1").unwrap();
            meta.insert("schema_version", "1").unwrap();
            let spec_row = r#"{"v":1,"name":"s","module":"m","purpose":"symmetric_data_encryption","algorithm":"aes_gcm","key_size_bits":256,"created_at":1}"#;
            tx.open_table(TableDefinition::<&str, &[u8]>::new("specs"))
                .unwrap()
                .insert("s", spec_row.as_bytes())
                .unwrap();
            let (rec, _) = key("s", 3, 7);
            let key_row = format!(
                r#"{{"v":1,"key_id":"{}","state":"Expired","request_id":null,"generated_at":1,"activated_at":null,"deactivated_at":null,"imported_at":2,"expired_at":2,"wrapped":"0a0b"}}"#,
                rec.id
            );
            tx.open_table(TableDefinition::<(&str, &str, u32), &[u8]>::new("keys"))
                .unwrap()
                .insert(("s", sys(3).as_str(), 7), key_row.as_bytes())
                .unwrap();
            let outbox = r#"{"v":1,"kind":"bundle","bytes":"0102","signature":"0304","status":"","reason":""}"#;
            tx.open_table(TableDefinition::<&str, &[u8]>::new("outbox"))
                .unwrap()
                .insert(request_id.as_str(), outbox.as_bytes())
                .unwrap();
            let entry = AuditEntry::chain(1, event("module.create"), kmf::domain::audit::GENESIS);
            tx.open_table(TableDefinition::<u64, &[u8]>::new("audit"))
                .unwrap()
                .insert(1, entry.encode().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let store = Arc::new(Store::open_redb(&path).unwrap());
    assert_eq!(store.sys_id().unwrap(), sys(1));
    assert_eq!(CatalogStore::new(&store).spec(name("s")).await.unwrap().map(|s| s.name), Some(name("s")));
    let (rec, wrapped) = CatalogStore::new(&store).keys(name("s")).await.unwrap().remove(0);
    assert_eq!((rec.id.version, rec.state, wrapped.0), (7, KeyState::Expired, vec![0x0a, 0x0b]));
    assert_eq!(
        requests(&store).bundle(request_id.clone()).await.unwrap(),
        Some(SignedBlob { bytes: vec![1, 2], signature: vec![3, 4] })
    );
    let job = jobs(&store)
        .job(JobId::for_request(JobKind::Deliver, &request_id))
        .await
        .unwrap()
        .expect("outbox item became a job");
    assert_eq!(job.next_due, UnixMillis(0));
    assert_eq!(AuditStore::new(&store).audit_rows(0, 10).await.unwrap().len(), 1);
    drop(store);
    // Opening again finds schema 2 and changes nothing.
    let store = Arc::new(Store::open_redb(&path).unwrap());
    assert_eq!(CatalogStore::new(&store).count_keys().await.unwrap(), 1);
    let held = kmf::store::RedbEngine::open(&path).err();
    assert!(matches!(&held, Some(StoreError::Backend(BackendError::InUse))), "held by the store: {held:?}");
    drop(store);
    let names = kmf::store::RedbEngine::open(&path).unwrap().table_names().unwrap();
    assert!(names.iter().all(|n| n.starts_with("kv/")), "old tables are gone: {names:?}");
}

/// A snapshot is one consistent view, streamed in bounded parts, in order,
/// with no key in it: a record written while it streams is not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_one_consistent_view_in_bounded_parts() {
    use kmf::domain::clone::{SnapshotOrder, SnapshotPart};
    for s in subjects() {
        let st = &s.store;
        let cat = CatalogStore::new(st);
        cat.insert_module(Module { name: name("m"), created_at: UnixMillis(1) }, vec![], vec![]).await.unwrap();
        cat.insert_spec(spec("s"), vec![]).await.unwrap();
        cat.insert_keys(vec![key("s", 3, 1)], vec![]).await.unwrap();
        let record = |i: u32| StoredRecord {
            address: RecordAddress::parse("t", "f", &format!("r{i:04}")).unwrap(),
            ciphertext: vec![7; 16],
            key_id: key("s", 3, 1).0.id,
            updated_at: UnixMillis(1),
        };
        let records = RecordStore::new(st);
        for i in 0..25 {
            records.put_record(record(i)).await.unwrap();
        }
        let (mut order, mut parts, mut received) = (SnapshotOrder::default(), Vec::new(), Vec::new());
        let mut read = CloneStore::new(st).snapshot(UnixMillis(9), 10, None, None);
        while let Some(part) = read.next().await {
            order.accept(&part).unwrap();
            if let SnapshotPart::Records(r) = &part {
                assert!(r.len() <= 10, "{}: a part holds at most the asked number", s.name);
                if received.is_empty() {
                    // Written while the snapshot streams: not part of it.
                    records.put_record(record(9_999)).await.unwrap();
                }
                received.extend(r.iter().map(|r| r.address.record_id.clone()));
            }
            parts.push(part);
        }
        let complete = read.end().await.unwrap();
        assert!(complete && order.is_complete(), "{}", s.name);
        assert_eq!(order.header().unwrap().records, 25, "{}", s.name);
        let want: Vec<String> = (0..25).map(|i| format!("r{i:04}")).collect();
        assert_eq!(received, want, "{}: every record once, in address order, none written later", s.name);
        let catalog = parts.iter().find_map(|p| if let SnapshotPart::Catalog(c) = p { Some(c) } else { None });
        let catalog = catalog.unwrap();
        assert_eq!((catalog.modules.len(), catalog.specs.len()), (1, 1), "{}", s.name);
        // The receiver went away after the header: the read stops there.
        let mut read = CloneStore::new(st).snapshot(UnixMillis(9), 10, None, None);
        assert!(matches!(read.next().await, Some(SnapshotPart::Header(_))), "{}", s.name);
        let stopped = read.end().await.unwrap();
        assert!(!stopped, "{}", s.name);
    }
}

/// Concurrent sets of one property: each audit entry names the value it
/// really replaced (read in its own transaction), so the entries form one
/// chain of values from "(unset)" to the value that stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_property_sets_audit_the_value_each_replaced() {
    use kmf::domain::property::Property;
    for s in subjects() {
        const WRITERS: usize = 8;
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (props, barrier) = (PropertyStore::new(&s.store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let p = Property {
                        name: "x.y".into(),
                        value: format!("v{i}"),
                        updated_at: UnixMillis(1),
                        updated_by: "t".into(),
                    };
                    barrier.wait().await;
                    // Each writer reads and writes conditionally until its
                    // write lands (bounded: at most one loss per other writer).
                    for _ in 0..=WRITERS {
                        let read = props.property("x.y".into()).await.unwrap();
                        let value = p.value.clone();
                        let audit = move |old: Option<&str>| {
                            AuditEvent::new(UnixMillis(1), "t", "property.set", "x.y", Outcome::Success)
                                .with_details(format!("{}>{value}", old.unwrap_or("-")))
                        };
                        match props.put_property_checked(read, p.clone(), audit).await {
                            Err(StoreError::Stale { .. }) => continue,
                            other => return other.unwrap(),
                        }
                    }
                    panic!("writer {i} lost more races than there are writers");
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let rows = AuditStore::new(&s.store).audit_rows(0, usize::MAX).await.unwrap();
        let pairs: Vec<(String, String)> = rows
            .iter()
            .map(|(_, b)| {
                let d = AuditEntry::decode(b).unwrap().event.details;
                let (old, new) = d.split_once('>').unwrap();
                (old.to_owned(), new.to_owned())
            })
            .collect();
        assert_eq!(pairs.len(), WRITERS);
        // In commit order, each entry replaced what the previous one wrote.
        let mut last = "-".to_owned();
        for (old, new) in &pairs {
            assert_eq!(old, &last, "{}: {pairs:?}", s.name);
            last = new.clone();
        }
        let stored = PropertyStore::new(&s.store).property("x.y".into()).await.unwrap();
        assert_eq!(stored.unwrap().value, last, "{}", s.name);
    }
}

/// A clone stages records beside the live ones; until the swap nothing a
/// reader sees changes; the swap merges the catalog and replaces the records at once; only
/// the clone job's lease may write, and a finished clone writes no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_staging_is_invisible_until_one_swap() {
    use kmf::domain::clone::{CloneRun, CloneState, SnapshotCatalog};
    use kmf::domain::ids::CloneId;
    for s in subjects() {
        let st = &s.store;
        let rec = |table: &str, i: u32| StoredRecord {
            address: RecordAddress::parse(table, "f", &format!("r{i}")).unwrap(),
            ciphertext: vec![1; 8],
            key_id: key("s", 3, 1).0.id,
            updated_at: UnixMillis(1),
        };
        let module = Module { name: name("old"), created_at: UnixMillis(1) };
        CatalogStore::new(st).insert_module(module, vec![], vec![]).await.unwrap();
        let records = RecordStore::new(st);
        records.put_record(rec("live", 1)).await.unwrap();
        let id = CloneId::from_random([7; 16]);
        let run = CloneRun {
            id: id.clone(),
            source: sys(9),
            source_host: host(),
            state: CloneState::Running,
            records_total: 0,
            records_copied: 0,
            started_at: UnixMillis(1),
            copy_started_at: UnixMillis(1),
            updated_at: UnixMillis(1),
            finished_at: None,
            error: None,
            follow_up: None,
        };
        let job_id = kmf::store::clone_job_id(&id);
        let clones = CloneStore::new(st);
        clones.start_clone(run.clone(), Job::new(job_id.clone(), UnixMillis(1), UnixMillis(1)), vec![]).await.unwrap();
        assert!(
            matches!(
                clones.start_clone(run, Job::new(job_id, UnixMillis(1), UnixMillis(1)), vec![]).await,
                Err(StoreError::AlreadyExists { .. })
            ),
            "{}: one clone at a time",
            s.name
        );
        let (_, lease) = jobs(st).claim_due_jobs("runner".into(), UnixMillis(2), 1_000, 1).await.unwrap().remove(0);
        let until = UnixMillis(5_000);
        clones.begin_clone_copy(id.clone(), lease.clone(), until, 3, UnixMillis(2)).await.unwrap();
        let part = vec![rec("new", 1), rec("new", 2), rec("new", 3)];
        let staged = clones.stage_clone_records(id.clone(), lease.clone(), until, part, UnixMillis(3)).await.unwrap();
        assert_eq!(staged.records_copied, 3);
        let live = records.records(None, None, None, 10).await.unwrap();
        assert_eq!(
            live.iter().map(|r| r.address.table.to_string()).collect::<Vec<_>>(),
            ["live"],
            "{}: staging is invisible",
            s.name
        );
        let debt = || async { records.record_debt().await.unwrap().into_iter().map(|d| d.records).collect::<Vec<_>>() };
        assert_eq!(debt().await, [1], "{}: the debt counts the live records only", s.name);
        // Another runner's lease writes nothing.
        let stranger = kmf::domain::job::Lease { owner: "other".into(), claim: 99, expires_at: until };
        assert!(
            matches!(
                clones.stage_clone_records(id.clone(), stranger, until, vec![rec("bad", 1)], UnixMillis(3)).await,
                Err(StoreError::Stale { .. })
            ),
            "{}",
            s.name
        );
        // A finished rekey on the target, and a snapshot that tries to set
        // protected properties (as a malicious source would).
        let prop = |n: &str, v: &str| kmf::domain::property::Property {
            name: n.into(),
            value: v.into(),
            updated_at: UnixMillis(1),
            updated_by: "x".into(),
        };
        let rekeyed = kmf::domain::property::REKEYED;
        let props = PropertyStore::new(st);
        let seeded = |_: Option<&str>| AuditEvent::new(UnixMillis(1), "t", "t", "t", Outcome::Success);
        props.put_property_checked(None, prop(rekeyed, "true"), seeded).await.unwrap();
        let catalog = SnapshotCatalog {
            modules: vec![Module { name: name("new"), created_at: UnixMillis(1) }],
            properties: vec![prop(rekeyed, "true"), prop("protected.planted", "1"), prop("plain", "1")],
            ..Default::default()
        };
        let swap =
            kmf::store::CloneSwap { catalog, follow_up: None, exchanges: None, now: UnixMillis(4), lease_until: until };
        let done = clones.swap_in_clone(id.clone(), lease.clone(), swap, vec![]).await.unwrap();
        assert_eq!(done.state, CloneState::Completed);
        let live = records.records(None, None, None, 10).await.unwrap();
        assert_eq!(
            live.iter().map(|r| r.address.record_id.as_str()).collect::<Vec<_>>(),
            ["r1", "r2", "r3"],
            "{}",
            s.name
        );
        assert!(live.iter().all(|r| r.address.table.as_str() == "new"));
        assert_eq!(debt().await, [3], "{}: after the swap the debt is the staged records'", s.name);
        let modules: Vec<String> =
            CatalogStore::new(st).modules().await.unwrap().iter().map(|m| m.name.to_string()).collect();
        assert_eq!(modules, ["new", "old"], "{}: merged, the target keeps its own", s.name);
        let props: Vec<(String, String)> =
            props.properties().await.unwrap().into_iter().map(|p| (p.name, p.value)).collect();
        let want = [("plain", "1"), (rekeyed, "false")].map(|(n, v)| (n.to_owned(), v.to_owned()));
        assert_eq!(
            props, want,
            "{}: no protected property copied; records under another's keys undo the rekey",
            s.name
        );
        let rekeyed_by = PropertyStore::new(st).property(rekeyed.into()).await.unwrap().unwrap().updated_by;
        assert_eq!(rekeyed_by, "system (clone)");
        assert!(
            matches!(
                clones.stage_clone_records(id.clone(), lease.clone(), until, vec![rec("late", 1)], UnixMillis(5)).await,
                Err(StoreError::Stale { .. })
            ),
            "{}: a completed clone stages nothing",
            s.name
        );
        // The old records are cleared from the staging side afterwards.
        assert_eq!(clones.clear_staging(id.clone(), lease.clone(), until, 10).await.unwrap(), 1, "{}", s.name);
        assert_eq!(clones.clear_staging(id.clone(), lease.clone(), until, 10).await.unwrap(), 0);
        assert_eq!(records.records(None, None, None, 10).await.unwrap().len(), 3, "{}: the live records stay", s.name);
        assert_eq!(debt().await, [3], "{}: clearing the old side leaves the live debt", s.name);
    }
}

/// Concurrent StartClone calls: exactly one clone runs (its row and its job
/// written together); the others are refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clone_starts_one_runs() {
    use kmf::domain::clone::{CloneRun, CloneState};
    use kmf::domain::ids::CloneId;
    for s in subjects() {
        const CALLERS: usize = 8;
        let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS));
        let handles: Vec<_> = (0..CALLERS)
            .map(|i| {
                let (clones, barrier) = (CloneStore::new(&s.store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    let id = CloneId::from_random([i as u8 + 1; 16]);
                    let run = CloneRun {
                        id: id.clone(),
                        source: sys(9),
                        source_host: host(),
                        state: CloneState::Running,
                        records_total: 0,
                        records_copied: 0,
                        started_at: UnixMillis(1),
                        copy_started_at: UnixMillis(1),
                        updated_at: UnixMillis(1),
                        finished_at: None,
                        error: None,
                        follow_up: None,
                    };
                    barrier.wait().await;
                    let job = Job::new(kmf::store::clone_job_id(&id), UnixMillis(1), UnixMillis(1));
                    clones.start_clone(run, job, vec![]).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{}: {results:?}", s.name);
        assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(StoreError::AlreadyExists { .. }))));
        let runs = CloneStore::new(&s.store).clone_runs().await.unwrap();
        assert_eq!(runs.len(), 1, "{}", s.name);
        assert!(
            jobs(&s.store).job(kmf::store::clone_job_id(&runs[0].id)).await.unwrap().is_some(),
            "{}: its job too",
            s.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_run_starts_one_clone_skips_while_one_runs_and_ends_when_deleted() {
    use kmf::domain::clone::CloneRun;
    use kmf::domain::clone_schedule::{Cadence, CloneSchedule, ScheduledRun};
    use kmf::domain::ids::CloneId;
    use kmf::store::{DueRun, clone_job_id, clone_schedule_job_id};
    const HOUR: i64 = 3_600_000;
    let audit = |c: &CloneRun| AuditEvent::new(c.started_at, "system", "clone.start", c.id.as_str(), Outcome::Success);
    for s in subjects() {
        let (st, clones) = (&s.store, CloneStore::new(&s.store));
        let (n, t0) = (name("hourly"), UnixMillis(1_000));
        let schedule = CloneSchedule::new(n.clone(), sys(9), host(), Cadence::every(HOUR).unwrap(), t0, "admin".into());
        clones.create_clone_schedule(schedule.unwrap(), vec![]).await.unwrap();
        let again = CloneSchedule::new(n.clone(), sys(8), host(), Cadence::every(HOUR).unwrap(), t0, "x".into());
        let again = clones.create_clone_schedule(again.unwrap(), vec![]).await;
        assert!(matches!(again, Err(StoreError::AlreadyExists { .. })));
        let job_id = clone_schedule_job_id(&n);
        assert_eq!(jobs(st).job(job_id.clone()).await.unwrap().unwrap().next_due, t0.plus_millis(HOUR), "{}", s.name);
        assert!(
            jobs(st).claim_due_jobs("r".into(), t0, 60_000, 10).await.unwrap().is_empty(),
            "{}: not due yet",
            s.name
        );

        // Due: one transaction starts the clone, records the run and moves the job on.
        let due1 = t0.plus_millis(HOUR);
        let (job, lease) = jobs(st).claim_due_jobs("r".into(), due1, 60_000, 10).await.unwrap().remove(0);
        assert_eq!(job.id, job_id);
        let a = CloneId::from_random([1; 16]);
        let run = |lease: &kmf::domain::job::Lease, due, now, clone_id| DueRun {
            schedule: n.clone(),
            lease: lease.clone(),
            due,
            now,
            clone_id,
        };
        let first = clones.run_clone_schedule(run(&lease, due1, due1, a.clone()), audit).await.unwrap();
        assert_eq!(first, Some(ScheduledRun::Started(a.clone())), "{}", s.name);
        assert!(jobs(st).job(clone_job_id(&a)).await.unwrap().is_some(), "{}: the clone's job", s.name);
        let moved = jobs(st).job(job_id.clone()).await.unwrap().unwrap();
        assert_eq!((moved.next_due, moved.lease.is_none()), (due1.plus_millis(HOUR), true), "{}", s.name);
        // The same run made again under the spent lease changes nothing.
        let replay = clones.run_clone_schedule(run(&lease, due1, due1, a.clone()), audit).await;
        assert!(matches!(replay, Err(StoreError::Stale { .. })), "{}: {replay:?}", s.name);
        assert_eq!(clones.clone_runs().await.unwrap().len(), 1);

        // The schedule's job, claimed at `due` (other jobs are due by then too).
        let claim_schedule = async |due| {
            let claimed = jobs(st).claim_due_jobs("r".into(), due, 60_000, 10).await.unwrap();
            claimed.into_iter().find(|(j, _)| j.id == job_id).unwrap()
        };
        // Due again while clone `a` still runs: skipped, counted, no second clone.
        let due2 = due1.plus_millis(HOUR);
        let (_, lease2) = claim_schedule(due2).await;
        let skipped = clones.run_clone_schedule(run(&lease2, due2, due2, CloneId::from_random([2; 16])), audit).await;
        assert_eq!(skipped.unwrap(), Some(ScheduledRun::Skipped(a.to_string())), "{}", s.name);
        assert_eq!(clones.clone_runs().await.unwrap().len(), 1, "{}", s.name);
        let listed = clones.clone_schedules().await.unwrap();
        assert_eq!((listed[0].runs, listed[0].skipped, listed[0].next_run_at), (1, 1, due2.plus_millis(HOUR)));

        // Deleted while a runner holds its job: the job stays until that run ends it.
        let due3 = due2.plus_millis(HOUR);
        let (_, lease3) = claim_schedule(due3).await;
        assert!(clones.delete_clone_schedule(n.clone(), vec![]).await.unwrap().is_some());
        assert!(jobs(st).job(job_id.clone()).await.unwrap().is_some(), "{}: held, so kept", s.name);
        let ended = clones.run_clone_schedule(run(&lease3, due3, due3, CloneId::from_random([3; 16])), audit).await;
        assert_eq!(ended.unwrap(), None);
        assert!(jobs(st).job(job_id.clone()).await.unwrap().is_none(), "{}: ended by its run", s.name);
        assert!(clones.delete_clone_schedule(n.clone(), vec![]).await.unwrap().is_none(), "{}: already gone", s.name);
        assert_eq!(clones.clone_runs().await.unwrap().len(), 1, "{}", s.name);
    }
}

/// Schema 2 → 3 (issue 22): the clone grants written before grants had ids
/// are deleted at open, on both engines, and nothing else changes; opening
/// again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_2_database_loses_its_old_clone_grants_at_open() {
    use kmf::store::tuple::str_key;
    let seed = |tx: &mut dyn kmf::store::engine::WriteTxn| {
        tx.put(Table::Meta, b"sys_id", sys(1).as_str().as_bytes()).unwrap();
        tx.put(Table::Meta, b"host", b"h:1").unwrap();
        tx.put(Table::Meta, b"schema_version", b"2").unwrap();
        let old = r#"{"v":1,"specs":["s"],"granted_at":1,"expires_at":9999999999999}"#;
        tx.put(Table::CloneGrants, &str_key(sys(7).as_str()), old.as_bytes()).unwrap();
        tx.put(Table::CloneGrants, &str_key(sys(8).as_str()), old.as_bytes()).unwrap();
        let target = r#"{"v":1,"host":"t:1","added_at":1,"added_by":"operator:root"}"#;
        tx.put(Table::CloneTargets, &str_key(sys(7).as_str()), target.as_bytes()).unwrap();
    };
    async fn check(store: Store) {
        let store = Arc::new(store);
        let clones = CloneStore::new(&store);
        assert_eq!(clones.clone_grant(sys(7)).await.unwrap(), None, "an old grant approves nothing any more");
        assert_eq!(clones.clone_grant(sys(8)).await.unwrap(), None);
        assert_eq!(clones.clone_targets().await.unwrap().len(), 1, "the clone target is kept");
        assert_eq!(store.sys_id().unwrap(), sys(1));
    }
    // In memory.
    let engine = MemoryEngine::default();
    let mut tx = engine.begin_write().unwrap();
    seed(tx.as_mut());
    tx.commit().unwrap();
    let store = Store::open(Box::new(engine)).unwrap();
    check(store).await;
    // redb, opened twice.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kmf.redb");
    {
        let engine = kmf::store::RedbEngine::create(&path).unwrap();
        let mut tx = engine.begin_write().unwrap();
        seed(tx.as_mut());
        tx.commit().unwrap();
    }
    check(Store::open_redb(&path).unwrap()).await;
    check(Store::open_redb(&path).unwrap()).await;
}

/// The four conditional catalog writes refuse a read that is out of date
/// (`Stale`, nothing written, no audit entry), and a lifecycle cap changed
/// between the read and the write is caught in the writing transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_writes_refuse_a_stale_read() {
    use kmf::domain::key::{LifecycleDefinition, LifecyclePolicy, PolicyScope};
    use kmf::domain::property::Property;
    const DAY: i64 = 86_400_000;
    let stale = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Stale { .. }));
    for s in subjects() {
        let st = &s.store;
        let m = Module { name: name("m"), created_at: UnixMillis(1) };
        let cat = CatalogStore::new(st);
        cat.insert_module(m, vec![], vec![]).await.unwrap();
        cat.insert_spec(spec("a"), vec![]).await.unwrap();
        let read = cat.spec(name("a")).await.unwrap().unwrap();
        let lc = |days: i64| LifecycleDefinition { expire_after: Some(days * DAY), destroy_after_idle: None };

        // update_spec: a spec changed since it was read.
        let changed = Spec { lifecycle: lc(10), ..read.clone() };
        cat.update_spec(read.clone(), changed.clone(), vec![event("spec.lifecycle")]).await.unwrap();
        let n = audit_len(st);
        let other = Spec { lifecycle: lc(20), ..read.clone() };
        assert!(stale(cat.update_spec(read.clone(), other, vec![event("spec.lifecycle")]).await), "{}", s.name);
        assert_eq!((cat.spec(name("a")).await.unwrap().unwrap(), audit_len(st)), (changed.clone(), n), "{}", s.name);

        // set_spec_lifecycle: a stale spec, then a cap changed between read and write.
        let r = cat.set_spec_lifecycle(read.clone(), lc(30), None, vec![event("x")]).await;
        assert!(stale(r.map(|_| ())), "{}", s.name);
        let instance = |days: i64| LifecyclePolicy {
            scope: PolicyScope::Instance,
            active: true,
            max_expire_after: Some(days * DAY),
        };
        let read = cat.spec(name("a")).await.unwrap().unwrap();
        let cap_read = None; // checked against no policy ...
        cat.put_lifecycle_policy(None, instance(15), vec![event("lifecycle_policy.set")]).await.unwrap(); // ... a cap arrives
        let n = audit_len(st);
        let r = cat.set_spec_lifecycle(read.clone(), lc(30), cap_read, vec![event("spec.lifecycle")]).await;
        assert!(stale(r.map(|_| ())), "{}: the cap is checked in the writing transaction", s.name);
        assert_eq!((cat.spec(name("a")).await.unwrap().unwrap(), audit_len(st)), (read.clone(), n), "{}", s.name);
        let done =
            cat.set_spec_lifecycle(read.clone(), lc(12), Some(15 * DAY), vec![event("spec.lifecycle")]).await.unwrap();
        assert_eq!((done.lifecycle, cat.spec(name("a")).await.unwrap().unwrap()), (lc(12), done.clone()), "{}", s.name);

        // put_lifecycle_policy: the policy of that scope changed since (or appeared).
        let n = audit_len(st);
        assert!(stale(cat.put_lifecycle_policy(None, instance(40), vec![event("x")]).await), "{}", s.name);
        let r = cat.put_lifecycle_policy(Some(instance(16)), instance(40), vec![event("x")]).await;
        assert!(stale(r), "{}", s.name);
        assert_eq!((cat.lifecycle_policies().await.unwrap(), audit_len(st)), (vec![instance(15)], n), "{}", s.name);
        cat.put_lifecycle_policy(Some(instance(15)), instance(40), vec![event("lifecycle_policy.set")]).await.unwrap();
        assert_eq!(cat.lifecycle_policies().await.unwrap(), vec![instance(40)], "{}", s.name);

        // put_property_checked: unset when read, set since; then set to another value since.
        let prop = |value: &str| Property {
            name: "x.y".into(),
            value: value.into(),
            updated_at: UnixMillis(1),
            updated_by: "t".into(),
        };
        let audit = |_: Option<&str>| event("property.set");
        let props = PropertyStore::new(st);
        props.put_property_checked(None, prop("1"), audit).await.unwrap();
        let n = audit_len(st);
        assert!(stale(props.put_property_checked(None, prop("2"), audit).await), "{}", s.name);
        assert!(stale(props.put_property_checked(Some(prop("0")), prop("2"), audit).await), "{}", s.name);
        assert_eq!((props.property("x.y".into()).await.unwrap(), audit_len(st)), (Some(prop("1")), n), "{}", s.name);
        props.put_property_checked(Some(prop("1")), prop("2"), audit).await.unwrap();
        assert_eq!(props.property("x.y".into()).await.unwrap(), Some(prop("2")), "{}", s.name);
    }
}
