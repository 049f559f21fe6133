//! The listener's connection limits: an idle connection is closed (and the
//! client's next call connects again), connections over the limit are
//! refused until one closes. Waits poll the open-connection count with a
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
