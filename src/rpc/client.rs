//! Outbound gRPC channels over our own rustls client config (TLS 1.3, our
//! identity, optional check of the peer's sys_id). Used by the peer client,
//! kmfctl and the tests.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::domain::ids::{Host, SysId};
use crate::tls::{TlsFiles, WrongInstance, client_config, wrong_instance_in};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// A server answered, but its certificate names another instance than
    /// the one we asked for.
    #[error(transparent)]
    WrongInstance(WrongInstance),
    /// Anything else (no config, unreachable, TLS): the reason with its sources.
    #[error("{0}")]
    Failed(String),
}

impl DialError {
    fn of(e: &(dyn std::error::Error + 'static)) -> Self {
        match wrong_instance_in(e) {
            Some(refusal) => DialError::WrongInstance(refusal.clone()),
            None => DialError::Failed(error_chain(e)),
        }
    }
}

/// Opens a channel to `host`. With `expected`, the server's certificate must
/// name that instance. Every call on it is bounded by `CALL_TIMEOUT`.
pub async fn connect(host: &Host, files: &TlsFiles, expected: Option<SysId>) -> Result<Channel, DialError> {
    connect_with_timeout(host, files, expected, CALL_TIMEOUT).await
}

/// As `connect`, with every call bounded by `call_timeout` and the dial by
/// the shorter of it and `CONNECT_TIMEOUT`. The channel dials again by itself
/// when its connection drops, with the same rustls config, so the check of
/// `expected` holds on every (re)connection.
pub async fn connect_with_timeout(
    host: &Host,
    files: &TlsFiles,
    expected: Option<SysId>,
    call_timeout: Duration,
) -> Result<Channel, DialError> {
    let failed = |e: &dyn std::fmt::Display| DialError::Failed(e.to_string());
    let config = client_config(files, expected).map_err(|e| failed(&e))?;
    let server_name = ServerName::try_from(host.name().to_owned()).map_err(|e| failed(&e))?;
    let addr = host.to_string();
    let connector = TlsConnector::from(Arc::clone(&config));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| failed(&e))?
        .connect_timeout(CONNECT_TIMEOUT.min(call_timeout))
        .timeout(call_timeout);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let (connector, server_name, addr) = (connector.clone(), server_name.clone(), addr.clone());
            async move {
                let tcp = TcpStream::connect(&addr).await?;
                // Small gRPC frames must not wait for Nagle's algorithm.
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| DialError::of(&e))
}

/// An error and all its sources, joined with ": " (tonic's transport errors
/// say little at the top: the reason is in the sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}
