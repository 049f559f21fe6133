//! Refusals: each with its gRPC code, and nothing changed afterwards.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kmf::domain::auth::Role;
use kmf::rpc::pb::{self, Decision, RequestStatus};
use kmf::tls::pki::issue_instance;
use rustls::pki_types::pem::PemObject;
use tonic::Code;

use crate::support::{Ops, Pki, Recorder, TestNode, peer_client, status};

/// Everything an operator can see that a refused call must not change.
async fn snapshot(ops: &mut Ops, spec: &str) -> (Vec<pb::ExchangeRequest>, Vec<pb::Key>) {
    let reqs = ops.exchange.list_requests(pb::ListRequestsRequest::default()).await.expect("list").into_inner();
    let keys = ops.keys.list_keys(pb::ListKeysRequest { spec: spec.into() }).await.expect("keys").into_inner();
    (reqs.requests, keys.keys)
}

async fn pair(pki: &Pki) -> (TestNode, TestNode, Ops, Ops) {
    let (source, target) = (TestNode::start(pki).await, TestNode::start(pki).await);
    let (mut s, mut t) = (source.admin(pki).await, target.admin(pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    (source, target, s, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_refusals_no_client_cert_and_foreign_ca() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let addr = node.app.as_ref().expect("app").local_addr;
    // A client certificate from another CA. The client trusts our CA, so the
    // refusal is the server's: a TLS alert, which in TLS 1.3 reaches the client
    // on its first read (its side of the handshake is done first).
    let other = Pki::new();
    let foreign =
        kmf::tls::TlsFiles { ca_pem: pki.ca.cert_pem.as_bytes().to_vec(), ..other.operator("mallory", &[Role::Admin]) };
    let config = kmf::tls::client_config(&foreign, None).expect("client config");
    let refusal = first_read(addr, config).await.expect_err("served a certificate from another CA");
    assert!(refusal.to_string().contains("received fatal alert: DecryptError"), "{refusal}");
    // Through the gRPC client the call fails in the transport, before any service.
    if let Ok(ch) = kmf::rpc::client::connect(&node.host, &foreign, None).await {
        let mut c = pb::key_management_client::KeyManagementClient::new(ch);
        let module = pb::CreateModuleRequest { name: "evil".into(), default_access: pb::DefaultAccess::Track as i32 };
        let err = c.create_module(module).await.expect_err("foreign CA accepted");
        let transport = std::error::Error::source(&err).is_some_and(|e| e.is::<tonic::transport::Error>());
        assert!(transport, "not a transport failure: {err:?}");
    }
    let mut admin = node.admin(&pki).await;
    let modules = admin.keys.list_modules(pb::ListModulesRequest {}).await.expect("list").into_inner().modules;
    assert!(modules.is_empty(), "nothing was created by the refused caller");

    // No client certificate at all, over a bare rustls client.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(pki.ca.cert_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let refusal = first_read(addr, Arc::new(config)).await.expect_err("server answered a client without certificate");
    assert!(refusal.to_string().contains("received fatal alert: CertificateRequired"), "{refusal}");
    // The daemon still serves properly authenticated callers.
    let mut ops = node.admin(&pki).await;
    assert!(ops.instance.info(pb::InfoRequest {}).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_sys_id_must_match_the_certificate() {
    let pki = Pki::new();
    let (source, target, mut s, _) = pair(&pki).await;
    let before = snapshot(&mut s, "salary").await;
    // The target's certificate, claiming to be some other instance.
    let mut peer = peer_client(&source, &target.instance_files).await;
    let err = peer
        .open_request(pb::OpenRequestRequest {
            request_id: "0123456789abcdef0123456789abcdef".into(),
            target_sys_id: "ffffffffffffffffffffffffffffffff".into(),
            target_host: target.host.to_string(),
            source_sys_id: source.sys_id.clone(),
            spec_names: vec!["salary".into()],
            expires_at: None,
            transport_public_key: vec![],
            wrapping_algorithm: 1,
            frequency: 0,
            clone_grant_id: String::new(),
        })
        .await
        .expect_err("mismatch accepted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // An operator certificate cannot speak the peer protocol either.
    let mut as_operator = peer_client(&source, &pki.operator("admin", &[Role::Admin])).await;
    let err =
        as_operator.notify_status(pb::NotifyStatusRequest::default()).await.expect_err("operator on peer service");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(snapshot(&mut s, "salary").await, before);

    // The target dialling a daemon that is not the sys_id it named.
    let mut t = target.admin(&pki).await;
    let before_t = snapshot(&mut t, "salary").await;
    let err = t
        .exchange
        .create_request(pb::CreateRequestRequest {
            source_sys_id: "ffffffffffffffffffffffffffffffff".into(),
            source_host: source.host.to_string(),
            spec_names: vec!["salary".into()],
            expires_in: None,
            frequency: 1,
            rekey_after_import: false,
        })
        .await
        .expect_err("wrong peer accepted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let after_t = snapshot(&mut t, "salary").await;
    assert_eq!(after_t.1, before_t.1, "no keys on the target");
    assert_eq!(after_t.0.len(), 1, "the failed attempt is recorded");
    assert_eq!(status(&after_t.0[0]), RequestStatus::ErrorOnRemoteInstance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_refusals_auditor_twice_rejected() {
    let pki = Pki::new();
    let (source, _target, mut s, mut t) = pair(&pki).await;
    let created = t.create_request(&source, &["salary"]).await.expect("create");
    let id = created.request_id.clone();

    let mut auditor = Ops::new(source.channel(&pki.operator("audrey", &[Role::CryptographicAuditor])).await);
    let before = snapshot(&mut s, "salary").await;
    let err = auditor.decide(&id, Decision::Approve, "").await.expect_err("auditor approved");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err =
        auditor.keys.generate_key(pb::GenerateKeyRequest { spec: "salary".into() }).await.expect_err("auditor wrote");
    assert!(err.code() == Code::PermissionDenied && err.message().contains("needs one of the roles"), "{err}");
    assert_eq!(snapshot(&mut s, "salary").await, before, "auditor changed nothing");
    // ...but may read.
    assert_eq!(status(&auditor.get(&id).await), RequestStatus::RequestPending);

    // Unspecified decision and a rejection without reason are invalid.
    assert_eq!(s.decide(&id, Decision::Unspecified, "").await.expect_err("unspecified").code(), Code::InvalidArgument);
    assert_eq!(s.decide(&id, Decision::Reject, " ").await.expect_err("no reason").code(), Code::InvalidArgument);

    let done = s.decide(&id, Decision::Approve, "").await.expect("approve");
    assert_eq!(status(&done), RequestStatus::RequestCompleted);
    let before = snapshot(&mut s, "salary").await;
    let before_t = snapshot(&mut t, "salary").await;
    let err = s.decide(&id, Decision::Approve, "").await.expect_err("approved twice");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(snapshot(&mut s, "salary").await, before);
    assert_eq!(snapshot(&mut t, "salary").await, before_t);

    // Rejected, then approved: refused, and the target learns of the rejection.
    let second = t.create_request(&source, &["salary"]).await.expect("create");
    let rejected = s.decide(&second.request_id, Decision::Reject, "not for test").await.expect("reject");
    assert_eq!(status(&rejected), RequestStatus::RequestRejected);
    let err = s.decide(&second.request_id, Decision::Approve, "").await.expect_err("approved a rejected request");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let on_target =
        t.wait_for(&second.request_id, "rejection on target", |r| status(r) == RequestStatus::RequestRejected).await;
    assert_eq!(on_target.imported_key_count, 0);
    assert_eq!(t.keys_of("salary").await.len(), 1, "only the first exchange's key");

    // A request id that does not exist, and one that is malformed.
    let err = s.decide("0123456789abcdef0123456789abcdef", Decision::Approve, "").await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = s.decide("nope", Decision::Approve, "").await.expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument);
    // Approving on the target side is refused.
    let err = t.decide(&second.request_id, Decision::Approve, "").await.expect_err("target approved");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_request_cannot_be_approved() {
    let pki = Pki::new();
    // The source's clock is advanced past the expiry instead of waiting for it.
    let clock = kmf::clock::ManualClock::starting_now();
    let options = kmf::app::StartOptions { clock: clock.clone(), ..Default::default() };
    let source = TestNode::start_opts(&pki, None, None, options).await;
    let target = TestNode::start(&pki).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    let created = t
        .exchange
        .create_request(pb::CreateRequestRequest {
            source_sys_id: source.sys_id.clone(),
            source_host: source.host.to_string(),
            spec_names: vec!["salary".into()],
            expires_in: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            frequency: 1,
            rekey_after_import: false,
        })
        .await
        .expect("create")
        .into_inner()
        .request
        .expect("request");
    let id = created.request_id;
    assert_eq!(status(&s.get(&id).await), RequestStatus::RequestPending);
    clock.advance_millis(120_000);
    // The expiry sweep job finds it due on the advanced clock.
    source.app.as_ref().expect("running").services.jobs.wake();
    s.wait_for(&id, "expiry on source", |r| status(r) == RequestStatus::RequestExpired).await;
    t.wait_for(&id, "expiry on target", |r| status(r) == RequestStatus::RequestExpired).await;
    let before = snapshot(&mut t, "salary").await;
    let err = s.decide(&id, Decision::Approve, "").await.expect_err("approved an expired request");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert_eq!(snapshot(&mut t, "salary").await, before);
    assert!(t.keys_of("salary").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_create_inputs_record_nothing() {
    let pki = Pki::new();
    let (source, _target, mut s, mut t) = pair(&pki).await;
    let before_s = snapshot(&mut s, "salary").await;
    let before_t = snapshot(&mut t, "salary").await;
    let base = pb::CreateRequestRequest {
        source_sys_id: source.sys_id.clone(),
        source_host: source.host.to_string(),
        spec_names: vec!["salary".into()],
        expires_in: None,
        frequency: 1,
        rekey_after_import: false,
    };
    let cases: Vec<(&str, pb::CreateRequestRequest, Code)> = vec![
        ("unknown spec", pb::CreateRequestRequest { spec_names: vec!["nope".into()], ..base.clone() }, Code::NotFound),
        (
            "malformed host",
            pb::CreateRequestRequest { source_host: "no port here".into(), ..base.clone() },
            Code::InvalidArgument,
        ),
        (
            "host without port",
            pb::CreateRequestRequest { source_host: "localhost".into(), ..base.clone() },
            Code::InvalidArgument,
        ),
        ("bad sys_id", pb::CreateRequestRequest { source_sys_id: "XYZ".into(), ..base.clone() }, Code::InvalidArgument),
        ("no specs", pb::CreateRequestRequest { spec_names: vec![], ..base.clone() }, Code::InvalidArgument),
        (
            "own sys_id",
            pb::CreateRequestRequest { source_sys_id: _target.sys_id.clone(), ..base.clone() },
            Code::InvalidArgument,
        ),
        (
            "expiry too long",
            pb::CreateRequestRequest {
                expires_in: Some(prost_types::Duration { seconds: 91 * 86400, nanos: 0 }),
                ..base.clone()
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, req, code) in cases {
        let err = t.exchange.create_request(req).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    assert_eq!(snapshot(&mut s, "salary").await, before_s);
    assert_eq!(snapshot(&mut t, "salary").await, before_t);

    // An invalid spec and an unknown module.
    let err = t.keys.create_spec(kmf::cli::kmfctl::aes_spec("m", "big", 512)).await.expect_err("512-bit AES");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = t.keys.create_spec(kmf::cli::kmfctl::aes_spec("nomodule", "x", 256)).await.expect_err("no module");
    assert_eq!(err.code(), Code::NotFound);
    let mut unknown = kmf::cli::kmfctl::aes_spec("m", "x", 256);
    unknown.algorithm = 42;
    assert_eq!(t.keys.create_spec(unknown).await.expect_err("unknown algorithm").code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_refused() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("m", "s", true).await;
    let before = snapshot(&mut ops, "s").await;
    let big = vec![0u8; kmf::rpc::MAX_MESSAGE_BYTES + 1024];
    let err = ops
        .crypto
        .encrypt(pb::EncryptRequest { spec: "s".into(), plaintext: big, associated_data: vec![] })
        .await
        .expect_err("oversized accepted");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("message length too large"), "{err}");
    // Under the message limit but over the plaintext limit.
    let err = ops
        .crypto
        .encrypt(pb::EncryptRequest { spec: "s".into(), plaintext: vec![0; 5 << 20], associated_data: vec![] })
        .await
        .expect_err("oversized plaintext accepted");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(snapshot(&mut ops, "s").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_tampered_and_misaddressed_bundles_are_refused() {
    let pki = Pki::new();
    let recorder = std::sync::OnceLock::new();
    let source = TestNode::start_with(&pki, |inner| {
        let r = Recorder::wrap(inner);
        let _ = recorder.set(r.clone());
        r
    })
    .await;
    let recorder: Arc<Recorder> = recorder.get().expect("recorder").clone();
    let target = TestNode::start(&pki).await;
    let third = TestNode::start(&pki).await;
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;

    // Hold delivery so the test has the bundle while the request is pending.
    recorder.hold.store(true, Ordering::SeqCst);
    let created = t.create_request(&source, &["salary"]).await.expect("create");
    let id = created.request_id.clone();
    let approved = s.decide(&id, Decision::Approve, "").await.expect("approve");
    assert_eq!(status(&approved), RequestStatus::RequestApproved, "queued while the target is 'down'");
    let bundle = recorder.last_bundle();
    let mut as_source = peer_client(&target, &source.instance_files).await;
    let before = snapshot(&mut t, "salary").await;

    // Tampered: one bit flipped anywhere.
    for at in [10, bundle.bytes.len() / 2, bundle.bytes.len() - 1] {
        let mut bytes = bundle.bytes.clone();
        bytes[at] ^= 1;
        let err = as_source
            .deliver_bundle(pb::DeliverBundleRequest { bundle: bytes, signature: bundle.signature.clone() })
            .await
            .expect_err("tampered bundle accepted");
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        assert!(err.message().contains("bundle signature does not verify"), "{err}");
    }
    // Signed correctly, but sent by another instance.
    let mut as_third = peer_client(&target, &third.instance_files).await;
    let err = as_third
        .deliver_bundle(pb::DeliverBundleRequest { bundle: bundle.bytes.clone(), signature: bundle.signature.clone() })
        .await
        .expect_err("bundle from the wrong sender accepted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("bundle signature does not verify against the sender's certificate"), "{err}");
    let refused = crate::peer_refusals::refusals(&mut t, &format!("instance:{}", third.sys_id)).await;
    assert_eq!(refused.len(), 1, "the rogue bundle is audited as call.refused: {refused:?}");
    assert_eq!(refused[0].subject, "/kmf.v1.KeyExchange/DeliverBundle");
    assert!(refused[0].details.contains("against the sender's certificate"), "{:?}", refused[0]);
    // Mis-addressed: the right bundle delivered to an instance it is not for.
    let mut to_third = peer_client(&third, &source.instance_files).await;
    let err = to_third
        .deliver_bundle(pb::DeliverBundleRequest { bundle: bundle.bytes.clone(), signature: bundle.signature.clone() })
        .await
        .expect_err("mis-addressed bundle accepted");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(err.message(), format!("request not found: {id}"), "the third never saw this request");
    assert_eq!(snapshot(&mut t, "salary").await, before, "nothing imported");

    // Release the hold: the source's retry delivers the genuine bundle.
    recorder.hold.store(false, Ordering::SeqCst);
    s.wait_for(&id, "delivery after release", |r| status(r) == RequestStatus::RequestCompleted).await;
    let done = t.get(&id).await;
    assert_eq!((status(&done), done.imported_key_count), (RequestStatus::RequestCompleted, 1));
    let after_first = snapshot(&mut t, "salary").await;

    // Replayed: the same genuine bundle again (as after a lost answer) gets
    // the receipt already given, twice, and imports nothing.
    let replay = || pb::DeliverBundleRequest { bundle: bundle.bytes.clone(), signature: bundle.signature.clone() };
    let first = as_source.deliver_bundle(replay()).await.expect("identical redelivery").into_inner();
    let second = as_source.deliver_bundle(replay()).await.expect("identical redelivery").into_inner();
    assert_eq!((&first.receipt, &first.signature), (&second.receipt, &second.signature));
    let r = kmf::domain::bundle::Receipt::decode(&first.receipt).expect("receipt");
    assert_eq!((r.request_id.to_string(), r.imported.len()), (id.clone(), 1));
    assert_eq!(snapshot(&mut t, "salary").await, after_first, "nothing imported twice");
    // A different bundle for the finished request, genuinely signed by the
    // source, is refused and imports nothing.
    let mut other = kmf::domain::bundle::Bundle::decode(&bundle.bytes).expect("bundle");
    other.issued_at = kmf::domain::ids::UnixMillis(other.issued_at.0 + 1);
    let bytes = other.encode();
    let key = kmf::signer::instance_key::InstanceKey::from_pem(&source.instance_files.key_pem).expect("key");
    let signature = key.sign(&bytes).expect("sign");
    let err = as_source
        .deliver_bundle(pb::DeliverBundleRequest { bundle: bytes, signature })
        .await
        .expect_err("a second bundle for a completed request accepted");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("REQUEST_COMPLETED"), "{err}");
    assert_eq!(snapshot(&mut t, "salary").await, after_first, "nothing imported twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_certificate_must_match_the_database() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("dir");
    let host = kmf::domain::ids::Host::parse("127.0.0.1:0").expect("host");
    let _sys_id = kmf::app::init_instance(dir.path(), &host).expect("init");
    let other = kmf::domain::ids::SysId::from_random([7; 16]);
    let cert = issue_instance(&pki.ca, &other, &["127.0.0.1".into()]).expect("cert");
    let cfg = kmf::app::AppConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        host: None,
        tls: pki.files(&cert),
        signer: kmf::app::SignerConfig::software_in(dir.path()),
        background_interval: std::time::Duration::from_secs(1),
        health_interval: kmf::node::diagnostics::WATCH_EVERY,
        metrics_listen: None,
        rekey_retry_interval: kmf::node::jobs::DEFAULT_REKEY_RETRY,
        clone_grant_lifetime: kmf::node::jobs::DEFAULT_CLONE_GRANT_LIFETIME,
        connections: Default::default(),
        tls_paths: None,
    };
    let err = kmf::app::start(cfg).await.err().expect("started with another instance's certificate");
    assert!(err.to_string().contains("does not name this instance"), "{err}");
    let err = kmf::app::init_instance(dir.path(), &host).expect_err("init refuses to overwrite");
    assert!(err.to_string().contains("an instance already exists in"), "{err}");
    assert!(err.to_string().contains("(refusing to overwrite)"), "{err}");
}

/// Opens TLS to `addr` with `config`, sends the HTTP/2 preface and reads:
/// what the server answers first (in TLS 1.3 a refused client certificate
/// arrives here, as an alert).
async fn first_read(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    tls.read(&mut buf).await
}
