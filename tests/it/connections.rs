//! The listener's connection limits: an idle connection is closed (and the
//! client's next call connects again), connections over the limit are
//! refused until one closes, silent sockets cannot lock operators out, and
//! request bodies share one memory budget. Waits poll the counts with a
//! deadline.

use std::time::Duration;

use kmf::rpc::pb;
use tonic::Code;

use crate::support::{Pki, TestNode};

async fn wait_open(node: &TestNode, want: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.running().open_connections() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "open connections {} != {want}",
            node.running().open_connections()
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; bounded by the deadline
    }
}

async fn start(pki: &Pki, max: usize, idle: Duration) -> TestNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    TestNode::start_on(
        pki,
        None,
        listener,
        |cfg| {
            cfg.connections.max_connections = max;
            cfg.connections.idle_timeout = idle;
        },
        |p| p,
    )
    .await
}

async fn info(channel: tonic::transport::Channel) -> Result<pb::InfoResponse, tonic::Status> {
    pb::instance_client::InstanceClient::new(channel).info(pb::InfoRequest {}).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_clients_reconnect() {
    let pki = Pki::new();
    let node = start(&pki, 16, Duration::from_millis(400)).await;
    let admin = pki.operator("admin", &[kmf::domain::auth::Role::Admin]);
    let channel = node.channel(&admin).await;
    info(channel.clone()).await.expect("first call");
    assert_eq!(node.running().open_connections(), 1);
    let handshakes = node.running().handshakes_accepted();
    wait_open(&node, 0).await; // closed by the server after 400 ms without traffic
    // The client learns of the close when its connection task reads the EOF;
    // a call sent before that fails with a transport error (the connection is
    // then dropped), and the channel's next call connects again.
    if let Err(first) = info(channel.clone()).await {
        assert!(first.message().contains("transport error"), "only the closed connection fails: {first:?}");
        info(channel).await.expect("the channel connects again");
    }
    assert_eq!(node.running().handshakes_accepted(), handshakes + 1, "one new handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_until_one_closes() {
    let pki = Pki::new();
    let node = start(&pki, 2, Duration::from_secs(300)).await;
    let admin = pki.operator("admin", &[kmf::domain::auth::Role::Admin]);
    let (a, b) = (node.channel(&admin).await, node.channel(&admin).await);
    info(a.clone()).await.expect("a");
    info(b.clone()).await.expect("b");
    wait_open(&node, 2).await;
    let refused = match kmf::rpc::client::connect(&node.host, &admin, None).await {
        Ok(third) => info(third).await.expect_err("a third connection is refused"),
        Err(e) => tonic::Status::unavailable(e.to_string()),
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    drop(a);
    wait_open(&node, 1).await;
    let third = node.channel(&admin).await;
    info(third).await.expect("a slot is free again");
}

/// Holds `n` TCP connections to `addr` that never send a byte, reopening
/// them (closed, connected again) round after round until `done`; returns
/// the rounds run.
async fn silent_flood(addr: std::net::SocketAddr, n: usize, done: tokio::sync::watch::Receiver<bool>) -> usize {
    let mut rounds = 0;
    for _ in 0..10_000 {
        if *done.borrow() {
            break;
        }
        let mut held = Vec::with_capacity(n);
        for _ in 0..n {
            if let Ok(tcp) = tokio::net::TcpStream::connect(addr).await {
                held.push(tcp);
            }
        }
        rounds += 1;
        // The attacker's pace (the reopened its sockets twice a second).
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
    }
    rounds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_the_operators_address_cannot_lock_it_out() {
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node = TestNode::start_on(
        &pki,
        None,
        listener,
        |cfg| {
            cfg.connections.max_connections = 32;
            cfg.connections.max_handshakes = 16;
        },
        |p| p,
    )
    .await;
    let admin = pki.operator("admin", &[kmf::domain::auth::Role::Admin]);
    let (stop, done) = tokio::sync::watch::channel(false);
    let flood = tokio::spawn(silent_flood(node.running().local_addr, 200, done));
    // The flood is under way: the handshake places are all taken.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.running().handshakes_displaced() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the flood never filled the handshake places");
        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval; bounded by the deadline
    }
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        // A new connection (and handshake) each time, as kmfctl makes.
        let outcome = match kmf::rpc::client::connect(&node.host, &admin, None).await {
            Ok(channel) => info(channel).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        outcomes.push(outcome);
        assert!(node.running().handshakes_in_progress() <= 16, "the handshake places are bounded");
    }
    let _ = stop.send(true);
    let rounds = flood.await.expect("flood");
    assert!(outcomes.iter().all(Result::is_ok), "every operator call succeeds during the flood: {outcomes:?}");
    assert!(rounds >= 1 && node.running().handshakes_displaced() >= 5, "the flood ran ({rounds} rounds)");
    assert!(node.running().open_connections() <= 5, "silent sockets hold no connection slot");
}

/// Sends a gRPC request to `path` on `node` whose message says `declared`
/// bytes and whose body carries `sent` of them, then keeps the body open
/// until the returned sender is dropped.
async fn hold_partial_body(
    node: &TestNode,
    files: &kmf::tls::TlsFiles,
    path: &str,
    declared: usize,
    sent: usize,
) -> (
    tokio::sync::mpsc::Sender<Result<hyper::body::Frame<hyper::body::Bytes>, std::convert::Infallible>>,
    tokio::task::JoinHandle<()>,
) {
    let config = kmf::tls::client_config(files, None).expect("client config");
    let tcp = tokio::net::TcpStream::connect(node.running().local_addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.expect("handshake");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = hyper::Request::post(format!("https://127.0.0.1:{}{path}", node.running().local_addr.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let mut first = vec![0u8];
    first.extend_from_slice(&u32::try_from(declared).expect("size").to_be_bytes());
    first.resize(5 + sent, 0);
    tx.send(Ok(hyper::body::Frame::data(first.into()))).await.expect("send the body");
    let call = tokio::spawn(async move {
        let _ = sender.send_request(request).await;
        conn.abort();
    });
    (tx, call)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_share_one_memory_budget() {
    let pki = Pki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node = TestNode::start_on(&pki, None, listener, |cfg| cfg.connections.request_memory = 16 << 20, |p| p).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("m", "s", true).await;
    let admin = pki.operator("admin", &[kmf::domain::auth::Role::Admin]);
    // 14 MiB of a 15 MiB message, sent and held open.
    let (held, call) = hold_partial_body(&node, &admin, "/kmf.v1.Crypto/Encrypt", 15 << 20, 14 << 20).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.running().request_bytes_held() < 14 << 20 {
        assert!(tokio::time::Instant::now() < deadline, "held {}", node.running().request_bytes_held());
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; bounded by the deadline
    }
    let encrypt = |ops: &mut crate::support::Ops| {
        let req = pb::EncryptRequest { spec: "s".into(), plaintext: vec![7; 3 << 20], associated_data: vec![] };
        let mut crypto = ops.crypto.clone();
        async move { crypto.encrypt(req).await }
    };
    let refused = encrypt(&mut ops).await.expect_err("a 3 MiB message does not fit in the 2 MiB left");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("memory for request messages"), "{refused:?}");
    assert!(node.running().request_bytes_held() < 15 << 20, "the refused body was given back");
    drop(held);
    call.await.expect("the held call ends");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while node.running().request_bytes_held() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "held {}", node.running().request_bytes_held());
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; bounded by the deadline
    }
    encrypt(&mut ops).await.expect("the budget is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_thousand_key_exchange_fits_the_message_limits_and_the_budget() {
    use kmf::rpc::pb::{Decision, RequestStatus};
    let pki = Pki::new();
    let tight = |cfg: &mut kmf::app::AppConfig| cfg.connections.request_memory = 16 << 20;
    let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
    let source = TestNode::start_on(&pki, None, bind().await.expect("bind"), tight, |p| p).await;
    let target = TestNode::start_on(&pki, None, bind().await.expect("bind"), tight, |p| p).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("payroll", "salary", true).await;
    let name = kmf::domain::ids::Name::parse("salary", "spec").expect("name");
    source.running().services.catalog.seed_rotations(name, 9_999).await.expect("seed");
    t.spec("payroll", "salary", false).await;
    let id = t.create_request(&source, &["salary"]).await.expect("create").request_id;
    s.decide(&id, Decision::Approve, "").await.expect("approve");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let r = t.get(&id).await;
        if crate::support::status(&r) == RequestStatus::RequestCompleted {
            assert_eq!(r.imported_key_count, 10_000, "{r:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the 10,000-key exchange did not complete: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval; bounded by the deadline
    }
}

#[test]
fn init_makes_private_files_and_config_check_names_loose_ones() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().expect("tmp");
    let (pki, dir) = (tmp.path().join("pki"), tmp.path().join("deep/node"));
    crate::binaries::operator_pki(&pki);
    crate::binaries::init(&dir, &pki);
    assert_eq!(mode(&dir), 0o700);
    for file in ["kmf.redb", "kek.key", "instance.key"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    let check = || {
        crate::binaries::ok(
            Command::new(crate::binaries::KMFD)
                .args(["config", "check", "--listen", "127.0.0.1:0", "--tls-ca"])
                .arg(pki.join("ca.pem"))
                .arg("--data-dir")
                .arg(&dir),
        )
    };
    let clean = check();
    assert!(clean.starts_with("config ok") && !clean.contains("warning"), "{clean}");
    std::fs::set_permissions(dir.join("kmf.redb"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let loose = check();
    let warnings: Vec<&str> = loose.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 2, "{loose}");
    assert!(warnings[0].ends_with("is mode 0755: group or others can use it; chmod 0700 it"), "{loose}");
    assert!(warnings[1].contains("kmf.redb is mode 0644") && warnings[1].ends_with("chmod 0600 it"), "{loose}");
}
