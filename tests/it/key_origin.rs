//! Keys travel only from their origin (issue 22, items 3 and 9): a target
//! refuses a bundle entry whose key id names another origin than the
//! bundle's source, and one that would shadow a key it holds with other
//! material; a source exports only the keys it originated (prod → dev →
//! test: test asks prod for prod's keys); and a source dials only a target
//! host named in the target's certificate or registered for its sys_id.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kmf::domain::bundle::Bundle;
use kmf::domain::ids::SysId;
use kmf::rpc::pb::{self, Decision, RequestStatus};
use kmf::signer::instance_key::InstanceKey;
use kmf::tls::pki::issue_instance;
use tonic::Code;

use crate::peer_refusals::refusals;
use crate::support::{Ops, Pki, Recorder, TestNode, peer_client, status};

/// A source whose deliveries are recorded (and can be held).
async fn recorded_source(pki: &Pki) -> (TestNode, Arc<Recorder>) {
    let recorder = std::sync::OnceLock::new();
    let source = TestNode::start_with(pki, |inner| {
        let r = Recorder::wrap(inner);
        let _ = recorder.set(r.clone());
        r
    })
    .await;
    let recorder = recorder.get().expect("recorder").clone();
    (source, recorder)
}

/// `bundle` re-signed by `source` (a malicious source signs what it likes).
fn signed_by(source: &TestNode, bundle: &Bundle) -> pb::DeliverBundleRequest {
    let bytes = bundle.encode();
    let key = InstanceKey::from_pem(&source.instance_files.key_pem).expect("instance key");
    let signature = key.sign(&bytes).expect("sign");
    pb::DeliverBundleRequest { bundle: bytes, signature }
}

async fn key_ids(ops: &mut Ops, spec: &str) -> Vec<String> {
    ops.keys_of(spec).await.into_iter().map(|k| k.key_id).collect()
}

