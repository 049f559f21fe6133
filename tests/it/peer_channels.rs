//! The peer client keeps one channel per peer: sequential calls share one TLS
//! handshake, a peer restarted on the same port (with a renewed certificate)
//! is reached again after at most one failed call, a different instance on
//! that port is refused on the redial, a port nobody listens on is
//! unreachable and then reached once the peer is back, and the call timeout
//! is the client's. A plain dial and the health probe refuse another
//! instance by the verifier's typed refusal.

use std::time::Duration;

use kmf::domain::DomainError;
use kmf::domain::exchange::RequestStatus;
use kmf::domain::ids::{RequestId, SysId};
use kmf::error::PeerError;
use kmf::node::diagnostics::PeerProbe;
use kmf::node::ports::PeerLink;
use kmf::rpc::client::{DialError, connect};
use kmf::rpc::peer::PeerClient;
use kmf::rpc::probe::HealthProbe;
use kmf::tls::live::LiveTls;
use kmf::tls::pki::issue_instance;

use crate::support::{Pki, TestNode, bind_again};

/// A peer client speaking as a fresh instance of the test CA.
fn client(pki: &Pki, timeout: Duration) -> PeerClient {
    let own = SysId::from_random(kmf::signer::primitives::random_bytes());
    let cert = issue_instance(&pki.ca, &own, &["127.0.0.1".to_owned()]).expect("client cert");
    PeerClient::new(own, pki.files(&cert)).with_call_timeout(timeout)
}

/// What one NotifyStatus for an unknown request gave.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// NOT_FOUND: the call reached the peer's service.
    Reached,
    Unreachable,
    WrongInstance,
}

async fn notify(client: &PeerClient, node: &TestNode) -> Outcome {
    let expected = SysId::parse(&node.sys_id).expect("sys_id");
    let id = RequestId::from_random(kmf::signer::primitives::random_bytes());
    let got = client.notify_status(&node.host, &expected, id, RequestStatus::Rejected, "test".into()).await;
    match got {
        Err(PeerError::Refused(DomainError::NotFound { .. })) => Outcome::Reached,
        Err(PeerError::Unreachable { .. }) => Outcome::Unreachable,
        Err(PeerError::Refused(DomainError::PermissionDenied(m))) if m.contains("is not instance") => {
            Outcome::WrongInstance
        }
        other => panic!("unexpected answer: {other:?}"),
    }
}

