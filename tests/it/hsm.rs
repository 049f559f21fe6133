//! HSM-backed nodes (pkcs11 signer on SoftHSM2): Adhoc exchanges in every
//! direction with data encrypted on the source decrypting on the target, and
//! diagnostics and health (NOT_SERVING) when the token goes away. Each test runs in its own child
//! process with its own SoftHSM (see `softhsm.rs`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kmf::app::{AppConfig, SignerConfig};
use kmf::domain::auth::Role;
use kmf::domain::bundle::{Bundle, WrappingAlgorithm};
use kmf::rpc::health::HEALTH_SERVICES;
use kmf::rpc::pb::{self, ComponentStatus, Decision, RequestStatus};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::signer_contract::transport_objects;
use crate::softhsm::{SoftHsm, Token, softhsm_child};
use crate::support::{Ops, Pki, Recorder, TestNode, status};

/// A node; its outbound deliveries are recorded.
async fn node(pki: &Pki, signer: Option<SignerConfig>) -> (TestNode, Arc<Recorder>) {
    node_with(pki, signer, |_| {}).await
}

/// As `node`, with `tune` changing its config first.
async fn node_with(
    pki: &Pki,
    signer: Option<SignerConfig>,
    tune: impl FnOnce(&mut AppConfig),
) -> (TestNode, Arc<Recorder>) {
    let recorder = OnceLock::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let node = TestNode::start_on(pki, signer, listener, tune, |inner| {
        let r = Recorder::wrap(inner);
        let _ = recorder.set(r.clone());
        r
    })
    .await;
    (node, recorder.get().expect("recorder").clone())
}

