//! The peer probe: implements `node::diagnostics::PeerProbe` with a gRPC health
//! check (grpc.health.v1) over mTLS, as this instance, of the peer's
//! KeyExchange service. The peer's certificate must name the expected sys_id.
//! It dials with the identity and CRL in use at that moment (`LiveTls`: a
//! reload reaches it). Also `node::ports::TlsNow`, the services' view of that configuration.

use std::sync::Arc;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::domain::health::CrlFacts;
use crate::domain::ids::{Host, SysId, UnixMillis};
use crate::error::PeerError;
use crate::node::diagnostics::PeerProbe;
use crate::node::ports::{PeerFuture, TlsNow};
use crate::rpc::client::connect;
use crate::rpc::peer::dial_error;
use crate::tls::live::LiveTls;

/// The service whose health a peer must report: the one peers call.
const PEER_SERVICE: &str = "kmf.v1.KeyExchange";

pub struct HealthProbe {
    tls: Arc<LiveTls>,
}

impl HealthProbe {
    /// `tls` holds this instance's identity and CRL (reloaded in place).
    pub fn new(tls: Arc<LiveTls>) -> Self {
        HealthProbe { tls }
    }
}

impl TlsNow for LiveTls {
    fn certificate_der(&self) -> Vec<u8> {
        self.files().chain().ok().and_then(|c| c.first().map(|c| c.to_vec())).unwrap_or_default()
    }

    fn crl(&self) -> Option<CrlFacts> {
        LiveTls::crl(self).map(|c| CrlFacts {
            number: c.number,
            revoked: c.revoked_count(),
            next_update: c.next_update,
            enforced: c.enforced,
        })
    }

    fn refusal(&self, cert_der: &[u8], now: UnixMillis) -> Option<String> {
        LiveTls::refusal(self, cert_der, now)
    }
}

impl PeerProbe for HealthProbe {
    fn check<'a>(&'a self, host: &'a Host, expected: &'a SysId) -> PeerFuture<'a, ()> {
        Box::pin(async move {
            let unreachable = |reason: String| PeerError::Unreachable { host: host.to_string(), reason };
            let files = self.tls.files();
            let channel =
                connect(host, &files, Some(expected.clone())).await.map_err(|e| dial_error(host, expected, e))?;
            let answer = HealthClient::new(channel)
                .check(HealthCheckRequest { service: PEER_SERVICE.to_owned() })
                .await
                .map_err(|s| unreachable(format!("health check: {:?}: {}", s.code(), s.message())))?
                .into_inner();
            match ServingStatus::try_from(answer.status) {
                Ok(ServingStatus::Serving) => Ok(()),
                Ok(other) => Err(unreachable(format!("{PEER_SERVICE} is {}", other.as_str_name()))),
                Err(_) => Err(unreachable(format!("unknown serving status {}", answer.status))),
            }
        })
    }
}