/// `target` asks `source` for `specs`; `source` approves; waits for the end.
async fn exchange(t: &mut Ops, s: &mut Ops, source: &TestNode, specs: &[&str]) -> pb::ExchangeRequest {
    let id = t.create_request(source, specs).await.expect("create").request_id;
    s.decide(&id, Decision::Approve, "").await.expect("approve");
    s.wait_for(&id, "the exchange", |r| status(r) == RequestStatus::RequestCompleted).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_cannot_plant_keys_under_another_origin() {
    let pki = Pki::new();
    let (source, recorder) = recorded_source(&pki).await;
    let (target, prod) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut s, mut t, mut p) = (source.admin(&pki).await, target.admin(&pki).await, prod.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    p.spec("m", "salary", true).await;
    let prod_ct = p.encrypt("salary", b"prod pay", b"").await;

    recorder.hold.store(true, Ordering::SeqCst);
    let id = t.create_request(&source, &["salary"]).await.expect("create").request_id;
    s.decide(&id, Decision::Approve, "").await.expect("approve");
    let genuine = Bundle::decode(&recorder.last_bundle().bytes).expect("bundle");
    assert_eq!(genuine.entries.len(), 1);
    let mut as_source = peer_client(&target, &source.instance_files).await;

    // The source's own key, renamed to prod's (and to the target's own) id:
    // the material unwraps fine, so only the origin check stops it.
    for origin in [&prod.sys_id, &target.sys_id] {
        let mut forged = genuine.clone();
        let mut planted = forged.entries[0].clone();
        planted.key_id.origin = SysId::parse(origin).expect("sys_id");
        forged.entries.push(planted);
        let err = as_source.deliver_bundle(signed_by(&source, &forged)).await.expect_err("a planted key accepted");
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert!(err.message().contains(&format!("{origin}:salary:v1")), "{err}");
        assert!(err.message().contains("not the bundle's source"), "{err}");
    }
    assert!(key_ids(&mut t, "salary").await.is_empty(), "nothing imported, not even the genuine entry");
    let refused = refusals(&mut t, &format!("instance:{}", source.sys_id)).await;
    assert_eq!(refused.len(), 2, "each forged bundle is audited: {refused:?}");
    assert!(refused.iter().all(|e| e.subject == "/kmf.v1.KeyExchange/DeliverBundle"), "{refused:?}");
    assert_eq!(t.audit_entries("exchange.bundle_refused").await.len(), 2);
    assert_eq!(status(&t.get(&id).await), RequestStatus::RequestPending, "the request still waits");

    // The genuine bundle still imports; then prod's own key comes from prod
    // and prod's ciphertext decrypts on the target.
    recorder.hold.store(false, Ordering::SeqCst);
    s.wait_for(&id, "the genuine delivery", |r| status(r) == RequestStatus::RequestCompleted).await;
    assert_eq!(key_ids(&mut t, "salary").await, vec![format!("{}:salary:v1", source.sys_id)]);
    exchange(&mut t, &mut p, &prod, &["salary"]).await;
    assert_eq!(t.decrypt(&prod_ct, b"").await.expect("prod's ciphertext on the target"), b"prod pay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_never_shadows_a_held_key_with_other_material() {
    let pki = Pki::new();
    let (source, recorder) = recorded_source(&pki).await;
    let target = TestNode::start(&pki).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    let v1_ct = s.encrypt("salary", b"v1 pay", b"").await;
    exchange(&mut t, &mut s, &source, &["salary"]).await;
    let v1 = format!("{}:salary:v1", source.sys_id);
    assert_eq!(key_ids(&mut t, "salary").await, vec![v1.clone()]);

    s.keys.generate_key(pb::GenerateKeyRequest { spec: "salary".into() }).await.expect("v2");
    recorder.hold.store(true, Ordering::SeqCst);
    let id = t.create_request(&source, &["salary"]).await.expect("create").request_id;
    s.decide(&id, Decision::Approve, "").await.expect("approve");
    let genuine = Bundle::decode(&recorder.last_bundle().bytes).expect("bundle");
    assert_eq!(genuine.entries.len(), 2, "v1 and v2");

    // v1 (held) and v2 (new) with their materials swapped.
    let mut forged = genuine.clone();
    let (a, b) = (forged.entries[0].wrapped.clone(), forged.entries[1].wrapped.clone());
    forged.entries[0].wrapped = b;
    forged.entries[1].wrapped = a;
    let mut as_source = peer_client(&target, &source.instance_files).await;
    let err = as_source.deliver_bundle(signed_by(&source, &forged)).await.expect_err("a shadowing key accepted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains(&v1) && err.message().contains("differs from the key"), "{err}");
    assert_eq!(key_ids(&mut t, "salary").await, vec![v1.clone()], "nothing imported");
    assert_eq!(refusals(&mut t, &format!("instance:{}", source.sys_id)).await.len(), 1, "audited");

    // The genuine bundle: v1 is counted as present (same material), v2 imported.
    recorder.hold.store(false, Ordering::SeqCst);
    let done = s.wait_for(&id, "the genuine delivery", |r| status(r) == RequestStatus::RequestCompleted).await;
    assert_eq!(done.imported_key_count, 1);
    let on_target = t.get(&id).await;
    assert!(on_target.lines[0].reason.contains("1 key(s) already present"), "{:?}", on_target.lines);
    assert_eq!(key_ids(&mut t, "salary").await.len(), 2);
    assert_eq!(t.decrypt(&v1_ct, b"").await.expect("v1's ciphertext"), b"v1 pay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_exports_only_the_keys_it_originated() {
    let pki = Pki::new();
    let (prod, dev, test) = (TestNode::start(&pki).await, TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut p, mut d, mut t) = (prod.admin(&pki).await, dev.admin(&pki).await, test.admin(&pki).await);
    p.spec("m", "salary", true).await;
    p.spec("m", "bonus", true).await;
    d.spec("m", "salary", false).await;
    d.spec("m", "bonus", false).await;
    t.spec("m", "salary", false).await;
    t.spec("m", "bonus", false).await;
    let prod_ct = p.encrypt("salary", b"prod pay", b"").await;

    // dev imports prod's keys, then makes its own salary key.
    exchange(&mut d, &mut p, &prod, &["salary", "bonus"]).await;
    d.keys.generate_key(pb::GenerateKeyRequest { spec: "salary".into() }).await.expect("dev's key");
    let dev_ct = d.encrypt("salary", b"dev pay", b"").await;

    // test asks dev: only dev's own key comes; prod's are named, not sent.
    let done = exchange(&mut t, &mut d, &dev, &["salary", "bonus"]).await;
    assert_eq!((done.total_key_count, done.exported_key_count, done.imported_key_count), (3, 1, 1));
    let ask = format!("imported from {}; ask its origin", prod.sys_id);
    let line = |name: &str| done.lines.iter().find(|l| l.spec == name).expect("line").clone();
    let (salary, bonus) = (line("salary"), line("bonus"));
    assert_eq!((salary.status, salary.key_count), (pb::SpecLineStatus::Exchanged as i32, 1), "{salary:?}");
    assert!(salary.reason.contains(&format!("1 key(s) {ask}")), "{salary:?}");
    assert_eq!((bonus.status, bonus.key_count), (pb::SpecLineStatus::NotOnSource as i32, 0), "{bonus:?}");
    assert!(bonus.reason.contains(&format!("1 key(s) {ask}")), "{bonus:?}");
    assert_eq!(t.get(&done.request_id).await.lines, done.lines, "the target shows the source's lines");
    assert_eq!(key_ids(&mut t, "salary").await, vec![format!("{}:salary:v1", dev.sys_id)]);
    assert!(key_ids(&mut t, "bonus").await.is_empty());
    assert_eq!(t.decrypt(&dev_ct, b"").await.expect("dev's ciphertext"), b"dev pay");
    t.decrypt(&prod_ct, b"").await.expect_err("prod's key did not come from dev");

    // test asks prod, the origin.
    exchange(&mut t, &mut p, &prod, &["salary"]).await;
    assert_eq!(t.decrypt(&prod_ct, b"").await.expect("prod's ciphertext"), b"prod pay");
}

/// An OpenRequest from `sys_id` naming `host` for the source to dial.
fn open(source: &TestNode, sys_id: &SysId, host: &str, n: u8, transport: &[u8]) -> pb::OpenRequestRequest {
    let in_an_hour = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    pb::OpenRequestRequest {
        request_id: format!("{n:032x}"),
        target_sys_id: sys_id.to_string(),
        target_host: host.into(),
        source_sys_id: source.sys_id.clone(),
        spec_names: vec!["salary".into()],
        expires_at: Some(in_an_hour.into()),
        transport_public_key: transport.to_vec(),
        wrapping_algorithm: pb::WrappingAlgorithm::RsaAesKeyWrapSha256 as i32,
        frequency: pb::Frequency::Adhoc as i32,
        clone_grant_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_dials_only_hosts_named_for_the_target() {
    let pki = Pki::new();
    let source = TestNode::start(&pki).await;
    let mut s = source.admin(&pki).await;
    s.spec("m", "salary", true).await;
    // A genuine instance certificate that names only kmf-rogue.example.
    let rogue = SysId::from_random([9; 16]);
    let files = pki.files(&issue_instance(&pki.ca, &rogue, &["kmf-rogue.example".to_owned()]).expect("cert"));
    let mut client = peer_client(&source, &files).await;
    let rsa = openssl::rsa::Rsa::generate(3072).expect("rsa");
    let transport = openssl::pkey::PKey::from_rsa(rsa).expect("pkey").public_key_to_der().expect("der");
    let actor = format!("instance:{rogue}");

    // Hosts neither the certificate names nor anyone registered: refused,
    // audited, nothing recorded (so nothing is ever dialled there).
    let foreign = ["127.0.0.1:9", "10.0.0.7:7443", "metadata.internal:80", "kmf-rogue.example.evil:443"];
    for (n, host) in foreign.iter().enumerate() {
        let err = client.open_request(open(&source, &rogue, host, n as u8 + 1, &transport)).await.expect_err(host);
        assert_eq!(err.code(), Code::PermissionDenied, "{host}: {err}");
        assert!(err.message().contains("target_host"), "{err}");
    }
    let refused = refusals(&mut s, &actor).await;
    assert_eq!(refused.len(), foreign.len(), "{refused:?}");
    assert!(refused.iter().all(|e| e.subject == "/kmf.v1.KeyExchange/OpenRequest"), "{refused:?}");
    let listed = s.exchange.list_requests(pb::ListRequestsRequest::default()).await.expect("list").into_inner();
    assert!(listed.requests.is_empty(), "nothing recorded: {:?}", listed.requests);

    // A name the certificate carries (any port, any case): recorded.
    let named = client.open_request(open(&source, &rogue, "KMF-Rogue.example:8443", 20, &transport)).await;
    assert_eq!(named.expect("a host the certificate names").into_inner().request.expect("view").status, 1);

    // A host an admin registered for that sys_id (a clone target): recorded,
    // though the certificate does not name it; another port is not.
    let mut clones = pb::clones_client::ClonesClient::new(
        source.channel(&pki.operator("root", &[kmf::domain::auth::Role::Admin])).await,
    );
    let add = pb::AddCloneTargetRequest { sys_id: rogue.to_string(), host: "10.0.0.7:7443".into() };
    clones.add_clone_target(add).await.expect("add clone target");
    client.open_request(open(&source, &rogue, "10.0.0.7:7443", 21, &transport)).await.expect("a registered host");
    let err = client.open_request(open(&source, &rogue, "10.0.0.7:7444", 22, &transport)).await.expect_err("port");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let listed = s.exchange.list_requests(pb::ListRequestsRequest::default()).await.expect("list").into_inner();
    let hosts: Vec<String> = listed.requests.iter().map(|r| r.target_host.clone()).collect();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    assert!(hosts.contains(&"kmf-rogue.example:8443".to_owned()) && hosts.contains(&"10.0.0.7:7443".to_owned()));
}
