//! One Time / Recurring Clone: configured on the source, approved by the
//! Resource Exchange policies it creates, after a clone the source served.

use std::time::Duration;

use kmf::domain::auth::Role;
use kmf::rpc::pb;
use kmf::rpc::pb::clones_client::ClonesClient;
use tonic::Code;

use crate::clone::{admin_channel, finished, put_records, requests};
use crate::support::{Ops, Pki, TestNode};

const AUTO: &str = "glide_encryption.auto_key_exchange.enabled";

pub(crate) fn config(
    frequency: pb::Frequency,
    target: &TestNode,
    specs: &[&str],
    rekey: bool,
) -> pb::CreateCloneExchangeRequest {
    pb::CreateCloneExchangeRequest {
        frequency: frequency as i32,
        target_sys_id: target.sys_id.clone(),
        target_host: target.host.to_string(),
        spec_names: specs.iter().map(|s| s.to_string()).collect(),
        rekey_after_import: rekey,
    }
}

pub(crate) async fn set_auto(ops: &mut Ops, value: &str) {
    let set = pb::SetPropertyRequest { name: AUTO.into(), value: value.into() };
    ops.properties.set_property(set).await.expect("property");
}

async fn configs(ops: &mut Ops) -> Vec<pb::CloneExchange> {
    let all = ops.exchange.list_clone_exchanges(pb::ListCloneExchangesRequest {}).await.expect("list");
    all.into_inner().clone_exchanges
}

async fn clone_once(target: &TestNode, source: &TestNode, pki: &Pki) -> pb::CloneInfo {
    let mut clones = ClonesClient::new(admin_channel(target, pki).await);
    let start = pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: source.host.to_string() };
    let run = clones.start_clone(start).await.expect("start").into_inner().clone.expect("clone");
    let done = finished(&mut clones, &run.clone_id).await;
    assert_eq!(done.state, "completed", "{done:?}");
    done
}

/// Waits (bounded) until the target holds `n` requests, all of them ended.
pub(crate) async fn ended_requests(ops: &mut Ops, n: usize) -> Vec<pb::ExchangeRequest> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let all = requests(ops).await;
        let pending = |r: &pb::ExchangeRequest| {
            [pb::RequestStatus::RequestPending as i32, pb::RequestStatus::RequestApproved as i32].contains(&r.status)
        };
        if all.len() >= n && !all.iter().any(pending) {
            assert_eq!(all.len(), n, "{all:?}");
            return all;
        }
        assert!(tokio::time::Instant::now() < deadline, "waiting for {n} ended requests: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    }
}

async fn explain(ops: &mut Ops, target: &TestNode, frequency: pb::Frequency) -> pb::ExplainAccessResponse {
    let req = pb::ExplainAccessRequest {
        spec: "pay".into(),
        as_exchange_target_sys_id: target.sys_id.clone(),
        as_exchange_target_host: target.host.to_string(),
        as_exchange_frequency: frequency as i32,
        ..Default::default()
    };
    ops.policies.explain_access(req).await.expect("explain").into_inner()
}

pub(crate) async fn opens_every_record(tgt: &mut Ops, n: usize) {
    let page = pb::ListRecordsRequest { table: "hr".into(), page_size: 1_000, ..Default::default() };
    let records = tgt.crypto.list_records(page).await.expect("list").into_inner().records;
    assert_eq!(records.len(), n);
    for (i, r) in records.iter().enumerate() {
        let got = tgt.crypto.get_record(pb::GetRecordRequest { address: r.address.clone() }).await;
        assert_eq!(got.expect("opens with the exchanged key").into_inner().plaintext, vec![(i % 251) as u8; 32]);
    }
}