/// Source holds two keys of `salary` and encrypts; the target asks, the
/// source approves; the target then decrypts. Returns the bundle's wrapping.
async fn exchange(
    pki: &Pki,
    source: &TestNode,
    target: &TestNode,
    recorder: &Recorder,
) -> (Vec<u8>, WrappingAlgorithm) {
    let (mut s, mut t) = (source.admin(pki).await, target.admin(pki).await);
    s.spec("payroll", "salary", true).await;
    s.keys.rotate_key(pb::RotateKeyRequest { spec: "salary".into() }).await.expect("rotate");
    t.spec("payroll", "salary", false).await;
    let ct = s.encrypt("salary", b"4200 EUR", b"emp:7").await;
    assert_eq!(t.decrypt(&ct, b"emp:7").await.expect_err("no key yet").code(), tonic::Code::NotFound);

    let created = t.create_request(source, &["salary"]).await.expect("create");
    assert_eq!(status(&created), RequestStatus::RequestPending);
    let approved = s.decide(&created.request_id, Decision::Approve, "").await.expect("approve");
    assert_eq!(status(&approved), RequestStatus::RequestCompleted, "{approved:?}");
    let on_target = t.get(&created.request_id).await;
    assert_eq!(status(&on_target), RequestStatus::RequestCompleted);
    assert_eq!((on_target.exported_key_count, on_target.imported_key_count), (2, 2), "{on_target:?}");
    assert_eq!(t.decrypt(&ct, b"emp:7").await.expect("decrypt on the target"), b"4200 EUR");
    for k in t.keys_of("salary").await {
        assert_eq!(k.state, pb::KeyState::Expired as i32, "{k:?}");
    }
    let bundle = Bundle::decode(&recorder.last_bundle().bytes).expect("bundle");
    (ct, bundle.wrapping)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_software_to_hsm() {
    let hsm = softhsm_child!("exchange_software_to_hsm");
    let [token] = hsm.tokens();
    let pki = Pki::new();
    let (source, recorder) = node(&pki, None).await;
    let (mut target, _) = node(&pki, Some(SignerConfig::Pkcs11(hsm.config(&token)))).await;
    let (ct, wrapping) = exchange(&pki, &source, &target, &recorder).await;
    // SoftHSM's OAEP is SHA-1 only: the target announced it and the source used it.
    assert_eq!(wrapping, WrappingAlgorithm::RsaAesKeyWrapSha1);
    assert_eq!(transport_objects(&token), 0, "the transport private key is destroyed after the import");
    // The imported keys are wrapped under the token's KEK and survive a restart.
    target.restart().await;
    let mut t = target.admin(&pki).await;
    assert_eq!(t.decrypt(&ct, b"emp:7").await.expect("decrypt after restart"), b"4200 EUR");
    let info = t.instance.info(pb::InfoRequest {}).await.expect("info").into_inner();
    assert_eq!(info.signer_kind, "pkcs11");
    target.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_hsm_to_software() {
    let hsm = softhsm_child!("exchange_hsm_to_software");
    let [token] = hsm.tokens();
    let pki = Pki::new();
    let (source, recorder) = node(&pki, Some(SignerConfig::Pkcs11(hsm.config(&token)))).await;
    let (target, _) = node(&pki, None).await;
    let (_, wrapping) = exchange(&pki, &source, &target, &recorder).await;
    assert_eq!(wrapping, WrappingAlgorithm::RsaAesKeyWrapSha256, "a software target announces SHA-256");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_hsm_to_hsm() {
    let hsm = softhsm_child!("exchange_hsm_to_hsm");
    let [source_token, target_token] = hsm.tokens();
    let pki = Pki::new();
    let (source, recorder) = node(&pki, Some(SignerConfig::Pkcs11(hsm.config(&source_token)))).await;
    let (target, _) = node(&pki, Some(SignerConfig::Pkcs11(hsm.config(&target_token)))).await;
    let (_, wrapping) = exchange(&pki, &source, &target, &recorder).await;
    assert_eq!(wrapping, WrappingAlgorithm::RsaAesKeyWrapSha1);
    assert_eq!(transport_objects(&target_token), 0);
}

async fn diagnose(ops: &mut Ops) -> pb::Component {
    let d = ops.instance.diagnose(pb::DiagnoseRequest {}).await.expect("diagnose").into_inner();
    d.components.into_iter().find(|c| c.name == "signer").expect("signer component")
}

fn st(c: &pb::Component) -> ComponentStatus {
    ComponentStatus::try_from(c.status).expect("status")
}

type HealthClient = tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>;

async fn health_client(node: &TestNode, pki: &Pki) -> HealthClient {
    HealthClient::new(node.channel(&pki.operator("ops", &[Role::CryptographicAuditor])).await)
}

/// The grpc.health.v1 status of `service` ("" is the whole daemon).
async fn health(client: &mut HealthClient, service: &str) -> ServingStatus {
    let req = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
    let status = client.check(req).await.expect("health answers").into_inner().status;
    ServingStatus::try_from(status).expect("serving status")
}

/// Polls Health/Check of `service` until it is `want`, for at most 20 s.
async fn wait_for_health(client: &mut HealthClient, service: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = health(client, service).await;
        if got == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "health of {service:?} is still {got:?}, not {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; the loop is bounded by its deadline
    }
}

/// Without its token the daemon cannot wrap or unwrap a key: the periodic
/// diagnosis (every 100 ms here, 15 s by default) finds the signer
/// Malfunction and grpc.health.v1 reports the daemon and every kmf service
/// NOT_SERVING, so a load balancer or the compose healthcheck takes it out.
/// It still answers: Health/Check, Diagnose, and a clean INTERNAL for calls
/// that need the KEK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_goes_away_is_a_signer_malfunction_and_health_not_serving() {
    let hsm = softhsm_child!("a_token_that_goes_away_is_a_signer_malfunction_and_health_not_serving");
    let [token] = hsm.tokens();
    let pki = Pki::new();
    let often = |cfg: &mut AppConfig| cfg.health_interval = Duration::from_millis(100);
    let (mut node, _) = node_with(&pki, Some(SignerConfig::Pkcs11(hsm.config(&token))), often).await;
    let mut ops = node.admin(&pki).await;
    let mut hc = health_client(&node, &pki).await;
    let signer = diagnose(&mut ops).await;
    assert_eq!(st(&signer), ComponentStatus::Operational, "{signer:?}");
    assert_eq!(signer.message, "pkcs11 KEK wrap and unwrap succeeded");
    assert_eq!(health(&mut hc, "").await, ServingStatus::Serving);
    ops.spec("m", "s", true).await;

    remove_token(&hsm, &token);
    // No Diagnose call yet: the periodic diagnosis turns health.
    wait_for_health(&mut hc, "", ServingStatus::NotServing).await;
    for service in HEALTH_SERVICES {
        assert_eq!(health(&mut hc, service).await, ServingStatus::NotServing, "{service:?}");
    }
    let signer = diagnose(&mut ops).await;
    assert_eq!(st(&signer), ComponentStatus::Malfunction, "{signer:?}");
    // SoftHSM notices the deleted token directory: the first call fails on
    // the stale session, the one re-open finds no token.
    let expected = format!("pkcs11 KEK unusable: PKCS#11 signer: no token labelled '{}'", token.label);
    assert!(signer.message.starts_with(&expected), "{signer:?}");
    assert!(!signer.message.contains(&token.pin), "{signer:?}");
    // The daemon still answers: other calls get a clean error.
    let err = ops.keys.generate_key(pb::GenerateKeyRequest { spec: "s".into() }).await.expect_err("no KEK");
    assert_eq!(err.code(), tonic::Code::Internal, "{err}");
    assert!(err.message().starts_with("internal error (error id "), "only an error id, no reason: {err}");
    assert_eq!(st(&diagnose(&mut ops).await), ComponentStatus::Malfunction, "still broken, still answering");
    assert_eq!(health(&mut hc, "kmf.v1.KeyExchange").await, ServingStatus::NotServing, "after a Diagnose too");
    node.stop().await;
}

fn remove_token(hsm: &SoftHsm, token: &Token) {
    hsm.delete_token(token);
}
