//! Revocation and reload: a daemon with `tls.crl` refuses a revoked operator
//! at the handshake once the new CRL is written (no restart), and serves a
//! rotated instance certificate as soon as the files change, while channels
//! opened before keep working. Waits poll the reload count with a deadline.

use std::path::Path;
use std::time::Duration;

use kmf::domain::auth::Role;
use kmf::rpc::pb;
use kmf::tls::crl::{CrlContents, Revoked, issue_crl};
use kmf::tls::pki::issue_instance;
use kmf::tls::validity::serial_hex;

use crate::support::{Pki, TestNode};

fn leaf_serial(pem: &[u8]) -> String {
    serial_hex(&kmf::tls::pem_certs(pem).expect("pem").remove(0)).expect("serial")
}

/// Replaces `path` in one step (as `kmfctl pki revoke` does).
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

async fn wait_reloads(node: &TestNode, at_least: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while node.running().tls_reloads() < at_least {
        assert!(tokio::time::Instant::now() < deadline, "no TLS reload ({})", node.running().tls_reloads());
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    }
}

async fn info(node: &TestNode, files: &kmf::tls::TlsFiles) -> Result<String, String> {
    let channel = kmf::rpc::client::connect(&node.host, files, None).await.map_err(|e| e.to_string())?;
    let mut client = pb::instance_client::InstanceClient::new(channel);
    client.info(pb::InfoRequest {}).await.map(|r| r.into_inner().sys_id).map_err(|s| format!("{s:?}"))
}

/// What the daemon answers a TLS client with `files` after the handshake:
/// reading the first record gives the server's alert when it refused the
/// client certificate (TLS 1.3 checks it after the client's Finished).
async fn first_read(node: &TestNode, files: &kmf::tls::TlsFiles) -> String {
    use tokio::io::AsyncReadExt;
    let config = kmf::tls::client_config(files, None).expect("client config");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.host.port())).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = match tokio_rustls::TlsConnector::from(config).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Ok(Ok(n)) => format!("read {n} bytes"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer".into(),
    }
}

