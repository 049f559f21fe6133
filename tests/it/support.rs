//! Test fixtures: a PKI minted at test time, nodes on port 0, operator clients.

#![allow(dead_code)]

use std::time::Duration;

use std::sync::{Arc, Mutex};

use kmf::app::{AppConfig, RunningApp, SignerConfig, StartOptions, init_instance_with, start_custom, start_with};
use kmf::domain::auth::Role;
use kmf::domain::clone::SnapshotPart;
use kmf::domain::exchange::{RequestStatus, SignedBlob};
use kmf::domain::ids::Host;
use kmf::domain::ids::{RequestId, SysId};
use kmf::error::PeerError;
use kmf::node::ports::{OpenRequest, PeerFuture, PeerLink, PeerStream, SourceView};
use kmf::rpc::client::connect;
use kmf::rpc::pb;
use kmf::tls::TlsFiles;
use kmf::tls::pki::{IssuedCert, create_ca, issue_instance, issue_operator};
use tempfile::TempDir;
use tonic::transport::Channel;

pub struct Pki {
    pub ca: IssuedCert,
}

impl Pki {
    pub fn new() -> Self {
        Pki { ca: create_ca("kmf test CA").expect("CA") }
    }

    pub fn files(&self, cert: &IssuedCert) -> TlsFiles {
        kmf::tls::pki::tls_files(&self.ca, cert)
    }

    pub fn operator(&self, name: &str, roles: &[Role]) -> TlsFiles {
        self.files(&issue_operator(&self.ca, name, roles).expect("operator cert"))
    }
}

pub struct TestNode {
    pub cfg: AppConfig,
    pub dir: TempDir,
    pub app: Option<RunningApp>,
    pub sys_id: String,
    pub host: Host,
    pub instance_files: TlsFiles,
}

impl TestNode {
    pub async fn start(pki: &Pki) -> TestNode {
        Self::start_with(pki, |p| p).await
    }

    /// Starts a node whose outbound peer link is wrapped by `wrap`.
    pub async fn start_with(pki: &Pki, wrap: impl FnOnce(Arc<dyn PeerLink>) -> Arc<dyn PeerLink>) -> TestNode {
        Self::start_full(pki, None, wrap).await
    }

    /// Starts a node with `signer` (its KEK is created here), or the software
    /// signer in its directory when `None`.
    pub async fn start_full(
        pki: &Pki,
        signer: Option<SignerConfig>,
        wrap: impl FnOnce(Arc<dyn PeerLink>) -> Arc<dyn PeerLink>,
    ) -> TestNode {
        let options = StartOptions { wrap_peers: Box::new(wrap), ..Default::default() };
        Self::start_opts(pki, signer, None, options).await
    }

    /// Starts a node with `options`; `advertise` replaces the host peers
    /// are told to dial (a proxy in front of it, say).
    pub async fn start_opts(
        pki: &Pki,
        signer: Option<SignerConfig>,
        advertise: Option<Host>,
        options: StartOptions<'_>,
    ) -> TestNode {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_listening(pki, signer, advertise, options, listener, |_| {}).await
    }

    /// A software node listening on `listen`, telling peers to dial `advertise`.
    pub async fn start_opts_on(pki: &Pki, listen: std::net::SocketAddr, advertise: Host) -> TestNode {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind the reserved port");
        Self::start_listening(pki, None, Some(advertise), StartOptions::default(), listener, |_| {}).await
    }

    /// As `start_full`, serving on `listener`, with `tune` changing the
    /// config first (the default diagnoses every 15 s, as the daemon does).
    pub async fn start_on(
        pki: &Pki,
        signer: Option<SignerConfig>,
        listener: tokio::net::TcpListener,
        tune: impl FnOnce(&mut AppConfig),
        wrap: impl FnOnce(Arc<dyn PeerLink>) -> Arc<dyn PeerLink>,
    ) -> TestNode {
        let options = StartOptions { wrap_peers: Box::new(wrap), ..Default::default() };
        Self::start_listening(pki, signer, None, options, listener, tune).await
    }

