//! The harness of the services' unit tests (compiled for tests only): an
//! instance on the in-memory engine with the manual clock and a software
//! KEK, and an in-process peer link that wires instances together with no
//! socket, no TLS and no wall-clock wait. The link can be unreachable,
//! refuse, or lose the next answers (the call runs on the peer, its answer
//! never arrives), and counts the calls it carries. Jobs run when a test
//! says so (`Instance::run_jobs`), after it advanced the clock.
//!
//! Errors cross the link as they would cross gRPC, roughly: a domain error
//! is the peer's refusal, anything else is the peer being unreachable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_stream::StreamExt;

use super::Services;
use super::context::{Context, JobSettings};
use super::ports::{OpenRequest, PeerFuture, PeerLink, PeerStream, SourceView};
use crate::clock::{Clock, ManualClock};
use crate::domain::DomainError;
use crate::domain::auth::{Caller, Role};
use crate::domain::clone::SnapshotPart;
use crate::domain::exchange::{RequestStatus, SignedBlob};
use crate::domain::ids::{Host, RequestId, SysId};
use crate::error::{AppError, PeerError};
use crate::signer::instance_key::InstanceKey;
use crate::signer::primitives::random_bytes;
use crate::signer::software::SoftwareSigner;
use crate::store::Store;
use crate::tls::pki::{self, IssuedCert};

/// What the link does to the calls it carries, and how many it carried.
#[derive(Default)]
pub struct Faults {
    /// Every call fails as unreachable (nothing reaches the peer).
    pub unreachable: AtomicBool,
    /// Every call is refused before it reaches the peer.
    pub refuse: AtomicBool,
    /// The next this many calls reach the peer and run there, but their
    /// answers are lost (the caller sees the peer unreachable).
    pub lose_answers: AtomicU32,
    pub open_requests: AtomicU32,
    pub deliveries: AtomicU32,
    pub notices: AtomicU32,
    pub snapshots: AtomicU32,
}

impl Faults {
    fn count(counter: &AtomicU32) -> u32 {
        counter.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn calls(counter: &AtomicU32) -> u32 {
        counter.load(Ordering::SeqCst)
    }

    fn answer_lost(&self) -> bool {
        self.lose_answers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }
}

struct Peer {
    sys_id: SysId,
    services: Weak<Services>,
}

/// The in-process `PeerLink` of one instance.
pub struct InProcessLink {
    me: SysId,
    my_cert: Vec<u8>,
    my_cert_hosts: Vec<String>,
    peers: Mutex<HashMap<String, Peer>>,
    pub faults: Faults,
}

fn unreachable(host: &Host, reason: &str) -> PeerError {
    PeerError::Unreachable { host: host.to_string(), reason: reason.into() }
}

fn to_peer(host: &Host, e: AppError) -> PeerError {
    match e {
        AppError::Domain(d) => PeerError::Refused(d),
        AppError::Peer(p) => p,
        other => unreachable(host, &other.to_string()),
    }
}

impl InProcessLink {
    /// The services at `host`, if they are `expected` and the link lets the call through.
    fn reach(&self, host: &Host, expected: &SysId) -> Result<Arc<Services>, PeerError> {
        if self.faults.unreachable.load(Ordering::SeqCst) {
            return Err(unreachable(host, "unreachable (test fault)"));
        }
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers.get(&host.to_string()).ok_or_else(|| unreachable(host, "no instance wired at this host"))?;
        if &peer.sys_id != expected {
            return Err(PeerError::Refused(DomainError::PermissionDenied(format!(
                "the daemon at {host} is not instance {expected}"
            ))));
        }
        if self.faults.refuse.load(Ordering::SeqCst) {
            return Err(PeerError::Refused(DomainError::PermissionDenied("refused (test fault)".into())));
        }
        peer.services.upgrade().ok_or_else(|| unreachable(host, "the instance stopped"))
    }

