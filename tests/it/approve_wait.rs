//! `kmfctl exchange approve --wait` against in-process daemons: while the
//! source's deliveries are held, UpdateRequest answers REQUEST_APPROVED and
//! kmfctl keeps polling; released, the background delivery completes and
//! kmfctl exits 0 with the COMPLETED request. A wait that runs out prints the
//! request still APPROVED and exits 1 with a message saying where to look.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kmf::domain::auth::Role;
use kmf::rpc::pb::RequestStatus;

use crate::support::{Pki, Recorder, TestNode, kmfctl_command, status};

/// A source whose deliveries are recorded (and can be held), and a target.
async fn pair(pki: &Pki) -> (TestNode, Arc<Recorder>, TestNode) {
    let recorder = OnceLock::new();
    let source = TestNode::start_with(pki, |inner| {
        let r = Recorder::wrap(inner);
        let _ = recorder.set(r.clone());
        r
    })
    .await;
    let target = TestNode::start(pki).await;
    (source, recorder.get().expect("recorder").clone(), target)
}

/// Waits (at most 30 s) for the kmfctl child to exit.
async fn finish(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("kmfctl did not exit within 30 s")
        .expect("kmfctl output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_wait_polls_until_the_background_delivery_completes_or_times_out() {
    let pki = Pki::new();
    let (mut source, recorder, mut target) = pair(&pki).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    let manager = pki.operator("mgr", &[Role::CryptographicManager]);
    let dir = tempfile::tempdir().expect("tempdir");

    // Deliveries held: UpdateRequest answers APPROVED and kmfctl waits.
    recorder.hold.store(true, Ordering::SeqCst);
    let id = t.create_request(&source, &["salary"]).await.expect("create").request_id;
    let mut child = kmfctl_command(&source, &manager, dir.path())
        .args(["--json", "exchange", "approve", &id, "--wait", "--timeout", "30s"])
        .spawn()
        .expect("spawn kmfctl");
    s.wait_for(&id, "approved", |r| status(r) == RequestStatus::RequestApproved).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while recorder.bundles.lock().expect("lock").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no delivery was tried");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; the loop is bounded by its deadline
    }
    assert!(child.try_wait().expect("try_wait").is_none(), "kmfctl returned while the request was APPROVED");
    recorder.hold.store(false, Ordering::SeqCst);
    let out = finish(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no spinner when stderr is not a terminal: {stderr:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(printed["request"]["status"], "REQUEST_COMPLETED", "{printed}");
    assert_eq!(printed["request"]["exportedKeyCount"], 1, "{printed}");
    let on_target = t.wait_for(&id, "completed", |r| status(r) == RequestStatus::RequestCompleted).await;
    assert_eq!(on_target.imported_key_count, 1);

    // Held again, and a wait too short: the request is printed still
    // APPROVED, kmfctl exits 1 naming where to look; the delivery goes on.
    recorder.hold.store(true, Ordering::SeqCst);
    let id = t.create_request(&source, &["salary"]).await.expect("create").request_id;
    let child = kmfctl_command(&source, &manager, dir.path())
        .args(["exchange", "approve", &id, "--wait", "--timeout", "1s"])
        .spawn()
        .expect("spawn kmfctl");
    let out = finish(child).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("status") && l.ends_with("REQUEST_APPROVED")), "{stdout}");
    let message = format!(
        "kmfctl: error: request {id} is still REQUEST_APPROVED after 1s; delivery continues in the background \
         — check with `kmfctl exchange get {id}`"
    );
    assert_eq!(stderr.trim(), message);
    recorder.hold.store(false, Ordering::SeqCst);
    s.wait_for(&id, "completed in the background", |r| status(r) == RequestStatus::RequestCompleted).await;

    source.stop().await;
    target.stop().await;
}