    async fn start_listening(
        pki: &Pki,
        signer: Option<SignerConfig>,
        advertise: Option<Host>,
        options: StartOptions<'_>,
        listener: tokio::net::TcpListener,
        tune: impl FnOnce(&mut AppConfig),
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = Host::parse("127.0.0.1:0").expect("host");
        let signer = signer.unwrap_or_else(|| SignerConfig::software_in(dir.path()));
        let sys_id = init_instance_with(dir.path(), &host, &signer).expect("init");
        let cert = issue_instance(&pki.ca, &sys_id, &["127.0.0.1".to_owned()]).expect("instance cert");
        let files = pki.files(&cert);
        let mut cfg = AppConfig {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            host: advertise,
            tls: files.clone(),
            signer,
            background_interval: Duration::from_millis(100),
            health_interval: kmf::node::diagnostics::WATCH_EVERY,
            metrics_listen: None,
            rekey_retry_interval: kmf::node::jobs::DEFAULT_REKEY_RETRY,
            clone_grant_lifetime: kmf::node::jobs::DEFAULT_CLONE_GRANT_LIFETIME,
            connections: Default::default(),
            tls_paths: None,
        };
        tune(&mut cfg);
        let app = start_custom(cfg.clone(), listener, options).await.expect("start node");
        let host = Host::parse(&format!("127.0.0.1:{}", app.local_addr.port())).expect("host");
        TestNode { cfg, dir, app: Some(app), sys_id: sys_id.to_string(), host, instance_files: files }
    }

    /// Stops and starts again on the same data (a new port).
    pub async fn restart(&mut self) {
        self.restart_opts(StartOptions::default()).await;
    }

    /// As `restart`, with `options` (a manual clock, say).
    pub async fn restart_opts(&mut self, options: StartOptions<'_>) {
        self.stop().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = start_custom(self.cfg.clone(), listener, options).await.expect("restart node");
        self.host = Host::parse(&format!("127.0.0.1:{}", app.local_addr.port())).expect("host");
        self.app = Some(app);
    }

    /// Stops and starts again on the same data and the same port, with
    /// `tls` as its identity when given (a renewed certificate).
    pub async fn restart_same_port(&mut self, tls: Option<TlsFiles>) {
        self.stop().await;
        if let Some(tls) = tls {
            self.cfg.tls = tls.clone();
            self.instance_files = tls;
        }
        let listener = bind_again(self.host.port()).await;
        let app = start_with(self.cfg.clone(), listener, |p| p).await.expect("restart node");
        self.app = Some(app);
    }

    /// The running app (panics when stopped).
    pub fn running(&self) -> &RunningApp {
        self.app.as_ref().expect("the node is running")
    }

    pub async fn channel(&self, files: &TlsFiles) -> Channel {
        connect(&self.host, files, None).await.expect("connect")
    }

    pub async fn admin(&self, pki: &Pki) -> Ops {
        Ops::new(self.channel(&pki.operator("admin", &[Role::Admin])).await)
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await.expect("shutdown");
        }
    }
}