    /// The answer as the caller sees it: lost when the faults say so.
    fn answer<T>(&self, host: &Host, answer: Result<T, AppError>) -> Result<T, PeerError> {
        if self.faults.answer_lost() {
            return Err(unreachable(host, "the answer was lost (test fault)"));
        }
        answer.map_err(|e| to_peer(host, e))
    }
}

impl PeerLink for InProcessLink {
    fn open_request<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        request: OpenRequest,
    ) -> PeerFuture<'a, SourceView> {
        Box::pin(async move {
            Faults::count(&self.faults.open_requests);
            let peer = self.reach(host, expected)?;
            let (me, cert, hosts) = (self.me.clone(), self.my_cert.clone(), self.my_cert_hosts.clone());
            let answer = peer.exchange.open_request_from_peer(me, cert, hosts, request).await;
            self.answer(host, answer)
        })
    }

    fn deliver_bundle<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        bundle: SignedBlob,
    ) -> PeerFuture<'a, SignedBlob> {
        Box::pin(async move {
            Faults::count(&self.faults.deliveries);
            let peer = self.reach(host, expected)?;
            let answer = peer.exchange.receive_bundle(self.me.clone(), self.my_cert.clone(), bundle).await;
            self.answer(host, answer)
        })
    }

    fn notify_status<'a>(
        &'a self,
        host: &'a Host,
        expected: &'a SysId,
        request_id: RequestId,
        status: RequestStatus,
        reason: String,
    ) -> PeerFuture<'a, ()> {
        Box::pin(async move {
            Faults::count(&self.faults.notices);
            let peer = self.reach(host, expected)?;
            let answer = peer.exchange.receive_status(self.me.clone(), request_id, status, reason).await;
            self.answer(host, answer)
        })
    }

    fn stream_snapshot<'a>(&'a self, host: &'a Host, expected: &'a SysId) -> PeerFuture<'a, PeerStream<SnapshotPart>> {
        Box::pin(async move {
            Faults::count(&self.faults.snapshots);
            let peer = self.reach(host, expected)?;
            let parts = self.answer(host, peer.clone.serve_snapshot(self.me.clone()).await)?;
            let host = host.clone();
            let stream =
                tokio_stream::wrappers::ReceiverStream::new(parts).map(move |p| p.map_err(|e| to_peer(&host, e)));
            Ok(Box::pin(stream) as PeerStream<SnapshotPart>)
        })
    }
}

/// One instance of a unit test.
pub struct Instance {
    pub services: Arc<Services>,
    pub clock: Arc<ManualClock>,
    pub sys_id: SysId,
    pub host: Host,
    /// Its instance certificate (DER), as a peer sees it.
    pub cert_der: Vec<u8>,
    pub link: Arc<InProcessLink>,
    /// Holds the software KEK's file.
    _kek: tempfile::TempDir,
}

/// The CA the instances of one test are issued by.
pub fn test_ca() -> IssuedCert {
    pki::create_ca("kmf unit test CA").expect("test CA")
}

/// The job pacing of unit tests: a decision answers at once (no runner
/// runs; the test runs the jobs), short timeouts, retries after 1 s.
pub fn test_settings() -> JobSettings {
    JobSettings {
        decision_wait: Duration::ZERO,
        delivery_timeout: Duration::from_secs(5),
        ..JobSettings::for_interval(Duration::from_secs(1))
    }
}

impl Instance {
    /// A fresh instance named `name` (its host is `<name>.test:7443`), wired to nothing.
    pub fn new(ca: &IssuedCert, name: &str) -> Instance {
        Self::with_settings(ca, name, test_settings())
    }