/// Scenario 12 and 13: the One Time Clone's policy approves the target's
/// request after the clone with no person involved, and is then used up: a
/// second clone brings no keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_clone_is_approved_by_its_policy_once_and_then_used_up() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    src.spec("hr", "other", true).await;
    put_records(&mut src, 40).await;
    // Off, so the clone leads only to the configured exchange (the property travels with the clone).
    set_auto(&mut src, "false").await;
    let made = src.exchange.create_clone_exchange(config(pb::Frequency::OneTimeClone, &target, &["pay"], false));
    let made = made.await.expect("configure").into_inner().clone_exchange.expect("config");
    assert_eq!(made.policies.len(), 1, "{made:?}");
    // The auto-created Resource Exchange policy, visible on the source.
    let policies = src.policies.list_policies(pb::ListPoliciesRequest { module: "hr".into() }).await.expect("list");
    let policy =
        policies.into_inner().policies.into_iter().find(|p| p.r#type == pb::PolicyType::ResourceExchange as i32);
    let policy = policy.expect("a Resource Exchange policy");
    assert_eq!(format!("hr/{}", policy.name), made.policies[0]);
    assert!(policy.active && policy.approval_type == pb::ApprovalType::OneTime as i32, "{policy:?}");
    assert_eq!((policy.target_sys_id.as_str(), policy.spec.as_str()), (target.sys_id.as_str(), "pay"));
    let why = explain(&mut src, &target, pb::Frequency::OneTimeClone).await;
    assert!(why.allowed && why.reason.contains(&policy.name), "{why:?}");
    let recurring = explain(&mut src, &target, pb::Frequency::RecurringClone).await;
    assert!(!recurring.allowed, "a One Time policy does not approve Recurring requests: {recurring:?}");

    // The configuration alone lets the target clone (no clone target registered).
    let run = clone_once(&target, &source, &pki).await;
    let mut tgt = target.admin(&pki).await;
    let [request] = <[_; 1]>::try_from(ended_requests(&mut tgt, 1).await).expect("one request");
    assert_eq!(request.frequency, pb::Frequency::OneTimeClone as i32, "{request:?}");
    assert_eq!(request.status, pb::RequestStatus::RequestCompleted as i32, "{request:?}");
    assert_eq!(request.lines.iter().map(|l| l.spec.as_str()).collect::<Vec<_>>(), ["pay"], "only the configured spec");
    assert_eq!(request.imported_key_count, 1);
    assert_ne!(request.request_id, run.clone_id);
    let on_source = src.get(&request.request_id).await;
    let approver = on_source.history.iter().find(|t| t.status == pb::RequestStatus::RequestApproved as i32);
    assert_eq!(approver.expect("approved").actor, format!("system (policy {})", policy.name), "{on_source:?}");
    opens_every_record(&mut tgt, 40).await;

    // Used up: the configuration names the request, its policy is inactive.
    let [used] = <[_; 1]>::try_from(configs(&mut src).await).expect("one config");
    assert_eq!(used.used_by_request_id, request.request_id, "{used:?}");
    let why = explain(&mut src, &target, pb::Frequency::OneTimeClone).await;
    assert!(!why.allowed && why.evaluated.iter().any(|e| e.why == "inactive"), "{why:?}");
    assert_eq!(src.audit_entries("clone_exchange.used").await.len(), 1);

    // Used up, the configuration no longer authorises a clone: the second one
    // is refused, nothing is requested, no key moves.
    let mut clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let start = pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: source.host.to_string() };
    let again = clones.start_clone(start).await.expect("start").into_inner().clone.expect("clone");
    let again = finished(&mut clones, &again.clone_id).await;
    assert_eq!(again.state, "failed", "{again:?}");
    assert!(again.error.contains("used up"), "{again:?}");
    assert_eq!(requests(&mut tgt).await.len(), 1, "no request after the used-up configuration");
    assert_eq!(tgt.keys_of("pay").await.len(), 1);
}

/// Scenario 14 and 33: a Recurring Clone approves the exchange after every
/// clone; the keys of the second exchange are already there and are counted,
/// not stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_clone_approves_every_clone_without_storing_keys_twice() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, 25).await;
    set_auto(&mut src, "false").await;
    let cfg = config(pb::Frequency::RecurringClone, &target, &["pay"], true);
    src.exchange.create_clone_exchange(cfg).await.expect("configure");
    let mut tgt = target.admin(&pki).await;

    clone_once(&target, &source, &pki).await;
    let first = ended_requests(&mut tgt, 1).await;
    assert_eq!(first[0].imported_key_count, 1, "{first:?}");
    clone_once(&target, &source, &pki).await;
    let both = ended_requests(&mut tgt, 2).await;
    for r in &both {
        assert_eq!(r.frequency, pb::Frequency::RecurringClone as i32, "{r:?}");
        assert_eq!(r.status, pb::RequestStatus::RequestCompleted as i32, "{r:?}");
        assert_eq!(r.total_key_count, 1);
    }
    let second = both.iter().find(|r| r.request_id != first[0].request_id).expect("a second request");
    assert_eq!(second.imported_key_count, 0, "the key was already here: {second:?}");
    assert!(second.lines[0].reason.contains("already present"), "{second:?}");
    let keys = tgt.keys_of("pay").await;
    let imported = keys.iter().filter(|k| k.origin_sys_id == source.sys_id).count();
    assert_eq!(imported, 1, "one imported key, not two: {keys:?}");
    // The configuration asks for a rekey: the first made the target's own key, the second reused it.
    let own = keys.iter().filter(|k| k.origin_sys_id == target.sys_id).count();
    assert_eq!(own, 1, "{keys:?}");
    let [cfg] = <[_; 1]>::try_from(configs(&mut src).await).expect("one config");
    assert!(cfg.used_by_request_id.is_empty(), "a Recurring Clone is never used up: {cfg:?}");
    assert!(cfg.rekey_after_import);
    opens_every_record(&mut tgt, 25).await;
}