/// The kmfctl binary speaking to `node` as operator `files` (written to
/// `dir`), its output piped; it is killed if dropped while running.
pub fn kmfctl_command(node: &TestNode, files: &TlsFiles, dir: &std::path::Path) -> tokio::process::Command {
    std::fs::write(dir.join("ca.pem"), &files.ca_pem).expect("ca");
    std::fs::write(dir.join("op.pem"), &files.cert_pem).expect("cert");
    std::fs::write(dir.join("op.key"), &files.key_pem[..]).expect("key");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kmfctl"));
    cmd.arg("--endpoint")
        .arg(node.host.to_string())
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("op.pem"))
        .arg("--key")
        .arg(dir.join("op.key"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Binds 127.0.0.1:`port` again after its listener closed (retried for at
/// most 10 s while the port is still being released).
pub async fn bind_again(port: u16) -> tokio::net::TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return listener,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "cannot bind port {port} again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; the loop is bounded by its deadline
    }
}

/// All operator clients over one channel.
#[derive(Clone)]
pub struct Ops {
    pub instance: pb::instance_client::InstanceClient<Channel>,
    pub keys: pb::key_management_client::KeyManagementClient<Channel>,
    pub crypto: pb::crypto_client::CryptoClient<Channel>,
    pub exchange: pb::resource_exchange_client::ResourceExchangeClient<Channel>,
    pub audit: pb::audit_client::AuditClient<Channel>,
    pub properties: pb::properties_client::PropertiesClient<Channel>,
    pub policies: pb::policies_client::PoliciesClient<Channel>,
}

impl Ops {
    pub fn new(ch: Channel) -> Self {
        Ops {
            instance: pb::instance_client::InstanceClient::new(ch.clone()),
            keys: pb::key_management_client::KeyManagementClient::new(ch.clone()),
            crypto: pb::crypto_client::CryptoClient::new(ch.clone()),
            exchange: pb::resource_exchange_client::ResourceExchangeClient::new(ch.clone()),
            audit: pb::audit_client::AuditClient::new(ch.clone()),
            properties: pb::properties_client::PropertiesClient::new(ch.clone()),
            policies: pb::policies_client::PoliciesClient::new(ch),
        }
    }

    /// Module `m`, spec `spec` (AES-256-GCM); optionally one key.
    pub async fn spec(&mut self, module: &str, spec: &str, with_key: bool) {
        let req = kmf::cli::kmfctl::aes_spec(module, spec, 256);
        self.spec_from(req, with_key).await;
    }

    /// Creates the request's module (Track by default, if missing) and spec;
    /// optionally one key.
    pub async fn spec_from(&mut self, req: pb::CreateSpecRequest, with_key: bool) {
        let (module, spec) = (req.module.clone(), req.name.clone());
        let _ = self
            .keys
            .create_module(pb::CreateModuleRequest {
                name: module.clone(),
                default_access: pb::DefaultAccess::Track as i32,
            })
            .await;
        self.keys.create_spec(req).await.expect("create spec");
        if with_key {
            self.keys.generate_key(pb::GenerateKeyRequest { spec }).await.expect("generate key");
        }
    }

    pub async fn encrypt(&mut self, spec: &str, pt: &[u8], aad: &[u8]) -> Vec<u8> {
        self.crypto
            .encrypt(pb::EncryptRequest { spec: spec.into(), plaintext: pt.to_vec(), associated_data: aad.to_vec() })
            .await
            .expect("encrypt")
            .into_inner()
            .ciphertext
    }

    pub async fn decrypt(&mut self, ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, tonic::Status> {
        self.crypto
            .decrypt(pb::DecryptRequest { ciphertext: ct.to_vec(), associated_data: aad.to_vec() })
            .await
            .map(|r| r.into_inner().plaintext)
    }

    pub async fn create_request(
        &mut self,
        source: &TestNode,
        specs: &[&str],
    ) -> Result<pb::ExchangeRequest, tonic::Status> {
        self.exchange
            .create_request(pb::CreateRequestRequest {
                source_sys_id: source.sys_id.clone(),
                source_host: source.host.to_string(),
                spec_names: specs.iter().map(|s| s.to_string()).collect(),
                expires_in: None,
                frequency: pb::Frequency::Adhoc as i32,
                rekey_after_import: false,
            })
            .await
            .map(|r| r.into_inner().request.expect("request"))
    }

    pub async fn decide(
        &mut self,
        id: &str,
        decision: pb::Decision,
        reason: &str,
    ) -> Result<pb::ExchangeRequest, tonic::Status> {
        self.exchange
            .update_request(pb::UpdateRequestRequest {
                request_id: id.into(),
                decision: decision as i32,
                reason: reason.into(),
            })
            .await
            .map(|r| r.into_inner().request.expect("request"))
    }

    pub async fn get(&mut self, id: &str) -> pb::ExchangeRequest {
        self.exchange
            .get_request(pb::GetRequestRequest { request_id: id.into() })
            .await
            .expect("get request")
            .into_inner()
            .request
            .expect("request")
    }

    /// The audit entries whose action is exactly `action` (first 100 of its prefix).
    pub async fn audit_entries(&mut self, action: &str) -> Vec<pb::AuditEntry> {
        let req = pb::ListAuditEntriesRequest { action_prefix: action.into(), limit: 100, ..Default::default() };
        let entries = self.audit.list_audit_entries(req).await.expect("audit").into_inner().entries;
        entries.into_iter().filter(|e| e.action == action).collect()
    }

    pub async fn keys_of(&mut self, spec: &str) -> Vec<pb::Key> {
        self.keys.list_keys(pb::ListKeysRequest { spec: spec.into() }).await.expect("list keys").into_inner().keys
    }

    /// Polls `get` until `done` holds, for at most 10 s.
    pub async fn wait_for(
        &mut self,
        id: &str,
        what: &str,
        done: impl Fn(&pb::ExchangeRequest) -> bool,
    ) -> pb::ExchangeRequest {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.get(id).await;
            if done(&r) {
                return r;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; last: {r:?}");
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; the loop is bounded by its deadline
        }
    }
}

pub fn status(r: &pb::ExchangeRequest) -> pb::RequestStatus {
    pb::RequestStatus::try_from(r.status).expect("status")
}

/// A peer link that records every bundle it delivers, and can hold them
/// (answer "unreachable" without delivering) while `hold` is set.
pub struct Recorder {
    inner: Arc<dyn PeerLink>,
    pub bundles: Mutex<Vec<SignedBlob>>,
    pub hold: std::sync::atomic::AtomicBool,
}

impl Recorder {
    pub fn wrap(inner: Arc<dyn PeerLink>) -> Arc<Recorder> {
        Arc::new(Recorder { inner, bundles: Mutex::new(Vec::new()), hold: std::sync::atomic::AtomicBool::new(false) })
    }

    pub fn last_bundle(&self) -> SignedBlob {
        self.bundles.lock().expect("lock").last().cloned().expect("a bundle was sent")
    }
}

impl PeerLink for Recorder {
    fn open_request<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        request: OpenRequest,
    ) -> PeerFuture<'a, SourceView> {
        self.inner.open_request(host, expected, request)
    }

    fn deliver_bundle<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        bundle: SignedBlob,
    ) -> PeerFuture<'a, SignedBlob> {
        self.bundles.lock().expect("lock").push(bundle.clone());
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async move {
                Err(PeerError::Unreachable { host: host.to_string(), reason: "held by test".into() })
            });
        }
        self.inner.deliver_bundle(host, expected, bundle)
    }

    fn notify_status<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        request_id: RequestId,
        status: RequestStatus,
        reason: String,
    ) -> PeerFuture<'a, ()> {
        self.inner.notify_status(host, expected, request_id, status, reason)
    }

    fn stream_snapshot<'a>(&'a self, host: &'a Host, expected: &'a SysId) -> PeerFuture<'a, PeerStream<SnapshotPart>> {
        self.inner.stream_snapshot(host, expected)
    }
}

