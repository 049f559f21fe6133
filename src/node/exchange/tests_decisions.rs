//! Source-side decisions beyond the first: retry from ERROR_ON_*, decisions
//! that race, and decisions made on the wrong side.

use super::Decision;
use super::tests::{
    Faults, Instance, audited, decide, job_exists, key_count, open_request, operator, pair, precondition, reject,
    request, stored_bundle,
};
use crate::domain::exchange::{ExchangeRequest, RequestStatus};
use crate::domain::job::JobKind;
use crate::error::AppError;
use crate::store::{BundleChange, RequestEffects, RequestStore};

/// A pair with `salary` (2 keys on the source) and one request for it.
async fn requested() -> (Instance, Instance, ExchangeRequest) {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 2).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    (source, target, req)
}

/// Approves `req` while the target refuses: the source ends in ERROR_ON_REMOTE_INSTANCE.
async fn refused_delivery(source: &Instance, req: &ExchangeRequest) {
    decide(source, &req.id, Decision::Approve).await.expect("approve");
    source.set_fault(|f| &f.refuse, true);
    assert_eq!(source.run_jobs().await, 1);
    source.set_fault(|f| &f.refuse, false);
    assert_eq!(request(source, &req.id).await.status, RequestStatus::ErrorOnRemoteInstance);
}

#[tokio::test]
async fn a_retry_from_error_on_remote_delivers_the_kept_bundle_again() {
    let (source, target, req) = requested().await;
    refused_delivery(&source, &req).await;
    let bundle = stored_bundle(&source, &req.id).await;
    assert!(bundle.is_some(), "the bundle stays for a retry");
    assert_eq!(audited(&source, "exchange.fail", req.id.as_str()).await.len(), 1);

    let retried = decide(&source, &req.id, Decision::Retry).await.expect("retry");
    assert_eq!(retried.status, RequestStatus::Approved, "with a bundle, a retry resumes at approved");
    assert!(job_exists(&source, JobKind::Deliver, &req.id).await);
    assert_eq!(stored_bundle(&source, &req.id).await, bundle, "the same bundle");
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 2);
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Completed);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Completed);
    assert_eq!(key_count(&target, "salary").await, 2);
}

/// As `refused_delivery`, then the bundle is dropped: a source in ERROR_ON_*
/// without a bundle (written directly: no use case leaves one so today, every
/// failure keeps the bundle).
async fn failed_without_bundle(source: &Instance, req: &ExchangeRequest) {
    refused_delivery(source, req).await;
    let store = RequestStore::new(source.services.store());
    let current = store.request(req.id.clone()).await.expect("read").expect("the request");
    let cleared = RequestEffects { bundle: BundleChange::Clear, ..Default::default() };
    store.update_request(current.version, current.value, cleared, Vec::new()).await.expect("clear the bundle");
}

#[tokio::test]
async fn a_retry_from_error_without_a_bundle_makes_the_request_pending_again() {
    let (source, target, req) = requested().await;
    failed_without_bundle(&source, &req).await;
    let retried = decide(&source, &req.id, Decision::Retry).await.expect("retry");
    assert_eq!(retried.status, RequestStatus::Pending, "without a bundle, a retry waits for a decision again");
    assert!(!job_exists(&source, JobKind::Deliver, &req.id).await, "nothing to deliver");
    assert_eq!(source.run_jobs().await, 0);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 1, "no new delivery");
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Pending);
    assert_eq!(audited(&source, "exchange.retry", req.id.as_str()).await.len(), 1);
}

#[tokio::test]
async fn a_request_approved_again_after_a_retry_without_a_bundle_exports_its_keys() {
    let (source, target, req) = requested().await;
    failed_without_bundle(&source, &req).await;
    decide(&source, &req.id, Decision::Retry).await.expect("retry");
    let again = decide(&source, &req.id, Decision::Approve).await.expect("approve again");
    assert_eq!(again.exported_key_count, 2, "{:?}", again.lines);
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Completed);
    assert_eq!(key_count(&target, "salary").await, 2);
}

