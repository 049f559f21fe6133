//! A TCP proxy on loopback that can freeze: while frozen it accepts
//! connections and never answers (nothing is forwarded either way), like a
//! daemon that hangs; thawed, new connections are forwarded to the backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

pub struct FreezableProxy {
    pub addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    /// Connections accepted while frozen (held, never answered).
    pub held: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezableProxy {
    pub async fn start(backend: SocketAddr, frozen: bool) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let frozen = Arc::new(AtomicBool::new(frozen));
        let held = Arc::new(AtomicUsize::new(0));
        let (f, h) = (Arc::clone(&frozen), Arc::clone(&held));
        let task = tokio::spawn(async move {
            let mut parked = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                if f.load(Ordering::SeqCst) {
                    h.fetch_add(1, Ordering::SeqCst);
                    parked.push(client); // kept open, never read or answered
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(backend).await {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        FreezableProxy { addr, frozen, held, task }
    }

    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::SeqCst);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