/// A KeyExchange client speaking as the instance whose files are given.
pub async fn peer_client(
    node: &TestNode,
    as_instance: &TlsFiles,
) -> pb::key_exchange_client::KeyExchangeClient<Channel> {
    pb::key_exchange_client::KeyExchangeClient::new(node.channel(as_instance).await)
}

/// What a test does to deliveries; `Intercepted` passes every other call through.
pub trait DeliveryHook: Send + Sync + 'static {
    fn inner(&self) -> &Arc<dyn PeerLink>;
    fn deliver<'a>(&'a self, host: &'a Host, expected: &'a SysId, bundle: SignedBlob) -> PeerFuture<'a, SignedBlob>;
}

/// A peer link whose deliveries go through a `DeliveryHook`.
pub struct Intercepted<T>(pub Arc<T>);

impl<T: DeliveryHook> PeerLink for Intercepted<T> {
    fn open_request<'a>(&'a self, h: &'a Host, e: &'a SysId, r: OpenRequest) -> PeerFuture<'a, SourceView> {
        self.0.inner().open_request(h, e, r)
    }

    fn deliver_bundle<'a>(&'a self, h: &'a Host, e: &'a SysId, b: SignedBlob) -> PeerFuture<'a, SignedBlob> {
        self.0.deliver(h, e, b)
    }

    fn notify_status<'a>(
        &'a self,
        h: &'a Host,
        e: &'a SysId,
        id: RequestId,
        s: RequestStatus,
        reason: String,
    ) -> PeerFuture<'a, ()> {
        self.0.inner().notify_status(h, e, id, s, reason)
    }

    fn stream_snapshot<'a>(&'a self, h: &'a Host, e: &'a SysId) -> PeerFuture<'a, PeerStream<SnapshotPart>> {
        self.0.inner().stream_snapshot(h, e)
    }
}

/// Waits for `answer` from code that is not async (the checks that read a
/// killed daemon's store after the fact): on a thread of its own with a
/// runtime of its own, so it works inside or outside a test's runtime.
pub fn wait_for<T: Send>(answer: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(answer)
            })
            .join()
            .expect("the waited-for answer panicked")
    })
}
