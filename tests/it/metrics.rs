//! The metrics endpoint: HTTPS with a client certificate from the deployment
//! CA, operator certificates only, Prometheus text at GET /metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use kmf::domain::auth::Role;
use kmf::rpc::pb;
use kmf::tls::TlsFiles;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

use crate::diagnostics::node_with;
use crate::support::{Ops, Pki, TestNode};

/// GET `path` over HTTPS/1.1 as `identity` (none: no client certificate).
/// Returns the status, content type and body, or the transport error.
async fn get(
    addr: SocketAddr,
    ca_pem: &[u8],
    identity: Option<&TlsFiles>,
    path: &str,
) -> Result<(u16, String, String), String> {
    let mut config = match identity {
        Some(files) => (*kmf::tls::client_config(files, None).map_err(|e| e.to_string())?).clone(),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
                roots.add(cert.expect("ca pem")).expect("ca");
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("tls13")
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let tls = TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.map_err(|e| e.to_string())?;
    let connection = tokio::spawn(conn);
    let req = hyper::Request::get(path).header("host", "127.0.0.1").body(Empty::<Bytes>::new()).expect("request");
    let response = match sender.send_request(req).await {
        Ok(response) => response,
        // A refusal after the handshake (a TLS 1.3 alert) ends the connection: its error says why.
        Err(e) => {
            let connection = match connection.await {
                Ok(Err(c)) => chain(&c),
                Ok(Ok(())) => "closed".to_owned(),
                Err(j) => chain(&j),
            };
            return Err(format!("{}; connection: {connection}", chain(&e)));
        }
    };
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_owned()).unwrap_or_default();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, content_type, String::from_utf8_lossy(&body).into_owned()))
}

/// An error and its sources, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(": {e}"));
        source = e.source();
    }
    text
}

/// Sends a plain HTTP/1.1 GET over TLS without a client certificate; returns
/// what came back before the connection failed, and the failure.
async fn raw_get_without_certificate(addr: SocketAddr, ca_pem: &[u8]) -> (Vec<u8>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("ca pem")).expect("ca");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = match TlsConnector::from(Arc::new(config)).connect(name, tcp).await {
        Ok(tls) => tls,
        Err(e) => return (Vec::new(), e.to_string()),
    };
    let mut answer = Vec::new();
    let error = match tls.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await {
        Err(e) => e.to_string(),
        Ok(()) => match tls.read_to_end(&mut answer).await {
            Err(e) => e.to_string(),
            Ok(_) => "the connection closed without an error".to_owned(),
        },
    };
    (answer, error)
}

