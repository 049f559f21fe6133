//! Exactly once across lost answers, racing decisions, callers that go
//! away, targets that hang and runners that die holding a lease. Real
//! daemons over mTLS on loopback; each test fails if its guarantee breaks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kmf::app::StartOptions;
use kmf::clock::{Clock, ManualClock};
use kmf::domain::auth::Role;
use kmf::domain::exchange::SignedBlob;
use kmf::domain::ids::{Host, Name, RequestId, SysId};
use kmf::domain::job::{JobId, JobKind};
use kmf::error::PeerError;
use kmf::node::jobs::JobSettings;
use kmf::node::ports::{PeerFuture, PeerLink};
use kmf::rpc::pb::{self, Decision, RequestStatus};
use kmf::store::{JobStore, RequestStore};
use tokio::sync::Semaphore;
use tonic::Code;

use crate::proxy::FreezableProxy;
use crate::support::{DeliveryHook, Intercepted, Ops, Pki, Recorder, TestNode, status};

/// Entries of `action` about request `id` in a node's audit log.
async fn audit_count(ops: &mut Ops, action: &str, id: &str) -> usize {
    let (mut n, mut after) = (0, 0);
    for _ in 0..1000 {
        let page = ops
            .audit
            .list_audit_entries(pb::ListAuditEntriesRequest { after_seq: after, limit: 1000, ..Default::default() })
            .await
            .expect("audit")
            .into_inner();
        n += page.entries.iter().filter(|e| e.action == action && e.subject == id).count();
        if page.next_after_seq == 0 {
            return n;
        }
        after = page.next_after_seq;
    }
    panic!("audit log did not end within 1000 pages");
}

/// A source and a target with spec "salary" (`keys` keys on the source) and
/// a pending request from the target.
async fn pending_exchange(pki: &Pki, source: &TestNode, target: &TestNode, keys: u32) -> String {
    let (mut s, mut t) = (source.admin(pki).await, target.admin(pki).await);
    s.spec("payroll", "salary", true).await;
    if keys > 1 {
        let services = &source.app.as_ref().expect("running").services;
        services.catalog.seed_rotations(Name::parse("salary", "spec").expect("name"), keys - 1).await.expect("seed");
    }
    t.spec("payroll", "salary", false).await;
    let r = t.create_request(source, &["salary"]).await.expect("create");
    assert_eq!(status(&r), RequestStatus::RequestPending);
    r.request_id
}

async fn source_record(node: &TestNode, id: &str) -> kmf::domain::exchange::ExchangeRequest {
    let id = RequestId::parse(id).expect("id");
    let requests = RequestStore::new(node.app.as_ref().expect("running").services.store());
    requests.request(id).await.expect("read").expect("request").value
}

/// Delivers, then loses the first `drop` answers (as if the call timed out
/// after the target committed), keeping the receipts the target gave.
struct LosesAnswers {
    inner: Arc<dyn PeerLink>,
    drop: AtomicUsize,
    receipts: std::sync::Mutex<Vec<SignedBlob>>,
}

impl DeliveryHook for LosesAnswers {
    fn inner(&self) -> &Arc<dyn PeerLink> {
        &self.inner
    }

