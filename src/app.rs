//! Composition root: creates an instance (`init`), and runs one (`App::start`):
//! the TLS acceptor on a pre-bound listener, the use-case services and the
//! gRPC services around them with health and reflection, and the background
//! tasks on one `Background` (the job runner and its jobs, the refusal
//! writer, the health watch). Shutdown is graceful: no new calls or jobs,
//! in-flight jobs finish within `JOB_DRAIN` (or keep their lease for the next
//! start), then the server drains.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Server;

use crate::clock::{Clock, SystemClock};
use crate::domain::ids::{Host, SysId};
use crate::node::context::Context as ServiceContext;
use crate::node::diagnostics::DiagnosticsSetup;
use crate::node::jobs::JobSettings;
use crate::node::ports::PeerLink;
use crate::node::{Background, Services};
use crate::rpc::health::HealthPublisher;
use crate::rpc::pb::{
    audit_server::AuditServer, clone_source_server::CloneSourceServer, clones_server::ClonesServer,
    crypto_server::CryptoServer, instance_server::InstanceServer, key_exchange_server::KeyExchangeServer,
    key_management_server::KeyManagementServer, policies_server::PoliciesServer, properties_server::PropertiesServer,
    rekeys_server::RekeysServer, resource_exchange_server::ResourceExchangeServer,
};
use crate::rpc::peer::PeerClient;
use crate::rpc::probe::HealthProbe;
use crate::rpc::services::RpcServices;
use crate::rpc::{MAX_MESSAGE_BYTES, pb};
use crate::signer::Signer;
use crate::signer::instance_key::InstanceKey;
use crate::signer::pkcs11::{Pkcs11Config, Pkcs11Signer};
use crate::signer::software::SoftwareSigner;
use crate::store::Store;
use crate::tls::TlsFiles;

pub const DB_FILE: &str = "kmf.redb";
pub const KEK_FILE: &str = "kek.key";

/// Where the KEK lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignerConfig {
    /// A 256-bit KEK in a file of mode 0600.
    Software { kek_file: PathBuf },
    /// A non-extractable AES-256 key on a PKCS#11 token.
    Pkcs11(Pkcs11Config),
}

impl SignerConfig {
    /// The software signer with its KEK file in `data_dir` (the default).
    pub fn software_in(data_dir: &Path) -> Self {
        SignerConfig::Software { kek_file: data_dir.join(KEK_FILE) }
    }

    /// Opens the backend: reads the KEK file, or logs in to the token and
    /// checks its KEK.
    pub fn open(&self) -> anyhow::Result<Arc<dyn Signer>> {
        Ok(match self {
            SignerConfig::Software { kek_file } => Arc::new(SoftwareSigner::load(kek_file)?),
            SignerConfig::Pkcs11(cfg) => Arc::new(Pkcs11Signer::open(cfg)?),
        })
    }
}

/// Creates a new instance in `data_dir` with a software KEK file (0600).
pub fn init_instance(data_dir: &Path, host: &Host) -> anyhow::Result<SysId> {
    init_instance_with(data_dir, host, &SignerConfig::software_in(data_dir))
}

/// Where `init` gets the instance's KEK.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KekSetup {
    /// A new key file, or a new key on the token.
    Create,
    /// pkcs11 only: the KEK an HSM officer already made on the token (its
    /// attributes are checked as at every start; it is never destroyed).
    AdoptExisting,
}

/// Creates a new instance in `data_dir`: sys_id, KEK (a new key file, or a
/// new key on the token), database. Refuses to overwrite an instance, a KEK
/// file or a token object.
pub fn init_instance_with(data_dir: &Path, host: &Host, signer: &SignerConfig) -> anyhow::Result<SysId> {
    init_instance_kek(data_dir, host, signer, KekSetup::Create)
}

