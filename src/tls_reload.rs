//! Reloading the daemon's TLS material without a restart: on SIGHUP, or when
//! the certificate, key, CA or CRL file changes (checked every 2 s), the files
//! are read again; if they make a valid configuration, it is installed in the
//! daemon's `LiveTls`: new handshakes on the gRPC and the metrics listeners
//! use it, and so do the peer probe and new peer dials (the peer client);
//! what changed is logged. Connections already open keep their session, but
//! every call (`rpc::caller`) and metrics request is checked against the CRL
//! in use, so a certificate revoked since its handshake is refused on its
//! next call. Files that do not load are logged and the running
//! configuration is kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::rpc::peer::PeerClient;
use crate::tls::TlsFiles;
use crate::tls::live::LiveTls;

/// How often the files are checked for a change.
const POLL: Duration = Duration::from_secs(2);

/// The files of the daemon's TLS identity and trust.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl: Option<PathBuf>,
}

impl TlsPaths {
    /// Modification time and length of each file: a change in any is a reload.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        let mut files = vec![&self.ca, &self.cert, &self.key];
        files.extend(self.crl.as_ref());
        files.into_iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
    }

    fn load(&self) -> Result<TlsFiles, crate::tls::TlsError> {
        TlsFiles::load_with_crl(&self.ca, &self.cert, &self.key, self.crl.as_deref())
    }
}

/// "serial S, valid until T" of the leaf, "number n (k revoked)" of the CRL.
fn describe(files: &TlsFiles) -> (String, String) {
    let cert = files
        .chain()
        .ok()
        .and_then(|c| c.first().cloned())
        .and_then(|der| crate::tls::validity::summary(&der).ok())
        .unwrap_or_else(|| "unreadable".into());
    let crl = match &files.crl_pem {
        None => "none".to_owned(),
        Some(pem) => match crate::tls::crl::read_crl(pem) {
            Ok(c) => format!("number {} ({} revoked)", c.number, c.revoked.len()),
            Err(e) => format!("unreadable: {e}"),
        },
    };
    (cert, crl)
}

pub struct TlsReloader {
    paths: TlsPaths,
    current: TlsFiles,
    live: Arc<LiveTls>,
    peers: Arc<PeerClient>,
    reloads: Arc<std::sync::atomic::AtomicU64>,
}

impl TlsReloader {
    pub fn new(
        paths: TlsPaths,
        live: Arc<LiveTls>,
        peers: Arc<PeerClient>,
        reloads: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        TlsReloader { paths, current: live.files(), live, peers, reloads }
    }

    /// Loads the files and, if they make a valid server configuration,
    /// installs them; logs what changed or why nothing did.
    fn reload(&mut self, why: &str) {
        let files = match self.paths.load() {
            // The setting is the daemon's, not the files'.
            Ok(f) => TlsFiles { crl_enforce_next_update: self.current.crl_enforce_next_update, ..f },
            Err(e) => {
                tracing::error!(reason = why, error = %e, "TLS reload failed; the running configuration is kept");
                return;
            }
        };
        if let Err(e) = self.live.install(files.clone()) {
            tracing::error!(reason = why, error = %e, "TLS reload failed; the running configuration is kept");
            return;
        }
        let ((cert_before, crl_before), (cert_after, crl_after)) = (describe(&self.current), describe(&files));
        self.peers.set_identity(files.clone());
        self.current = files;
        self.reloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            reason = why,
            certificate = %if cert_before == cert_after { format!("unchanged, {cert_after}") } else { format!("{cert_before} -> {cert_after}") },
            crl = %if crl_before == crl_after { format!("unchanged, {crl_after}") } else { format!("{crl_before} -> {crl_after}") },
            "TLS material reloaded"
        );
    }

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still watched");
                None
            }
        };
        let mut stamp = self.paths.stamp();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = hup => {
                    stamp = self.paths.stamp();
                    self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    let now = self.paths.stamp();
                    if now != stamp {
                        stamp = now;
                        self.reload("a file changed");
                    }
                }
            }
        }
    }
}
