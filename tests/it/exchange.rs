//! Adhoc exchanges between two in-process nodes over real mTLS.

use kmf::rpc::pb::{self, Decision, RequestStatus};

use crate::support::{Pki, TestNode, status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_exchange_moves_keys_and_decrypts_after_not_before() {
    let pki = Pki::new();
    let (mut source, mut target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("payroll", "salary", true).await;
    s.keys.rotate_key(pb::RotateKeyRequest { spec: "salary".into() }).await.expect("rotate");
    t.spec("payroll", "salary", false).await;
    t.spec("payroll", "missing", false).await;
    let ct = s.encrypt("salary", b"4200 EUR", b"emp:7").await;
    assert_eq!(t.decrypt(&ct, b"emp:7").await.expect_err("no key yet").code(), tonic::Code::NotFound);

    let created = t.create_request(&source, &["salary", "missing"]).await.expect("create");
    assert_eq!(status(&created), RequestStatus::RequestPending);
    let on_source = s.get(&created.request_id).await;
    assert_eq!(status(&on_source), RequestStatus::RequestPending);
    assert_eq!(on_source.total_key_count, 2);

    let approved = s.decide(&created.request_id, Decision::Approve, "").await.expect("approve");
    assert_eq!(status(&approved), RequestStatus::RequestCompleted, "{approved:?}");
    assert_eq!((approved.total_key_count, approved.exported_key_count, approved.imported_key_count), (2, 2, 2));
    let on_target = t.get(&created.request_id).await;
    assert_eq!(status(&on_target), RequestStatus::RequestCompleted);
    let counts = (on_target.total_key_count, on_target.exported_key_count, on_target.imported_key_count);
    assert_eq!(counts, (2, 2, 2), "both sides show every count");
    let missing = on_target.lines.iter().find(|l| l.spec == "missing").expect("line");
    assert_eq!((missing.status, missing.key_count), (pb::SpecLineStatus::NotOnSource as i32, 0));

    assert_eq!(t.decrypt(&ct, b"emp:7").await.expect("decrypt after"), b"4200 EUR");
    let err = t.decrypt(&ct, b"emp:8").await.expect_err("associated data is bound");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("associated data"), "{err}");
    let keys = t.keys_of("salary").await;
    assert_eq!(keys.len(), 2);
    for k in &keys {
        assert_eq!(k.state, pb::KeyState::Expired as i32, "imported keys are Expired: {k:?}");
        assert_eq!(k.origin_sys_id, source.sys_id);
        assert!(k.expired_at.is_some());
    }
    source.stop().await;
    target.stop().await;
}
