//! Opening a request: what `create_request` refuses on the target, what
//! `open_request_from_peer` refuses on the source, and a source unreachable
//! (or whose answer is lost) when the target opens the request.

use std::sync::atomic::Ordering;

use super::tests::{Faults, Instance, admin, all_requests, decide, key_count, new_request, pair, request, test_ca};
use super::{Decision, NewRequest};
use crate::domain::DomainError;
use crate::domain::exchange::{ExchangeRequest, MAX_EXPIRY_MILLIS, RequestStatus};
use crate::domain::ids::Host;
use crate::error::{AppError, AppResult};
use crate::node::ports::{OpenRequest, SourceView};

/// A target request recorded but never opened on `source` (the target does
/// not reach it): ERROR_ON_REMOTE_INSTANCE, with its transport key.
async fn unopened(source: &Instance, target: &Instance) -> ExchangeRequest {
    let failed = target.services.exchange.create_request(&admin(), new_request(source, &["salary"])).await;
    assert!(matches!(failed, Err(AppError::Peer(_))), "{failed:?}");
    all_requests(target).await.pop().expect("the target recorded it")
}

/// What the target sends the source for `req`.
fn open_of(req: &ExchangeRequest) -> OpenRequest {
    OpenRequest {
        request_id: req.id.clone(),
        target_sys_id: req.target.sys_id.clone(),
        target_host: req.target.host.clone(),
        source_sys_id: req.source.sys_id.clone(),
        spec_names: req.lines.iter().map(|l| l.spec.clone()).collect(),
        expires_at: req.expires_at,
        transport_public_key: req.transport_public_key.clone(),
        wrapping: req.wrapping,
        frequency: req.frequency,
        clone_grant: None,
    }
}

/// `target` opens `open` on `source` as the link would carry it.
async fn open_on(source: &Instance, target: &Instance, open: OpenRequest) -> AppResult<SourceView> {
    let (me, cert, hosts) = (target.sys_id.clone(), target.cert_der.clone(), target.cert_hosts());
    source.services.exchange.open_request_from_peer(me, cert, hosts, open).await
}

async fn setup() -> (Instance, Instance, ExchangeRequest) {
    let ca = test_ca();
    // Not wired: the target cannot reach the source.
    let (source, target) = (Instance::new(&ca, "source"), Instance::new(&ca, "target"));
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = unopened(&source, &target).await;
    (source, target, req)
}

