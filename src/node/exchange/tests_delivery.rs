//! The delivery, target side and on the link: a bundle delivered twice, a
//! bundle from a stranger, a lost answer, a target that refuses or cannot be
//! reached (and the peer backoff that spares it), notices from a stranger.

use std::sync::atomic::Ordering;

use super::Decision;
use super::tests::{
    Faults, Instance, audited, decide, key_count, open_request, pair, reject, request, stored_bundle, test_ca,
};
use crate::domain::DomainError;
use crate::domain::exchange::{ExchangeRequest, RequestStatus, SignedBlob};
use crate::domain::job::{Job, JobId, JobKind};
use crate::error::AppError;
use crate::store::JobStore;

/// A pair with `salary` (2 keys on the source) and one approved request for it.
async fn approved() -> (Instance, Instance, ExchangeRequest) {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 2).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    let req = decide(&source, &req.id, Decision::Approve).await.expect("approve");
    (source, target, req)
}

async fn bundle_of(source: &Instance, req: &ExchangeRequest) -> SignedBlob {
    stored_bundle(source, &req.id).await.expect("a bundle")
}

async fn delivery_job(instance: &Instance, req: &ExchangeRequest) -> Option<Job> {
    JobStore::new(instance.services.store()).job(JobId::for_request(JobKind::Deliver, &req.id)).await.expect("job")
}

#[tokio::test]
async fn a_bundle_delivered_twice_gets_the_same_receipt_and_is_imported_once() {
    let (source, target, req) = approved().await;
    let bundle = bundle_of(&source, &req).await;
    let exchange = &target.services.exchange;
    let first = exchange.receive_bundle(source.sys_id.clone(), source.cert_der.clone(), bundle.clone()).await;
    let first = first.expect("first delivery");
    target.clock.advance_millis(5_000);
    let second = exchange.receive_bundle(source.sys_id.clone(), source.cert_der.clone(), bundle).await;
    assert_eq!(second.expect("second delivery"), first, "the receipt already given");
    assert_eq!(key_count(&target, "salary").await, 2);
    assert_eq!(audited(&target, "exchange.import", req.id.as_str()).await.len(), 1, "imported once");
    // The source's own delivery is a third one: it completes with that receipt.
    assert_eq!(source.run_jobs().await, 1);
    let on_source = request(&source, &req.id).await;
    assert_eq!(on_source.status, RequestStatus::Completed);
    assert_eq!(on_source.receipt, Some(first));
    assert_eq!(key_count(&target, "salary").await, 2);
}

#[tokio::test]
async fn a_bundle_from_a_sender_that_is_not_the_source_is_refused_and_audited() {
    let (source, target, req) = approved().await;
    let stranger = Instance::new(&test_ca(), "stranger");
    let exchange = &target.services.exchange;
    let bundle = bundle_of(&source, &req).await;
    // Its own certificate: the source's signature does not verify against it.
    let forged = exchange.receive_bundle(stranger.sys_id.clone(), stranger.cert_der.clone(), bundle.clone()).await;
    assert!(
        matches!(&forged, Err(AppError::Domain(DomainError::PermissionDenied(m))) if m.contains("does not verify")),
        "{forged:?}"
    );
    // A valid signature, but a sender that is not the request's source.
    let relayed = exchange.receive_bundle(stranger.sys_id.clone(), source.cert_der.clone(), bundle).await;
    assert!(
        matches!(&relayed, Err(AppError::Domain(DomainError::PermissionDenied(m))) if m.contains("not the request's source")),
        "{relayed:?}"
    );
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Pending);
    assert_eq!(key_count(&target, "salary").await, 0);
    let refusals = audited(&target, "exchange.bundle_refused", req.id.as_str()).await;
    assert_eq!(refusals.len(), 2);
    assert!(refusals.iter().all(|e| e.event.actor == format!("instance:{}", stranger.sys_id)));
    assert_eq!(source.run_jobs().await, 1, "the source's own delivery still imports");
    assert_eq!(key_count(&target, "salary").await, 2);
}

