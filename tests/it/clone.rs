//! Clone, source side, over mTLS: clone targets (Clones service), and the
//! snapshot stream (CloneSource.StreamSnapshot) that only a registered target
//! may pull, read through the daemon's own peer link.

use kmf::domain::clone::{SnapshotOrder, SnapshotPart};
use kmf::domain::ids::SysId;
use kmf::error::PeerError;
use kmf::node::ports::PeerLink;
use kmf::rpc::pb;
use kmf::rpc::pb::clones_client::ClonesClient;
use kmf::rpc::peer::PeerClient;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::support::{Ops, Pki, TestNode};

const RECORDS: usize = 1_234;

pub(crate) async fn put_records(ops: &mut Ops, n: usize) {
    for i in 0..n {
        let address = pb::RecordAddress { table: "hr".into(), field: "salary".into(), record_id: format!("r{i:05}") };
        let req =
            pb::PutRecordRequest { address: Some(address), spec: "pay".into(), plaintext: vec![(i % 251) as u8; 32] };
        ops.crypto.put_record(req).await.expect("put record");
    }
}

/// Pulls the whole stream through the target's peer link, checking its order.
async fn pull(link: &PeerClient, source: &TestNode) -> Result<(SnapshotOrder, Vec<SnapshotPart>), PeerError> {
    let expected = SysId::parse(&source.sys_id).expect("sys_id");
    let mut stream = link.stream_snapshot(&source.host, &expected).await?;
    let (mut order, mut parts) = (SnapshotOrder::default(), Vec::new());
    while let Some(part) = stream.next().await {
        let part = part?;
        order.accept(&part).expect("parts in order");
        parts.push(part);
    }
    Ok((order, parts))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_registered_target_pulls_a_complete_snapshot_without_keys() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut admin = source.admin(&pki).await;
    admin.spec("hr", "pay", true).await;
    let set =
        pb::SetPropertyRequest { name: "glide_encryption.auto_key_exchange.enabled".into(), value: "false".into() };
    admin.properties.set_property(set).await.expect("property");
    put_records(&mut admin, RECORDS).await;
    let link = PeerClient::new(SysId::parse(&target.sys_id).expect("id"), target.instance_files.clone());

    // Not registered: refused, and the refusal is audited on the source.
    match pull(&link, &source).await {
        Err(PeerError::Refused(e)) => assert!(e.to_string().contains("not a clone target"), "{e}"),
        other => panic!("an unregistered target must be refused, got {:?}", other.map(|(_, p)| p.len())),
    }
    let refused = admin.audit_entries("clone.refused").await;
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].actor, format!("instance:{}", target.sys_id));

    // Registered by an admin: the whole snapshot arrives, in order.
    let mut clones = ClonesClient::new(source.channel(&pki.operator("root", &[kmf::domain::auth::Role::Admin])).await);
    let add = pb::AddCloneTargetRequest { sys_id: target.sys_id.clone(), host: target.host.to_string() };
    let added = clones.add_clone_target(add).await.expect("add").into_inner().target.expect("target");
    assert_eq!((added.sys_id.as_str(), added.added_by.as_str()), (target.sys_id.as_str(), "operator:root"));
    let listed = clones.list_clone_targets(pb::ListCloneTargetsRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.targets.len(), 1);

    let (order, parts) = pull(&link, &source).await.expect("a registered target is served");
    assert!(order.is_complete(), "the stream ends with its end part");
    let header = order.header().expect("header");
    assert_eq!((header.source.as_str(), header.records), (source.sys_id.as_str(), RECORDS as u64));
    let mut records = Vec::new();
    let (mut specs, mut properties) = (Vec::new(), Vec::new());
    for p in &parts {
        match p {
            SnapshotPart::Records(r) => {
                assert!(r.len() <= kmf::domain::clone::RECORDS_PER_PART);
                records.extend(r.iter().cloned());
            }
            SnapshotPart::Catalog(c) => {
                specs.extend(c.specs.iter().map(|s| s.name.to_string()));
                properties.extend(c.properties.iter().map(|p| (p.name.clone(), p.value.clone())));
            }
            _ => {}
        }
    }
    assert_eq!(specs, ["pay"]);
    assert!(properties.contains(&("glide_encryption.auto_key_exchange.enabled".into(), "false".into())));
    assert_eq!(records.len(), RECORDS);
    // The records are the source's ciphertexts, which the source still opens
    // (the address is their associated data); no part carries a key.
    for (i, r) in records.iter().enumerate().step_by(300) {
        assert_eq!(r.address.record_id, format!("r{i:05}"), "address order");
        let plain = admin.decrypt(&r.ciphertext, &r.address.associated_data()).await.expect("decrypts on the source");
        assert_eq!(plain, vec![(i % 251) as u8; 32]);
    }
    let served = admin.audit_entries("clone.serve").await;
    assert!(served.iter().any(|e| e.details.contains(&format!("{RECORDS} records served"))), "{served:?}");

    // An operator certificate cannot pull a snapshot; removal takes effect at once.
    let mut as_operator = pb::clone_source_client::CloneSourceClient::new(admin_channel(&source, &pki).await);
    let err = as_operator.stream_snapshot(pb::StreamSnapshotRequest {}).await.expect_err("operators are refused");
    assert_eq!(err.code(), Code::PermissionDenied);
    let remove = pb::RemoveCloneTargetRequest { sys_id: target.sys_id.clone() };
    clones.remove_clone_target(remove.clone()).await.expect("remove");
    assert_eq!(clones.remove_clone_target(remove).await.expect_err("gone").code(), Code::NotFound);
    assert!(matches!(pull(&link, &source).await, Err(PeerError::Refused(_))), "refused again once removed");
}