/// `init_instance_with`, choosing whether the KEK is made or adopted.
pub fn init_instance_kek(data_dir: &Path, host: &Host, signer: &SignerConfig, kek: KekSetup) -> anyhow::Result<SysId> {
    use anyhow::Context;
    let db = data_dir.join(DB_FILE);
    let taken = match signer {
        SignerConfig::Software { kek_file } => kek_file.exists(),
        SignerConfig::Pkcs11(_) => false,
    };
    if db.exists() || taken {
        anyhow::bail!("an instance already exists in {} (refusing to overwrite)", data_dir.display());
    }
    if let (SignerConfig::Software { .. }, KekSetup::AdoptExisting) = (signer, kek) {
        anyhow::bail!("adopting an existing KEK needs the pkcs11 signer (a software instance makes its own KEK file)");
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
    }
    let sys_id = SysId::from_random(crate::signer::primitives::random_bytes());
    match (signer, kek) {
        (SignerConfig::Software { kek_file }, _) => SoftwareSigner::create_key_file(kek_file)?,
        (SignerConfig::Pkcs11(cfg), KekSetup::Create) => Pkcs11Signer::create_kek(cfg)?,
        (SignerConfig::Pkcs11(cfg), KekSetup::AdoptExisting) => {
            Pkcs11Signer::open(cfg)?;
        }
    }
    if let Err(e) = Store::create_redb(&db, &sys_id, host) {
        match (signer, kek) {
            (SignerConfig::Software { kek_file }, _) => {
                let _ = std::fs::remove_file(kek_file);
            }
            (SignerConfig::Pkcs11(cfg), KekSetup::Create) => {
                let _ = Pkcs11Signer::destroy_kek(cfg);
            }
            (SignerConfig::Pkcs11(_), KekSetup::AdoptExisting) => {}
        }
        return Err(e.into());
    }
    Ok(sys_id)
}

/// Everything needed to run an instance.
#[derive(Clone, Debug)]
pub struct AppConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Overrides the host recorded at init. A port of 0 means the bound port.
    pub host: Option<Host>,
    pub tls: TlsFiles,
    pub signer: SignerConfig,
    /// How often queued deliveries are retried and overdue requests expired.
    pub background_interval: Duration,
    /// How often the daemon diagnoses itself (and health follows); 15 s
    /// unless a test wants it sooner.
    pub health_interval: Duration,
    /// The operator-only HTTPS metrics listener; none when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a failed rekey waits before it tries again (24 h by default).
    pub rekey_retry_interval: Duration,
    /// How long after its snapshot a clone grant approves (1 h by default).
    pub clone_grant_lifetime: Duration,
    /// Connection limit, idle timeout, keepalive, streams per connection.
    pub connections: crate::connections::ConnectionLimits,
    /// Where `tls` was read from: given, the daemon reloads its certificate,
    /// key and CRL on SIGHUP or when one of the files changes.
    pub tls_paths: Option<TlsPaths>,
}

pub use crate::tls_reload::TlsPaths;

pub struct RunningApp {
    pub local_addr: SocketAddr,
    /// The instance's use-case services (tests and benchmarks call them directly).
    pub services: Arc<Services>,
    /// Where `/metrics` is served, when `metrics_listen` was set.
    pub metrics_addr: Option<SocketAddr>,
    metrics_server: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The job runner, its jobs, the refusal writer and the health watch.
    background: Background,
    handshakes: Arc<AtomicU64>,
    connections: crate::connections::ConnectionSlots,
    body_budget: crate::connections::BodyBudget,
    tls_reload: Option<JoinHandle<()>>,
    tls_reloads: Arc<AtomicU64>,
}

/// The request size limit of the services whose calls are small (every one
/// but Crypto and KeyExchange, which take `MAX_MESSAGE_BYTES`).
pub const SMALL_MESSAGE_BYTES: usize = 1024 * 1024;
/// The request size limit of Crypto and KeyExchange.
pub const LARGE_MESSAGE_BYTES: usize = MAX_MESSAGE_BYTES;

/// How long shutdown waits for in-flight jobs; a job still running then
/// keeps its lease and is run again after the next start.
const JOB_DRAIN: Duration = Duration::from_secs(20);