/// The serial of the certificate the daemon presents to a new connection.
async fn served_serial(node: &TestNode, files: &kmf::tls::TlsFiles) -> String {
    let config = kmf::tls::client_config(files, None).expect("client config");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", node.host.port())).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("handshake");
    let cert = tls.get_ref().1.peer_certificates().expect("server certificate")[0].clone();
    serial_hex(&cert).expect("serial")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operator_is_refused_and_a_rotated_certificate_served_without_a_restart() {
    let pki = Pki::new();
    let files_dir = tempfile::tempdir().expect("tmp");
    let dir = files_dir.path().to_owned();
    let empty = issue_crl(&pki.ca, &CrlContents { number: 1, revoked: vec![] }, kmf::clock::now()).expect("crl");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let crl_pem = empty.clone().into_bytes();
    let node = TestNode::start_on(
        &pki,
        None,
        listener,
        |cfg| {
            std::fs::write(dir.join("ca.pem"), &cfg.tls.ca_pem).expect("ca");
            std::fs::write(dir.join("instance.pem"), &cfg.tls.cert_pem).expect("cert");
            std::fs::write(dir.join("instance.key"), &cfg.tls.key_pem[..]).expect("key");
            std::fs::write(dir.join("crl.pem"), &crl_pem).expect("crl");
            cfg.tls.crl_pem = Some(crl_pem.clone());
            cfg.tls_paths = Some(kmf::app::TlsPaths {
                ca: dir.join("ca.pem"),
                cert: dir.join("instance.pem"),
                key: dir.join("instance.key"),
                crl: Some(dir.join("crl.pem")),
            });
        },
        |p| p,
    )
    .await;
    let (alice, bob) = (pki.operator("alice", &[Role::Admin]), pki.operator("bob", &[Role::Admin]));
    assert_eq!(info(&node, &alice).await.as_deref(), Ok(node.sys_id.as_str()));
    let bob_before = kmf::rpc::client::connect(&node.host, &bob, None).await.expect("bob");
    let first_serial = served_serial(&node, &bob).await;

    // Revoke alice: her next connection is refused at the handshake; bob is unaffected.
    let revoked = Revoked { serial: leaf_serial(&alice.cert_pem), at: kmf::clock::now() };
    let crl = issue_crl(&pki.ca, &CrlContents { number: 2, revoked: vec![revoked] }, kmf::clock::now()).expect("crl");
    replace(&dir.join("crl.pem"), crl.as_bytes());
    wait_reloads(&node, 1).await;
    info(&node, &alice).await.expect_err("a revoked operator is refused");
    assert_eq!(first_read(&node, &alice).await, "received fatal alert: CertificateRevoked");
    assert!(first_read(&node, &bob).await.starts_with("read "), "bob's handshake is accepted");
    assert_eq!(info(&node, &bob).await.as_deref(), Ok(node.sys_id.as_str()));

    // Rotate the instance certificate (same sys_id): served from the next handshake on
    // (a reload that catches the new key with the old certificate fails and keeps the running pair).
    let reloads_before = node.running().tls_reloads();
    let sys_id = kmf::domain::ids::SysId::parse(&node.sys_id).expect("sys_id");
    let renewed = issue_instance(&pki.ca, &sys_id, &["127.0.0.1".to_owned()]).expect("renewed");
    replace(&dir.join("instance.key"), renewed.key_pem.as_bytes());
    replace(&dir.join("instance.pem"), renewed.cert_pem.as_bytes());
    let new_serial = leaf_serial(renewed.cert_pem.as_bytes());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while served_serial(&node, &bob).await != new_serial {
        assert!(tokio::time::Instant::now() < deadline, "the renewed certificate is not served");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    }
    assert_ne!(first_serial, new_serial);
    assert_eq!(node.running().tls_reloads(), reloads_before + 1, "one reload installed the rotated pair");
    assert_eq!(info(&node, &bob).await.as_deref(), Ok(node.sys_id.as_str()));
    drop(bob_before);
}

/// Waits (at most 20 s) until `log` holds `count` lines with all of `needles`.
fn wait_log(log: &Path, needles: &[&str], count: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).count() >= count {
            return text;
        }
        assert!(std::time::Instant::now() < deadline, "no {count} log lines with {needles:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50)); // poll interval; bounded by the deadline
    }
}

#[test]
fn kmfd_reloads_on_sighup_and_refuses_what_kmfctl_pki_revoke_lists() {
    use crate::binaries::{KMFCTL, ok, run};
    use std::process::Command;
    let tmp = tempfile::tempdir().expect("tmp");
    let (pki, dir) = (tmp.path().join("pki"), tmp.path().join("node"));
    crate::binaries::operator_pki(&pki);
    let crl_out = ok(Command::new(KMFCTL).args(["pki", "crl", "--ca-dir"]).arg(&pki));
    assert!(crl_out.contains("(CRL number 1, 0 revoked)"), "{crl_out}");
    let issued = ok(Command::new(KMFCTL)
        .args(["pki", "issue-operator", "--name", "eve", "--role", "admin", "--ca-dir"])
        .arg(&pki)
        .arg("--out")
        .arg(&pki));
    let serial = issued.split("serial ").nth(1).and_then(|s| s.split(',').next()).expect("serial printed").to_owned();
    crate::binaries::init(&dir, &pki);
    let crl = pki.join("crl.pem");
    let mut daemon = crate::binaries::spawn_with_env(
        &dir,
        &pki,
        crate::binaries::Settings::EnvJson,
        "127.0.0.1:0",
        &[("KMF_TLS_CRL", crl.as_path())],
    );
    daemon.wait_ready(&dir);
    let as_eve = |daemon: &crate::binaries::Daemon| {
        let mut c = daemon.ctl(&pki);
        c.env("KMF_CERT", pki.join("eve.pem")).env("KMF_KEY", pki.join("eve.key")).args(["instance", "info"]);
        c
    };
    let first = run(&mut as_eve(&daemon));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));

    // SIGHUP reloads (nothing changed: the log says so).
    let pid = daemon.child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    let log = wait_log(&daemon.log, &["TLS material reloaded", "SIGHUP"], 1);
    assert!(log.contains("unchanged, number 1 (0 revoked)"), "{log}");

    // Revoke eve: the changed file is reloaded and eve is refused; ops is not.
    let revoked = ok(Command::new(KMFCTL).args(["pki", "revoke", "--serial", &serial, "--ca-dir"]).arg(&pki));
    assert!(revoked.contains(&format!("revoked serial {serial}")) && revoked.contains("(CRL number 2, 1 revoked)"));
    wait_log(&daemon.log, &["TLS material reloaded", "number 1 (0 revoked) -> number 2 (1 revoked)"], 1);
    let refused = run(&mut as_eve(&daemon));
    assert!(!refused.status.success(), "a revoked operator was served");
    let log = wait_log(&daemon.log, &["TLS handshake refused", "invalid peer certificate: Revoked"], 1);
    assert_eq!(
        log.matches("TLS handshake refused").count(),
        log.matches("invalid peer certificate: Revoked").count(),
        "{log}"
    );
    ok(daemon.ctl(&pki).args(["instance", "info"]));
    daemon.stop();
}

