//! Instance.Diagnose over real mTLS: a healthy node, peers before and after
//! an exchange and once the peer is stopped (health stays SERVING),
//! certificates near or past expiry.

use std::time::Duration;

use kmf::app::{AppConfig, init_instance, start_with};
use kmf::domain::auth::Role;
use kmf::domain::ids::{Host, UnixMillis};
use kmf::rpc::pb::{self, ComponentStatus, Decision, RequestStatus};
use kmf::tls::pki::issue_instance_valid;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::support::{Ops, Pki, TestNode, kmfctl_command, status};

const DAY: i64 = 24 * 3600 * 1000;

pub async fn diagnose(ops: &mut Ops) -> pb::DiagnoseResponse {
    ops.instance.diagnose(pb::DiagnoseRequest {}).await.expect("diagnose").into_inner()
}

pub fn component<'a>(d: &'a pb::DiagnoseResponse, name: &str) -> &'a pb::Component {
    d.components.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no component {name}: {d:?}"))
}

pub fn st(status: i32) -> ComponentStatus {
    ComponentStatus::try_from(status).expect("component status")
}

/// A node whose instance certificate is valid only from..until.
async fn node_with_cert(pki: &Pki, not_before: UnixMillis, not_after: UnixMillis) -> TestNode {
    node_with(pki, None, Some((not_before, not_after))).await
}

