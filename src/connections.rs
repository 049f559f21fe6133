//! Incoming connections, before gRPC sees them: TCP keepalive (the kernel
//! finds peers that vanished; no bytes go through TLS), the TLS handshake
//! within a short deadline, a limit on established connections, and an idle
//! timeout: a connection that moves no byte either way for `idle_timeout` is
//! closed (the server sends no HTTP/2 pings, so idle means idle; a client's
//! next call simply connects again).
//!
//! Handshakes in progress are counted apart from established connections:
//! a TCP connection takes only a handshake place, and a slot of the
//! connection limit is taken once the TLS handshake (with a verified client
//! certificate) completed, so silent or slow sockets cannot hold the slots
//! that authenticated clients need. When every handshake place is taken,
//! the oldest handshake that has sent nothing yet (else the oldest of all)
//! is dropped for the newcomer, so a client that completes its handshake
//! promptly always gets through a flood. Refusals are logged at warn, at
//! most a burst of lines per period, then one line with how many were not.
//!
//! Request bodies are charged to one byte budget shared by every connection
//! (`BodyBudgetLayer`): a frame that does not fit fails its call with
//! RESOURCE_EXHAUSTED instead of being buffered, so a flood of large messages
//! cannot make the process hold more than the budget before authorization.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Limits on the gRPC listener's connections (`[connections]` in the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Established (TLS-authenticated) connections at most; more are closed
    /// at once (and logged).
    pub max_connections: usize,
    /// TLS handshakes in progress at most; a newcomer over it displaces the
    /// oldest one.
    pub max_handshakes: usize,
    /// How long a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// TCP keepalive: first probe after this much silence, then this often.
    pub keepalive_interval: Duration,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
    /// Bytes of request bodies held at once across every connection.
    pub request_memory: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            max_concurrent_streams: 128,
            request_memory: 256 << 20,
        }
    }
}

/// The connection limit's slots and the handshakes in progress: `open()`
/// tells how many connections are established, `handshaking()` how many
/// handshakes are under way.
#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
    handshakes: Arc<Mutex<Handshakes>>,
    displaced: Arc<AtomicU64>,
}

/// Handshakes in progress by arrival order.
#[derive(Debug)]
struct Handshakes {
    max: usize,
    next: u64,
    open: BTreeMap<u64, Handshake>,
}

/// One handshake in progress: the sender whose drop ends it, whether its
/// client sent a byte yet (as its task has read), and a duplicate of its
/// socket to look for bytes its task has not read yet.
#[derive(Debug)]
struct Handshake {
    spoke: Arc<AtomicBool>,
    _end: oneshot::Sender<()>,
    socket: Option<std::net::TcpStream>,
}

impl Handshake {
    /// Whether the client has sent something: read by its task already, or
    /// waiting in the socket (a client whose task was not scheduled yet is no
    /// silent socket). The duplicate shares the socket's non-blocking mode,
    /// so the peek never waits; an error or EOF counts as silent.
    fn has_spoken(&self) -> bool {
        if self.spoke.load(Ordering::Relaxed) {
            return true;
        }
        let waiting = self.socket.as_ref().is_some_and(|s| s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0));
        if waiting {
            self.spoke.store(true, Ordering::Relaxed);
        }
        waiting
    }
}

impl Handshakes {
    /// Makes room for one more: drops the oldest silent handshake, else the
    /// oldest; true when one was displaced.
    fn make_room(&mut self) -> bool {
        if self.open.len() < self.max {
            return false;
        }
        let silent = self.open.iter().find(|(_, h)| !h.has_spoken()).map(|(id, _)| *id);
        match silent.or_else(|| self.open.keys().next().copied()) {
            Some(id) => self.open.remove(&id).is_some(),
            None => false,
        }
    }
}

/// A handshake's place: freed when the handshake ends either way.
struct HandshakePlace {
    handshakes: Arc<Mutex<Handshakes>>,
    id: u64,
}

impl Drop for HandshakePlace {
    fn drop(&mut self) {
        self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).open.remove(&self.id);
    }
}

