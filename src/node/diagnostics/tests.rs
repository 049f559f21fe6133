//! Diagnostics in memory: an instance without TLS setup diagnoses its store
//! and signer (Operational) and leaves the certificate and peer checks
//! Disabled; the store gauges count what was written.

use crate::domain::exchange::{ExchangeRole, RequestStatus};
use crate::domain::health::{Component, HealthStatus};
use crate::domain::key::KeyState;
use crate::node::exchange::NewRequest;
use crate::node::testing::{Instance, admin, name, pair, test_ca};

fn child<'a>(root: &'a Component, name: &str) -> &'a Component {
    root.children.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name} check in {root:?}"))
}

#[tokio::test]
async fn a_diagnosis_without_setup_checks_store_and_signer_and_disables_the_rest() {
    let solo = Instance::new(&test_ca(), "solo");
    let d = solo.services.diagnostics.diagnose().await;
    assert_eq!(d.checked_at, solo.now());
    assert_eq!(d.root.name, "kmf");
    let names: Vec<&str> = d.root.children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["signer", "store", "certificate", "peers", "crl"]);
    assert_eq!(child(&d.root, "signer").status, HealthStatus::Operational);
    assert_eq!(child(&d.root, "store").status, HealthStatus::Operational);
    assert_eq!(child(&d.root, "certificate").status, HealthStatus::Disabled);
    assert_eq!(child(&d.root, "peers").status, HealthStatus::Disabled);
    assert_eq!(d.root.message, "no component needs attention");
    assert!(solo.services.diagnostics.latest_diagnosis().is_none(), "diagnose alone records nothing");
}

#[tokio::test]
async fn diagnose_and_record_keeps_the_latest_diagnosis() {
    let solo = Instance::new(&test_ca(), "solo");
    solo.services.diagnostics.diagnose_and_record().await;
    solo.clock.advance_millis(15_000);
    let second = solo.services.diagnostics.diagnose_and_record().await;
    let latest = solo.services.diagnostics.latest_diagnosis().expect("recorded");
    assert_eq!(latest.checked_at, second.checked_at);
    assert_eq!(latest.checked_at, solo.now());
}

#[tokio::test]
async fn store_counts_count_keys_by_state_requests_and_audit_entries() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 2).await;
    source.services.catalog.rotate_key(&admin(), name("salary")).await.expect("rotate");
    target.spec_with_keys("payroll", "salary", 0).await;
    let new = NewRequest {
        source_sys_id: source.sys_id.to_string(),
        source_host: source.host.to_string(),
        spec_names: vec!["salary".into()],
        expires_in_millis: None,
    };
    target.services.exchange.create_request(&admin(), new).await.expect("request");

    let counts = source.services.diagnostics.store_counts().await.expect("counts");
    let keys = |state: KeyState| counts.keys.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
    assert_eq!((keys(KeyState::Active), keys(KeyState::Generated), keys(KeyState::Deactivated)), (1, 1, 1));
    let pending = counts.requests.iter().find(|(r, s, _)| *r == ExchangeRole::Source && *s == RequestStatus::Pending);
    assert_eq!(pending.map(|(_, _, n)| *n), Some(1));
    let (entries, _) = source
        .services
        .audit
        .audit_entries(crate::node::audit::AuditFilter { limit: 10_000, ..Default::default() })
        .await
        .expect("audit");
    assert_eq!(counts.audit_entries, entries.len() as u64);
    assert!(counts.rekey_debt.is_empty());

    // A write moves the counts; no write, the same counts again.
    source.services.catalog.generate_key(&admin(), name("salary")).await.expect("key");
    let after = source.services.diagnostics.store_counts().await.expect("counts");
    let generated = after.keys.iter().find(|(s, _)| *s == KeyState::Generated).map_or(0, |(_, n)| *n);
    assert_eq!(generated, 2);
    assert!(after.audit_entries > counts.audit_entries);
    let again = source.services.diagnostics.store_counts().await.expect("counts");
    assert_eq!(again.audit_entries, after.audit_entries);
}
