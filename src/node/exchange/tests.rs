//! The exchange on both sides, in memory: two instances wired by the
//! in-process link, jobs run by the test after it moves the manual clock.

use std::sync::atomic::Ordering;

use super::{Decision, NewRequest};
use crate::domain::exchange::{ExchangeRequest, RequestStatus};
use crate::node::testing::{Faults, Instance, admin, name, pair};

async fn request(instance: &Instance, id: &crate::domain::ids::RequestId) -> ExchangeRequest {
    instance.services.exchange.request(id.clone()).await.expect("request")
}

async fn open_request(source: &Instance, target: &Instance, specs: &[&str]) -> ExchangeRequest {
    let new = NewRequest {
        source_sys_id: source.sys_id.to_string(),
        source_host: source.host.to_string(),
        spec_names: specs.iter().map(|s| s.to_string()).collect(),
        expires_in_millis: None,
    };
    target.services.exchange.create_request(&admin(), new).await.expect("create request")
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
