//! Module access policies (a denial is PERMISSION_DENIED, audited once, its
//! repeats coalesced into one entry) and typed system properties.

use super::DefaultAccess;
use super::tests::{admin, audited, instance, is_denied, name};
use crate::domain::DomainError;
use crate::domain::auth::{Caller, Role};
use crate::domain::policy::{AccessPolicy, Operation, PolicyResult, PolicyType, Subject};
use crate::domain::property::{AUTO_KEY_EXCHANGE, PropertyType, REKEYED};
use crate::domain::spec::SpecChoice;
use crate::error::AppError;

fn operator(roles: Vec<Role>) -> Caller {
    Caller::Operator { name: "ops".into(), roles }
}

/// Module `vault` with no policy (Reject default access) and spec `secret`.
async fn rejecting_module(solo: &super::tests::Instance) {
    let catalog = &solo.services.catalog;
    catalog.create_module(&admin(), name("vault"), DefaultAccess::Reject).await.expect("module");
    let choice = SpecChoice::with_defaults(None, None, None, false).expect("choice");
    catalog.create_spec(&admin(), name("vault"), name("secret"), choice, false).await.expect("spec");
}

#[tokio::test]
async fn a_call_no_policy_allows_is_denied_audited_once_and_its_repeats_coalesced() {
    let solo = instance();
    rejecting_module(&solo).await;
    let catalog = &solo.services.catalog;
    let spec = catalog.spec_or_not_found(&name("secret")).await.expect("spec");
    for _ in 0..5 {
        let denied = catalog.check_access(&admin(), &spec, Operation::Encrypt).await;
        assert!(is_denied(&denied), "{denied:?}");
    }
    let first = audited(&solo, "policy.denied").await;
    assert_eq!(first.len(), 1, "the first refusal is written at once, its repeats are counted");
    assert_eq!(first[0].event.subject, "secret");
    assert!(audited(&solo, "policy.denied.repeated").await.is_empty(), "the window is still open");

    solo.services.audit.flush_refusals(true).await;
    let repeats = audited(&solo, "policy.denied.repeated").await;
    assert_eq!(repeats.len(), 1);
    assert!(repeats[0].event.details.contains("4 more refusals"), "{}", repeats[0].event.details);
    assert_eq!(audited(&solo, "policy.denied").await.len(), 1);
}

#[tokio::test]
async fn a_track_policy_for_a_role_allows_only_that_role_and_a_strict_reject_wins() {
    let solo = instance();
    rejecting_module(&solo).await;
    let catalog = &solo.services.catalog;
    let policy = |n: &str, kind: PolicyType, result: PolicyResult, operations: Vec<Operation>| AccessPolicy {
        name: name(n),
        module: name("vault"),
        kind,
        result,
        spec: Some(name("secret")),
        operations,
        active: true,
        created_at: solo.now(),
    };
    let track = policy("ops-track", PolicyType::Role(Role::CryptographicOperator), PolicyResult::Track, vec![]);
    catalog.create_policy(&admin(), track).await.expect("track policy");
    let spec = catalog.spec_or_not_found(&name("secret")).await.expect("spec");
    let op = operator(vec![Role::CryptographicOperator]);
    catalog.check_access(&op, &spec, Operation::Decrypt).await.expect("the role is tracked");
    let auditor = operator(vec![Role::CryptographicAuditor]);
    assert!(is_denied(&catalog.check_access(&auditor, &spec, Operation::Decrypt).await));

    let strict = policy(
        "no-export",
        PolicyType::Role(Role::CryptographicOperator),
        PolicyResult::StrictReject,
        vec![Operation::Encrypt],
    );
    catalog.create_policy(&admin(), strict).await.expect("strict policy");
    assert!(is_denied(&catalog.check_access(&op, &spec, Operation::Encrypt).await), "StrictReject wins");
    catalog.check_access(&op, &spec, Operation::Decrypt).await.expect("other operations still tracked");
    let subject = Subject::from(&op);
    let explained = catalog.explain_access(subject, name("secret"), Operation::Encrypt).await.expect("explain");
    assert!(!explained.reason.is_empty());

    catalog.set_policy_active(&admin(), name("vault"), name("no-export"), false).await.expect("deactivate");
    catalog.check_access(&op, &spec, Operation::Encrypt).await.expect("an inactive policy does not apply");
}

