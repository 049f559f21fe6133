//! The exchange on both sides, in memory: two instances wired by the
//! in-process link, jobs run by the test after it moves the manual clock.
//! This file holds the helpers the other `tests_*.rs` files use (through
//! `super::tests`), and the source side's approve, reject and expiry.

use std::sync::atomic::Ordering;

use super::{Decision, NewRequest};
use crate::domain::audit::AuditEntry;
use crate::domain::auth::{Caller, Role};
use crate::domain::exchange::{ExchangeRequest, RequestStatus, SignedBlob, SpecLineStatus};
use crate::domain::ids::RequestId;
use crate::domain::job::{JobId, JobKind};
use crate::error::{AppError, AppResult};
use crate::node::audit::AuditFilter;
pub(super) use crate::node::testing::{Faults, Instance, admin, name, pair, test_ca};
use crate::store::{JobStore, RequestStore};

pub(super) async fn request(instance: &Instance, id: &RequestId) -> ExchangeRequest {
    instance.services.exchange.request(id.clone()).await.expect("request")
}

pub(super) fn new_request(source: &Instance, specs: &[&str]) -> NewRequest {
    NewRequest {
        source_sys_id: source.sys_id.to_string(),
        source_host: source.host.to_string(),
        spec_names: specs.iter().map(|s| s.to_string()).collect(),
        expires_in_millis: None,
    }
}

pub(super) async fn open_request(source: &Instance, target: &Instance, specs: &[&str]) -> ExchangeRequest {
    target.services.exchange.create_request(&admin(), new_request(source, specs)).await.expect("create request")
}

/// An operator named `who` who may decide on requests.
pub(super) fn operator(who: &str) -> Caller {
    Caller::Operator { name: who.into(), roles: vec![Role::Admin, Role::CryptographicManager] }
}

pub(super) async fn decide(instance: &Instance, id: &RequestId, decision: Decision) -> AppResult<ExchangeRequest> {
    instance.services.exchange.update_request(&admin(), id.clone(), decision).await
}

pub(super) fn reject(reason: &str) -> Decision {
    Decision::Reject { reason: reason.into() }
}

/// The audit entries of `instance` whose action starts with `action`, about `subject`.
pub(super) async fn audited(instance: &Instance, action: &str, subject: &str) -> Vec<AuditEntry> {
    let filter =
        AuditFilter { limit: 1000, action_prefix: action.into(), subject: subject.into(), ..Default::default() };
    instance.services.audit.audit_entries(filter).await.expect("audit").0
}

pub(super) async fn key_count(instance: &Instance, spec: &str) -> usize {
    instance.services.catalog.keys(name(spec)).await.expect("keys").len()
}

/// Every request `instance` holds, in creation order.
pub(super) async fn all_requests(instance: &Instance) -> Vec<ExchangeRequest> {
    instance.services.exchange.requests_page(None, 100).await.expect("requests").0
}

/// The signed bundle `instance` keeps for request `id`, if any.
pub(super) async fn stored_bundle(instance: &Instance, id: &RequestId) -> Option<SignedBlob> {
    RequestStore::new(instance.services.store()).bundle(id.clone()).await.expect("bundle")
}

pub(super) async fn job_exists(instance: &Instance, kind: JobKind, id: &RequestId) -> bool {
    JobStore::new(instance.services.store()).job(JobId::for_request(kind, id)).await.expect("job").is_some()
}

/// The message of a domain error that is a failed precondition.
pub(super) fn precondition(result: AppResult<ExchangeRequest>) -> String {
    match result {
        Err(AppError::Domain(crate::domain::DomainError::FailedPrecondition(m))) => m,
        other => panic!("expected a failed precondition, got {other:?}"),
    }
}

#[tokio::test]
async fn an_approved_request_is_delivered_and_imported_once() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 2).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    assert_eq!(req.status, RequestStatus::Pending);
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Pending, "recorded on the source");

    let approved = source.services.exchange.update_request(&admin(), req.id.clone(), Decision::Approve).await;
    assert_eq!(approved.expect("approve").status, RequestStatus::Approved);
    assert_eq!(source.run_jobs().await, 1, "the delivery ran");

    let (on_source, on_target) = (request(&source, &req.id).await, request(&target, &req.id).await);
    assert_eq!(on_source.status, RequestStatus::Completed);
    assert_eq!(on_target.status, RequestStatus::Completed);
    assert_eq!((on_source.imported_key_count, on_target.imported_key_count), (2, 2));
    assert_eq!(target.services.catalog.keys(name("salary")).await.expect("keys").len(), 2);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 1);
    assert_eq!(source.run_jobs().await, 0, "nothing is left to run");
    let proof = source.services.exchange.proof_of(&on_source).expect("proof").expect("a receipt");
    assert_eq!(
        proof.signer_certificate, target.cert_der,
        "the source checks the receipt against the target's certificate"
    );
    assert_eq!(proof.decoded.imported.len(), 2);
}

