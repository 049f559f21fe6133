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
    let channel = kmf::rpc::client::connect(&node.host, files, None).await?;
    let mut client = pb::instance_client::InstanceClient::new(channel);
    client.info(pb::InfoRequest {}).await.map(|r| r.into_inner().sys_id).map_err(|s| format!("{s:?}"))
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
    let refused = info(&node, &alice).await.expect_err("a revoked operator is refused");
    assert!(refused.contains("received fatal alert: CertificateRevoked"), "{refused}");
    assert_eq!(info(&node, &bob).await.as_deref(), Ok(node.sys_id.as_str()));

    // Rotate the instance certificate (same sys_id): served from the next handshake on.
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
    // The daemon kept running: the channel bob opened first still answers.
    let mut client = pb::instance_client::InstanceClient::new(bob_before);
    assert_eq!(client.info(pb::InfoRequest {}).await.expect("old channel").into_inner().sys_id, node.sys_id);
}