/// A node with an optional metrics listener and certificate validity.
pub async fn node_with(
    pki: &Pki,
    metrics_listen: Option<std::net::SocketAddr>,
    valid: Option<(UnixMillis, UnixMillis)>,
) -> TestNode {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys_id = init_instance(dir.path(), &Host::parse("127.0.0.1:0").expect("host")).expect("init");
    let names = ["127.0.0.1".to_owned()];
    let cert = match valid {
        Some((from, until)) => issue_instance_valid(&pki.ca, &sys_id, &names, from, until),
        None => kmf::tls::pki::issue_instance(&pki.ca, &sys_id, &names),
    };
    let files = pki.files(&cert.expect("instance cert"));
    let cfg = AppConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        host: None,
        tls: files.clone(),
        signer: kmf::app::SignerConfig::software_in(dir.path()),
        background_interval: Duration::from_millis(100),
        health_interval: kmf::node::diagnostics::WATCH_EVERY,
        metrics_listen,
        rekey_retry_interval: kmf::node::jobs::DEFAULT_REKEY_RETRY,
        clone_grant_lifetime: kmf::node::jobs::DEFAULT_CLONE_GRANT_LIFETIME,
        connections: Default::default(),
        tls_paths: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app = start_with(cfg.clone(), listener, |p| p).await.expect("start");
    let host = Host::parse(&format!("127.0.0.1:{}", app.local_addr.port())).expect("host");
    TestNode { cfg, dir, app: Some(app), sys_id: sys_id.to_string(), host, instance_files: files }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_healthy_node_then_peers_after_an_exchange_and_a_stopped_peer() {
    let pki = Pki::new();
    let (mut source, mut target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);

    // A fresh node: every local check passes, no peers yet.
    let before = kmf::clock::now();
    let d = diagnose(&mut t).await;
    let checked = d.checked_at.expect("checked_at");
    assert!((checked.seconds - before.0 / 1000).abs() <= 60, "checked_at is now: {checked:?}");
    assert_eq!(st(d.status), ComponentStatus::Operational, "{d:?}");
    let names: Vec<&str> = d.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["signer", "store", "certificate", "peers", "crl"]);
    for name in ["signer", "store", "certificate"] {
        assert_eq!(st(component(&d, name).status), ComponentStatus::Operational, "{name}: {d:?}");
    }
    assert!(component(&d, "signer").message.contains("software KEK wrap and unwrap succeeded"), "{d:?}");
    assert!(component(&d, "certificate").message.contains("valid for"), "{d:?}");
    let peers = component(&d, "peers");
    assert_eq!(st(peers.status), ComponentStatus::Disabled);
    assert_eq!(peers.message, "no exchange peers in the last 30 days");
    assert!(peers.children.is_empty());

    // Any operator role may diagnose; an instance may not.
    let mut auditor = Ops::new(target.channel(&pki.operator("aud", &[Role::CryptographicAuditor])).await);
    assert_eq!(st(diagnose(&mut auditor).await.status), ComponentStatus::Operational);
    let mut as_peer = Ops::new(target.channel(&source.instance_files).await);
    let err = as_peer.instance.diagnose(pb::DiagnoseRequest {}).await.expect_err("an instance diagnosed");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // After an exchange each side sees the other as a reachable peer.
    s.spec("m", "s", true).await;
    t.spec("m", "s", false).await;
    let created = t.create_request(&source, &["s"]).await.expect("create");
    let done = s.decide(&created.request_id, Decision::Approve, "").await.expect("approve");
    assert_eq!(status(&done), RequestStatus::RequestCompleted);
    for (ops, peer) in [(&mut t, &source), (&mut s, &target)] {
        let d = diagnose(ops).await;
        assert_eq!(st(d.status), ComponentStatus::Operational, "{d:?}");
        let peers = component(&d, "peers");
        assert_eq!(
            (st(peers.status), peers.message.as_str()),
            (ComponentStatus::Operational, "1 of 1 peers reachable")
        );
        assert_eq!(peers.children.len(), 1, "{peers:?}");
        let child = &peers.children[0];
        assert_eq!(child.name, peer.host.to_string());
        assert_eq!(st(child.status), ComponentStatus::Operational, "{child:?}");
        assert_eq!(child.message, format!("instance {} is serving", peer.sys_id));
    }

    // The source stops: its child is Malfunction, so are the peers (their
    // only child), and the instance is Degraded.
    source.stop().await;
    let d = diagnose(&mut t).await;
    let peers = component(&d, "peers");
    let child = &peers.children[0];
    assert_eq!(
        (child.name.as_str(), st(child.status)),
        (source.host.to_string().as_str(), ComponentStatus::Malfunction)
    );
    assert!(child.message.contains("unreachable"), "{child:?}");
    assert_eq!(st(peers.status), ComponentStatus::Malfunction);
    assert_eq!(st(d.status), ComponentStatus::Degraded, "{d:?}");
    for name in ["signer", "store", "certificate"] {
        assert_eq!(st(component(&d, name).status), ComponentStatus::Operational, "{name}");
    }
    // A peer being down does not take this daemon out of service: health
    // (published from that Diagnose) stays SERVING for every service.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        target.channel(&pki.operator("aud", &[Role::CryptographicAuditor])).await,
    );
    for service in kmf::rpc::health::HEALTH_SERVICES {
        let req = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        let status = health.check(req).await.expect("health").into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_near_expiry_is_degraded_and_expired_is_malfunction() {
    let pki = Pki::new();
    let now = kmf::clock::now();
    let mut soon = node_with_cert(&pki, now.plus_millis(-DAY), now.plus_millis(5 * DAY)).await;
    let d = diagnose(&mut soon.admin(&pki).await).await;
    let cert = component(&d, "certificate");
    assert_eq!(st(cert.status), ComponentStatus::Degraded, "{cert:?}");
    assert!(cert.message.starts_with("expires in 4 days; renew it (notAfter "), "{cert:?}");
    assert_eq!(st(d.status), ComponentStatus::Degraded);
    soon.stop().await;

    // An expired certificate: clients refuse the TLS session, so the node is
    // asked directly.
    let mut expired = node_with_cert(&pki, now.plus_millis(-30 * DAY), now.plus_millis(-2 * DAY)).await;
    let d = expired.app.as_ref().expect("running").services.diagnostics.diagnose().await;
    let cert = d.root.children.iter().find(|c| c.name == "certificate").expect("certificate");
    assert_eq!(cert.status, kmf::domain::health::HealthStatus::Malfunction, "{cert:?}");
    assert!(cert.message.starts_with("expired 2 days ago"), "{cert:?}");
    assert_eq!(d.root.status, kmf::domain::health::HealthStatus::Degraded);
    expired.stop().await;
}

/// Runs the kmfctl binary as operator `files` against `node`.
async fn kmfctl(node: &TestNode, files: &kmf::tls::TlsFiles, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    kmfctl_command(node, files, dir.path()).args(args).output().await.expect("run kmfctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmfctl_diag_prints_json_or_a_table_and_exits_by_status() {
    let pki = Pki::new();
    let (mut source, mut target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let op = pki.operator("ops", &[Role::CryptographicOperator]);

    let out = kmfctl(&target, &op, &["diag", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["status"], "COMPONENT_STATUS_OPERATIONAL", "{v}");
    let names: Vec<&str> =
        v["components"].as_array().expect("components").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["signer", "store", "certificate", "peers", "crl"]);
    assert_eq!(v["components"][3]["status"], "COMPONENT_STATUS_DISABLED");
    assert_eq!(v["components"][3]["message"], "no exchange peers in the last 30 days");
    assert!(v["checkedAt"].as_str().expect("checkedAt").ends_with('Z'), "{v}");

    // A peer that stopped: Degraded, exit code 2.
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "s", true).await;
    t.spec("m", "s", false).await;
    let created = t.create_request(&source, &["s"]).await.expect("create");
    s.decide(&created.request_id, Decision::Approve, "").await.expect("approve");
    source.stop().await;
    let out = kmfctl(&target, &op, &["diag", "--json"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["status"], "COMPONENT_STATUS_DEGRADED", "{v}");
    let peer = &v["components"][3]["children"][0];
    assert_eq!(
        (peer["name"].as_str(), peer["status"].as_str()),
        (Some(source.host.to_string().as_str()), Some("COMPONENT_STATUS_MALFUNCTION"))
    );

    // The table: no colours when stdout is not a terminal; children indented.
    let out = kmfctl(&target, &op, &["diag"]).await;
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert!(!text.contains('\u{1b}'), "no escape codes when piped: {text:?}");
    assert!(text.starts_with("kmf: Degraded (checked "), "{text}");
    assert!(text.lines().any(|l| l.starts_with("peers") && l.contains("Malfunction")), "{text}");
    let child = format!("  {}", source.host);
    assert!(text.lines().any(|l| l.starts_with(&child) && l.contains("Malfunction")), "{text}");
    target.stop().await;
}