/// Calls until one reaches the peer; at most one call may fail first.
async fn reach_again(client: &PeerClient, node: &TestNode) {
    let first = notify(client, node).await;
    if first != Outcome::Reached {
        assert_eq!(first, Outcome::Unreachable);
        assert_eq!(notify(client, node).await, Outcome::Reached, "a second failure after the restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_peer_calls_share_one_handshake_and_recover_after_a_restart() {
    let pki = Pki::new();
    let mut node = TestNode::start(&pki).await;
    let peer = client(&pki, Duration::from_secs(10));

    let before = node.running().handshakes_accepted();
    for _ in 0..20 {
        assert_eq!(notify(&peer, &node).await, Outcome::Reached);
    }
    assert_eq!(node.running().handshakes_accepted() - before, 1, "20 calls, one handshake");

    // The peer restarts on the same port with a renewed certificate.
    let sys_id = SysId::parse(&node.sys_id).expect("sys_id");
    let renewed = issue_instance(&pki.ca, &sys_id, &["127.0.0.1".to_owned()]).expect("renewed cert");
    node.restart_same_port(Some(pki.files(&renewed))).await;
    reach_again(&peer, &node).await;
    let after_restart = node.running().handshakes_accepted();
    assert!(after_restart >= 1, "the restarted peer was dialled");
    for _ in 0..10 {
        assert_eq!(notify(&peer, &node).await, Outcome::Reached);
    }
    assert_eq!(node.running().handshakes_accepted(), after_restart, "the new channel is reused");

    // Another instance takes the port: the redial checks the certificate.
    let port = node.host.port();
    node.stop().await;
    let mut other = TestNode::start_on(&pki, None, bind_again(port).await, |_| {}, |p| p).await;
    let first = notify(&peer, &node).await;
    if first != Outcome::WrongInstance {
        assert_eq!(first, Outcome::Unreachable);
        assert_eq!(notify(&peer, &node).await, Outcome::WrongInstance, "the other instance was accepted");
    }
    assert_eq!(notify(&peer, &node).await, Outcome::WrongInstance, "refused on every dial");
    other.stop().await;

    // Nobody listens: connection refused.
    assert_eq!(notify(&peer, &node).await, Outcome::Unreachable);

    // The right instance comes back on the port.
    node.restart_same_port(None).await;
    reach_again(&peer, &node).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_calls_leave_one_cached_channel() {
    let pki = Pki::new();
    let mut node = TestNode::start(&pki).await;
    let peer = client(&pki, Duration::from_secs(10));
    // Four calls race on an empty cache: each may dial, one channel is kept.
    let (a, b, c, d) =
        tokio::join!(notify(&peer, &node), notify(&peer, &node), notify(&peer, &node), notify(&peer, &node));
    assert_eq!([a, b, c, d], [Outcome::Reached, Outcome::Reached, Outcome::Reached, Outcome::Reached]);
    for _ in 0..10 {
        assert_eq!(notify(&peer, &node).await, Outcome::Reached);
    }
    // A racer's dial may finish its handshake after the others returned, so
    // the count is read once, at the end: at most one per racer, none for
    // the ten later calls (they reuse the kept channel; without it they would add ten).
    let handshakes = node.running().handshakes_accepted();
    assert!((1..=4).contains(&handshakes), "{handshakes} handshakes for 4 racing and 10 later calls");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_timeout_bounds_a_peer_that_never_answers() {
    let pki = Pki::new();
    // A peer that takes TCP connections (the kernel's backlog) and never speaks TLS.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let host = kmf::domain::ids::Host::parse(&silent.local_addr().expect("addr").to_string()).expect("host");
    let peer = client(&pki, Duration::from_millis(300));
    let expected = SysId::from_random([9; 16]);
    let started = tokio::time::Instant::now();
    let id = RequestId::from_random([1; 16]);
    let got = peer.notify_status(&host, &expected, id, RequestStatus::Rejected, String::new()).await;
    assert!(matches!(got, Err(PeerError::Unreachable { .. })), "{got:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "a 300 ms call timeout took {took:?}");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_and_the_health_probe_refuse_a_server_naming_another_instance() {
    let pki = Pki::new();
    let mut node = TestNode::start(&pki).await;
    let own = SysId::from_random(kmf::signer::primitives::random_bytes());
    let files = pki.files(&issue_instance(&pki.ca, &own, &["127.0.0.1".to_owned()]).expect("client cert"));
    let real = SysId::parse(&node.sys_id).expect("sys_id");
    let other = SysId::from_random(kmf::signer::primitives::random_bytes());

    match connect(&node.host, &files, Some(other.clone())).await {
        Err(DialError::WrongInstance(refusal)) => assert_eq!(refusal.expected, other),
        got => panic!("dialled {other} at {}: {got:?}", node.host),
    }
    connect(&node.host, &files, Some(real.clone())).await.expect("the right instance is dialled");

    let probe = HealthProbe::new(LiveTls::new(files).expect("tls"));
    probe.check(&node.host, &real).await.expect("the right instance is serving");
    match probe.check(&node.host, &other).await {
        Err(PeerError::Refused(DomainError::PermissionDenied(m))) => {
            assert_eq!(m, format!("the daemon at {} is not instance {other}", node.host))
        }
        got => panic!("probed {other}: {got:?}"),
    }
    node.stop().await;
}