fn denied(answer: AppResult<SourceView>, says: &str) {
    match answer {
        Err(AppError::Domain(DomainError::PermissionDenied(m))) => assert!(m.contains(says), "{m}"),
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
}

fn invalid(answer: AppResult<SourceView>, field: &str) {
    match answer {
        Err(AppError::Domain(DomainError::InvalidArgument { field: f, .. })) => assert_eq!(f, field),
        other => panic!("expected invalid {field}, got {other:?}"),
    }
}

#[tokio::test]
async fn an_opening_that_claims_another_target_is_refused_and_nothing_recorded() {
    let (source, target, req) = setup().await;
    let other = Instance::new(&test_ca(), "other");
    let open = OpenRequest { target_sys_id: other.sys_id.clone(), ..open_of(&req) };
    denied(open_on(&source, &target, open).await, "but the certificate names");
    assert!(all_requests(&source).await.is_empty());
}

#[tokio::test]
async fn an_opening_addressed_to_another_source_is_refused() {
    let (source, target, req) = setup().await;
    let other = Instance::new(&test_ca(), "other");
    let open = OpenRequest { source_sys_id: other.sys_id.clone(), ..open_of(&req) };
    denied(open_on(&source, &target, open).await, "request is addressed to");
    assert!(all_requests(&source).await.is_empty());
}

#[tokio::test]
async fn an_opening_whose_expiry_is_past_or_beyond_ninety_days_is_refused() {
    let (source, target, req) = setup().await;
    let now = source.now();
    for expires_at in [now, now.plus_millis(-1), now.plus_millis(MAX_EXPIRY_MILLIS + 1)] {
        let open = OpenRequest { expires_at, ..open_of(&req) };
        invalid(open_on(&source, &target, open).await, "expires_at");
    }
    let longest = OpenRequest { expires_at: now.plus_millis(MAX_EXPIRY_MILLIS), ..open_of(&req) };
    open_on(&source, &target, longest).await.expect("exactly 90 days is accepted");
    assert_eq!(all_requests(&source).await.len(), 1);
}

#[tokio::test]
async fn an_opening_with_a_transport_key_the_source_cannot_encrypt_to_is_refused() {
    let (source, target, req) = setup().await;
    for key in [Vec::new(), vec![0x30, 0x03, 1, 2, 3]] {
        let open = OpenRequest { transport_public_key: key, ..open_of(&req) };
        invalid(open_on(&source, &target, open).await, "transport_public_key");
    }
    assert!(all_requests(&source).await.is_empty());
}

#[tokio::test]
async fn an_opening_whose_target_host_is_not_in_the_certificate_is_refused() {
    let (source, target, req) = setup().await;
    let elsewhere = Host::parse("evil.test:7443").expect("host");
    let open = OpenRequest { target_host: elsewhere, ..open_of(&req) };
    denied(open_on(&source, &target, open).await, "is neither named in the certificate");
    assert!(all_requests(&source).await.is_empty());
    // The certificate names the host, not the port: another port of it is dialable.
    let other_port = Host::parse("target.test:9443").expect("host");
    let open = OpenRequest { target_host: other_port.clone(), ..open_of(&req) };
    open_on(&source, &target, open).await.expect("the certificate's name on another port");
    assert_eq!(request(&source, &req.id).await.target.host, other_port);
}

#[tokio::test]
async fn the_same_opening_again_answers_the_same_request_and_another_key_is_refused() {
    let (source, target, req) = setup().await;
    let first = open_on(&source, &target, open_of(&req)).await.expect("open");
    let again = open_on(&source, &target, open_of(&req)).await.expect("the same opening again");
    assert_eq!((first.status, again.status), (RequestStatus::Pending, RequestStatus::Pending));
    assert_eq!(all_requests(&source).await.len(), 1, "recorded once");
    let mut other_key = open_of(&req);
    let fresh = Instance::new(&test_ca(), "fresh");
    fresh.spec_with_keys("payroll", "salary", 0).await;
    let fresh_req = unopened(&source, &fresh).await;
    other_key.transport_public_key = fresh_req.transport_public_key;
    let answer = open_on(&source, &target, other_key).await;
    assert!(matches!(answer, Err(AppError::Domain(DomainError::AlreadyExists { .. }))), "{answer:?}");
}

#[tokio::test]
async fn creating_a_request_from_this_instance_itself_is_refused_before_any_call() {
    let (source, target) = pair();
    target.spec_with_keys("payroll", "salary", 0).await;
    let own = NewRequest { source_sys_id: target.sys_id.to_string(), ..new_request(&source, &["salary"]) };
    let answer = target.services.exchange.create_request(&admin(), own).await;
    match answer {
        Err(AppError::Domain(DomainError::InvalidArgument { field, reason })) => {
            assert_eq!(field, "source_sys_id");
            assert!(reason.contains("own sys_id"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(all_requests(&target).await.is_empty());
    assert_eq!(Faults::calls(&target.link.faults.open_requests), 0);
}

#[tokio::test]
async fn creating_a_request_with_bad_names_or_expiry_is_refused_before_any_call() {
    let (source, target) = pair();
    target.spec_with_keys("payroll", "salary", 0).await;
    let good = new_request(&source, &["salary"]);
    let specs = |s: &[&str]| NewRequest { spec_names: s.iter().map(|n| n.to_string()).collect(), ..good.clone() };
    let bad = [
        specs(&[]),
        specs(&["bad name!"]),
        specs(&["salary", "salary"]),
        NewRequest { source_sys_id: "not-a-sys-id".into(), ..good.clone() },
        NewRequest { source_host: "no-port.test".into(), ..good.clone() },
        NewRequest { source_host: "source.test:0".into(), ..good.clone() },
        NewRequest { expires_in_millis: Some(0), ..good.clone() },
        NewRequest { expires_in_millis: Some(MAX_EXPIRY_MILLIS + 1), ..good.clone() },
    ];
    for new in bad {
        let answer = target.services.exchange.create_request(&admin(), new.clone()).await;
        assert!(matches!(answer, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{new:?}: {answer:?}");
    }
    let unknown = target.services.exchange.create_request(&admin(), specs(&["nowhere"])).await;
    assert!(matches!(unknown, Err(AppError::Domain(DomainError::NotFound { .. }))), "{unknown:?}");
    assert!(all_requests(&target).await.is_empty(), "nothing recorded");
    assert_eq!(Faults::calls(&target.link.faults.open_requests), 0, "the source was never called");
}

#[tokio::test]
async fn a_source_unreachable_at_creation_leaves_an_error_that_a_retry_reopens_with_the_same_key() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 2).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    target.set_fault(|f| &f.unreachable, true);
    let failed = target.services.exchange.create_request(&admin(), new_request(&source, &["salary"])).await;
    assert!(matches!(failed, Err(AppError::Peer(_))), "{failed:?}");
    let recorded = all_requests(&target).await.pop().expect("recorded on the target");
    assert_eq!(recorded.status, RequestStatus::ErrorOnRemoteInstance);
    assert!(all_requests(&source).await.is_empty(), "the source never heard of it");

    target.set_fault(|f| &f.unreachable, false);
    let retried = decide(&target, &recorded.id, Decision::Retry).await.expect("retry on the target");
    assert_eq!(retried.status, RequestStatus::Pending);
    assert_eq!(retried.transport_public_key, recorded.transport_public_key, "the same transport key");
    let on_source = request(&source, &recorded.id).await;
    assert_eq!(on_source.transport_public_key, recorded.transport_public_key);
    assert_eq!(Faults::calls(&target.link.faults.open_requests), 2);
    decide(&source, &recorded.id, Decision::Approve).await.expect("approve");
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(request(&target, &recorded.id).await.status, RequestStatus::Completed, "the bundle opens");
    assert_eq!(key_count(&target, "salary").await, 2);
}

/// A source holding `keys` keys of salary and a target whose request for
/// them lost the source's answer to its opening (ERROR_ON_REMOTE_INSTANCE
/// on the target; the source recorded it).
async fn answer_lost_at_creation(keys: u32) -> (Instance, Instance, ExchangeRequest) {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", keys).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    target.link.faults.lose_answers.store(1, Ordering::SeqCst);
    let failed = target.services.exchange.create_request(&admin(), new_request(&source, &["salary"])).await;
    assert!(failed.is_err(), "the target saw no answer");
    let recorded = all_requests(&target).await.pop().expect("recorded on the target");
    assert_eq!(recorded.status, RequestStatus::ErrorOnRemoteInstance);
    (source, target, recorded)
}

#[tokio::test]
async fn a_lost_answer_at_creation_is_retried_and_the_source_keeps_one_request() {
    let (source, target, recorded) = answer_lost_at_creation(1).await;
    assert_eq!(request(&source, &recorded.id).await.status, RequestStatus::Pending, "the source recorded it");

    let retried = decide(&target, &recorded.id, Decision::Retry).await.expect("retry");
    assert_eq!(retried.status, RequestStatus::Pending);
    assert_eq!(all_requests(&source).await.len(), 1, "the second opening is the same request");
    decide(&source, &recorded.id, Decision::Approve).await.expect("approve");
    source.run_jobs().await;
    assert_eq!(request(&target, &recorded.id).await.status, RequestStatus::Completed);
    assert_eq!(key_count(&target, "salary").await, 1);
}

#[tokio::test]
async fn a_delivery_refused_while_the_target_was_in_error_is_sent_again_when_it_retries() {
    let (source, target, recorded) = answer_lost_at_creation(2).await;
    // Approved and delivered while the target's record is in error: refused.
    decide(&source, &recorded.id, Decision::Approve).await.expect("approve");
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(request(&source, &recorded.id).await.status, RequestStatus::ErrorOnRemoteInstance);
    assert_eq!(key_count(&target, "salary").await, 0);

    // The target's retry opens it again: the source delivers the same bundle again, unasked.
    let retried = decide(&target, &recorded.id, Decision::Retry).await.expect("retry on the target");
    assert_eq!(retried.status, RequestStatus::Pending);
    let on_source = request(&source, &recorded.id).await;
    assert_eq!(on_source.status, RequestStatus::Approved, "the delivery is retried");
    let by = on_source.history.last().map(|t| t.actor.clone());
    assert_eq!(by, Some(format!("instance:{}", target.sys_id)), "retried as the target's decision");
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(request(&source, &recorded.id).await.status, RequestStatus::Completed);
    assert_eq!(request(&target, &recorded.id).await.status, RequestStatus::Completed);
    assert_eq!(key_count(&target, "salary").await, 2, "imported once");
    let approvals = on_source.history.iter().filter(|t| t.status == RequestStatus::Approved).count();
    assert_eq!(approvals, 2, "the approval, and the retry back to approved; nothing approved anew");
}