#[tokio::test]
async fn an_undecided_request_expires_on_the_source_and_the_target_is_told() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    source.services.jobs.add_startup_jobs().await;
    let past_expiry = req.expires_at.0 - source.now().0 + 1;
    assert!(source.advance_and_run(past_expiry).await >= 1, "the expiry sweep ran");
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Expired);
    // The notice job was scheduled by the expiry; it is due now.
    assert_eq!(source.run_jobs().await, 1, "the notice ran");
    assert_eq!(Faults::calls(&source.link.faults.notices), 1);
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Expired);
    let approve = source.services.exchange.update_request(&admin(), req.id.clone(), Decision::Approve).await;
    assert!(approve.is_err(), "an expired request is not approved: {approve:?}");
    let _ = Ordering::SeqCst;
}

#[tokio::test]
async fn approving_exports_every_own_key_into_a_stored_bundle_and_audits_their_ids() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 3).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    let approved = decide(&source, &req.id, Decision::Approve).await.expect("approve");
    assert_eq!((approved.total_key_count, approved.exported_key_count), (3, 3));
    assert_eq!(approved.lines[0].status, SpecLineStatus::Exchanged);
    assert_eq!(approved.lines[0].key_count, 3);
    assert!(stored_bundle(&source, &req.id).await.is_some(), "the bundle waits for delivery");
    assert!(job_exists(&source, JobKind::Deliver, &req.id).await, "the delivery job is scheduled with the approval");
    let exports = audited(&source, "exchange.export", req.id.as_str()).await;
    assert_eq!(exports.len(), 1);
    let keys = source.services.catalog.keys(name("salary")).await.expect("keys");
    for key in &keys {
        assert!(exports[0].event.details.contains(&key.id.to_string()), "{} is named in the export", key.id);
    }
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Pending, "nothing delivered before the job");
    assert_eq!(key_count(&target, "salary").await, 0);
}

#[tokio::test]
async fn a_source_exports_only_the_keys_it_originated() {
    let ca = test_ca();
    let (prod, dev, test) = (Instance::new(&ca, "prod"), Instance::new(&ca, "dev"), Instance::new(&ca, "test"));
    for (a, b) in [(&prod, &dev), (&dev, &test)] {
        a.reaches(b);
        b.reaches(a);
    }
    prod.spec_with_keys("payroll", "salary", 2).await;
    dev.spec_with_keys("payroll", "salary", 0).await;
    test.spec_with_keys("payroll", "salary", 0).await;
    let first = open_request(&prod, &dev, &["salary"]).await;
    decide(&prod, &first.id, Decision::Approve).await.expect("approve on prod");
    assert_eq!(prod.run_jobs().await, 1);
    assert_eq!(key_count(&dev, "salary").await, 2, "dev holds prod's keys");
    dev.services.catalog.generate_key(&admin(), name("salary")).await.expect("dev's own key");

    let second = open_request(&dev, &test, &["salary"]).await;
    let approved = decide(&dev, &second.id, Decision::Approve).await.expect("approve on dev");
    assert_eq!((approved.total_key_count, approved.exported_key_count), (3, 1), "only dev's own key goes");
    assert!(approved.lines[0].reason.contains("2 key(s) imported from"), "{}", approved.lines[0].reason);
    assert!(approved.lines[0].reason.contains(prod.sys_id.as_str()), "the origin is named");
    assert_eq!(dev.run_jobs().await, 1);
    assert_eq!(request(&test, &second.id).await.status, RequestStatus::Completed);
    assert_eq!(key_count(&test, "salary").await, 1);
}

#[tokio::test]
async fn a_spec_missing_on_the_source_is_marked_not_on_source_and_the_others_are_exchanged() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    target.spec_with_keys("payroll", "ghost", 0).await;
    let req = open_request(&source, &target, &["salary", "ghost"]).await;
    let line = |r: &ExchangeRequest, spec: &str| r.lines.iter().find(|l| l.spec.as_str() == spec).cloned().unwrap();
    let opened = request(&source, &req.id).await;
    assert_eq!(line(&opened, "ghost").status, SpecLineStatus::NotOnSource);
    assert_eq!(line(&opened, "salary").status, SpecLineStatus::Pending);
    assert_eq!(line(&req, "ghost").status, SpecLineStatus::NotOnSource, "the target learns it at once");

    decide(&source, &req.id, Decision::Approve).await.expect("approve");
    assert_eq!(source.run_jobs().await, 1);
    let done = request(&target, &req.id).await;
    assert_eq!(done.status, RequestStatus::Completed);
    assert_eq!(line(&done, "salary").status, SpecLineStatus::Exchanged);
    assert_eq!(line(&done, "ghost").status, SpecLineStatus::NotOnSource);
    assert_eq!(done.imported_key_count, 1);
}