impl ConnectionSlots {
    pub fn new(limits: &ConnectionLimits) -> Self {
        let handshakes = Handshakes { max: limits.max_handshakes.max(1), next: 0, open: BTreeMap::new() };
        ConnectionSlots {
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            max: limits.max_connections,
            handshakes: Arc::new(Mutex::new(handshakes)),
            displaced: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Established connections open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// TLS handshakes in progress now.
    pub fn handshaking(&self) -> usize {
        self.handshakes.lock().unwrap_or_else(PoisonError::into_inner).open.len()
    }

    /// Handshakes dropped so far to make room for a newer one.
    pub fn displaced(&self) -> u64 {
        self.displaced.load(Ordering::Relaxed)
    }

    /// A handshake place for a new connection (displacing the oldest when
    /// all are taken), the signal that it was displaced, and its `spoke` flag.
    fn begin_handshake(&self, tcp: &TcpStream) -> (HandshakePlace, oneshot::Receiver<()>, Arc<AtomicBool>) {
        let (tx, rx) = oneshot::channel();
        let spoke = Arc::new(AtomicBool::new(false));
        // Without a duplicate (descriptors exhausted) only what the task read counts.
        let socket = std::os::fd::AsFd::as_fd(tcp).try_clone_to_owned().ok().map(std::net::TcpStream::from);
        let mut table = self.handshakes.lock().unwrap_or_else(PoisonError::into_inner);
        if table.make_room() {
            self.displaced.fetch_add(1, Ordering::Relaxed);
        }
        let id = table.next;
        table.next += 1;
        table.open.insert(id, Handshake { spoke: spoke.clone(), _end: tx, socket });
        drop(table);
        (HandshakePlace { handshakes: self.handshakes.clone(), id }, rx, spoke)
    }
}

/// At most `burst` warn lines per `period`; the lines over it are counted
/// and said in one line when the next period starts.
#[derive(Debug)]
pub struct LogThrottle {
    period: Duration,
    burst: u32,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    since: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// What a throttled log line should do.
#[derive(Debug, PartialEq, Eq)]
pub enum LogVerdict {
    /// Log it; `suppressed` lines were not logged in the period before.
    Log { suppressed: u64 },
    /// Count it only.
    Suppress,
}

impl LogThrottle {
    pub fn new(period: Duration, burst: u32) -> Self {
        LogThrottle { period, burst, state: Mutex::new(ThrottleState { since: None, logged: 0, suppressed: 0 }) }
    }

    /// The verdict for a line at `now`.
    pub fn check(&self, now: Instant) -> LogVerdict {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut suppressed = 0;
        if s.since.is_none_or(|since| now.saturating_duration_since(since) >= self.period) {
            suppressed = std::mem::take(&mut s.suppressed);
            s.since = Some(now);
            s.logged = 0;
        }
        if s.logged < self.burst {
            s.logged += 1;
            LogVerdict::Log { suppressed }
        } else {
            s.suppressed += 1;
            LogVerdict::Suppress
        }
    }

    /// Runs `log` unless the line is over the burst; says first how many
    /// lines of `what` were not logged before it.
    pub fn warn(&self, what: &str, log: impl FnOnce()) {
        if let LogVerdict::Log { suppressed } = self.check(Instant::now()) {
            if suppressed > 0 {
                tracing::warn!(suppressed, "{what}: {suppressed} more lines were not logged");
            }
            log();
        }
    }
}

/// Log lines of one kind: a burst of this many per period.
const LOG_BURST: u32 = 10;
const LOG_PERIOD: Duration = Duration::from_secs(10);
/// How long accept waits after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Raises the soft limit on open files to the hard limit (a flood of
/// sockets then meets the connection limits before the descriptor limit).
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => tracing::info!(from = ?limit.current, to = ?limit.maximum, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
}

/// The open-files soft limit now (None: unlimited).
pub fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Whether an accept error means the process or system ran out of
/// descriptors (retrying at once would spin).
fn out_of_descriptors(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM))
}

/// A TCP connection that closes itself when idle and, once its handshake
/// completed, holds a slot of the connection limit.
pub struct TrackedTcp {
    inner: TcpStream,
    info: TcpConnectInfo,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Set at the first byte read (a handshake that sent nothing is the
    /// first displaced).
    spoke: Arc<AtomicBool>,
    slot: Option<OwnedSemaphorePermit>,
}

impl TrackedTcp {
    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle_timeout);
    }
}

