//! The catalog in memory: modules, specs and keys through their lifecycle,
//! lifecycle policies and the lifecycle sweep job on the manual clock.

use super::DefaultAccess;
use crate::domain::DomainError;
use crate::domain::ids::KeyId;
use crate::domain::key::{KeyAction, KeyRecord, KeyState, LifecycleDefinition, LifecyclePolicy, PolicyScope};
use crate::domain::spec::SpecChoice;
use crate::error::AppError;
pub(super) use crate::node::testing::{Instance, admin, name, test_ca};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

pub(super) fn instance() -> Instance {
    Instance::new(&test_ca(), "solo")
}

pub(super) fn is_denied<T: std::fmt::Debug>(r: &Result<T, AppError>) -> bool {
    matches!(r, Err(AppError::Domain(DomainError::PermissionDenied(_))))
}

fn is_precondition<T: std::fmt::Debug>(r: &Result<T, AppError>) -> bool {
    matches!(r, Err(AppError::Domain(DomainError::FailedPrecondition(_))))
}

pub(super) async fn audited(instance: &Instance, action: &str) -> Vec<crate::domain::audit::AuditEntry> {
    let filter = crate::node::audit::AuditFilter { limit: 1000, action_prefix: action.into(), ..Default::default() };
    let (entries, _) = instance.services.audit.audit_entries(filter).await.expect("audit");
    entries.into_iter().filter(|e| e.event.action == action).collect()
}

async fn keys(instance: &Instance) -> Vec<KeyRecord> {
    instance.services.catalog.keys(name("salary")).await.expect("keys")
}

fn state_of(keys: &[KeyRecord], id: &KeyId) -> KeyState {
    keys.iter().find(|k| &k.id == id).expect("the key").state
}

async fn act(instance: &Instance, key: &KeyId, action: KeyAction) -> Result<Vec<KeyRecord>, AppError> {
    instance.services.catalog.change_key_state(&admin(), key.clone(), action).await
}

#[tokio::test]
async fn a_spec_needs_its_module_and_its_name_once() {
    let solo = instance();
    let catalog = &solo.services.catalog;
    let choice = SpecChoice::with_defaults(None, None, None, false).expect("choice");
    let orphan = catalog.create_spec(&admin(), name("nowhere"), name("salary"), choice, false).await;
    assert!(matches!(orphan, Err(AppError::Domain(DomainError::NotFound { .. }))), "{orphan:?}");
    solo.spec_with_keys("payroll", "salary", 0).await;
    let again = catalog.create_spec(&admin(), name("payroll"), name("salary"), choice, false).await;
    assert!(matches!(again, Err(AppError::Domain(DomainError::AlreadyExists { .. }))), "{again:?}");
    let twice = catalog.create_module(&admin(), name("payroll"), DefaultAccess::Track).await;
    assert!(matches!(twice, Err(AppError::Domain(DomainError::AlreadyExists { .. }))), "{twice:?}");
    assert_eq!(catalog.specs(Some(name("payroll"))).await.expect("specs").len(), 1);
    let policies = catalog.policies(Some(name("payroll"))).await.expect("policies");
    assert_eq!(policies.len(), 3, "Track default access writes the AutoGen policies: {policies:?}");
}

#[tokio::test]
async fn the_first_key_is_active_the_next_generated_and_a_rotation_moves_the_active_one() {
    let solo = instance();
    solo.spec_with_keys("payroll", "salary", 2).await;
    let all = keys(&solo).await;
    let (first, second) = (all[0].id.clone(), all[1].id.clone());
    assert_eq!((all[0].state, all[1].state), (KeyState::Active, KeyState::Generated));

    let refused = act(&solo, &second, KeyAction::Activate).await;
    assert!(is_precondition(&refused), "one Active key per spec: {refused:?}");
    let (old, new) = solo.services.catalog.rotate_key(&admin(), name("salary")).await.expect("rotate");
    assert_eq!((old.id, old.state), (first.clone(), KeyState::Deactivated));
    assert_eq!((new.state, new.id.version), (KeyState::Active, 3));
    assert_eq!(old.deactivated_at, Some(solo.now()));
    let all = keys(&solo).await;
    assert_eq!(all.iter().filter(|k| k.state.is_current()).count(), 1);
    assert_eq!(state_of(&all, &second), KeyState::Generated, "a Generated key stays as it is");
    assert_eq!(audited(&solo, "key.rotate").await.len(), 1);
}

