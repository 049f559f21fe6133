//! Incoming connections, before gRPC sees them: a limit on how many are open
//! at once, TCP keepalive (the kernel finds peers that vanished; no bytes go
//! through TLS), the TLS handshake within a deadline, and an idle timeout:
//! a connection that moves no byte either way for `idle_timeout` is closed
//! (the server sends no HTTP/2 pings, so idle means idle; a client's next
//! call simply connects again).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Limits on the gRPC listener's connections (`[connections]` in the config file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most; more are closed at once (and logged).
    pub max_connections: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// TCP keepalive: first probe after this much silence, then this often.
    pub keepalive_interval: Duration,
    /// Concurrent HTTP/2 streams (calls) per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(60),
            max_concurrent_streams: 128,
        }
    }
}

/// The connection limit's slots: `open()` tells how many are taken.
#[derive(Clone, Debug)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
}

impl ConnectionSlots {
    pub fn new(max: usize) -> Self {
        ConnectionSlots { slots: Arc::new(Semaphore::new(max)), max }
    }

    /// Connections open now (handshaking or serving).
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP connection that holds a slot of the limit and closes itself when idle.
pub struct TrackedTcp {
    inner: TcpStream,
    info: TcpConnectInfo,
    idle_timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
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
/// handshake, a connection over the limit and an idle close are logged.
pub fn accept_tls(
    listener: TcpListener,
    current: Arc<std::sync::RwLock<TlsAcceptor>>,
    limits: ConnectionLimits,
    slots: ConnectionSlots,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.slots.clone().try_acquire_owned() else {
                tracing::warn!(peer = %peer, limit = limits.max_connections, "connection refused: connection limit reached");
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!(peer = %peer, error = %e, "cannot set TCP_NODELAY");
            }
            if let Err(e) = keepalive(&tcp, limits.keepalive_interval) {
                tracing::warn!(peer = %peer, error = %e, "cannot set TCP keepalive");
            }
            let info = TcpConnectInfo { local_addr: tcp.local_addr().ok(), remote_addr: Some(peer) };
            let deadline = Box::pin(tokio::time::sleep(limits.idle_timeout));
            let tracked = TrackedTcp { inner: tcp, info, idle_timeout: limits.idle_timeout, deadline, _slot: slot };
            let acceptor = current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tracked)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(peer = %peer, reason = %e, "TLS handshake refused"),
                    Err(_) => tracing::warn!(peer = %peer, reason = "timed out", "TLS handshake refused"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