/// A node that reloads its TLS files from a directory it was started with,
/// the CRL there being `crl` (and `tune` changing the config last).
async fn reloading_node(
    pki: &Pki,
    crl: &str,
    tune: impl FnOnce(&mut kmf::app::AppConfig),
) -> (TestNode, tempfile::TempDir) {
    let files_dir = tempfile::tempdir().expect("tmp");
    let dir = files_dir.path().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let crl_pem = crl.as_bytes().to_vec();
    let node = TestNode::start_on(
        pki,
        None,
        listener,
        |cfg| {
            std::fs::write(dir.join("ca.pem"), &cfg.tls.ca_pem).expect("ca");
            std::fs::write(dir.join("instance.pem"), &cfg.tls.cert_pem).expect("cert");
            std::fs::write(dir.join("instance.key"), &cfg.tls.key_pem[..]).expect("key");
            std::fs::write(dir.join("crl.pem"), &crl_pem).expect("crl");
            cfg.tls.crl_pem = Some(crl_pem.clone());
            cfg.tls_paths = Some(kmf::app::TlsPaths {
                ca: dir.join("ca.pem"),
                cert: dir.join("instance.pem"),
                key: dir.join("instance.key"),
                crl: Some(dir.join("crl.pem")),
            });
            tune(cfg);
        },
        |p| p,
    )
    .await;
    (node, files_dir)
}

/// Writes a CRL numbered `number` listing the leaf certificates of `who` and waits for its reload.
async fn revoke(pki: &Pki, node: &TestNode, dir: &Path, number: u64, who: &[&kmf::tls::TlsFiles]) {
    let before = node.running().tls_reloads();
    let revoked = who.iter().map(|f| Revoked { serial: leaf_serial(&f.cert_pem), at: kmf::clock::now() }).collect();
    let crl = issue_crl(&pki.ca, &CrlContents { number, revoked }, kmf::clock::now()).expect("crl");
    replace(&dir.join("crl.pem"), crl.as_bytes());
    wait_reloads(node, before + 1).await;
}

fn empty_crl(pki: &Pki, at: kmf::domain::ids::UnixMillis) -> String {
    issue_crl(&pki.ca, &CrlContents { number: 1, revoked: vec![] }, at).expect("crl")
}