#[tokio::test]
async fn a_request_whose_specs_are_all_missing_on_the_source_completes_without_a_decision() {
    let (source, target) = pair();
    target.spec_with_keys("payroll", "ghost", 0).await;
    let req = open_request(&source, &target, &["ghost"]).await;
    assert_eq!(req.status, RequestStatus::Completed, "nothing to exchange");
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Completed);
    assert_eq!(source.run_jobs().await, 0, "no delivery is scheduled");
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 0);
}

#[tokio::test]
async fn a_rejection_is_told_to_the_target_by_the_notice_job() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    let rejected = decide(&source, &req.id, reject("not today")).await.expect("reject");
    assert_eq!(rejected.status, RequestStatus::Rejected);
    assert!(stored_bundle(&source, &req.id).await.is_none(), "no bundle is built");
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Pending, "told only by the job");
    assert_eq!(source.run_jobs().await, 1, "the notice ran");
    assert_eq!(Faults::calls(&source.link.faults.notices), 1);
    assert_eq!(Faults::calls(&source.link.faults.deliveries), 0);
    let on_target = request(&target, &req.id).await;
    assert_eq!(on_target.status, RequestStatus::Rejected);
    assert_eq!(on_target.history.last().map(|t| t.note.as_str()), Some("not today"), "the reason travels");
    assert_eq!(source.run_jobs().await, 0, "the notice ran once");
}

#[tokio::test]
async fn a_repeated_rejection_notice_changes_nothing_on_the_target() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    decide(&source, &req.id, reject("no")).await.expect("reject");
    source.run_jobs().await;
    let before = request(&target, &req.id).await;
    assert_eq!(before.status, RequestStatus::Rejected);
    target.clock.advance_millis(1_000);
    let again = target.services.exchange.receive_status(
        source.sys_id.clone(),
        req.id.clone(),
        RequestStatus::Rejected,
        "no, again".into(),
    );
    again.await.expect("a repeated notice is accepted");
    let after = request(&target, &req.id).await;
    assert_eq!(after.history.len(), before.history.len(), "no new transition");
    assert_eq!(after.updated_at, before.updated_at);
    assert_eq!(audited(&target, "exchange.reject", req.id.as_str()).await.len(), 1, "audited once");
}

#[tokio::test]
async fn a_rejected_request_is_not_approved_and_the_refusal_names_the_rejection() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    decide(&source, &req.id, reject("no")).await.expect("reject");
    let refused = precondition(decide(&source, &req.id, Decision::Approve).await);
    assert!(refused.contains("REQUEST_REJECTED (rejected by operator:root"), "{refused}");
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Rejected);
    assert!(!job_exists(&source, JobKind::Deliver, &req.id).await);
}

#[tokio::test]
async fn a_decision_after_expiry_expires_the_request_itself_and_is_refused() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let req = open_request(&source, &target, &["salary"]).await;
    source.clock.advance_millis(req.expires_at.0 - source.now().0);
    let refused = precondition(decide(&source, &req.id, Decision::Approve).await);
    assert!(refused.contains("expired"), "{refused}");
    assert_eq!(request(&source, &req.id).await.status, RequestStatus::Expired, "no sweep was needed");
    assert!(stored_bundle(&source, &req.id).await.is_none());
    let late_reject = precondition(decide(&source, &req.id, reject("late")).await);
    assert!(late_reject.contains("REQUEST_EXPIRED"), "{late_reject}");
    assert_eq!(source.run_jobs().await, 1, "the notice ran");
    assert_eq!(request(&target, &req.id).await.status, RequestStatus::Expired);
}

#[tokio::test]
async fn the_expiry_sweep_expires_only_overdue_unfinished_requests() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let short = NewRequest { expires_in_millis: Some(600_000), ..new_request(&source, &["salary"]) };
    let short = target.services.exchange.create_request(&admin(), short).await.expect("short");
    let long = open_request(&source, &target, &["salary"]).await;
    let done = NewRequest { expires_in_millis: Some(600_000), ..new_request(&source, &["salary"]) };
    let done = target.services.exchange.create_request(&admin(), done).await.expect("done");
    decide(&source, &done.id, Decision::Approve).await.expect("approve");
    source.run_jobs().await;
    assert_eq!(source.services.exchange.sweep_expired().await.expect("sweep"), 0, "nothing is overdue yet");
    // The two instances' clocks started apart: count from the source's.
    source.clock.advance_millis(short.expires_at.0 - source.now().0);
    assert_eq!(source.services.exchange.sweep_expired().await.expect("sweep"), 1);
    assert_eq!(request(&source, &short.id).await.status, RequestStatus::Expired);
    assert_eq!(request(&source, &long.id).await.status, RequestStatus::Pending);
    assert_eq!(request(&source, &done.id).await.status, RequestStatus::Completed, "a finished request stays");
    assert_eq!(source.services.exchange.sweep_expired().await.expect("sweep"), 0, "expired once");
}
