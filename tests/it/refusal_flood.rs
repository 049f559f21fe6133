//! A caller refused for who it is cannot grow the audit log without bound:
//! refused calls (a missing role on gRPC, any refusal at the metrics
//! listener) are written once and their repeats counted into one
//! `call.refused.repeated` entry, and no entry holds more than a bounded
//! actor or subject, whatever path the caller sent.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use kmf::domain::audit::MAX_SUBJECT_CHARS;
use kmf::domain::auth::Role;
use kmf::rpc::pb;
use kmf::tls::TlsFiles;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tonic::Code;

use crate::support::{Ops, Pki, TestNode};

async fn entries(ops: &mut Ops, action_prefix: &str, actor: &str) -> Vec<pb::AuditEntry> {
    let req = pb::ListAuditEntriesRequest {
        action_prefix: action_prefix.into(),
        actor: actor.into(),
        limit: 10_000,
        ..Default::default()
    };
    ops.audit.list_audit_entries(req).await.expect("audit").into_inner().entries
}

/// The repeat count a `*.repeated` entry's details start with.
fn repeats(e: &pb::AuditEntry) -> u64 {
    e.details.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no count: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_refused_calls_by_an_auditor_are_two_entries() {
    let pki = Pki::new();
    let clock = kmf::clock::ManualClock::starting_now();
    let options = kmf::app::StartOptions { clock: clock.clone(), ..Default::default() };
    let node = TestNode::start_opts(&pki, None, None, options).await;
    let mut admin = node.admin(&pki).await;
    admin.spec("m", "s", true).await;
    let mut auditor = Ops::new(node.channel(&pki.operator("aud", &[Role::CryptographicAuditor])).await);
    for i in 0..200 {
        let err = auditor.keys.generate_key(pb::GenerateKeyRequest { spec: "s".into() }).await.expect_err("wrote");
        assert_eq!(err.code(), Code::PermissionDenied, "call {i}: {err}");
    }
    let first = entries(&mut admin, "call.refused", "operator:aud").await;
    assert_eq!(first.len(), 1, "the first refusal only while the window is open: {} entries", first.len());
    assert!(first[0].subject.ends_with("/GenerateKey"), "{:?}", first[0]);

    clock.advance_millis(kmf::domain::refusals::WINDOW_MILLIS);
    node.running().services.jobs.wake();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let repeated = loop {
        let r = entries(&mut admin, "call.refused.repeated", "operator:aud").await;
        if !r.is_empty() {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "the repeats were never written");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    };
    assert_eq!(repeated.len(), 1, "{repeated:?}");
    assert_eq!(repeats(&repeated[0]), 199, "{:?}", repeated[0]);
    assert!(repeated[0].subject.ends_with("/GenerateKey"), "{:?}", repeated[0]);
    assert_eq!(entries(&mut admin, "call.refused", "operator:aud").await.len(), 2, "first + repeated, no more");
    let verify = admin.audit.verify_audit_chain(pb::VerifyAuditChainRequest {}).await.expect("verify").into_inner();
    assert!(verify.intact, "{verify:?}");
}

/// Sends `n` GETs of 8 KiB paths, each different, on one HTTP/1.1 connection
/// as `identity`; returns the statuses.
async fn long_paths(addr: std::net::SocketAddr, identity: &TlsFiles, n: usize) -> Vec<u16> {
    let mut config = (*kmf::tls::client_config(identity, None).expect("client config")).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("handshake");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.expect("h1");
    let connection = tokio::spawn(conn);
    let mut statuses = Vec::with_capacity(n);
    for i in 0..n {
        let path = format!("/{i:04}{}", "a".repeat(8 * 1024));
        let req = hyper::Request::get(path).header("host", "127.0.0.1").body(Empty::<Bytes>::new()).expect("request");
        sender.ready().await.expect("the connection stays open after a refusal");
        let response = sender.send_request(req).await.expect("response");
        statuses.push(response.status().as_u16());
        response.into_body().collect().await.expect("body");
    }
    drop(sender);
    let _ = connection.await;
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_metrics_requests_with_long_paths_stay_small_in_the_audit_log() {
    let pki = Pki::new();
    let mut node = crate::diagnostics::node_with(&pki, Some("127.0.0.1:0".parse().expect("addr")), None).await;
    let addr = node.app.as_ref().and_then(|a| a.metrics_addr).expect("metrics listener");
    let nobody = pki.operator("nobody", &[]);
    let started = std::time::Instant::now();
    let statuses = long_paths(addr, &nobody, 500).await;
    let windows = started.elapsed().as_millis() as u64 / kmf::domain::refusals::WINDOW_MILLIS as u64 + 1;
    assert!(statuses.iter().all(|s| *s == 403), "every request is refused: {statuses:?}");
    // Restarting flushes the open window's count.
    node.restart().await;
    let mut admin = node.admin(&pki).await;
    let refused = entries(&mut admin, "call.refused", "operator:nobody").await;
    assert!(refused.len() as u64 <= 2 * windows, "{} entries for {windows} windows", refused.len());
    assert!(refused.iter().all(|e| e.subject.chars().count() <= MAX_SUBJECT_CHARS), "subjects are bounded");
    let firsts: Vec<&pb::AuditEntry> = refused.iter().filter(|e| e.action == "call.refused").collect();
    assert!(firsts[0].subject.starts_with("GET /0000aaaa"), "{:?}", firsts[0].subject);
    assert!(firsts[0].subject.ends_with(&format!("…[{} chars]", 4 + 8 * 1024 + 5)), "{:?}", firsts[0].subject);
    let counted: u64 = refused.iter().filter(|e| e.action == "call.refused.repeated").map(repeats).sum();
    assert_eq!(firsts.len() as u64 + counted, 500, "every refusal is counted: {refused:?}");
    let verify = admin.audit.verify_audit_chain(pb::VerifyAuditChainRequest {}).await.expect("verify").into_inner();
    assert!(verify.intact, "{verify:?}");
    node.stop().await;
}