/// The value of the sample line `series` (name and labels exactly as printed).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.parse().expect("value")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_for_operators_only_over_mtls() {
    let pki = Pki::new();
    let mut node = node_with(&pki, Some("127.0.0.1:0".parse().expect("addr")), None).await;
    let addr = node.app.as_ref().and_then(|a| a.metrics_addr).expect("metrics listener");
    let mut admin = node.admin(&pki).await;
    admin.spec("m", "s", true).await;
    admin.instance.info(pb::InfoRequest {}).await.expect("info");
    // A refused call is counted with its code.
    let mut as_instance = Ops::new(node.channel(&node.instance_files).await);
    let err = as_instance.instance.info(pb::InfoRequest {}).await.expect_err("an instance called Info");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("instances may only call the peer services KeyExchange and CloneSource"), "{err}");
    let audit = admin
        .audit
        .list_audit_entries(pb::ListAuditEntriesRequest { limit: 10_000, ..Default::default() })
        .await
        .expect("audit")
        .into_inner()
        .entries
        .len();

    // Any operator role may read.
    let auditor = pki.operator("aud", &[Role::CryptographicAuditor]);
    let (status, content_type, text) =
        get(addr, pki.ca.cert_pem.as_bytes(), Some(&auditor), "/metrics").await.expect("scrape");
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let expect = [
        (r#"kmf_rpc_requests_total{code="OK",method="/kmf.v1.Instance/Info"}"#, 1.0),
        (r#"kmf_rpc_requests_total{code="PERMISSION_DENIED",method="/kmf.v1.Instance/Info"}"#, 1.0),
        (r#"kmf_rpc_requests_total{code="OK",method="/kmf.v1.KeyManagement/GenerateKey"}"#, 1.0),
        (r#"kmf_rpc_duration_seconds_count{method="/kmf.v1.Instance/Info"}"#, 2.0),
        (r#"kmf_keys{state="active"}"#, 1.0),
        (r#"kmf_keys{state="expired"}"#, 0.0),
        (r#"kmf_exchange_requests{role="source",status="completed"}"#, 0.0),
        ("kmf_audit_entries", audit as f64),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(text.contains("# TYPE kmf_rpc_duration_seconds histogram"), "{text}");

    // The daemon diagnoses itself at start (and every 15 s): the health
    // gauges appear without anyone calling Diagnose.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let (_, _, text) = get(addr, pki.ca.cert_pem.as_bytes(), Some(&auditor), "/metrics").await.expect("scrape");
        if text.contains("kmf_health{") {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no kmf_health gauge after 10 s:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await; // poll interval; bounded by the deadline
    };
    for (series, value) in [
        (r#"kmf_health{component="signer",status="operational"}"#, 1.0),
        (r#"kmf_health{component="store",status="operational"}"#, 1.0),
        (r#"kmf_health{component="signer",status="malfunction"}"#, 0.0),
        (r#"kmf_health{component="peers",status="disabled"}"#, 1.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    assert!(sample(&text, "kmf_health_checked_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{text}");

    // Counts are cached per store generation: a write shows at the next scrape.
    assert_eq!(sample(&text, r#"kmf_keys{state="deactivated"}"#), Some(0.0), "{text}");
    admin.keys.rotate_key(pb::RotateKeyRequest { spec: "s".into() }).await.expect("rotate");
    let (_, _, text) = get(addr, pki.ca.cert_pem.as_bytes(), Some(&auditor), "/metrics").await.expect("scrape");
    assert_eq!(sample(&text, r#"kmf_keys{state="deactivated"}"#), Some(1.0), "{text}");
    assert_eq!(sample(&text, r#"kmf_keys{state="active"}"#), Some(1.0), "{text}");
    assert!(audit >= 4, "module, spec, key and the refused call are audited: {audit}");

    // The rekey debt: records under an imported key count, records under the instance's own do not.
    assert!(!text.contains("kmf_rekey_debt{"), "no imported key has records yet:\n{text}");
    let own = pb::RecordAddress { table: "t".into(), field: "f".into(), record_id: "own".into() };
    let put = pb::PutRecordRequest { address: Some(own), spec: "s".into(), plaintext: b"x".to_vec() };
    admin.crypto.put_record(put).await.expect("put a record under the instance's key");
    let imported = "0123456789abcdef0123456789abcdef:s:v1";
    let records: Vec<_> = (0..3)
        .map(|i| kmf::domain::record::StoredRecord {
            address: kmf::domain::record::RecordAddress::parse("t", "f", &format!("cloned{i}")).expect("address"),
            ciphertext: vec![1; 40],
            key_id: kmf::domain::ids::KeyId::parse(imported).expect("key id"),
            updated_at: kmf::domain::ids::UnixMillis(1),
        })
        .collect();
    let store = kmf::store::RecordStore::new(node.running().services.store());
    store.put_records(records).await.expect("records under an imported key");
    let (_, _, text) = get(addr, pki.ca.cert_pem.as_bytes(), Some(&auditor), "/metrics").await.expect("scrape");
    assert_eq!(sample(&text, &format!(r#"kmf_rekey_debt{{key_id="{imported}"}}"#)), Some(3.0), "{text}");
    assert_eq!(sample(&text, "kmf_rekey_debt_records"), Some(3.0), "only imported keys are debt:\n{text}");

    // Other paths are 404.
    let (status, _, _) = get(addr, pki.ca.cert_pem.as_bytes(), Some(&auditor), "/").await.expect("get /");
    assert_eq!(status, 404);

    // An instance certificate, or an operator without a role: 403, audited.
    let (status, _, body) =
        get(addr, pki.ca.cert_pem.as_bytes(), Some(&node.instance_files), "/metrics").await.expect("as instance");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("operator certificates only"), "{body}");
    let nobody = pki.operator("nobody", &[]);
    let (status, _, body) = get(addr, pki.ca.cert_pem.as_bytes(), Some(&nobody), "/metrics").await.expect("no role");
    assert_eq!(status, 403, "{body}");
    let refused = admin
        .audit
        .list_audit_entries(pb::ListAuditEntriesRequest {
            limit: 10_000,
            action_prefix: "call.refused".into(),
            subject: "GET /metrics".into(),
            ..Default::default()
        })
        .await
        .expect("audit")
        .into_inner()
        .entries;
    let actors: Vec<&str> = refused.iter().map(|e| e.actor.as_str()).collect();
    assert_eq!(actors, [format!("instance:{}", node.sys_id).as_str(), "operator:nobody"]);

    // No client certificate: the server refuses the TLS handshake (in TLS 1.3
    // the client learns it from the alert on its first read); no HTTP byte
    // comes back.
    let (answer, error) = raw_get_without_certificate(addr, pki.ca.cert_pem.as_bytes()).await;
    assert!(answer.is_empty(), "served without a certificate: {answer:?}");
    assert!(error.contains("CertificateRequired"), "{error}");
    let err = get(addr, pki.ca.cert_pem.as_bytes(), None, "/metrics").await.expect_err("served without a certificate");
    assert!(err.contains("received fatal alert: CertificateRequired"), "{err}");

    // A certificate from another CA is refused as well: the client trusts our
    // CA (so it is the server that refuses, with a TLS alert).
    let other = Pki::new();
    let stranger = TlsFiles { ca_pem: pki.ca.cert_pem.as_bytes().to_vec(), ..other.operator("admin", &[Role::Admin]) };
    let err = get(addr, pki.ca.cert_pem.as_bytes(), Some(&stranger), "/metrics").await.expect_err("foreign CA served");
    assert!(err.contains("received fatal alert: DecryptError"), "{err}");

    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metrics_listener_unless_configured() {
    let pki = Pki::new();
    let mut node = TestNode::start(&pki).await;
    assert_eq!(node.app.as_ref().expect("running").metrics_addr, None);
    node.stop().await;
}