/// Wraps the peer link (tests record, hold or drop deliveries).
pub type WrapPeers<'a> = Box<dyn FnOnce(Arc<dyn PeerLink>) -> Arc<dyn PeerLink> + 'a>;
/// Wraps the signer (benchmarks slow it down).
pub type WrapSigner<'a> = Box<dyn FnOnce(Arc<dyn Signer>) -> Arc<dyn Signer> + 'a>;

/// What tests and benchmarks may change about a started instance.
pub struct StartOptions<'a> {
    pub wrap_peers: WrapPeers<'a>,
    pub wrap_signer: WrapSigner<'a>,
    pub clock: Arc<dyn Clock>,
    /// Pacing of the job runner; derived from `background_interval` when None.
    pub jobs: Option<JobSettings>,
}

impl Default for StartOptions<'_> {
    fn default() -> Self {
        StartOptions {
            wrap_peers: Box::new(|p| p),
            wrap_signer: Box::new(|s| s),
            clock: Arc::new(SystemClock),
            jobs: None,
        }
    }
}

impl RunningApp {
    /// How many TLS handshakes the gRPC listener completed (one per
    /// connection a client opened; tests use it to see channels reused).
    /// TLS reloads installed so far (SIGHUP or a changed file).
    pub fn tls_reloads(&self) -> u64 {
        self.tls_reloads.load(Ordering::Relaxed)
    }