    fn deliver<'a>(&'a self, h: &'a Host, e: &'a SysId, b: SignedBlob) -> PeerFuture<'a, SignedBlob> {
        Box::pin(async move {
            let receipt = self.inner.deliver_bundle(h, e, b).await?;
            self.receipts.lock().expect("lock").push(receipt.clone());
            if self.drop.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(PeerError::Unreachable { host: h.to_string(), reason: "answer lost (test)".into() });
            }
            Ok(receipt)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_is_delivered_again_and_answered_with_the_same_receipt() {
    let pki = Pki::new();
    let link: Arc<std::sync::OnceLock<Arc<LosesAnswers>>> = Arc::default();
    let l2 = Arc::clone(&link);
    let source = TestNode::start_with(&pki, move |inner| {
        let l = Arc::new(LosesAnswers { inner, drop: AtomicUsize::new(2), receipts: Default::default() });
        let _ = l2.set(Arc::clone(&l));
        Arc::new(Intercepted(l))
    })
    .await;
    let target = TestNode::start(&pki).await;
    let id = pending_exchange(&pki, &source, &target, 5).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.decide(&id, Decision::Approve, "").await.expect("approve");
    let done =
        s.wait_for(&id, "completion after two lost answers", |r| status(r) == RequestStatus::RequestCompleted).await;
    assert_eq!(done.imported_key_count, 5);
    let on_target = t.get(&id).await;
    assert_eq!((status(&on_target), on_target.imported_key_count), (RequestStatus::RequestCompleted, 5));
    assert_eq!(t.keys_of("salary").await.len(), 5, "every key once");
    assert_eq!(audit_count(&mut t, "exchange.import", &id).await, 1, "one import in the target's audit log");
    let receipts = link.get().expect("link").receipts.lock().expect("lock").clone();
    assert_eq!(receipts.len(), 3, "delivered three times, answered three times");
    assert!(receipts.iter().all(|r| *r == receipts[0]), "the same signed receipt every time");
    assert_eq!(source_record(&source, &id).await.receipt, Some(receipts[0].clone()), "the source keeps that receipt");
    assert_eq!(audit_count(&mut s, "exchange.complete", &id).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_approvals_and_ten_rejections_one_decision_wins() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let target = TestNode::start(&pki).await;
    let id = pending_exchange(&pki, &source, &target, 3).await;
    let approver = Ops::new(source.channel(&pki.operator("alice", &[Role::CryptographicManager])).await);
    let rejecter = Ops::new(source.channel(&pki.operator("bob", &[Role::CryptographicManager])).await);
    let start = Arc::new(tokio::sync::Barrier::new(60));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..60 {
        let mut ops = if i < 50 { approver.clone() } else { rejecter.clone() };
        let (id, start) = (id.clone(), Arc::clone(&start));
        calls.spawn(async move {
            start.wait().await;
            let decision = if i < 50 { Decision::Approve } else { Decision::Reject };
            (decision, ops.decide(&id, decision, "not now").await)
        });
    }
    let results: Vec<_> = calls.join_all().await;
    let wins: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(wins.len(), 1, "exactly one decision: {results:?}");
    let winner = wins[0].0;
    let winner_actor = if winner == Decision::Approve { "operator:alice" } else { "operator:bob" };
    for (_, r) in results.iter().filter(|(_, r)| r.is_err()) {
        let e = r.as_ref().expect_err("loser");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        assert!(e.message().contains(&format!("by {winner_actor}")), "names who decided: {e}");
    }
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    let want =
        if winner == Decision::Approve { RequestStatus::RequestCompleted } else { RequestStatus::RequestRejected };
    s.wait_for(&id, "the winner's outcome on the source", |r| status(r) == want).await;
    t.wait_for(&id, "the same outcome on the target", |r| status(r) == want).await;
    let keys = t.keys_of("salary").await.len();
    assert_eq!(keys, if winner == Decision::Approve { 3 } else { 0 }, "imported once or not at all");
    let decisions =
        audit_count(&mut s, "exchange.approve", &id).await + audit_count(&mut s, "exchange.reject", &id).await;
    assert_eq!(decisions, 1, "one decision in the source's audit log");
    assert!(audit_count(&mut t, "exchange.import", &id).await <= 1);
}

/// Lets deliveries through only when the test says so.
struct Gate {
    inner: Arc<dyn PeerLink>,
    open: Semaphore,
    waiting: AtomicUsize,
}

impl DeliveryHook for Gate {
    fn inner(&self) -> &Arc<dyn PeerLink> {
        &self.inner
    }

    fn deliver<'a>(&'a self, h: &'a Host, e: &'a SysId, b: SignedBlob) -> PeerFuture<'a, SignedBlob> {
        Box::pin(async move {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _permit = self
                .open
                .acquire()
                .await
                .map_err(|_| PeerError::Unreachable { host: h.to_string(), reason: "gate closed".into() })?;
            self.inner.deliver_bundle(h, e, b).await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_does_not_change_the_outcome() {
    let pki = Pki::new();
    let gate: Arc<std::sync::OnceLock<Arc<Gate>>> = Arc::default();
    let g2 = Arc::clone(&gate);
    let source = TestNode::start_with(&pki, move |inner| {
        let g = Arc::new(Gate { inner, open: Semaphore::new(0), waiting: AtomicUsize::new(0) });
        let _ = g2.set(Arc::clone(&g));
        Arc::new(Intercepted(g))
    })
    .await;
    let target = TestNode::start(&pki).await;
    let id = pending_exchange(&pki, &source, &target, 4).await;
    let gate = gate.get().expect("gate").clone();
    let mut s = source.admin(&pki).await;
    let call = {
        let (mut ops, id) = (s.clone(), id.clone());
        tokio::spawn(async move { ops.decide(&id, Decision::Approve, "").await })
    };
    // The approval is committed and its delivery started; then the caller goes away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gate.waiting.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "delivery never started");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval; bounded by the deadline
    }
    call.abort();
    assert!(call.await.expect_err("aborted").is_cancelled());
    assert_eq!(status(&s.get(&id).await), RequestStatus::RequestApproved);
    gate.open.add_permits(1000);
    s.wait_for(&id, "completion without its caller", |r| status(r) == RequestStatus::RequestCompleted).await;
    let mut t = target.admin(&pki).await;
    assert_eq!(status(&t.get(&id).await), RequestStatus::RequestCompleted);
    assert_eq!(t.keys_of("salary").await.len(), 4);
    assert_eq!(audit_count(&mut t, "exchange.import", &id).await, 1, "one import in the audit log");
    assert_eq!(gate.waiting.load(Ordering::SeqCst), 1, "delivered once");
}

fn fast_jobs() -> JobSettings {
    JobSettings {
        decision_wait: Duration::from_millis(800),
        delivery_timeout: Duration::from_secs(2),
        ..JobSettings::for_interval(Duration::from_millis(100))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_target_delays_nobody_and_completes_once_it_wakes() {
    let pki = Pki::new();
    let source =
        TestNode::start_opts(&pki, None, None, StartOptions { jobs: Some(fast_jobs()), ..Default::default() }).await;
    let mut s = source.admin(&pki).await;
    s.spec("payroll", "salary", true).await;

    // The hanging target: peers reach it through a proxy that accepts TCP and never answers.
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("reserve");
    let backend_addr = backend.local_addr().expect("addr");
    drop(backend);
    let proxy = FreezableProxy::start(backend_addr, true).await;
    let advertised = Host::parse(&proxy.addr.to_string()).expect("host");
    let hung = TestNode::start_opts_on(&pki, backend_addr, advertised).await;
    let mut h = hung.admin(&pki).await;
    h.spec("payroll", "salary", false).await;
    let hung_id = h.create_request(&source, &["salary"]).await.expect("create").request_id;

    // Five live targets, ten requests each (made concurrently: each request
    // costs its target an RSA-3072 transport key).
    let mut live = Vec::new();
    for _ in 0..5 {
        let node = TestNode::start(&pki).await;
        node.admin(&pki).await.spec("payroll", "salary", false).await;
        live.push(node);
    }
    // At most 4 at a time, so no call waits behind 50 key generations on 2 cores.
    let creators = Arc::new(Semaphore::new(4));
    let mut creating = tokio::task::JoinSet::new();
    for (i, node) in live.iter().enumerate() {
        for _ in 0..10 {
            let (mut ops, source_ref) = (node.admin(&pki).await, (source.sys_id.clone(), source.host.to_string()));
            let creators = Arc::clone(&creators);
            creating.spawn(async move {
                let _turn = creators.acquire().await.expect("semaphore");
                let ask = pb::CreateRequestRequest {
                    source_sys_id: source_ref.0,
                    source_host: source_ref.1,
                    spec_names: vec!["salary".into()],
                    expires_in: None,
                    frequency: pb::Frequency::Adhoc as i32,
                    rekey_after_import: false,
                };
                let r = ops.exchange.create_request(ask).await.expect("create").into_inner();
                (i, r.request.expect("request").request_id)
            });
        }
    }
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); live.len()];
    for (i, id) in creating.join_all().await {
        ids[i].push(id);
    }
    let live: Vec<(TestNode, Vec<String>)> = live.into_iter().zip(ids).collect();

    let asked = tokio::time::Instant::now();
    let answer = s.decide(&hung_id, Decision::Approve, "").await.expect("approve the hung target's request");
    assert_eq!(status(&answer), RequestStatus::RequestApproved, "answered while its delivery hangs");
    assert!(asked.elapsed() < Duration::from_secs(5), "the caller waited {:?}", asked.elapsed());

    let mut approvals = tokio::task::JoinSet::new();
    for id in live.iter().flat_map(|(_, ids)| ids.clone()) {
        let mut ops = s.clone();
        approvals.spawn(async move { ops.decide(&id, Decision::Approve, "").await.map(|_| id) });
    }
    for r in approvals.join_all().await {
        let id = r.expect("approve a live target's request");
        s.wait_for(&id, "a live delivery", |r| status(r) == RequestStatus::RequestCompleted).await;
    }
    for (node, ids) in &live {
        let mut ops = node.admin(&pki).await;
        for id in ids {
            assert_eq!(status(&ops.get(id).await), RequestStatus::RequestCompleted);
        }
    }
    assert!(proxy.held.load(Ordering::SeqCst) >= 1, "the hung target was dialled");
    assert_eq!(status(&h.get(&hung_id).await), RequestStatus::RequestPending, "still hanging meanwhile");

    proxy.thaw();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if status(&s.get(&hung_id).await) == RequestStatus::RequestCompleted {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the woken target's request did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    }
    assert_eq!(status(&h.get(&hung_id).await), RequestStatus::RequestCompleted);
    assert_eq!(h.keys_of("salary").await.len(), 1, "imported once");
    assert_eq!(audit_count(&mut h, "exchange.import", &hung_id).await, 1);
}

/// A source on a manual clock whose deliveries are held (unreachable) until
/// the test clears the recorder's `hold`.
async fn held_source(pki: &Pki, clock: &Arc<ManualClock>, jobs: JobSettings) -> (TestNode, Arc<Recorder>) {
    let recorder: Arc<std::sync::OnceLock<Arc<Recorder>>> = Arc::default();
    let r2 = Arc::clone(&recorder);
    let options = StartOptions {
        wrap_peers: Box::new(move |inner| {
            let r = Recorder::wrap(inner);
            r.hold.store(true, Ordering::SeqCst);
            let _ = r2.set(Arc::clone(&r));
            r
        }),
        clock: clock.clone(),
        jobs: Some(jobs),
        ..Default::default()
    };
    let source = TestNode::start_opts(pki, None, None, options).await;
    let recorder = recorder.get().expect("recorder").clone();
    (source, recorder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_held_by_a_dead_runner_is_taken_again_after_its_lease_once() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let (source, recorder) =
        held_source(&pki, &clock, JobSettings { lease: Duration::from_secs(60), ..fast_jobs() }).await;
    let target = TestNode::start(&pki).await;
    let id = pending_exchange(&pki, &source, &target, 2).await;
    let services = Arc::clone(&source.app.as_ref().expect("running").services);
    let store = JobStore::new(services.store());
    let job = JobId::for_request(JobKind::Deliver, &RequestId::parse(&id).expect("id"));

    // Approved while the target is unreachable: the first try fails and the
    // job waits for its backoff (the manual clock does not move).
    let mut s = source.admin(&pki).await;
    let approved = s.decide(&id, Decision::Approve, "").await.expect("approve");
    assert_eq!(status(&approved), RequestStatus::RequestApproved);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let j = store.job(job.clone()).await.expect("read").expect("delivery job");
        if j.attempts >= 1 && j.lease.is_none() {
            break j;
        }
        assert!(tokio::time::Instant::now() < deadline, "the first delivery never failed: {j:?}");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval; bounded by the deadline
    };

    // Another runner claims it at its due time and dies holding the lease.
    let claimed = store.claim_due_jobs("dead-runner".into(), waiting.next_due, 60_000, 10).await.expect("claim");
    assert!(claimed.iter().any(|(j, _)| j.id == job), "the dead runner took the job: {claimed:?}");
    let lease_end = store.job(job.clone()).await.expect("read").expect("job").lease.expect("leased").expires_at;
    // Until the lease runs out nobody else gets it.
    let early = kmf::domain::ids::UnixMillis(lease_end.0 - 1);
    let taken = store.claim_due_jobs("someone".into(), early, 60_000, 10).await.expect("claim");
    assert!(taken.iter().all(|(j, _)| j.id != job));
    assert_eq!(status(&s.get(&id).await), RequestStatus::RequestApproved);

    // The target is back; the lease runs out; the live runner takes the job over, once.
    recorder.hold.store(false, Ordering::SeqCst);
    clock.advance_millis(lease_end.0 - clock.now().0 + 1);
    services.jobs.wake();
    s.wait_for(&id, "delivery by the next runner", |r| status(r) == RequestStatus::RequestCompleted).await;
    assert!(store.job(job).await.expect("read").is_none(), "the job is done");
    let mut t = target.admin(&pki).await;
    assert_eq!(t.keys_of("salary").await.len(), 2);
    assert_eq!(audit_count(&mut t, "exchange.import", &id).await, 1);
    let delivered = recorder.bundles.lock().expect("lock").len();
    assert_eq!(delivered, 2, "one held try, then one delivery after the takeover");
}

/// Refuses the first `refuse` deliveries as the target would (the bundle
/// reaches nobody), then lets them through.
struct RefusesFirst {
    inner: Arc<dyn PeerLink>,
    refuse: AtomicUsize,
}

impl DeliveryHook for RefusesFirst {
    fn inner(&self) -> &Arc<dyn PeerLink> {
        &self.inner
    }

    fn deliver<'a>(&'a self, h: &'a Host, e: &'a SysId, b: SignedBlob) -> PeerFuture<'a, SignedBlob> {
        if self.refuse.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            let refusal = kmf::domain::DomainError::FailedPrecondition("target is restoring (test)".into());
            return Box::pin(async move { Err(PeerError::Refused(refusal)) });
        }
        self.inner.deliver_bundle(h, e, b)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_retried_redoing_only_what_did_not_happen() {
    let pki = Pki::new();
    let source = TestNode::start_with(&pki, |inner| {
        Arc::new(Intercepted(Arc::new(RefusesFirst { inner, refuse: AtomicUsize::new(1) })))
    })
    .await;
    let mut target = TestNode::start(&pki).await;
    let id = pending_exchange(&pki, &source, &target, 3).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);

    // Source side: the target refused the bundle; a retry delivers the same bundle again.
    s.decide(&id, Decision::Approve, "").await.expect("approve");
    let failed = s.wait_for(&id, "the refusal", |r| status(r) == RequestStatus::ErrorOnRemoteInstance).await;
    assert_eq!(failed.imported_key_count, 0);
    assert_eq!(status(&t.get(&id).await), RequestStatus::RequestPending, "nothing reached the target");
    let auditor = Ops::new(source.channel(&pki.operator("carol", &[Role::CryptographicAuditor])).await);
    let err = auditor.clone().decide(&id, Decision::Retry, "").await.expect_err("an auditor cannot retry");
    assert_eq!(err.code(), Code::PermissionDenied);
    s.decide(&id, Decision::Retry, "").await.expect("retry");
    s.wait_for(&id, "the retried delivery", |r| status(r) == RequestStatus::RequestCompleted).await;
    assert_eq!(status(&t.get(&id).await), RequestStatus::RequestCompleted);
    assert_eq!(t.keys_of("salary").await.len(), 3);
    let again = s.decide(&id, Decision::Retry, "").await.expect_err("a completed request is not retried");
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("REQUEST_COMPLETED"), "{again}");
    assert_eq!(audit_count(&mut s, "exchange.retry", &id).await, 1);

    // Target side: the source was down when the target opened its request;
    // once it is back, a retry on the target opens it again.
    let mut source = source;
    source.stop().await;
    let opened = t.create_request(&source, &["salary"]).await.expect_err("the source is down");
    assert_eq!(opened.code(), Code::Unavailable);
    let list = t.exchange.list_requests(pb::ListRequestsRequest::default()).await.expect("list").into_inner();
    let failed =
        list.requests.iter().find(|r| status(r) == RequestStatus::ErrorOnRemoteInstance).expect("failed request");
    let failed_id = failed.request_id.clone();
    source.restart_same_port(None).await;
    let retried = t.decide(&failed_id, Decision::Retry, "").await.expect("retry on the target");
    assert_eq!(status(&retried), RequestStatus::RequestPending);
    let mut s = source.admin(&pki).await;
    assert_eq!(status(&s.get(&failed_id).await), RequestStatus::RequestPending, "opened on the source");
    s.decide(&failed_id, Decision::Approve, "").await.expect("approve");
    s.wait_for(&failed_id, "completion", |r| status(r) == RequestStatus::RequestCompleted).await;
    t.wait_for(&failed_id, "completion", |r| status(r) == RequestStatus::RequestCompleted).await;
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_is_dialled_once_per_backoff_step_not_once_per_request() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let (source, recorder) = held_source(&pki, &clock, fast_jobs()).await;
    let target = TestNode::start(&pki).await;
    let first = pending_exchange(&pki, &source, &target, 1).await;
    let second = target.admin(&pki).await.create_request(&source, &["salary"]).await.expect("create").request_id;
    let store = JobStore::new(source.app.as_ref().expect("running").services.store());
    let dials = || recorder.bundles.lock().expect("lock").len();
    let settled = async |id: &str| {
        let job = JobId::for_request(JobKind::Deliver, &RequestId::parse(id).expect("id"));
        store.job(job).await.expect("read").filter(|j| j.claims >= 1 && j.lease.is_none())
    };
    let wait_settled = |id: String| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(j) = settled(&id).await {
                return j;
            }
            assert!(tokio::time::Instant::now() < deadline, "the delivery job of {id} never ran");
            tokio::time::sleep(Duration::from_millis(10)).await; // poll interval; bounded by the deadline
        }
    };
    let mut s = source.admin(&pki).await;
    s.decide(&first, Decision::Approve, "").await.expect("approve");
    let a = wait_settled(first.clone()).await;
    assert_eq!((a.attempts, dials()), (1, 1), "the first delivery dialled and failed");
    s.decide(&second, Decision::Approve, "").await.expect("approve");
    let b = wait_settled(second.clone()).await;
    assert_eq!(dials(), 1, "the second waits with the first instead of dialling the dead target");
    assert_eq!((b.attempts, b.next_due), (0, a.next_due), "postponed to the target's backoff, not failed");

    recorder.hold.store(false, Ordering::SeqCst);
    clock.advance_millis(a.next_due.0 - clock.now().0 + 1);
    source.app.as_ref().expect("running").services.jobs.wake();
    for id in [&first, &second] {
        s.wait_for(id, "delivery once the target is back", |r| status(r) == RequestStatus::RequestCompleted).await;
    }
    assert_eq!(dials(), 3, "one failed dial, then one delivery each");
}

