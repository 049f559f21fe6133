//! Clone in memory: a source and a target wired by the in-process link, the
//! target's clone job run by the test. Registered targets, refusals, the
//! clone grant and the automatic exchange after a clone.

use super::NewCloneExchange;
use crate::domain::clone::{CloneRun, CloneState};
use crate::domain::exchange::{ExchangeRequest, PeerRef, RequestStatus};
use crate::domain::ids::{CloneId, RequestId};
use crate::domain::policy::ApprovalType;
use crate::domain::property::AUTO_KEY_EXCHANGE;
use crate::domain::record::RecordAddress;
pub(super) use crate::node::testing::{Faults, Instance, admin, name, pair};

/// `count` records of spec `spec` on `instance` (table `hr`, field `pay`).
pub(super) async fn put_records(instance: &Instance, spec: &str, count: usize) {
    for i in 0..count {
        let address = RecordAddress::parse("hr", "pay", &format!("r{i}")).expect("address");
        let text = format!("secret {i}").into_bytes();
        instance.services.crypto.put_record(&admin(), address, name(spec), text).await.expect("put record");
    }
}

pub(super) async fn start_clone(source: &Instance, target: &Instance) -> CloneRun {
    let (sys_id, host) = (source.sys_id.clone(), source.host.clone());
    target.services.clone.start_clone(&admin(), sys_id, host).await.expect("start clone")
}

pub(super) async fn register(source: &Instance, target: &Instance) {
    let clones = &source.services.clone;
    clones.add_clone_target(&admin(), target.sys_id.clone(), target.host.clone()).await.expect("register target");
}

pub(super) async fn clone_run(target: &Instance, id: &CloneId) -> CloneRun {
    target.services.clone.clone_run(id.clone()).await.expect("clone run")
}

pub(super) async fn records(instance: &Instance) -> usize {
    instance.services.crypto.list_records(None, None, None, 1000).await.expect("records").len()
}

pub(super) async fn set_auto(instance: &Instance, value: &str) {
    let catalog = &instance.services.catalog;
    catalog.set_property(&admin(), AUTO_KEY_EXCHANGE.into(), value.into()).await.expect("set property");
}

async fn request_on(instance: &Instance, id: &RequestId) -> Option<ExchangeRequest> {
    instance.services.exchange.request(id.clone()).await.ok()
}

/// Who moved the request to Approved.
fn approver(req: &ExchangeRequest) -> Option<String> {
    req.history.iter().find(|t| t.status == RequestStatus::Approved).map(|t| t.actor.clone())
}

async fn audit_count(instance: &Instance, action: &str) -> usize {
    let filter = crate::node::audit::AuditFilter { limit: 1000, action_prefix: action.into(), ..Default::default() };
    let (entries, _) = instance.services.audit.audit_entries(filter).await.expect("audit");
    entries.iter().filter(|e| e.event.action == action).count()
}

/// A source with `keys` keys of payroll/salary and `n` records; a target
/// with nothing.
async fn source_with_records(n: usize) -> (Instance, Instance) {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    put_records(&source, "salary", n).await;
    (source, target)
}

#[tokio::test]
async fn a_registered_target_clones_the_records_and_the_catalog() {
    let (source, target) = source_with_records(3).await;
    register(&source, &target).await;
    let run = start_clone(&source, &target).await;
    assert_eq!(run.state, CloneState::Running);
    assert_eq!(target.run_jobs().await, 1, "the clone job ran");

    let done = clone_run(&target, &run.id).await;
    assert_eq!(done.state, CloneState::Completed, "{:?}", done.error);
    assert_eq!((done.records_total, done.records_copied), (3, 3));
    assert_eq!(records(&target).await, 3);
    let specs = target.services.catalog.specs(None).await.expect("specs");
    assert_eq!(specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["salary"]);
    assert!(!specs[0].exportable, "a cloned spec is never exportable");
    assert!(target.services.catalog.modules().await.expect("modules").iter().any(|m| m.name.as_str() == "payroll"));
    assert!(target.services.catalog.keys(name("salary")).await.expect("keys").is_empty(), "keys never come along");
    assert_eq!(Faults::calls(&target.link.faults.snapshots), 1);
    assert_eq!(audit_count(&target, "clone.complete").await, 1);
    // Stored before the end part leaves (`clone.serve` is written after the stream, racing the test).
    assert_eq!(audit_count(&source, "clone.grant").await, 1);
}

#[tokio::test]
async fn a_clone_by_an_unregistered_target_is_refused_and_audited_on_the_source() {
    let (source, target) = source_with_records(2).await;
    let run = start_clone(&source, &target).await;
    target.run_jobs().await;

    let failed = clone_run(&target, &run.id).await;
    assert_eq!(failed.state, CloneState::Failed);
    let error = failed.error.unwrap_or_default();
    assert!(error.contains("not a clone target"), "{error}");
    assert_eq!(records(&target).await, 0, "nothing was copied");
    assert_eq!(audit_count(&source, "clone.refused").await, 1);
    assert_eq!(audit_count(&source, "clone.grant").await, 0, "no grant for a refused clone");
    assert_eq!(target.advance_and_run(60_000).await, 0, "a refused clone is not retried");
}