pub(crate) async fn admin_channel(node: &TestNode, pki: &Pki) -> tonic::transport::Channel {
    node.channel(&pki.operator("root", &[kmf::domain::auth::Role::Admin])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_target_changes_are_checked_and_need_a_manager() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let mut clones = ClonesClient::new(admin_channel(&source, &pki).await);
    let add = |sys_id: &str, host: &str| pb::AddCloneTargetRequest { sys_id: sys_id.into(), host: host.into() };
    let own = clones.add_clone_target(add(&source.sys_id, "127.0.0.1:1")).await.expect_err("itself");
    assert!(own.code() == Code::InvalidArgument && own.message().contains("its own clone target"), "{own}");
    let bad = clones.add_clone_target(add("not-a-sys-id", "127.0.0.1:1")).await.expect_err("bad id");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let other = "0123456789abcdef0123456789abcdef";
    let no_port = clones.add_clone_target(add(other, "no port")).await.expect_err("bad host");
    assert_eq!(no_port.code(), Code::InvalidArgument);
    let operator = pki.operator("op", &[kmf::domain::auth::Role::CryptographicOperator]);
    let mut as_operator = ClonesClient::new(source.channel(&operator).await);
    let err = as_operator.add_clone_target(add(other, "127.0.0.1:1")).await.expect_err("operators may not");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        as_operator
            .list_clone_targets(pb::ListCloneTargetsRequest {})
            .await
            .expect("any role lists")
            .into_inner()
            .targets
            .is_empty()
    );
    // Adding again replaces the host; one entry per target.
    clones.add_clone_target(add(other, "127.0.0.1:1")).await.expect("add");
    clones.add_clone_target(add(other, "127.0.0.1:2")).await.expect("again");
    let listed = clones.list_clone_targets(pb::ListCloneTargetsRequest {}).await.expect("list").into_inner().targets;
    assert_eq!(listed.iter().map(|t| t.host.as_str()).collect::<Vec<_>>(), ["127.0.0.1:2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmfctl_manages_clone_targets() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let admin = pki.operator("root", &[kmf::domain::auth::Role::Admin]);
    let dir = tempfile::tempdir().expect("dir");
    let other = "0123456789abcdef0123456789abcdef";
    let run = |args: &[&str]| {
        let mut cmd = crate::support::kmfctl_command(&source, &admin, dir.path());
        cmd.args(args);
        cmd
    };
    let out = run(&["clone", "target", "add", other, "127.0.0.1:7443"]).output().await.expect("kmfctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--json", "clone", "target", "list"]).output().await.expect("kmfctl");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listed = &listed["targets"][0];
    assert_eq!(listed["sysId"], other);
    assert_eq!(listed["host"], "127.0.0.1:7443");
    assert_eq!(listed["addedBy"], "operator:root");
    let out = run(&["clone", "target", "remove", other]).output().await.expect("kmfctl");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("removed"));
    let out = run(&["clone", "target", "remove", other]).output().await.expect("kmfctl");
    assert!(!out.status.success(), "removing an unknown target fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"), "{}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) async fn count_records(ops: &mut Ops, table: &str) -> usize {
    let (mut n, mut token) = (0, String::new());
    for _ in 0..1_000 {
        let req = pb::ListRecordsRequest {
            table: table.into(),
            page_token: token.clone(),
            page_size: 1_000,
            ..Default::default()
        };
        let page = ops.crypto.list_records(req).await.expect("list").into_inner();
        n += page.records.len();
        if page.next_page_token.is_empty() {
            return n;
        }
        token = page.next_page_token;
    }
    panic!("more pages than records");
}