/// Opens on the source, then loses the first `lose` answers (as if the source
/// died right after it recorded the request).
struct LosesOpenAnswers {
    inner: Arc<dyn PeerLink>,
    lose: Arc<AtomicUsize>,
}

impl PeerLink for LosesOpenAnswers {
    fn open_request<'a>(
        &'a self,
        h: &'a Host,
        e: &'a SysId,
        r: kmf::node::ports::OpenRequest,
    ) -> PeerFuture<'a, kmf::node::ports::SourceView> {
        Box::pin(async move {
            let view = self.inner.open_request(h, e, r).await?;
            if self.lose.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return Err(PeerError::Unreachable { host: h.to_string(), reason: "answer lost (test)".into() });
            }
            Ok(view)
        })
    }

    fn deliver_bundle<'a>(&'a self, h: &'a Host, e: &'a SysId, b: SignedBlob) -> PeerFuture<'a, SignedBlob> {
        self.inner.deliver_bundle(h, e, b)
    }

    fn notify_status<'a>(
        &'a self,
        h: &'a Host,
        e: &'a SysId,
        id: RequestId,
        s: kmf::domain::exchange::RequestStatus,
        reason: String,
    ) -> PeerFuture<'a, ()> {
        self.inner.notify_status(h, e, id, s, reason)
    }

    fn stream_snapshot<'a>(
        &'a self,
        h: &'a Host,
        e: &'a SysId,
    ) -> PeerFuture<'a, kmf::node::ports::PeerStream<kmf::domain::clone::SnapshotPart>> {
        self.inner.stream_snapshot(h, e)
    }
}

