//! The metrics endpoint: HTTPS (HTTP/1.1 or h2) on its own listener, with the
//! daemon's rustls server configuration of the moment (`LiveTls`: TLS 1.3,
//! client certificate from the deployment CA required, the CRL reloaded in
//! place). Only operator certificates with a role may read
//! (`Permission::Read`); an instance certificate gets 403, and so does every
//! request on a connection whose certificate the CRL in use lists (revoked
//! after the handshake: a keep-alive connection is refused on its next request). `GET /metrics`
//! serves the Prometheus text format; every other path is 404.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use super::Metrics;
use crate::domain::auth::{Caller, Permission, authorize};
use crate::node::Services;
use crate::node::audit::Audit;
use crate::node::diagnostics::Diagnostics;
use crate::tls::identity::caller_from_cert;
use crate::tls::live::LiveTls;

const PATH: &str = "/metrics";
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoint reads and writes: the diagnostics (counts, latest
/// diagnosis, clock) and the audit of refused requests.
struct Sources {
    audit: Arc<Audit>,
    diagnostics: Arc<Diagnostics>,
}

/// A running metrics listener.
pub struct MetricsServer {
    pub local_addr: SocketAddr,
    pub task: JoinHandle<()>,
}

/// Serves the endpoint on `listener` until `stop` turns true.
pub fn start(
    listener: TcpListener,
    live: Arc<LiveTls>,
    services: &Services,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<MetricsServer> {
    let local_addr = listener.local_addr()?;
    let sources =
        Arc::new(Sources { audit: Arc::clone(&services.audit), diagnostics: Arc::clone(&services.diagnostics) });
    // The daemon's acceptor (swapped by a reload): handshake timeout, refused handshakes logged at warn.
    let acceptor = live.metrics_acceptor();
    let limits = crate::connections::ConnectionLimits::default();
    let slots = crate::connections::ConnectionSlots::new(&limits);
    let mut incoming = crate::connections::accept_tls(listener, acceptor, limits, slots, stop.clone());
    tracing::info!(addr = %local_addr, "metrics endpoint serving");
    let task = tokio::spawn(async move {
        let mut until_stop = stop.clone();
        loop {
            let tls = tokio::select! {
                _ = stopped(&mut until_stop) => return,
                next = incoming.next() => match next {
                    Some(Ok(tls)) => tls,
                    Some(Err(_)) => continue,
                    None => return,
                },
            };
            let peer = tonic::transport::server::Connected::connect_info(tls.get_ref().0)
                .remote_addr
                .map(|a| a.to_string())
                .unwrap_or_default();
            let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
            let caller = cert.as_deref().map(caller_from_cert);
            let access = match caller {
                Some(Ok(caller)) => match authorize(&caller, Permission::Read) {
                    Ok(()) => Access::Allowed { actor: caller.actor() },
                    Err(e) => Access::Refused { actor: caller.actor(), reason: refusal(&caller, e.to_string()) },
                },
                Some(Err(e)) => Access::Refused { actor: format!("unidentified@{peer}"), reason: e.to_string() },
                None => {
                    Access::Refused { actor: format!("unidentified@{peer}"), reason: "no client certificate".into() }
                }
            };
            let (sources, metrics, live, mut conn_stop) =
                (Arc::clone(&sources), Arc::clone(&metrics), Arc::clone(&live), stop.clone());
            tokio::spawn(async move {
                let access = Arc::new(access);
                let service = hyper::service::service_fn(move |req| {
                    let (sources, metrics, access, peer) =
                        (Arc::clone(&sources), Arc::clone(&metrics), Arc::clone(&access), peer.clone());
                    // Checked per request: the CRL may have changed since the handshake.
                    let access = match (
                        access.as_ref(),
                        cert.as_deref().and_then(|c| live.refusal(c, sources.diagnostics.now())),
                    ) {
                        (Access::Allowed { actor }, Some(reason)) => Access::Refused { actor: actor.clone(), reason },
                        (access, _) => access.clone(),
                    };
                    async move { Ok::<_, Infallible>(respond(req, &access, &peer, &sources, &metrics).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tls), service);
                tokio::select! {
                    _ = stopped(&mut conn_stop) => {}
                    result = conn => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "metrics connection ended");
                        }
                    }
                }
            });
        }
    });
    Ok(MetricsServer { local_addr, task })
}

#[derive(Clone)]
enum Access {
    Allowed { actor: String },
    Refused { actor: String, reason: String },
}

fn refusal(caller: &Caller, reason: String) -> String {
    match caller {
        Caller::Instance(_) => "the metrics endpoint is for operator certificates only".into(),
        Caller::Operator { .. } => reason,
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn respond<B>(
    req: Request<B>,
    access: &Access,
    peer: &str,
    sources: &Sources,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if let Access::Refused { actor, reason } = access {
        // The path is the caller's: bounded in the log and the audit entry,
        // and not part of what repeats are counted by (`node::audit`).
        let what = crate::domain::audit::bounded(
            format!("{} {}", req.method(), req.uri().path()),
            crate::domain::audit::MAX_SUBJECT_CHARS,
        );
        tracing::warn!(caller = %actor, %peer, method = %what, "metrics request refused: {reason}");
        sources.audit.audit_call_refusal(actor.clone(), "metrics endpoint".into(), what, reason.clone()).await;
        return text(StatusCode::FORBIDDEN, format!("forbidden: {reason}\n"));
    }
    if req.uri().path() != PATH {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let rendered = match sources.diagnostics.store_counts().await {
        Ok(counts) => {
            metrics.render(&counts, sources.diagnostics.latest_diagnosis().as_ref()).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match rendered {
        Ok(body) => {
            let mut response = text(StatusCode::OK, body);
            response
                .headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(e) => {
            let error_id = hex::encode(crate::signer::primitives::random_bytes::<6>());
            tracing::error!(%error_id, error = %e, "metrics could not be rendered");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error (error id {error_id})\n"))
        }
    }
}