/// Waits (bounded) until the clone is no longer running.
pub(crate) async fn finished(clones: &mut ClonesClient<tonic::transport::Channel>, id: &str) -> pb::CloneInfo {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let c = clones.get_clone(pb::GetCloneRequest { clone_id: id.into() }).await.expect("get").into_inner();
        let c = c.clone.expect("clone");
        if c.state != "running" {
            return c;
        }
        assert!(tokio::time::Instant::now() < deadline, "clone still running: {c:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_clones_its_source_in_one_step_and_keeps_its_identity() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, RECORDS).await;
    let off =
        pb::SetPropertyRequest { name: "glide_encryption.auto_key_exchange.enabled".into(), value: "false".into() };
    src.properties.set_property(off).await.expect("property");
    // The target's own data before the clone.
    let mut tgt = target.admin(&pki).await;
    tgt.spec("local", "mine", true).await;
    let address = pb::RecordAddress { table: "old".into(), field: "f".into(), record_id: "1".into() };
    tgt.crypto
        .put_record(pb::PutRecordRequest { address: Some(address), spec: "mine".into(), plaintext: b"x".to_vec() })
        .await
        .expect("own record");

    let mut target_clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let start = |source: &TestNode| pb::StartCloneRequest {
        source_sys_id: source.sys_id.clone(),
        source_host: source.host.to_string(),
    };
    // Not yet a clone target of the source: the clone fails, nothing changes.
    let refused = target_clones.start_clone(start(&source)).await.expect("start").into_inner().clone.expect("clone");
    let refused = finished(&mut target_clones, &refused.clone_id).await;
    assert!(refused.state == "failed" && refused.error.contains("not a clone target"), "{refused:?}");
    assert_eq!(count_records(&mut tgt, "old").await, 1, "the previous data is intact");

    let mut source_clones = ClonesClient::new(admin_channel(&source, &pki).await);
    let add = pb::AddCloneTargetRequest { sys_id: target.sys_id.clone(), host: target.host.to_string() };
    source_clones.add_clone_target(add).await.expect("register");
    let run = target_clones.start_clone(start(&source)).await.expect("start").into_inner().clone.expect("clone");
    let done = finished(&mut target_clones, &run.clone_id).await;
    assert_eq!(done.state, "completed", "{done:?}");
    assert_eq!((done.records_total, done.records_copied), (RECORDS as u64, RECORDS as u64));
    assert!(done.records_per_second > 0.0);

    // The source's records replaced the target's, its catalog was merged in; identity stays.
    assert_eq!(count_records(&mut tgt, "hr").await, RECORDS);
    assert_eq!(count_records(&mut tgt, "old").await, 0, "the target's own records were replaced");
    let specs = tgt.keys.list_specs(pb::ListSpecsRequest::default()).await.expect("specs").into_inner().specs;
    assert_eq!(specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["mine", "pay"], "the target keeps its own");
    let auto = tgt
        .properties
        .get_property(pb::GetPropertyRequest { name: "glide_encryption.auto_key_exchange.enabled".into() });
    assert_eq!(auto.await.expect("property").into_inner().property.expect("p").value, "false");
    let info = tgt.instance.info(pb::InfoRequest {}).await.expect("info").into_inner();
    assert_eq!(info.sys_id, target.sys_id, "the target keeps its identity");
    let chain = tgt.audit.verify_audit_chain(pb::VerifyAuditChainRequest {}).await.expect("verify").into_inner();
    assert!(chain.intact, "the target's audit log is kept, unbroken: {chain:?}");
    assert!(!tgt.audit_entries("clone.complete").await.is_empty());
    // No key came with the clone: the records cannot be opened here yet.
    let page = pb::ListRecordsRequest { table: "hr".into(), page_size: 1, ..Default::default() };
    let first = tgt.crypto.list_records(page).await.expect("list").into_inner().records.remove(0);
    let get = pb::GetRecordRequest { address: first.address };
    let err = tgt.crypto.get_record(get).await.expect_err("the source's keys are not on the target");
    assert!(err.code() == Code::NotFound && err.message().contains("key not found"), "{err}");
    // The cloned property is false: nothing was requested automatically.
    let listed = tgt.exchange.list_requests(pb::ListRequestsRequest::default()).await.expect("list").into_inner();
    assert!(listed.requests.is_empty(), "{:?}", listed.requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmfctl_clone_start_watch_follows_the_clone_to_its_end() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, 50).await;
    let admin = pki.operator("root", &[kmf::domain::auth::Role::Admin]);
    let (dir_s, dir_t) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    let mut add = crate::support::kmfctl_command(&source, &admin, dir_s.path());
    add.args(["clone", "target", "add", &target.sys_id, &target.host.to_string()]);
    assert!(add.output().await.expect("kmfctl").status.success());
    let mut start = crate::support::kmfctl_command(&target, &admin, dir_t.path());
    start.args(["--json", "clone", "start", &source.sys_id, &source.host.to_string(), "--watch"]);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), start.output())
        .await
        .expect("bounded")
        .expect("kmfctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let shown = &shown["clone"];
    assert_eq!(shown["state"], "completed", "{shown}");
    assert_eq!(shown["recordsCopied"], "50", "uint64 is a string in the JSON mapping");
    // The same id is listed on the target; `get` shows it too.
    let id = shown["cloneId"].as_str().expect("id").to_owned();
    let mut get = crate::support::kmfctl_command(&target, &admin, dir_t.path());
    get.args(["clone", "get", &id]);
    let out = get.output().await.expect("kmfctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&id) && text.contains("completed") && text.contains("50/50"),
        "{text}"
    );
}