// The source recorded the request but the target never heard back (found by
// tests/it/grant_crash.rs: a source killed right after recording it). A retry
// on the target opens the same request again, with the transport key it
// already has: the source sees its own request, not a different one under a
// taken id, and a bundle wrapped for that key, even one approved and sent
// while the target's record was in error, still opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_opening_answer_reopens_the_same_request() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let lose = Arc::new(AtomicUsize::new(0));
    let lose2 = Arc::clone(&lose);
    let target = TestNode::start_with(&pki, move |inner| Arc::new(LosesOpenAnswers { inner, lose: lose2 })).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    for spec in ["salary", "bonus"] {
        s.spec("payroll", spec, true).await;
        t.spec("payroll", spec, false).await;
    }
    for (spec, approve_first) in [("salary", false), ("bonus", true)] {
        lose.store(1, Ordering::SeqCst);
        let lost = t.create_request(&source, &[spec]).await.expect_err("the answer was lost");
        assert_eq!(lost.code(), Code::Unavailable, "{lost:?}");
        let list = t.exchange.list_requests(pb::ListRequestsRequest::default()).await.expect("list").into_inner();
        let failed = list
            .requests
            .iter()
            .find(|r| status(r) == RequestStatus::ErrorOnRemoteInstance)
            .expect("the target's record is in error");
        let id = failed.request_id.clone();
        assert_eq!(status(&s.get(&id).await), RequestStatus::RequestPending, "the source recorded it");
        if approve_first {
            // Approved, and delivered while the target's record is in error:
            // the target refuses the bundle and the source's record is in error too.
            s.decide(&id, Decision::Approve, "").await.expect("approve");
            s.wait_for(&id, "the refused delivery", |r| status(r) == RequestStatus::ErrorOnRemoteInstance).await;
        }
        let retried = t.decide(&id, Decision::Retry, "").await.expect("retry on the target");
        assert_eq!(status(&retried), RequestStatus::RequestPending, "{retried:?}");
        if !approve_first {
            s.decide(&id, Decision::Approve, "").await.expect("approve");
        }
        // Approved first: the target's retry opened it again on the source,
        // which is the retry of the refused delivery: the same bundle is sent
        // again, unasked, and its key opens.
        s.wait_for(&id, "completion on the source", |r| status(r) == RequestStatus::RequestCompleted).await;
        let done = t.wait_for(&id, "completion on the target", |r| status(r) == RequestStatus::RequestCompleted).await;
        assert_eq!(done.imported_key_count, 1, "approve first: {approve_first}");
        assert_eq!(audit_count(&mut t, "exchange.import", &id).await, 1, "one import");
    }
    assert_eq!(t.keys_of("salary").await.len(), 1, "the key once");
    assert_eq!(t.keys_of("bonus").await.len(), 1, "the key once");
}