    /// gRPC connections established now (TLS handshake completed).
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// TLS handshakes in progress now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.connections.handshaking()
    }

    /// Handshakes dropped so far for a newer one (too many in progress).
    pub fn handshakes_displaced(&self) -> u64 {
        self.connections.displaced()
    }

    /// Bytes of request bodies held now (charged to `request_memory`).
    pub fn request_bytes_held(&self) -> usize {
        self.body_budget.held()
    }

    pub fn handshakes_accepted(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Stops accepting, drains in-flight calls, and waits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        if !self.background.shut_down(JOB_DRAIN).await {
            tracing::warn!("jobs still running at shutdown keep their lease; they run again after the next start");
        }
        self.services.flush().await;
        if let Some(reload) = self.tls_reload {
            reload.abort();
            let _ = reload.await;
        }
        if let Some(metrics) = self.metrics_server {
            let _ = metrics.await;
        }
        self.server.await??;
        Ok(())
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Opens the store and signer, binds, and serves.
pub async fn start(cfg: AppConfig) -> anyhow::Result<RunningApp> {
    let listener = TcpListener::bind(cfg.listen).await?;
    start_with_listener(cfg, listener).await
}

pub async fn start_with_listener(cfg: AppConfig, listener: TcpListener) -> anyhow::Result<RunningApp> {
    start_with(cfg, listener, |peer| peer).await
}

/// As `start_with_listener`, letting the caller wrap the peer link (tests
/// record or hold deliveries this way).
pub async fn start_with(
    cfg: AppConfig,
    listener: TcpListener,
    wrap_peers: impl FnOnce(Arc<dyn PeerLink>) -> Arc<dyn PeerLink>,
) -> anyhow::Result<RunningApp> {
    start_custom(cfg, listener, StartOptions { wrap_peers: Box::new(wrap_peers), ..Default::default() }).await
}

/// Starts an instance with `options` (tests and benchmarks).
pub async fn start_custom(
    cfg: AppConfig,
    listener: TcpListener,
    options: StartOptions<'_>,
) -> anyhow::Result<RunningApp> {
    use anyhow::Context;
    let StartOptions { wrap_peers, wrap_signer, clock, jobs } = options;
    let local_addr = listener.local_addr()?;
    let store = Arc::new(Store::open_redb(&cfg.data_dir.join(DB_FILE)).context("opening the store")?);
    let signer = wrap_signer(cfg.signer.open()?);
    let instance_key = InstanceKey::from_pem(&cfg.tls.key_pem)?;
    let sys_id = store.sys_id()?;
    let cert_id = cfg.tls.chain()?.first().and_then(|c| crate::tls::identity::instance_sys_id(c));
    if cert_id.as_ref() != Some(&sys_id) {
        anyhow::bail!("the instance certificate does not name this instance's sys_id {sys_id}");
    }
    let mut host = cfg.host.clone().unwrap_or(store.host()?);
    if host.port() == 0 {
        host = host.new_unchecked_port(local_addr.port());
    }
    let peer_client = Arc::new(PeerClient::new(sys_id.clone(), cfg.tls.clone()));
    let peers = wrap_peers(peer_client.clone());
    // The TLS configuration of the moment: both listeners, the probe and every call's revocation check.
    let live_tls = crate::tls::live::LiveTls::new(cfg.tls.clone())?;
    let diagnostics = DiagnosticsSetup {
        certificate_der: cfg.tls.chain()?.first().map(|c| c.to_vec()).unwrap_or_default(),
        tls: live_tls.clone(),
        probe: Arc::new(HealthProbe::new(live_tls.clone())),
    };
    let jobs = jobs.unwrap_or_else(|| {
        JobSettings::for_interval(cfg.background_interval)
            .with_rekey_retry(cfg.rekey_retry_interval)
            .with_clone_grant_lifetime(cfg.clone_grant_lifetime)
    });
    let context = ServiceContext::new(store, signer, instance_key, peers, clock, host.clone(), jobs)?;
    let services = Arc::new(Services::new(context, Some(diagnostics)));
    let (reporter, health_svc) = tonic_health::server::health_reporter();
    let health = Arc::new(HealthPublisher::new(reporter).await);
    let rpc = RpcServices::new(&services, health.clone());
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let metrics = Arc::new(crate::metrics::Metrics::try_new()?);
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding metrics_listen {addr}"))?),
        None => None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let metrics_server = metrics_listener
        .map(|l| crate::metrics::server::start(l, live_tls.clone(), &services, metrics.clone(), stop_rx.clone()))
        .transpose()?;
    let metrics_addr = metrics_server.as_ref().map(|m| m.local_addr);
    let handshakes = Arc::new(AtomicU64::new(0));
    let counter = handshakes.clone();
    let acceptor = live_tls.grpc_acceptor();
    crate::connections::raise_fd_limit();
    let connections = crate::connections::ConnectionSlots::new(&cfg.connections);
    let body_budget = crate::connections::BodyBudget::new(cfg.connections.request_memory);
    let tls_reloads = Arc::new(AtomicU64::new(0));
    let incoming = crate::connections::accept_tls(
        listener,
        acceptor.clone(),
        cfg.connections,
        connections.clone(),
        stop_rx.clone(),
    )
    .map(move |accepted| {
        if accepted.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        accepted
    });
    // Requests decode up to `large` where a call needs it (Crypto's 4 MiB
    // plaintexts and 10,000-item batches, a peer's 10,000-key bundle), else
    // up to `small`; every body is charged to the shared `body_budget`.
    let (large, small) = (LARGE_MESSAGE_BYTES, SMALL_MESSAGE_BYTES);
    let server = Server::builder()
        .max_concurrent_streams(cfg.connections.max_concurrent_streams)
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path()))
        .layer(
            tower::ServiceBuilder::new()
                .map_request(crate::rpc::caller::record_path)
                .layer(crate::metrics::layer::RpcMetricsLayer::new(metrics.clone()))
                .map_response(crate::rpc::wire_status::normalize)
                .layer(crate::connections::BodyBudgetLayer(body_budget.clone())),
        )
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InstanceServer::new(rpc.instance).max_decoding_message_size(small))
        .add_service(KeyManagementServer::new(rpc.keys).max_decoding_message_size(small))
        .add_service(CryptoServer::new(rpc.crypto).max_decoding_message_size(large).max_encoding_message_size(large))
        .add_service(ResourceExchangeServer::new(rpc.exchange).max_decoding_message_size(small))
        .add_service(AuditServer::new(rpc.audit).max_decoding_message_size(small).max_encoding_message_size(large))
        .add_service(PropertiesServer::new(rpc.properties).max_decoding_message_size(small))
        .add_service(PoliciesServer::new(rpc.policies).max_decoding_message_size(small))
        .add_service(KeyExchangeServer::new(rpc.peer).max_decoding_message_size(large).max_encoding_message_size(large))
        .add_service(ClonesServer::new(rpc.clones).max_decoding_message_size(small))
        .add_service(
            CloneSourceServer::new(rpc.clone_source).max_decoding_message_size(small).max_encoding_message_size(large),
        )
        .add_service(RekeysServer::new(rpc.rekeys).max_decoding_message_size(small))
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let server = tokio::spawn(server);
    let background = Background::new();
    services.start(&background);
    // Diagnoses at start and every `health_interval` after, so health changes
    // are logged, the metrics show them and grpc.health.v1 follows them
    // (NOT_SERVING while the signer or the store is Malfunction) unasked.
    let watch = Arc::clone(&services.diagnostics).watch(cfg.health_interval, background.token(), move |d| {
        let health = Arc::clone(&health);
        async move { health.publish(&d).await }
    });
    background.spawn(watch);
    let tls_reload = cfg.tls_paths.clone().map(|paths| {
        let reloader =
            crate::tls_reload::TlsReloader::new(paths, live_tls.clone(), peer_client.clone(), tls_reloads.clone());
        tokio::spawn(reloader.run(stop_rx.clone()))
    });
    tracing::info!(%sys_id, %host, addr = %local_addr, signer = services.info().signer_kind, "kmfd serving");
    Ok(RunningApp {
        local_addr,
        services,
        metrics_addr,
        metrics_server: metrics_server.map(|m| m.task),
        stop,
        server,
        background,
        handshakes,
        connections,
        body_budget,
        tls_reload,
        tls_reloads,
    })
}

