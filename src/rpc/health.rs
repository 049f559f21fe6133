//! grpc.health.v1 follows the diagnosis: every recorded diagnosis (the
//! periodic one of `Diagnostics::watch`, and each `Instance.Diagnose`) is
//! published here, and the overall service "" and every kmf service turn
//! NOT_SERVING while the signer or the store is Malfunction, SERVING again
//! when both recover. The rule is `domain::health::serving_state`.

use tokio::sync::Mutex;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::domain::health::{ServingState, essential_failures, serving_state};
use crate::domain::ids::UnixMillis;
use crate::node::diagnostics::Diagnosis;
use crate::rpc::pb::{
    audit_server::AuditServer, clones_server::ClonesServer, crypto_server::CryptoServer,
    instance_server::InstanceServer, key_exchange_server::KeyExchangeServer,
    key_management_server::KeyManagementServer, policies_server::PoliciesServer, properties_server::PropertiesServer,
    rekeys_server::RekeysServer, resource_exchange_server::ResourceExchangeServer,
};
use crate::rpc::services::{
    AuditService, ClonesService, CryptoService, InstanceService, KeyExchangeService, KeyManagementService,
    PoliciesService, PropertiesService, RekeysService, ResourceExchangeService,
};

/// The names health reports on: the overall service "" and every kmf service.
pub const HEALTH_SERVICES: [&str; 11] = [
    "",
    <InstanceServer<InstanceService> as NamedService>::NAME,
    <KeyManagementServer<KeyManagementService> as NamedService>::NAME,
    <CryptoServer<CryptoService> as NamedService>::NAME,
    <ResourceExchangeServer<ResourceExchangeService> as NamedService>::NAME,
    <KeyExchangeServer<KeyExchangeService> as NamedService>::NAME,
    <AuditServer<AuditService> as NamedService>::NAME,
    <PropertiesServer<PropertiesService> as NamedService>::NAME,
    <PoliciesServer<PoliciesService> as NamedService>::NAME,
    <ClonesServer<ClonesService> as NamedService>::NAME,
    <RekeysServer<RekeysService> as NamedService>::NAME,
];

/// Sets the health service's statuses from diagnoses.
pub struct HealthPublisher {
    reporter: HealthReporter,
    /// When the diagnosis last published was checked, and what it gave.
    /// Held across the status updates so two publishers never interleave.
    last: Mutex<Option<(UnixMillis, ServingState)>>,
}

impl HealthPublisher {
    /// Reports every service SERVING: the daemon has just opened its store
    /// and signer; the first diagnosis follows at once.
    pub async fn new(reporter: HealthReporter) -> Self {
        let publisher = HealthPublisher { reporter, last: Mutex::new(None) };
        publisher.set(ServingState::Serving).await;
        publisher
    }

    /// Publishes what `d` means for serving. A diagnosis older than the one
    /// already published (a slow one finishing late) changes nothing.
    pub async fn publish(&self, d: &Diagnosis) {
        let state = serving_state(&d.root.children);
        let mut last = self.last.lock().await;
        if last.is_some_and(|(checked_at, _)| d.checked_at < checked_at) {
            return;
        }
        let was = last.map_or(ServingState::Serving, |(_, s)| s);
        *last = Some((d.checked_at, state));
        if was == state {
            return;
        }
        match state {
            ServingState::NotServing => {
                let failed = essential_failures(&d.root.children).join(", ");
                tracing::warn!(malfunction = %failed, "health NOT_SERVING: an essential component is Malfunction");
            }
            ServingState::Serving => tracing::info!("health SERVING again: signer and store recovered"),
        }
        self.set(state).await;
    }

    async fn set(&self, state: ServingState) {
        let status = match state {
            ServingState::Serving => ServingStatus::Serving,
            ServingState::NotServing => ServingStatus::NotServing,
        };
        for service in HEALTH_SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{HealthCheckRequest, health_check_response};
    use tonic_health::server::HealthService;

    use super::*;
    use crate::domain::health::{Component, HealthStatus};

    fn diagnosis(at: i64, signer: HealthStatus, peers: HealthStatus) -> Diagnosis {
        let children = vec![
            Component::leaf("signer", signer, ""),
            Component::leaf("store", HealthStatus::Operational, ""),
            Component::leaf("certificate", HealthStatus::Operational, ""),
            Component::parent("peers", "", vec![Component::leaf("a:1", peers, "")]),
        ];
        Diagnosis { checked_at: UnixMillis(at), root: Component::parent("kmf", "", children) }
    }

    async fn statuses(health: &HealthService) -> Vec<health_check_response::ServingStatus> {
        let mut out = Vec::new();
        for service in HEALTH_SERVICES {
            let req = tonic::Request::new(HealthCheckRequest { service: service.to_owned() });
            let status = health.check(req).await.expect("known service").into_inner().status;
            out.push(health_check_response::ServingStatus::try_from(status).expect("status"));
        }
        out
    }

    #[tokio::test]
    async fn every_service_follows_signer_and_store_but_not_peers() {
        use HealthStatus::{Malfunction, Operational};
        use health_check_response::ServingStatus::{NotServing, Serving};
        let (reporter, _) = tonic_health::server::health_reporter();
        let health = HealthService::from_health_reporter(reporter.clone());
        let publisher = HealthPublisher::new(reporter).await;
        assert_eq!(statuses(&health).await, [Serving; HEALTH_SERVICES.len()], "serving at start");
        for name in ["kmf.v1.KeyExchange", "kmf.v1.Clones", "kmf.v1.Rekeys"] {
            assert!(HEALTH_SERVICES.contains(&name), "{name} in {HEALTH_SERVICES:?}");
        }

        publisher.publish(&diagnosis(1, Operational, Malfunction)).await;
        assert_eq!(statuses(&health).await, [Serving; HEALTH_SERVICES.len()], "a peer down changes nothing");
        publisher.publish(&diagnosis(2, Malfunction, Operational)).await;
        assert_eq!(statuses(&health).await, [NotServing; HEALTH_SERVICES.len()], "signer Malfunction");
        publisher.publish(&diagnosis(1, Operational, Operational)).await;
        assert_eq!(statuses(&health).await, [NotServing; HEALTH_SERVICES.len()], "an older diagnosis is ignored");
        publisher.publish(&diagnosis(3, Operational, Malfunction)).await;
        assert_eq!(statuses(&health).await, [Serving; HEALTH_SERVICES.len()], "recovered");
    }
}