impl Connected for TrackedTcp {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TrackedTcp {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.touch();
                    if self.slot.is_none() {
                        self.spoke.store(true, Ordering::Relaxed);
                    }
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for TrackedTcp {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        result
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn keepalive(tcp: &TcpStream, every: Duration) -> io::Result<()> {
    let settings = socket2::TcpKeepalive::new().with_time(every).with_interval(every);
    socket2::SockRef::from(tcp).set_tcp_keepalive(&settings)
}

/// A completed TLS connection, as the gRPC server takes it.
pub type TlsConnection = tokio_rustls::server::TlsStream<TrackedTcp>;

/// Accepts TCP connections under `limits` and completes TLS handshakes with
/// the acceptor `current` holds at that moment (a reload swaps it); a refused
/// or displaced handshake, a connection over the limit and an accept error
/// are logged (throttled).
pub fn accept_tls(
    listener: TcpListener,
    current: Arc<std::sync::RwLock<TlsAcceptor>>,
    limits: ConnectionLimits,
    slots: ConnectionSlots,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let throttle = || Arc::new(LogThrottle::new(LOG_PERIOD, LOG_BURST));
    let (refused_log, limit_log, accept_log) = (throttle(), throttle(), throttle());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    let exhausted = out_of_descriptors(&e);
                    accept_log.warn("accept failed", || tracing::warn!(error = %e, "accept failed"));
                    if exhausted {
                        // Retrying at once would spin: the error stays until a descriptor is freed.
                        tokio::select! {
                            _ = stop.wait_for(|stopped| *stopped) => return,
                            _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                        }
                    }
                    continue;
                }
            };
            if slots.slots.available_permits() == 0 {
                // Every slot is held by an authenticated connection: refuse at once (checked
                // again when the handshake completes; a handshake takes no slot).
                limit_log.warn("connection limit", || {
                    tracing::warn!(peer = %peer, limit = limits.max_connections, "connection refused: connection limit reached")
                });
                continue;
            }
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(peer = %peer, error = %e, "cannot set TCP_NODELAY");
            }
            if let Err(e) = keepalive(&tcp, limits.keepalive_interval) {
                tracing::warn!(peer = %peer, error = %e, "cannot set TCP keepalive");
            }
            let (place, displaced, spoke) = slots.begin_handshake(&tcp);
            let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
            let deadline = Box::pin(tokio::time::sleep(limits.idle_timeout));
            let tracked =
                TrackedTcp { inner: tcp, info, idle_timeout: limits.idle_timeout, deadline, spoke, slot: None };
            let acceptor = current.read().unwrap_or_else(PoisonError::into_inner).clone();
            let (tx, slots) = (tx.clone(), slots.clone());
            let (refused_log, limit_log) = (refused_log.clone(), limit_log.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tracked));
                let outcome = tokio::select! {
                    done = handshake => done,
                    _ = displaced => {
                        drop(place);
                        refused_log.warn("TLS handshakes", || {
                            tracing::warn!(peer = %peer, reason = "displaced by a newer one: too many handshakes in progress", "TLS handshake refused")
                        });
                        return;
                    }
                };
                drop(place);
                match outcome {
                    Ok(Ok(mut tls)) => match slots.slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            tls.get_mut().0.slot = Some(slot);
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Err(_) => limit_log.warn("connection limit", || {
                            tracing::warn!(peer = %peer, limit = limits.max_connections, "connection refused: connection limit reached")
                        }),
                    },
                    Ok(Err(e)) => refused_log.warn("TLS handshakes", || tracing::warn!(peer = %peer, reason = %e, "TLS handshake refused")),
                    Err(_) => refused_log.warn("TLS handshakes", || tracing::warn!(peer = %peer, reason = "timed out", "TLS handshake refused")),
                }
            });
            // Let the handshake read what its client sent before the next accept (a
            // handshake that spoke is displaced only after the silent ones).
            tokio::task::yield_now().await;
        }
    });
    ReceiverStream::new(rx)
}