#[tokio::test]
async fn a_policy_names_an_existing_module_and_a_spec_of_that_module() {
    let solo = instance();
    rejecting_module(&solo).await;
    solo.spec_with_keys("payroll", "salary", 0).await;
    let catalog = &solo.services.catalog;
    let base = AccessPolicy {
        name: name("p"),
        module: name("vault"),
        kind: PolicyType::Role(Role::Admin),
        result: PolicyResult::Track,
        spec: Some(name("salary")),
        operations: vec![],
        active: true,
        created_at: solo.now(),
    };
    let wrong = catalog.create_policy(&admin(), base.clone()).await;
    assert!(matches!(wrong, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{wrong:?}");
    let nowhere = AccessPolicy { module: name("nope"), spec: None, ..base.clone() };
    let missing = catalog.create_policy(&admin(), nowhere).await;
    assert!(matches!(missing, Err(AppError::Domain(DomainError::NotFound { .. }))), "{missing:?}");
    let fine = AccessPolicy { spec: Some(name("secret")), ..base };
    catalog.create_policy(&admin(), fine.clone()).await.expect("policy");
    let twice = catalog.create_policy(&admin(), fine).await;
    assert!(matches!(twice, Err(AppError::Domain(DomainError::AlreadyExists { .. }))), "{twice:?}");
    assert_eq!(catalog.policies(Some(name("vault"))).await.expect("policies").len(), 1);
}

#[tokio::test]
async fn properties_are_typed_and_an_invalid_value_is_refused() {
    let solo = instance();
    let catalog = &solo.services.catalog;
    let default = catalog.property(AUTO_KEY_EXCHANGE.into()).await.expect("known property");
    assert_eq!((default.value.as_str(), default.kind, default.is_default), ("true", PropertyType::Bool, true));
    let set = catalog.set_property(&admin(), AUTO_KEY_EXCHANGE.into(), " FALSE ".into()).await.expect("set");
    assert_eq!((set.value.as_str(), set.is_default), ("false", false), "booleans are normalised");

    let bad = catalog.set_property(&admin(), AUTO_KEY_EXCHANGE.into(), "maybe".into()).await;
    assert!(matches!(bad, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{bad:?}");
    assert_eq!(catalog.property(AUTO_KEY_EXCHANGE.into()).await.expect("read").value, "false", "unchanged");
    let bad_name = catalog.set_property(&admin(), "Not A Name".into(), "x".into()).await;
    assert!(matches!(bad_name, Err(AppError::Domain(DomainError::InvalidArgument { .. }))));

    catalog.set_property(&admin(), "custom.colour".into(), "blue".into()).await.expect("a string property");
    let all = catalog.properties().await.expect("properties");
    let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["custom.colour", AUTO_KEY_EXCHANGE], "by name; REKEYED has no default: absent until written");
    assert_eq!(super::tests::audited(&solo, "property.set").await.len(), 2);
}

#[tokio::test]
async fn a_system_only_property_is_refused_to_an_operator_and_the_refusal_audited() {
    let solo = instance();
    let catalog = &solo.services.catalog;
    let refused = catalog.set_property(&admin(), REKEYED.into(), "true".into()).await;
    assert!(is_denied(&refused), "{refused:?}");
    let entries = audited(&solo, "property.set").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].event.outcome, crate::domain::audit::Outcome::Refused);
    let unset = catalog.property(REKEYED.into()).await;
    assert!(matches!(unset, Err(AppError::Domain(DomainError::NotFound { .. }))), "never written: {unset:?}");
}