#[tokio::test]
async fn a_lost_delivery_answer_is_redelivered_after_the_backoff_and_imported_once() {
    let (source, target, req) = approved().await;
    source.link.faults.lose_answers.store(1, Ordering::SeqCst);
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Completed, "the import ran on the target");
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Approved, "the source never heard");
    let job = delivery_job(&source, &req).await.expect("the delivery is retried");
    assert_eq!(job.attempts, 1);
    assert!(job.next_due > source.now(), "after a backoff");
    assert_eq!(source.run_jobs().await, 0, "not before the backoff");
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 1);

    source.clock.advance_millis(job.next_due.0 - source.now().0);
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 2);
    let (on_source, on_target) = (request(&source, &req.id).await, request(&target, &req.id).await);
    assert_eq!(on_source.status, RequestStatus::Completed);
    assert_eq!(on_source.receipt, on_target.receipt, "the redelivery got the stored receipt");
    assert_eq!(on_source.imported_key_count, 2);
    assert_eq!(key_count(&target, "salary").await, 2);
    assert_eq!(audited(&target, "exchange.import", req.id.as_str()).await.len(), 1, "imported exactly once");
    assert!(delivery_job(&source, &req).await.is_none(), "the job ended");
}

#[tokio::test]
async fn a_target_that_refuses_the_bundle_leaves_error_on_remote_on_the_source() {
    let (source, target, req) = approved().await;
    source.set_fault(|f| &f.refuse, true);
    assert_eq!(source.run_jobs().await, 1);
    let on_source = request(&source, &req.id).await;
    assert_eq!(on_source.status, RequestStatus::ErrorOnRemoteInstance);
    assert!(on_source.history.last().is_some_and(|t| t.note.contains("refused")), "{:?}", on_source.history);
    assert!(delivery_job(&source, &req).await.is_none(), "a refusal is not retried by itself");
    assert_eq!(source.advance_and_run(600_000).await, 0);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 1);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Pending);
    assert_eq!(key_count(&target, "salary").await, 0);
    assert_eq!(audited(&source, "exchange.fail", req.id.as_str()).await.len(), 1);
}

#[tokio::test]
async fn an_unreachable_target_is_retried_with_growing_backoff_until_it_answers() {
    let (source, target, req) = approved().await;
    source.set_fault(|f| &f.unreachable, true);
    assert_eq!(source.run_jobs().await, 1);
    let first = delivery_job(&source, &req).await.expect("retried");
    assert_eq!(first.attempts, 1);
    assert!(first.last_error.as_deref().is_some_and(|e| e.contains("unreachable")), "{:?}", first.last_error);
    source.clock.advance_millis(first.next_due.0 - source.now().0);
    assert_eq!(source.run_jobs().await, 1);
    let second = delivery_job(&source, &req).await.expect("retried again");
    assert_eq!(second.attempts, 2);
    assert!(second.next_due.0 - source.now().0 >= 1_000, "the second delay is at least the base");
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Approved, "still waiting to deliver");

    source.set_fault(|f| &f.unreachable, false);
    source.clock.advance_millis(second.next_due.0 - source.now().0);
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 3);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Completed);
}

#[tokio::test]
async fn after_one_delivery_finds_a_target_unreachable_the_next_one_waits_without_dialling() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let one = open_request(&source, &target, &["salary"]).await;
    let two = open_request(&source, &target, &["salary"]).await;
    decide(&source, &one.id, Decision::Approve).await.expect("approve one");
    source.clock.advance_millis(1);
    decide(&source, &two.id, Decision::Approve).await.expect("approve two");
    source.set_fault(|f| &f.unreachable, true);
    assert_eq!(source.run_jobs().await, 2, "both deliveries were due");
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 1, "only the first dialled");
    let (job_one, job_two) =
        (delivery_job(&source, &one).await.expect("one"), delivery_job(&source, &two).await.expect("two"));
    assert_eq!(job_one.attempts, 1);
    assert_eq!(job_two.attempts, 0, "waiting is not an attempt");
    assert_eq!(job_two.next_due, job_one.next_due, "it waits as long as the first");

    source.set_fault(|f| &f.unreachable, false);
    source.clock.advance_millis(job_one.next_due.0 - source.now().0);
    assert_eq!(source.run_jobs().await, 2);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 3);
    assert_eq!(request(&target, &one.id).await.status, RequestStatus::Completed);
    assert_eq!(request(&target, &two.id).await.status, RequestStatus::Completed);
}