#[tokio::test]
async fn key_state_changes_follow_the_lifecycle_rules() {
    let solo = instance();
    solo.spec_with_keys("payroll", "salary", 1).await;
    let key = keys(&solo).await[0].id.clone();
    act(&solo, &key, KeyAction::Suspend).await.expect("suspend");
    assert_eq!(state_of(&keys(&solo).await, &key), KeyState::Suspended);
    assert!(is_precondition(&act(&solo, &key, KeyAction::Renew).await), "a suspended key is not renewed");
    act(&solo, &key, KeyAction::Resume).await.expect("resume");
    assert_eq!(state_of(&keys(&solo).await, &key), KeyState::Active);

    let no_reason = act(&solo, &key, KeyAction::Revoke { reason: " ".into() }).await;
    assert!(matches!(no_reason, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{no_reason:?}");
    let revoked = act(&solo, &key, KeyAction::Revoke { reason: "left the company".into() }).await.expect("revoke");
    assert_eq!((revoked[0].state, revoked[0].reason.as_str()), (KeyState::Revoked, "left the company"));
    assert!(is_precondition(&act(&solo, &key, KeyAction::Resume).await), "revoked is for good");
    assert_eq!(audited(&solo, "key.revoke").await.len(), 1);
    assert_eq!(audited(&solo, "key.suspend").await.len(), 1);
}

#[tokio::test]
async fn renewing_needs_an_expiry_and_extends_it_from_now() {
    let solo = instance();
    solo.spec_with_keys("payroll", "salary", 0).await;
    let catalog = &solo.services.catalog;
    let no_expiry = catalog.generate_key(&admin(), name("salary")).await.expect("key");
    assert!(is_precondition(&act(&solo, &no_expiry.id, KeyAction::Renew).await), "no expire_after: nothing to renew");

    let lifecycle = LifecycleDefinition { expire_after: Some(10 * DAY), destroy_after_idle: None };
    catalog.set_spec_lifecycle(&admin(), name("salary"), lifecycle).await.expect("lifecycle");
    let (_, key) = catalog.rotate_key(&admin(), name("salary")).await.expect("rotate");
    assert_eq!(key.expires_at, Some(solo.now().plus_millis(10 * DAY)));
    solo.clock.advance_millis(3 * DAY);
    let renewed = act(&solo, &key.id, KeyAction::Renew).await.expect("renew");
    assert_eq!(renewed[0].state, KeyState::Renewed);
    assert_eq!(renewed[0].expires_at, Some(solo.now().plus_millis(10 * DAY)), "today plus the original span");
}

#[tokio::test]
async fn a_lifecycle_policy_caps_expire_after_and_a_module_exception_lifts_the_cap() {
    let solo = instance();
    solo.spec_with_keys("payroll", "salary", 0).await;
    let catalog = &solo.services.catalog;
    let cap = LifecyclePolicy { scope: PolicyScope::Instance, active: true, max_expire_after: Some(30 * DAY) };
    catalog.set_lifecycle_policy(&admin(), cap).await.expect("instance policy");
    let long = LifecycleDefinition { expire_after: Some(60 * DAY), destroy_after_idle: None };
    let over = catalog.set_spec_lifecycle(&admin(), name("salary"), long).await;
    assert!(is_precondition(&over), "{over:?}");
    let short = LifecycleDefinition { expire_after: Some(10 * DAY), destroy_after_idle: None };
    catalog.set_spec_lifecycle(&admin(), name("salary"), short).await.expect("within the cap");

    let exception =
        LifecyclePolicy { scope: PolicyScope::Module(name("payroll")), active: true, max_expire_after: Some(90 * DAY) };
    catalog.set_lifecycle_policy(&admin(), exception).await.expect("module exception");
    let spec = catalog.set_spec_lifecycle(&admin(), name("salary"), long).await.expect("the exception allows it");
    assert_eq!(spec.lifecycle.expire_after, Some(60 * DAY));
    let unknown = LifecyclePolicy { scope: PolicyScope::Module(name("nope")), active: true, max_expire_after: None };
    let refused = catalog.set_lifecycle_policy(&admin(), unknown).await;
    assert!(matches!(refused, Err(AppError::Domain(DomainError::NotFound { .. }))), "{refused:?}");
    assert_eq!(catalog.lifecycle_policies().await.expect("policies").len(), 2);
}

#[tokio::test]
async fn the_lifecycle_sweep_destroys_deactivated_keys_once_idle_past_destroy_after_idle() {
    let solo = instance();
    solo.spec_with_keys("payroll", "salary", 1).await;
    let catalog = &solo.services.catalog;
    let lifecycle = LifecycleDefinition { expire_after: None, destroy_after_idle: Some(2 * HOUR) };
    catalog.set_spec_lifecycle(&admin(), name("salary"), lifecycle).await.expect("lifecycle");
    let (old, active) = catalog.rotate_key(&admin(), name("salary")).await.expect("rotate");
    solo.services.jobs.add_startup_jobs().await;
    assert!(solo.run_jobs().await >= 1, "the sweep ran");
    assert_eq!(state_of(&keys(&solo).await, &old.id), KeyState::Deactivated, "not idle long enough");

    solo.clock.advance_millis(2 * HOUR);
    assert!(solo.run_jobs().await >= 1, "the sweep ran again");
    let all = keys(&solo).await;
    assert_eq!(state_of(&all, &old.id), KeyState::Destroyed);
    assert_eq!(all.iter().find(|k| k.id == old.id).and_then(|k| k.destroyed_at), Some(solo.now()));
    assert_eq!(state_of(&all, &active.id), KeyState::Active, "the Active key is never swept");
    assert_eq!(audited(&solo, "key.destroy").await.len(), 1);
    solo.clock.advance_millis(HOUR);
    solo.run_jobs().await;
    assert_eq!(audited(&solo, "key.destroy").await.len(), 1, "a destroyed key is destroyed once");
    let after = act(&solo, &old.id, KeyAction::Activate).await;
    assert!(is_precondition(&after), "nothing brings a destroyed key back: {after:?}");
}
