//! Peer calls refused for who is calling are audited (`call.refused`, with
//! the identity of the caller's certificate) as operator refusals are: a
//! claimed sys_id that is not the certificate's, and a status notice for a
//! request the caller is not the source of. (A rogue bundle: negatives.rs.)

use kmf::rpc::pb;
use tonic::Code;

use crate::support::{Ops, Pki, TestNode, peer_client};

/// The `call.refused` entries of `actor` in `ops`' audit log.
pub async fn refusals(ops: &mut Ops, actor: &str) -> Vec<pb::AuditEntry> {
    let req = pb::ListAuditEntriesRequest {
        action_prefix: "call.refused".into(),
        actor: actor.into(),
        limit: 100,
        ..Default::default()
    };
    ops.audit.list_audit_entries(req).await.expect("audit").into_inner().entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_refusals_on_the_peer_service_are_audited() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let rogue = TestNode::start(&pki).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    let made = t
        .exchange
        .create_request(pb::CreateRequestRequest {
            source_sys_id: source.sys_id.clone(),
            source_host: source.host.to_string(),
            spec_names: vec!["salary".into()],
            expires_in: None,
            frequency: pb::Frequency::Adhoc as i32,
            rekey_after_import: false,
        })
        .await
        .expect("create")
        .into_inner()
        .request
        .expect("request");
    let actor = format!("instance:{}", rogue.sys_id);

    // 1. OpenRequest on the source, claiming another target sys_id.
    let mut at_source = peer_client(&source, &rogue.instance_files).await;
    let err = at_source
        .open_request(pb::OpenRequestRequest {
            request_id: "0123456789abcdef0123456789abcdef".into(),
            target_sys_id: target.sys_id.clone(),
            target_host: target.host.to_string(),
            source_sys_id: source.sys_id.clone(),
            spec_names: vec!["salary".into()],
            transport_public_key: vec![],
            wrapping_algorithm: 1,
            frequency: pb::Frequency::Adhoc as i32,
            ..Default::default()
        })
        .await
        .expect_err("claimed sys_id accepted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let on_source = refusals(&mut s, &actor).await;
    assert_eq!(on_source.len(), 1, "{on_source:?}");
    assert_eq!(on_source[0].subject, "/kmf.v1.KeyExchange/OpenRequest");
    assert_eq!(on_source[0].outcome, "refused");
    assert!(on_source[0].details.contains("claimed target_sys_id differs from the certificate"), "{on_source:?}");

    // 2. NotifyStatus on the target, claiming to be the source.
    let mut at_target = peer_client(&target, &rogue.instance_files).await;
    let notify = |source_sys_id: &str| pb::NotifyStatusRequest {
        request_id: made.request_id.clone(),
        source_sys_id: source_sys_id.to_owned(),
        status: pb::RequestStatus::RequestRejected as i32,
        reason: "forged".into(),
    };
    let err = at_target.notify_status(notify(&source.sys_id)).await.expect_err("claimed source accepted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // 3. A forged NotifyStatus: its own sys_id, for a request whose source it is not.
    let err = at_target.notify_status(notify(&rogue.sys_id)).await.expect_err("forged notice accepted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let on_target = refusals(&mut t, &actor).await;
    let details: Vec<&str> = on_target.iter().map(|e| e.details.as_str()).collect();
    assert_eq!(on_target.len(), 2, "{on_target:?}");
    assert!(on_target.iter().all(|e| e.subject == "/kmf.v1.KeyExchange/NotifyStatus"), "{on_target:?}");
    assert!(details[0].contains("claimed source_sys_id differs from the certificate"), "{details:?}");
    assert!(details[1].contains("not the request's source"), "{details:?}");

    // The request itself is untouched by either notice.
    let got = t.exchange.get_request(pb::GetRequestRequest { request_id: made.request_id.clone() }).await.expect("get");
    assert_eq!(got.into_inner().request.map(|r| r.status), Some(pb::RequestStatus::RequestPending as i32));
    // An honest peer call leaves no refusal behind.
    assert!(refusals(&mut s, &format!("instance:{}", target.sys_id)).await.is_empty());
}