/// The reference's guard and every refusal: the right code, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_exchange_refusals_name_the_rule_and_store_nothing() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    let policy_count = |ops: &mut Ops| {
        let mut p = ops.policies.clone();
        async move { p.list_policies(pb::ListPoliciesRequest::default()).await.expect("list").into_inner().policies.len() }
    };
    let before = policy_count(&mut src).await;
    let refused = |code: Code, r: Result<tonic::Response<pb::CreateCloneExchangeResponse>, tonic::Status>| {
        let e = r.expect_err("refused");
        assert_eq!(e.code(), code, "{e}");
        e.message().to_owned()
    };
    // The automatic exchange is on (its default): Recurring and rekey are refused.
    for (frequency, rekey) in [(pb::Frequency::RecurringClone, false), (pb::Frequency::OneTimeClone, true)] {
        let r = src.exchange.create_clone_exchange(config(frequency, &target, &["pay"], rekey)).await;
        let msg = refused(Code::FailedPrecondition, r);
        assert!(msg.contains("set glide_encryption.auto_key_exchange.enabled to false"), "{msg}");
    }
    let mut bad_host = config(pb::Frequency::OneTimeClone, &target, &["pay"], false);
    bad_host.target_host = "nohost".into();
    let mut own = config(pb::Frequency::OneTimeClone, &target, &["pay"], false);
    own.target_sys_id = source.sys_id.clone();
    for (req, code, field) in [
        (config(pb::Frequency::Adhoc, &target, &["pay"], false), Code::InvalidArgument, "frequency"),
        (config(pb::Frequency::Unspecified, &target, &["pay"], false), Code::InvalidArgument, "frequency"),
        (config(pb::Frequency::OneTimeClone, &target, &[], false), Code::InvalidArgument, "spec_names"),
        (config(pb::Frequency::OneTimeClone, &target, &["pay", "pay"], false), Code::InvalidArgument, "spec_names"),
        (config(pb::Frequency::OneTimeClone, &target, &["nope"], false), Code::NotFound, "nope"),
        (bad_host, Code::InvalidArgument, "host"),
        (own, Code::InvalidArgument, "target_sys_id"),
    ] {
        let msg = refused(code, src.exchange.create_clone_exchange(req).await);
        assert!(msg.contains(field), "{msg}");
    }
    let auditor = Ops::new(source.channel(&pki.operator("eve", &[Role::CryptographicAuditor])).await);
    let mut auditor_exchange = auditor.exchange.clone();
    let r = auditor_exchange.create_clone_exchange(config(pb::Frequency::OneTimeClone, &target, &["pay"], false)).await;
    refused(Code::PermissionDenied, r);
    assert!(configs(&mut src).await.is_empty(), "nothing stored");
    assert_eq!(policy_count(&mut src).await, before, "no policy created");

    // One Time without rekey is allowed with the property on; a second one for the target is not.
    let ok = config(pb::Frequency::OneTimeClone, &target, &["pay"], false);
    src.exchange.create_clone_exchange(ok.clone()).await.expect("one time");
    refused(Code::AlreadyExists, src.exchange.create_clone_exchange(ok).await);
    assert_eq!(policy_count(&mut src).await, before + 1);
    let del = pb::DeleteCloneExchangeRequest { target_sys_id: target.sys_id.clone() };
    src.exchange.delete_clone_exchange(del.clone()).await.expect("delete");
    assert_eq!(policy_count(&mut src).await, before, "its policy went with it");
    let e = src.exchange.delete_clone_exchange(del).await.expect_err("gone");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // Adhoc with rekey, and clone frequencies on CreateRequest, are refused on the target.
    let mut tgt = target.admin(&pki).await;
    for (frequency, rekey, field) in [
        (pb::Frequency::Adhoc, true, "rekey_after_import"),
        (pb::Frequency::OneTimeClone, false, "frequency"),
        (pb::Frequency::RecurringClone, false, "frequency"),
    ] {
        let req = pb::CreateRequestRequest {
            source_sys_id: source.sys_id.clone(),
            source_host: source.host.to_string(),
            spec_names: vec!["pay".into()],
            expires_in: None,
            frequency: frequency as i32,
            rekey_after_import: rekey,
        };
        let e = tgt.exchange.create_request(req).await.expect_err("refused");
        assert!(e.code() == Code::InvalidArgument && e.message().contains(field), "{e}");
    }
    assert!(requests(&mut tgt).await.is_empty(), "no request stored");

    // With the property off, Recurring with rekey is accepted; kmfctl lists it.
    set_auto(&mut src, "false").await;
    let admin = pki.operator("root", &[Role::Admin]);
    let dir = tempfile::tempdir().expect("dir");
    let mut create = crate::support::kmfctl_command(&source, &admin, dir.path());
    create.args(["exchange", "clone-config", "create", "--frequency", "recurring", "--target-sys-id"]);
    create.args([&target.sys_id, "--target-host", &target.host.to_string(), "--spec", "pay", "--rekey"]);
    let out = create.output().await.expect("kmfctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut list = crate::support::kmfctl_command(&source, &admin, dir.path());
    list.args(["--json", "exchange", "clone-config", "list"]);
    let out = list.output().await.expect("kmfctl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let v = &v["cloneExchanges"][0];
    assert_eq!(v["frequency"], "RECURRING_CLONE", "{v}");
    assert_eq!(v["rekeyAfterImport"], true, "{v}");
    assert_eq!(v["targetSysId"], target.sys_id.as_str(), "{v}");
}