    pub fn with_settings(ca: &IssuedCert, name: &str, settings: JobSettings) -> Instance {
        let sys_id = SysId::from_random(random_bytes());
        let host = Host::parse(&format!("{name}.test:7443")).expect("host");
        let leaf = pki::issue_instance(ca, &sys_id, &pki::host_names(&host)).expect("instance certificate");
        let chain = pki::tls_files(ca, &leaf).chain().expect("chain");
        let cert_der = chain.first().expect("leaf").to_vec();
        let store = Arc::new(Store::in_memory(&sys_id, &host).expect("store"));
        let kek = tempfile::tempdir().expect("temp dir");
        let kek_file = kek.path().join("kek.bin");
        SoftwareSigner::create_key_file(&kek_file).expect("KEK");
        let signer = Arc::new(SoftwareSigner::load(&kek_file).expect("signer"));
        let key = InstanceKey::from_pem(leaf.key_pem.as_bytes()).expect("instance key");
        let clock = ManualClock::starting_now();
        let link = Arc::new(InProcessLink {
            me: sys_id.clone(),
            my_cert: cert_der.clone(),
            my_cert_hosts: pki::host_names(&host),
            peers: Mutex::default(),
            faults: Faults::default(),
        });
        let peers: Arc<dyn PeerLink> = link.clone();
        let ctx = Context::new(store, signer, key, peers, clock.clone(), host.clone(), settings).expect("context");
        let services = Arc::new(Services::new(ctx, None));
        Instance { services, clock, sys_id, host, cert_der, link, _kek: kek }
    }

    /// Lets this instance's link reach `other`.
    pub fn reaches(&self, other: &Instance) {
        let peer = Peer { sys_id: other.sys_id.clone(), services: Arc::downgrade(&other.services) };
        self.link.peers.lock().unwrap_or_else(|p| p.into_inner()).insert(other.host.to_string(), peer);
    }

    /// Runs the jobs due now, to their end; how many ran.
    pub async fn run_jobs(&self) -> usize {
        self.services.jobs.run_due_once("unit-test").await.expect("run due jobs")
    }

    /// Advances the clock by `millis` and runs the jobs then due.
    pub async fn advance_and_run(&self, millis: i64) -> usize {
        self.clock.advance_millis(millis);
        self.run_jobs().await
    }

    pub fn now(&self) -> crate::domain::ids::UnixMillis {
        self.clock.now()
    }

    /// The names its certificate carries, as a peer's link reports them
    /// (what `open_request_from_peer` checks a target host against).
    pub fn cert_hosts(&self) -> Vec<String> {
        pki::host_names(&self.host)
    }

    /// Sets a fault of its link (`unreachable` or `refuse`) on or off.
    pub fn set_fault(&self, fault: fn(&Faults) -> &AtomicBool, on: bool) {
        fault(&self.link.faults).store(on, Ordering::SeqCst);
    }
}

/// Two instances, each reaching the other: a source and a target.
pub fn pair() -> (Instance, Instance) {
    let ca = test_ca();
    let (source, target) = (Instance::new(&ca, "source"), Instance::new(&ca, "target"));
    source.reaches(&target);
    target.reaches(&source);
    (source, target)
}

/// An operator with every role.
pub fn admin() -> Caller {
    Caller::Operator {
        name: "root".into(),
        roles: vec![Role::Admin, Role::CryptographicManager, Role::CryptographicOperator],
    }
}

/// `text` as a name (tests only use valid ones).
pub fn name(text: &str) -> crate::domain::ids::Name {
    crate::domain::ids::Name::parse(text, "name").expect("a valid name")
}

impl Instance {
    /// Module `module` (Track default access) with an AES-256-GCM spec
    /// `spec`, exportable; `keys` keys generated in it (the first is Active,
    /// the later ones Generated).
    pub async fn spec_with_keys(&self, module: &str, spec: &str, keys: u32) {
        use crate::domain::spec::SpecChoice;
        let (catalog, caller) = (&self.services.catalog, admin());
        if catalog.modules().await.expect("modules").iter().all(|m| m.name.as_str() != module) {
            let access = super::catalog::DefaultAccess::Track;
            catalog.create_module(&caller, name(module), access).await.expect("module");
        }
        let choice = SpecChoice::with_defaults(None, None, None, false).expect("the default spec");
        catalog.create_spec(&caller, name(module), name(spec), choice, true).await.expect("spec");
        for _ in 0..keys {
            catalog.generate_key(&caller, name(spec)).await.expect("key");
        }
    }
}