#[tokio::test]
async fn a_pending_or_completed_request_is_not_retried() {
    let (source, _target, req) = requested().await;
    let pending = precondition(decide(&source, &req.id, Decision::Retry).await);
    assert!(pending.contains("REQUEST_PENDING") && pending.contains("cannot be retried"), "{pending}");
    decide(&source, &req.id, Decision::Approve).await.expect("approve");
    source.run_jobs().await;
    let completed = precondition(decide(&source, &req.id, Decision::Retry).await);
    assert!(completed.contains("REQUEST_COMPLETED"), "{completed}");
    assert_eq!(audited(&source, "exchange.retry", req.id.as_str()).await.len(), 0);
}

#[tokio::test]
async fn of_two_concurrent_approvals_exactly_one_wins_and_the_loser_names_the_winner() {
    let (source, target, req) = requested().await;
    let exchange = &source.services.exchange;
    let (alice, bob) = (operator("alice"), operator("bob"));
    let (a, b) = tokio::join!(
        exchange.update_request(&alice, req.id.clone(), Decision::Approve),
        exchange.update_request(&bob, req.id.clone(), Decision::Approve),
    );
    let (winner, loser) = match (&a, &b) {
        (Ok(_), Err(e)) => ("operator:alice", e.to_string()),
        (Err(e), Ok(_)) => ("operator:bob", e.to_string()),
        _ => panic!("exactly one approval wins: {a:?} / {b:?}"),
    };
    assert!(loser.contains(&format!("REQUEST_APPROVED (approved by {winner}")), "{loser}");
    assert_eq!(audited(&source, "exchange.approve", req.id.as_str()).await.len(), 1, "one approval recorded");
    assert_eq!(source.run_jobs().await, 1, "one delivery");
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 1);
    assert_eq!(key_count(&target, "salary").await, 2);
}

#[tokio::test]
async fn of_a_concurrent_approval_and_rejection_exactly_one_wins() {
    let (source, _target, req) = requested().await;
    let exchange = &source.services.exchange;
    let (alice, bob) = (operator("alice"), operator("bob"));
    let (approve, rejection) = tokio::join!(
        exchange.update_request(&alice, req.id.clone(), Decision::Approve),
        exchange.update_request(&bob, req.id.clone(), reject("no")),
    );
    let status = request(&source, &req.id).await.status;
    match (&approve, &rejection) {
        (Ok(_), Err(e)) => {
            assert_eq!(status, RequestStatus::Approved);
            assert!(e.to_string().contains("REQUEST_APPROVED (approved by operator:alice"), "{e}");
            assert!(job_exists(&source, JobKind::Deliver, &req.id).await);
            assert!(!job_exists(&source, JobKind::Notify, &req.id).await);
        }
        (Err(e), Ok(_)) => {
            assert_eq!(status, RequestStatus::Rejected);
            assert!(e.to_string().contains("REQUEST_REJECTED (rejected by operator:bob"), "{e}");
            assert!(!job_exists(&source, JobKind::Deliver, &req.id).await);
            assert!(job_exists(&source, JobKind::Notify, &req.id).await);
        }
        _ => panic!("exactly one decision wins: {approve:?} / {rejection:?}"),
    }
}

#[tokio::test]
async fn deciding_on_the_target_side_is_refused() {
    let (source, target, req) = requested().await;
    for decision in [Decision::Approve, reject("mine")] {
        let refused = precondition(decide(&target, &req.id, decision).await);
        assert!(refused.contains("this instance is the request's target"), "{refused}");
    }
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Pending);
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Pending);
    assert_eq!(target.run_jobs().await, 0, "nothing scheduled on the target");
    // A retry on the target is the target's own retry: of a pending request, refused.
    let retry = precondition(decide(&target, &req.id, Decision::Retry).await);
    assert!(retry.contains("cannot be retried"), "{retry}");
}

#[tokio::test]
async fn a_decision_on_an_unknown_request_is_not_found() {
    let (source, _target, _req) = requested().await;
    let unknown = crate::domain::ids::RequestId::from_random([7; 16]);
    for decision in [Decision::Approve, reject("?"), Decision::Retry] {
        let answer = decide(&source, &unknown, decision).await;
        assert!(
            matches!(answer, Err(AppError::Domain(crate::domain::DomainError::NotFound { what: "request", .. }))),
            "{answer:?}"
        );
    }
}