pub(crate) async fn requests(ops: &mut Ops) -> Vec<pb::ExchangeRequest> {
    let req = pb::ListRequestsRequest { page_size: 100, ..Default::default() };
    ops.exchange.list_requests(req).await.expect("list requests").into_inner().requests
}

/// The headline flow: clone, then the keys follow with no person involved,
/// so the cloned records open on the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_clone_the_keys_follow_automatically_and_the_records_open() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, 300).await;
    let mut source_clones = ClonesClient::new(admin_channel(&source, &pki).await);
    let add = pb::AddCloneTargetRequest { sys_id: target.sys_id.clone(), host: target.host.to_string() };
    source_clones.add_clone_target(add).await.expect("register");

    let mut target_clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let start = pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: source.host.to_string() };
    let run = target_clones.start_clone(start).await.expect("start").into_inner().clone.expect("clone");
    assert_eq!(finished(&mut target_clones, &run.clone_id).await.state, "completed");

    // The target asks for the clone's specs by itself; the source's grant approves.
    let mut tgt = target.admin(&pki).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let request = loop {
        let done =
            requests(&mut tgt).await.into_iter().find(|r| r.status == pb::RequestStatus::RequestCompleted as i32);
        if let Some(r) = done {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no completed automatic request: {:?}",
            requests(&mut tgt).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    };
    assert_eq!(request.frequency, pb::Frequency::Automatic as i32);
    assert_eq!(request.request_id, run.clone_id, "the automatic request carries the clone's id");
    assert_eq!(request.imported_key_count, 1);
    let on_source = src.get(&request.request_id).await;
    assert!(
        on_source.history.iter().any(|t| t.actor.starts_with("system (clone grant")),
        "approved by the clone grant, not a person: {:?}",
        on_source.history
    );

    // Every cloned record opens on the target.
    let page = pb::ListRecordsRequest { table: "hr".into(), page_size: 1_000, ..Default::default() };
    let records = tgt.crypto.list_records(page).await.expect("list").into_inner().records;
    assert_eq!(records.len(), 300);
    for (i, r) in records.iter().enumerate().step_by(37) {
        let got = tgt.crypto.get_record(pb::GetRecordRequest { address: r.address.clone() }).await;
        assert_eq!(got.expect("opens with the exchanged key").into_inner().plaintext, vec![(i % 251) as u8; 32]);
    }
    // Exactly one automatic request, however often its job ran.
    assert_eq!(requests(&mut tgt).await.len(), 1);

    // Both sides show the signed receipt; kmfctl checks it against the CA.
    let admin = pki.operator("root", &[kmf::domain::auth::Role::Admin]);
    for node in [&source, &target] {
        let dir = tempfile::tempdir().expect("dir");
        let mut get = crate::support::kmfctl_command(node, &admin, dir.path());
        get.args(["--json", "exchange", "get", &request.request_id, "--receipt"]);
        let out = get.output().await.expect("kmfctl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // stdout: the GetRequest response with its proof; stderr: the check.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["proof"]["signedBySysId"], target.sys_id.as_str(), "{v}");
        assert_eq!(v["proof"]["importedKeyIds"].as_array().map(Vec::len), Some(1));
        assert!(v["proof"]["receipt"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
        let checked = String::from_utf8_lossy(&out.stderr);
        assert!(checked.contains("receipt VERIFIED") && checked.contains("(1 imported key(s))"), "{checked}");
    }
}

pub(crate) async fn policies_of(ops: &mut Ops, module: &str) -> Vec<(String, i32, i32)> {
    let req = pb::ListPoliciesRequest { module: module.into() };
    let mut out: Vec<(String, i32, i32)> = ops
        .policies
        .list_policies(req)
        .await
        .expect("list policies")
        .into_inner()
        .policies
        .into_iter()
        .map(|p| (p.name, p.r#type, p.result))
        .collect();
    out.sort();
    out
}

async fn spec_exportable(ops: &mut Ops) -> Vec<(String, bool)> {
    let specs = ops.keys.list_specs(pb::ListSpecsRequest::default()).await.expect("specs").into_inner().specs;
    specs.into_iter().map(|s| (s.name, s.exportable)).collect()
}

/// Writes a property as the system does (protected ones are not an operator's to set).
async fn system_set(node: &TestNode, name: &str, value: &str) {
    use kmf::domain::audit::{AuditEvent, Outcome};
    let now = kmf::domain::ids::UnixMillis(1);
    let p = kmf::domain::property::Property {
        name: name.into(),
        value: value.into(),
        updated_at: now,
        updated_by: "system (test)".into(),
    };
    let properties = kmf::store::PropertyStore::new(node.running().services.store());
    let read = properties.property(name.into()).await.expect("read the property");
    let subject = name.to_owned();
    let audit =
        move |_: Option<&str>| AuditEvent::new(now, "system (test)", "property.set", &subject, Outcome::Success);
    properties.put_property_checked(read, p, audit).await.expect("system property");
}

async fn property(ops: &mut Ops, name: &str) -> Option<String> {
    let got = ops.properties.get_property(pb::GetPropertyRequest { name: name.into() }).await.expect("property");
    got.into_inner().property.map(|p| p.value).filter(|v| !v.is_empty())
}

/// Issue 22 item 10: a clone adds what the target lacks and never widens what
/// it allows. The target's own module and spec keep their policies and
/// `exportable` flag; a module only on the source is added, its spec not
/// exportable; protected properties are neither copied nor erased; records
/// under the source's keys undo a finished rekey and show as rekey debt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_never_widens_what_the_target_allows() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    for (module, spec) in [("hr", "pay"), ("ops", "log")] {
        let mut req = kmf::cli::kmfctl::aes_spec(module, spec, 256);
        req.exportable = true;
        src.spec_from(req, true).await;
    }
    put_records(&mut src, 20).await;
    let set = |name: &str, value: &str| pb::SetPropertyRequest { name: name.into(), value: value.into() };
    let auto = "glide_encryption.auto_key_exchange.enabled";
    src.properties.set_property(set(auto, "false")).await.expect("property");
    system_set(&source, "protected.custom.flag", "source").await;
    let source_hr = policies_of(&mut src, "hr").await;
    assert!(source_hr.iter().all(|p| p.2 == pb::PolicyResult::Track as i32) && !source_hr.is_empty(), "{source_hr:?}");

    // The target's own hr: no Track policy, a StrictReject one; pay not exportable.
    let mut tgt = target.admin(&pki).await;
    let module = pb::CreateModuleRequest { name: "hr".into(), default_access: pb::DefaultAccess::Reject as i32 };
    tgt.keys.create_module(module).await.expect("module");
    tgt.spec("hr", "pay", true).await;
    let strict = pb::AccessPolicy {
        name: "nobody".into(),
        module: "hr".into(),
        r#type: pb::PolicyType::Role as i32,
        result: pb::PolicyResult::StrictReject as i32,
        role: "cryptographic_operator".into(),
        ..Default::default()
    };
    tgt.policies.create_policy(pb::CreatePolicyRequest { policy: Some(strict) }).await.expect("policy");
    system_set(&target, "protected.custom.flag", "target").await;
    let target_hr = policies_of(&mut tgt, "hr").await;
    assert_eq!(target_hr.len(), 1, "{target_hr:?}");
    // A rekey finished on the target (the property only the system writes).
    let rekeyed = kmf::domain::property::REKEYED;
    system_set(&target, rekeyed, "true").await;
    assert_eq!(property(&mut tgt, rekeyed).await.as_deref(), Some("true"));

    let mut source_clones = ClonesClient::new(admin_channel(&source, &pki).await);
    let add = pb::AddCloneTargetRequest { sys_id: target.sys_id.clone(), host: target.host.to_string() };
    source_clones.add_clone_target(add).await.expect("register");
    let mut target_clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let start = pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: source.host.to_string() };
    let run = target_clones.start_clone(start).await.expect("start").into_inner().clone.expect("clone");
    assert_eq!(finished(&mut target_clones, &run.clone_id).await.state, "completed");
    assert_eq!(count_records(&mut tgt, "hr").await, 20, "the records are the source's");

    // The target's hr and pay are still its own; ops and log were added, log not exportable.
    assert_eq!(policies_of(&mut tgt, "hr").await, target_hr, "hr keeps its own policies");
    let mut exportable = spec_exportable(&mut tgt).await;
    exportable.sort();
    assert_eq!(
        exportable,
        [("log".to_owned(), false), ("pay".to_owned(), false)],
        "a clone never makes a spec exportable"
    );
    let modules = tgt.keys.list_modules(pb::ListModulesRequest {}).await.expect("modules").into_inner().modules;
    let mut modules: Vec<String> = modules.into_iter().map(|m| m.name).collect();
    modules.sort();
    assert_eq!(modules, ["hr", "ops"]);
    assert_eq!(
        policies_of(&mut tgt, "ops").await,
        policies_of(&mut src, "ops").await,
        "a new module comes with its policies"
    );
    // Protected properties are neither copied nor erased; the others are the source's.
    assert_eq!(property(&mut tgt, "protected.custom.flag").await.as_deref(), Some("target"));
    assert_eq!(property(&mut tgt, auto).await.as_deref(), Some("false"));
    // Records under the source's keys again: the rekey no longer holds, and the debt shows.
    assert_eq!(property(&mut tgt, rekeyed).await.as_deref(), Some("false"));
    let set_by_clone = tgt.audit_entries("property.set").await;
    assert!(
        set_by_clone
            .iter()
            .any(|e| e.actor == "system (clone)" && e.subject == rekeyed && e.details.contains("20 record(s)")),
        "{set_by_clone:?}"
    );
    let mut rekeys = pb::rekeys_client::RekeysClient::new(admin_channel(&target, &pki).await);
    let debt = rekeys.list_rekey_debt(pb::ListRekeyDebtRequest {}).await.expect("debt").into_inner();
    assert_eq!(debt.total_records, 20, "{debt:?}");
    assert!(debt.debts.iter().all(|d| d.key_id.starts_with(&source.sys_id)), "{debt:?}");
    let merged = tgt.audit_entries("clone.merge").await;
    assert!(merged.iter().any(|e| e.details.contains("added 1 modules, 1 specs")), "{merged:?}");
}

/// With the catalog merged, the target keeps specs of its own; the automatic
/// exchange after the clone asks only for the specs that came with it (the
/// source's grant covers those), so it is still approved without a person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_automatic_exchange_never_asks_for_the_targets_own_specs() {
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let mut src = source.admin(&pki).await;
    src.spec("hr", "pay", true).await;
    put_records(&mut src, 10).await;
    let mut source_clones = ClonesClient::new(admin_channel(&source, &pki).await);
    let add = pb::AddCloneTargetRequest { sys_id: target.sys_id.clone(), host: target.host.to_string() };
    source_clones.add_clone_target(add).await.expect("register");
    let mut tgt = target.admin(&pki).await;
    tgt.spec("local", "mine", true).await;

    let mut target_clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let start = pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: source.host.to_string() };
    let run = target_clones.start_clone(start).await.expect("start").into_inner().clone.expect("clone");
    assert_eq!(finished(&mut target_clones, &run.clone_id).await.state, "completed");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let request = loop {
        let all = requests(&mut tgt).await;
        if let Some(r) = all.iter().find(|r| r.status == pb::RequestStatus::RequestCompleted as i32) {
            break r.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no automatic request completed: {all:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    };
    let specs: Vec<&str> = request.lines.iter().map(|l| l.spec.as_str()).collect();
    assert_eq!(specs, ["pay"], "approved by the clone grant, for the cloned spec only: {request:?}");
    assert_eq!(requests(&mut tgt).await.len(), 1, "one automatic request");
}