/// The byte budget of request bodies, shared by every connection: each data
/// frame takes its size from it and gives it back when its call ends (the
/// decoded request dropped with the call's future).
#[derive(Clone, Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    max: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> Self {
        let max = max.min(Semaphore::MAX_PERMITS);
        BodyBudget { bytes: Arc::new(Semaphore::new(max)), max }
    }

    /// Bytes of request bodies held now.
    pub fn held(&self) -> usize {
        self.max - self.bytes.available_permits()
    }
}

/// What one call took from the budget; given back on drop.
#[derive(Debug, Default)]
struct Charge(Mutex<Option<OwnedSemaphorePermit>>);

impl Charge {
    fn take(&self, budget: &BodyBudget, n: usize) -> bool {
        let Ok(n) = u32::try_from(n) else { return false };
        match budget.bytes.clone().try_acquire_many_owned(n) {
            Ok(permit) => {
                let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                match held.as_mut() {
                    Some(h) => h.merge(permit),
                    None => *held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// `body` with each data frame charged to `budget` under `charge`; a frame
/// that does not fit ends the body with RESOURCE_EXHAUSTED.
fn charged(body: tonic::body::Body, budget: BodyBudget, charge: Arc<Charge>) -> tonic::body::Body {
    use tokio_stream::StreamExt;
    let frames = http_body_util::BodyStream::new(body).map(move |frame| {
        let frame = frame?;
        match frame.data_ref() {
            Some(data) if !charge.take(&budget, data.len()) => Err(tonic::Status::resource_exhausted(
                "the server's memory for request messages is in use; try again later",
            )),
            _ => Ok(frame),
        }
    });
    tonic::body::Body::new(http_body_util::StreamBody::new(frames))
}

/// Tower layer charging every request body to a `BodyBudget`.
#[derive(Clone, Debug)]
pub struct BodyBudgetLayer(pub BodyBudget);

impl<S> tower::Layer<S> for BodyBudgetLayer {
    type Service = BodyBudgetService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyBudgetService { inner, budget: self.0.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct BodyBudgetService<S> {
    inner: S,
    budget: BodyBudget,
}

type Request = tonic::codegen::http::Request<tonic::body::Body>;

impl<S> tower::Service<Request> for BodyBudgetService<S>
where
    S: tower::Service<Request>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let charge = Arc::new(Charge::default());
        let budget = self.budget.clone();
        let body_charge = charge.clone();
        let req = req.map(|body| charged(body, budget, body_charge));
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            drop(charge); // the call's request (and its body) is gone with `call`
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize) -> Handshakes {
        Handshakes { max, next: 0, open: BTreeMap::new() }
    }

    fn add(t: &mut Handshakes, spoke: bool) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let id = t.next;
        t.next += 1;
        t.open.insert(id, Handshake { spoke: Arc::new(AtomicBool::new(spoke)), _end: tx, socket: None });
        (id, rx)
    }

    /// A loopback connection: the client's end and the server's,
    /// non-blocking as tokio makes its sockets.
    fn loopback_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("non-blocking");
        (client, server)
    }

    #[test]
    fn a_client_whose_bytes_wait_unread_is_not_taken_for_a_silent_one() {
        use std::io::Write;
        let mut t = table(2);
        let (mut spoke_client, spoke_server) = loopback_pair();
        let (_silent_client, silent_server) = loopback_pair();
        spoke_client.write_all(&[0x16]).expect("write");
        // Its bytes are in the socket, though no task has read them (older one first).
        let (tx, _unread) = oneshot::channel();
        let spoke = Arc::new(AtomicBool::new(false));
        t.open.insert(0, Handshake { spoke: spoke.clone(), _end: tx, socket: Some(spoke_server) });
        let (tx, mut silent) = oneshot::channel();
        t.open.insert(1, Handshake { spoke: Arc::new(AtomicBool::new(false)), _end: tx, socket: Some(silent_server) });
        t.next = 2;
        // The peek sees the byte once it has crossed loopback (bounded wait).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !t.open[&0].has_spoken() {
            assert!(std::time::Instant::now() < deadline, "the written byte never arrived");
            std::thread::yield_now();
        }
        assert!(spoke.load(Ordering::Relaxed), "the flag remembers it");
        assert!(t.make_room());
        assert!(t.open.contains_key(&0), "the client that spoke stays");
        assert_eq!(silent.try_recv(), Err(oneshot::error::TryRecvError::Closed), "the silent one goes");
    }

    #[test]
    fn a_full_table_displaces_the_oldest_silent_handshake_else_the_oldest() {
        let mut t = table(3);
        let (_, mut first) = add(&mut t, true);
        let (_, mut second) = add(&mut t, false);
        assert!(!t.make_room(), "room left");
        let (_, mut third) = add(&mut t, false);
        assert!(t.make_room());
        assert!(second.try_recv().is_err() && !t.open.contains_key(&1), "the oldest silent one goes first");
        assert!(first.try_recv().is_err_and(|e| e == oneshot::error::TryRecvError::Empty), "the speaking one stays");
        add(&mut t, true);
        assert!(t.make_room());
        assert!(!t.open.contains_key(&2) && third.try_recv().is_err(), "then the next silent one");
        add(&mut t, true);
        assert!(t.make_room());
        assert_eq!(
            first.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "all speaking: the oldest goes, its sender dropped"
        );
        assert_eq!(t.open.len(), 2);
    }

    #[test]
    fn the_throttle_logs_a_burst_per_period_then_counts() {
        let throttle = LogThrottle::new(Duration::from_secs(10), 2);
        let start = Instant::now();
        assert_eq!(throttle.check(start), LogVerdict::Log { suppressed: 0 });
        assert_eq!(throttle.check(start), LogVerdict::Log { suppressed: 0 });
        for _ in 0..5 {
            assert_eq!(throttle.check(start + Duration::from_secs(9)), LogVerdict::Suppress);
        }
        let next = start + Duration::from_secs(10);
        assert_eq!(throttle.check(next), LogVerdict::Log { suppressed: 5 }, "the next period says how many");
        assert_eq!(throttle.check(next), LogVerdict::Log { suppressed: 0 });
        assert_eq!(throttle.check(next), LogVerdict::Suppress);
    }

    #[tokio::test]
    async fn a_body_over_the_budget_fails_with_resource_exhausted_and_the_budget_comes_back() {
        use http_body_util::BodyExt;
        use tower::{Layer, ServiceExt};
        let budget = BodyBudget::new(1000);
        let read_all = tower::service_fn(|req: Request| async move {
            let collected = req.into_body().collect().await.map(|b| b.to_bytes().len());
            Ok::<_, std::convert::Infallible>(collected)
        });
        let service = BodyBudgetLayer(budget.clone()).layer(read_all);
        let call = |n: usize| {
            let req = tonic::codegen::http::Request::new(tonic::body::Body::new(http_body_util::Full::new(
                tonic::codegen::Bytes::from(vec![0u8; n]),
            )));
            service.clone().oneshot(req)
        };
        assert_eq!(call(1000).await.expect("call").expect("within the budget"), 1000);
        assert_eq!(budget.held(), 0, "given back when the call ended");
        let over = call(1001).await.expect("call").expect_err("over the budget");
        assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
        assert_eq!(budget.held(), 0);
        let _held = Charge::default();
        assert!(_held.take(&budget, 600));
        let squeezed = call(600).await.expect("call").expect_err("the rest is too little");
        assert_eq!(squeezed.code(), tonic::Code::ResourceExhausted);
        drop(_held);
        assert_eq!(call(600).await.expect("call").expect("room again"), 600);
    }
}