/// A new instance in `root/name` on an ephemeral loopback port, with an
/// instance certificate from `ca` (quickstart, benchmarks).
pub async fn start_loopback(
    root: &Path,
    name: &str,
    ca: &crate::tls::pki::IssuedCert,
    background_interval: Duration,
) -> anyhow::Result<(RunningApp, SysId, Host)> {
    let signer = SignerConfig::software_in(&root.join(name));
    start_loopback_with(root, name, ca, background_interval, signer).await
}

/// As `start_loopback`, with the given signer (its KEK is created here).
pub async fn start_loopback_with(
    root: &Path,
    name: &str,
    ca: &crate::tls::pki::IssuedCert,
    background_interval: Duration,
    signer: SignerConfig,
) -> anyhow::Result<(RunningApp, SysId, Host)> {
    start_loopback_custom(root, name, ca, background_interval, signer, StartOptions::default()).await
}

/// As `start_loopback_with`, started with `options` (benchmarks wrap the
/// signer this way).
pub async fn start_loopback_custom(
    root: &Path,
    name: &str,
    ca: &crate::tls::pki::IssuedCert,
    background_interval: Duration,
    signer: SignerConfig,
    options: StartOptions<'_>,
) -> anyhow::Result<(RunningApp, SysId, Host)> {
    let dir = root.join(name);
    let sys_id = init_instance_with(&dir, &Host::parse("127.0.0.1:0")?, &signer)?;
    let cert = crate::tls::pki::issue_instance(ca, &sys_id, &["127.0.0.1".to_owned()])?;
    let cfg = AppConfig {
        data_dir: dir.clone(),
        listen: "127.0.0.1:0".parse()?,
        host: None,
        tls: crate::tls::pki::tls_files(ca, &cert),
        signer,
        background_interval,
        health_interval: crate::node::diagnostics::WATCH_EVERY,
        metrics_listen: None,
        rekey_retry_interval: crate::node::jobs::DEFAULT_REKEY_RETRY,
        clone_grant_lifetime: crate::node::jobs::DEFAULT_CLONE_GRANT_LIFETIME,
        connections: Default::default(),
        tls_paths: None,
    };
    let listener = TcpListener::bind(cfg.listen).await?;
    let app = start_custom(cfg, listener, options).await?;
    let host = Host::parse(&format!("127.0.0.1:{}", app.local_addr.port()))?;
    Ok((app, sys_id, host))
}