#[tokio::test]
async fn the_automatic_exchange_after_a_clone_is_approved_by_the_clone_grant() {
    let (source, target) = source_with_records(2).await;
    set_auto(&source, "true").await;
    register(&source, &target).await;
    let run = start_clone(&source, &target).await;
    target.run_jobs().await;
    assert_eq!(clone_run(&target, &run.id).await.state, CloneState::Completed);
    assert_eq!(target.run_jobs().await, 1, "the exchange after the clone ran");

    let id = RequestId::parse(run.id.as_str()).expect("the automatic request's id is the clone's");
    let on_source = request_on(&source, &id).await.expect("opened on the source");
    assert_eq!(on_source.status, RequestStatus::Approved);
    assert!(approver(&on_source).is_some_and(|a| a.starts_with("system (clone grant ")), "{on_source:?}");
    assert_eq!(source.run_jobs().await, 1, "the delivery ran");
    assert_eq!(request_on(&target, &id).await.expect("on target").status, RequestStatus::Completed);
    assert_eq!(target.services.catalog.keys(name("salary")).await.expect("keys").len(), 1);
    let address = RecordAddress::parse("hr", "pay", "r1").expect("address");
    let (_, plaintext) = target.services.crypto.get_record(&admin(), address).await.expect("decrypts on the target");
    assert_eq!(plaintext, b"secret 1");
}

#[tokio::test]
async fn the_automatic_exchange_is_left_pending_once_the_source_turned_it_off() {
    let (source, target) = source_with_records(1).await;
    register(&source, &target).await;
    let run = start_clone(&source, &target).await;
    target.run_jobs().await;
    // The snapshot carried the property on; the source turns it off before the request.
    set_auto(&source, "false").await;
    assert_eq!(target.run_jobs().await, 1, "the exchange after the clone ran");

    let id = RequestId::parse(run.id.as_str()).expect("id");
    let on_source = request_on(&source, &id).await.expect("opened on the source");
    assert_eq!(on_source.status, RequestStatus::Pending, "left for a person");
    assert_eq!(approver(&on_source), None);
    assert_eq!(source.run_jobs().await, 0, "nothing is delivered");
    assert_eq!(request_on(&target, &id).await.expect("on target").status, RequestStatus::Pending);
}

#[tokio::test]
async fn a_source_with_the_automatic_exchange_off_leads_to_no_request_after_the_clone() {
    let (source, target) = source_with_records(1).await;
    set_auto(&source, "false").await;
    register(&source, &target).await;
    let run = start_clone(&source, &target).await;
    target.run_jobs().await;
    let done = clone_run(&target, &run.id).await;
    assert_eq!(done.state, CloneState::Completed);
    assert_eq!(done.follow_up, None, "the cloned property is off and nothing is configured");
    assert_eq!(target.run_jobs().await, 0, "no exchange follows");
    assert_eq!(Faults::calls(&target.link.faults.open_requests), 0);
    let property = target.services.catalog.property(AUTO_KEY_EXCHANGE.into()).await.expect("property");
    assert_eq!(property.value, "false", "the property came with the clone");
}

#[tokio::test]
async fn the_clone_grant_expires_and_a_late_automatic_request_waits_for_a_person() {
    let (source, target) = source_with_records(1).await;
    register(&source, &target).await;
    let run = start_clone(&source, &target).await;
    target.run_jobs().await;
    // Both clocks pass the grant's hour before the target asks.
    source.clock.advance_millis(3_600_000);
    target.clock.advance_millis(3_600_000);
    target.run_jobs().await;
    let id = RequestId::parse(run.id.as_str()).expect("id");
    let on_source = request_on(&source, &id).await.expect("opened on the source");
    assert_eq!((on_source.status, approver(&on_source)), (RequestStatus::Pending, None));
}

#[tokio::test]
async fn a_one_time_clone_configuration_approves_after_the_clone_and_is_then_used_up() {
    let (source, target) = source_with_records(2).await;
    let config = NewCloneExchange {
        target: PeerRef { sys_id: target.sys_id.clone(), host: target.host.clone() },
        approval: ApprovalType::OneTime,
        specs: vec![name("salary")],
        rekey: false,
    };
    let made = source.services.clone.create_clone_exchange(&admin(), config).await.expect("configure");
    assert_eq!(made.policies.len(), 1, "one Resource Exchange policy per spec");

    // The configuration alone authorises the clone (the target is not registered).
    let first = start_clone(&source, &target).await;
    target.run_jobs().await;
    assert_eq!(clone_run(&target, &first.id).await.state, CloneState::Completed);
    assert_eq!(target.run_jobs().await, 1, "the configured exchange ran");
    let requests = target.services.exchange.requests_page(None, 100).await.expect("requests").0;
    assert_eq!(requests.len(), 1, "{requests:?}");
    let on_source = request_on(&source, &requests[0].id).await.expect("on source");
    assert_eq!(on_source.status, RequestStatus::Approved);
    assert!(approver(&on_source).is_some_and(|a| a.starts_with("system (policy ")), "{on_source:?}");
    source.run_jobs().await;
    assert_eq!(request_on(&target, &requests[0].id).await.expect("target").status, RequestStatus::Completed);
    let used = source.services.clone.clone_exchanges().await.expect("configurations");
    assert_eq!(used[0].used.as_ref().map(|u| &u.request), Some(&requests[0].id), "used up by that approval");

    // Used up: a second clone is refused, so it gets no approval either.
    let second = start_clone(&source, &target).await;
    target.run_jobs().await;
    let refused = clone_run(&target, &second.id).await;
    assert_eq!(refused.state, CloneState::Failed);
    assert!(refused.error.unwrap_or_default().contains("used up"));
    assert_eq!(target.run_jobs().await, 0, "no exchange follows");
    assert_eq!(audit_count(&source, "exchange.approve").await, 1, "one approval in all");
}