/// An HTTP/1.1 keep-alive connection to the metrics listener as `files`.
async fn metrics_connection(
    addr: std::net::SocketAddr,
    files: &kmf::tls::TlsFiles,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>, String> {
    let mut config = (*kmf::tls::client_config(files, None).expect("client config")).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// GET /metrics on `sender`: the status, or why there was none.
async fn metrics_status(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
) -> Result<u16, String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = hyper::Request::get("/metrics")
        .header("host", "127.0.0.1")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .expect("request");
    sender.send_request(req).await.map(|r| r.status().as_u16()).map_err(|e| e.to_string())
}

/// A new metrics connection: its first request's status.
async fn metrics_fresh(addr: std::net::SocketAddr, files: &kmf::tls::TlsFiles) -> Result<u16, String> {
    metrics_status(&mut metrics_connection(addr, files).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_operator_is_refused_by_the_metrics_listener_on_new_and_open_connections() {
    let pki = Pki::new();
    let crl = empty_crl(&pki, kmf::clock::now());
    let (node, dir) =
        reloading_node(&pki, &crl, |cfg| cfg.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let addr = node.running().metrics_addr.expect("metrics listener");
    let (alice, bob) = (pki.operator("alice", &[Role::Admin]), pki.operator("bob", &[Role::Admin]));
    let mut alice_open = metrics_connection(addr, &alice).await.expect("alice connects");
    assert_eq!(metrics_status(&mut alice_open).await, Ok(200));
    let mut bob_open = metrics_connection(addr, &bob).await.expect("bob connects");
    assert_eq!(metrics_status(&mut bob_open).await, Ok(200));

    revoke(&pki, &node, dir.path(), 2, &[&alice]).await;
    // (b) the keep-alive connection opened before: its next request is refused (403, or closed).
    let open = metrics_status(&mut alice_open).await;
    assert!(open != Ok(200), "alice's open connection still served: {open:?}");
    // (a) a new connection: refused at the handshake.
    let fresh = metrics_fresh(addr, &alice).await;
    assert!(fresh.is_err(), "a new connection of a revoked operator was answered: {fresh:?}");
    // Bob, on his open connection and on a new one, is served.
    assert_eq!(metrics_status(&mut bob_open).await, Ok(200));
    assert_eq!(metrics_fresh(addr, &bob).await, Ok(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_grpc_connection_of_a_revoked_operator_fails_its_next_call() {
    let pki = Pki::new();
    let crl = empty_crl(&pki, kmf::clock::now());
    let (node, dir) = reloading_node(&pki, &crl, |_| {}).await;
    let (alice, bob) = (pki.operator("alice", &[Role::Admin]), pki.operator("bob", &[Role::Admin]));
    let mut alice_open = pb::instance_client::InstanceClient::new(node.channel(&alice).await);
    let mut bob_open = pb::instance_client::InstanceClient::new(node.channel(&bob).await);
    for client in [&mut alice_open, &mut bob_open] {
        assert_eq!(client.info(pb::InfoRequest {}).await.expect("info").into_inner().sys_id, node.sys_id);
    }
    let handshakes = node.running().handshakes_accepted();

    revoke(&pki, &node, dir.path(), 2, &[&alice]).await;
    let err = alice_open.info(pb::InfoRequest {}).await.expect_err("a revoked operator's open connection served");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("revoked"), "{err:?}");
    assert_eq!(node.running().handshakes_accepted(), handshakes, "the refusal came on the open connection");
    assert_eq!(bob_open.info(pb::InfoRequest {}).await.expect("bob").into_inner().sys_id, node.sys_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_probe_uses_the_reloaded_crl() {
    use kmf::rpc::pb::{Decision, RequestStatus};
    let pki = Pki::new();
    let crl = empty_crl(&pki, kmf::clock::now());
    let source = TestNode::start(&pki).await;
    let (target, dir) = reloading_node(&pki, &crl, |_| {}).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "s", true).await;
    t.spec("m", "s", false).await;
    let created = t.create_request(&source, &["s"]).await.expect("create");
    let done = s.decide(&created.request_id, Decision::Approve, "").await.expect("approve");
    assert_eq!(crate::support::status(&done), RequestStatus::RequestCompleted);
    let peer_status = |d: &kmf::node::diagnostics::Diagnosis| {
        let peers = d.root.children.iter().find(|c| c.name == "peers").expect("peers");
        let child = peers.children.first().expect("one peer");
        (child.status, child.message.clone())
    };
    let before = peer_status(&target.running().services.diagnostics.diagnose().await);
    assert_eq!(before.0, kmf::domain::health::HealthStatus::Operational, "{before:?}");

    // The target revokes the source's instance certificate: its probe refuses the source.
    revoke(&pki, &target, dir.path(), 2, &[&source.instance_files]).await;
    let after = peer_status(&target.running().services.diagnostics.diagnose().await);
    assert_eq!(after.0, kmf::domain::health::HealthStatus::Malfunction, "{after:?}");
    assert!(after.1.contains("Revoked"), "{after:?}");
}

const DAY: i64 = 24 * 3600 * 1000;

fn crl_of(d: &kmf::node::diagnostics::Diagnosis) -> (kmf::domain::health::HealthStatus, String) {
    let c = d.root.children.iter().find(|c| c.name == "crl").expect("a crl component");
    (c.status, c.message.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_past_its_next_update_is_degraded_but_used_by_default() {
    use kmf::domain::health::HealthStatus;
    let pki = Pki::new();
    let (fresh, _dir) = reloading_node(&pki, &empty_crl(&pki, kmf::clock::now()), |_| {}).await;
    let d = fresh.running().services.diagnostics.diagnose().await;
    assert_eq!(crl_of(&d).0, HealthStatus::Operational, "{d:?}");
    assert_eq!(d.root.status, HealthStatus::Operational, "{d:?}");

    // Issued 31 days ago: its nextUpdate (30 days) has passed.
    let stale = empty_crl(&pki, kmf::clock::now().plus_millis(-31 * DAY));
    let (node, _dir) = reloading_node(&pki, &stale, |_| {}).await;
    let d = node.running().services.diagnostics.diagnose().await;
    let (status, message) = crl_of(&d);
    assert_eq!(status, HealthStatus::Degraded, "{message}");
    assert!(message.contains("nextUpdate"), "{message}");
    assert_eq!(d.root.status, HealthStatus::Degraded, "{d:?}");
    let alice = pki.operator("alice", &[Role::Admin]);
    assert_eq!(info(&node, &alice).await.as_deref(), Ok(node.sys_id.as_str()), "a stale CRL is still used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_past_its_next_update_refuses_everyone_when_enforced_until_a_fresh_one_loads() {
    use kmf::domain::health::HealthStatus;
    let pki = Pki::new();
    let stale = empty_crl(&pki, kmf::clock::now().plus_millis(-31 * DAY));
    let (node, dir) = reloading_node(&pki, &stale, |cfg| cfg.tls.crl_enforce_next_update = true).await;
    let alice = pki.operator("alice", &[Role::Admin]);
    let refused = info(&node, &alice).await;
    assert!(refused.is_err(), "served under an enforced stale CRL: {refused:?}");
    let d = node.running().services.diagnostics.diagnose().await;
    let (status, message) = crl_of(&d);
    assert_eq!(status, HealthStatus::Malfunction, "{message}");
    assert!(message.contains("every certificate is refused (tls.crl_enforce_next_update)"), "{message}");

    // A fresh CRL is loaded (the setting survives the reload): served again.
    let before = node.running().tls_reloads();
    let fresh = issue_crl(&pki.ca, &CrlContents { number: 2, revoked: vec![] }, kmf::clock::now()).expect("crl");
    replace(&dir.path().join("crl.pem"), fresh.as_bytes());
    wait_reloads(&node, before + 1).await;
    assert_eq!(info(&node, &alice).await.as_deref(), Ok(node.sys_id.as_str()));
    assert_eq!(crl_of(&node.running().services.diagnostics.diagnose().await).0, HealthStatus::Operational);
}