#[tokio::test]
async fn a_status_notice_from_a_stranger_or_of_a_status_that_is_not_notified_is_refused() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    let stranger = Instance::new(&test_ca(), "stranger");
    let exchange = &target.services.exchange;
    let from_stranger =
        exchange.receive_status(stranger.sys_id.clone(), req.id.clone(), RequestStatus::Rejected, "x".into()).await;
    assert!(matches!(from_stranger, Err(AppError::Domain(DomainError::PermissionDenied(_)))), "{from_stranger:?}");
    let completed =
        exchange.receive_status(source.sys_id.clone(), req.id.clone(), RequestStatus::Completed, "x".into()).await;
    assert!(
        matches!(completed, Err(AppError::Domain(DomainError::InvalidArgument { field: "status", .. }))),
        "{completed:?}"
    );
    // The source's own record is not a target's: a notice to the source is refused too.
    let to_source = source
        .services
        .exchange
        .receive_status(target.sys_id.clone(), req.id.clone(), RequestStatus::Rejected, "x".into())
        .await;
    assert!(matches!(to_source, Err(AppError::Domain(DomainError::PermissionDenied(_)))), "{to_source:?}");
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Pending);
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Pending);
    assert_eq!(audited(&target, "exchange.reject", req.id.as_str()).await.len(), 0);
}

#[tokio::test]
async fn a_rejection_notice_to_an_unreachable_target_is_retried_until_it_arrives() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    decide(&source, &req.id, reject("no")).await.expect("reject");
    source.set_fault(|f| &f.unreachable, true);
    assert_eq!(source.run_jobs().await, 1);
    let notice = JobStore::new(source.services.store()).job(JobId::for_request(JobKind::Notify, &req.id)).await;
    let notice = notice.expect("job");
    let notice = notice.expect("the notice is retried");
    assert_eq!(notice.attempts, 1);
    source.set_fault(|f| &f.unreachable, false);
    source.clock.advance_millis(notice.next_due.0 - source.now().0);
    assert_eq!(source.run_jobs().await, 1);
    assert_eq!(Faults::calls(&source.link.faults.notices), 2);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Rejected);
}

#[tokio::test]
async fn an_approved_request_that_expires_undelivered_drops_its_bundle_and_its_delivery_ends_without_dialling() {
    let (source, target, req) = approved().await;
    source.set_fault(|f| &f.unreachable, true);
    assert_eq!(source.run_jobs().await, 1, "the first delivery failed");
    source.set_fault(|f| &f.unreachable, false);
    source.clock.advance_millis(req.expires_at.0 - source.now().0);
    assert_eq!(source.services.exchange.sweep_expired().await.expect("sweep"), 1);
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Expired);
    assert!(stored_bundle(&source, &req.id).await.is_none(), "the bundle is dropped");
    assert_eq!(source.run_jobs().await, 2, "the delivery and the notice ran");
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 1, "the expired delivery did not dial");
    assert!(delivery_job(&source, &req).await.is_none(), "the delivery job ended");
    assert_eq!(Faults::calls(&source.link.faults.notices), 1);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Expired);
    assert_eq!(key_count(&target, "salary").await, 0);
}

#[tokio::test]
async fn a_bundle_for_a_request_the_target_no_longer_waits_for_is_refused() {
    let (source, target, req) = approved().await;
    let bundle = bundle_of(&source, &req).await;
    let told = target.services.exchange.receive_status(
        source.sys_id.clone(),
        req.id.clone(),
        RequestStatus::Rejected,
        "withdrawn".into(),
    );
    told.await.expect("the target takes the notice");
    let late = target.services.exchange.receive_bundle(source.sys_id.clone(), source.cert_der.clone(), bundle).await;
    assert!(matches!(late, Err(AppError::Domain(DomainError::FailedPrecondition(_)))), "{late:?}");
    assert_eq!(key_count(&target, "salary").await, 0);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Rejected);
    assert_eq!(audited(&target, "exchange.bundle_refused", req.id.as_str()).await.len(), 1);
}
