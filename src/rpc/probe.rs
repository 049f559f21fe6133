//! The peer probe: implements the node's `PeerProbe` with a gRPC health
//! check (grpc.health.v1) over mTLS, as this instance, of the peer's
//! KeyExchange service. The peer's certificate must name the expected sys_id.

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::domain::DomainError;
use crate::domain::ids::{Host, SysId};
use crate::error::PeerError;
use crate::node::diagnostics::PeerProbe;
use crate::node::ports::PeerFuture;
use crate::rpc::client::connect;
use crate::tls::TlsFiles;

/// The service whose health a peer must report: the one peers call.
const PEER_SERVICE: &str = "kmf.v1.KeyExchange";

pub struct HealthProbe {
    files: TlsFiles,
}

impl HealthProbe {
    /// `files` is this instance's identity.
    pub fn new(files: TlsFiles) -> Self {
        HealthProbe { files }
    }
}

impl PeerProbe for HealthProbe {
    fn check<'a>(&'a self, host: &'a Host, expected: &'a SysId) -> PeerFuture<'a, ()> {
        Box::pin(async move {
            let unreachable = |reason: String| PeerError::Unreachable { host: host.to_string(), reason };
            let channel = connect(host, &self.files, Some(expected.clone())).await.map_err(|reason| {
                if reason.contains("does not name instance") {
                    PeerError::Refused(DomainError::PermissionDenied(format!(
                        "the daemon at {host} is not instance {expected}"
                    )))
                } else {
                    unreachable(reason)
                }
            })?;
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
