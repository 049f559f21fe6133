//! BYOK in memory: import parameters, the import of a wrapped key, and the
//! export of a key wrapped for an RSA public key (here another instance's
//! import key, so an export imports there).

use zeroize::Zeroizing;

use super::ImportParameters;
use crate::domain::DomainError;
use crate::domain::audit::Outcome;
use crate::domain::key::{DataKey, KeyOrigin, KeyState};
use crate::domain::spec::SpecChoice;
use crate::error::AppError;
use crate::node::testing::{Instance, admin, name, pair, test_ca};
use crate::signer::byok::{recipient, wrap_for};

fn solo() -> Instance {
    Instance::new(&test_ca(), "solo")
}

/// 32 bytes of AES-256 material wrapped for `params` as a customer's tool would.
fn wrapped_for(params: &ImportParameters, fill: u8) -> Vec<u8> {
    let to = recipient(&params.public_key_pem).expect("the import key is an RSA public key");
    wrap_for(&to, &DataKey::new(Zeroizing::new(vec![fill; 32]))).expect("wrap")
}

async fn params(instance: &Instance, spec: &str, ttl: Option<i64>) -> ImportParameters {
    instance.services.byok.import_parameters(&admin(), name(spec), ttl).await.expect("import parameters")
}

async fn entries(instance: &Instance, action: &str) -> Vec<crate::domain::audit::AuditEntry> {
    let filter = crate::node::audit::AuditFilter { limit: 1000, action_prefix: action.into(), ..Default::default() };
    let (all, _) = instance.services.audit.audit_entries(filter).await.expect("audit");
    all.into_iter().filter(|e| e.event.action == action).collect()
}

fn is_precondition<T: std::fmt::Debug>(r: &Result<T, AppError>) -> bool {
    matches!(r, Err(AppError::Domain(DomainError::FailedPrecondition(_))))
}

#[tokio::test]
async fn a_wrapped_key_imports_once_as_the_specs_active_key_and_encrypts() {
    let solo = solo();
    solo.spec_with_keys("payroll", "salary", 0).await;
    let p = params(&solo, "salary", None).await;
    assert!(p.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(p.expires_at, solo.now().plus_millis(24 * 3_600_000), "24 h unless asked");
    let blob = wrapped_for(&p, 5);
    let key = solo.services.byok.import_key(&admin(), p.token.clone(), name("salary"), blob.clone()).await;
    let key = key.expect("import");
    assert_eq!((key.state, key.origin.clone()), (KeyState::Active, KeyOrigin::Byok), "the spec had no key");
    assert_eq!(entries(&solo, "key.import").await.len(), 1);

    let again = solo.services.byok.import_key(&admin(), p.token, name("salary"), blob).await;
    assert!(is_precondition(&again), "a token is used once: {again:?}");
    let crypto = &solo.services.crypto;
    let (sealed, by) = crypto.encrypt(&admin(), name("salary"), b"pay".to_vec(), Vec::new()).await.expect("encrypt");
    assert_eq!(by, key.id);
    assert_eq!(crypto.decrypt(&admin(), sealed, Vec::new()).await.expect("decrypt").0, b"pay");
}

#[tokio::test]
async fn a_malformed_blob_stores_nothing_and_leaves_the_token_usable() {
    let solo = solo();
    solo.spec_with_keys("payroll", "salary", 1).await;
    let p = params(&solo, "salary", None).await;
    let byok = &solo.services.byok;
    let short = byok.import_key(&admin(), p.token.clone(), name("salary"), vec![0u8; 100]).await;
    assert!(matches!(short, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{short:?}");
    let other_spec = byok.import_key(&admin(), p.token.clone(), name("nosuch"), wrapped_for(&p, 1)).await;
    assert!(matches!(other_spec, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{other_spec:?}");
    assert_eq!(solo.services.catalog.keys(name("salary")).await.expect("keys").len(), 1, "nothing stored");
    let blob = wrapped_for(&p, 2);
    let key = byok.import_key(&admin(), p.token, name("salary"), blob).await.expect("then it imports");
    assert_eq!(key.state, KeyState::Generated, "the spec already had an Active key");
}

#[tokio::test]
async fn import_parameters_expire() {
    let solo = solo();
    solo.spec_with_keys("payroll", "salary", 0).await;
    let bad_ttl = solo.services.byok.import_parameters(&admin(), name("salary"), Some(0)).await;
    assert!(matches!(bad_ttl, Err(AppError::Domain(DomainError::InvalidArgument { .. }))));
    let p = params(&solo, "salary", Some(60_000)).await;
    solo.clock.advance_millis(60_000);
    let late = solo.services.byok.import_key(&admin(), p.token.clone(), name("salary"), wrapped_for(&p, 3)).await;
    assert!(is_precondition(&late), "{late:?}");
    assert!(late.unwrap_err().to_string().contains("expired"));
    // The next parameters sweep the expired one away.
    params(&solo, "salary", None).await;
    assert_eq!(entries(&solo, "key.import_parameters.delete").await.len(), 1);
}

#[tokio::test]
async fn the_key_of_a_spec_that_is_not_exportable_is_never_exported_and_the_refusal_audited() {
    let solo = solo();
    let catalog = &solo.services.catalog;
    catalog.create_module(&admin(), name("vault"), crate::node::catalog::DefaultAccess::Track).await.expect("module");
    let choice = SpecChoice::with_defaults(None, None, None, false).expect("choice");
    catalog.create_spec(&admin(), name("vault"), name("sealed"), choice, false).await.expect("spec");
    let key = catalog.generate_key(&admin(), name("sealed")).await.expect("key");
    solo.spec_with_keys("payroll", "salary", 0).await;
    let pem = params(&solo, "salary", None).await.public_key_pem;

    let refused = solo.services.byok.export_key(&admin(), key.id.clone(), pem).await;
    assert!(is_precondition(&refused), "{refused:?}");
    assert!(refused.unwrap_err().to_string().contains("not exportable"));
    let audit = entries(&solo, "key.export").await;
    assert_eq!(audit.len(), 1);
    assert_eq!((audit[0].event.outcome, audit[0].event.subject.clone()), (Outcome::Refused, key.id.to_string()));
}

#[tokio::test]
async fn an_exported_key_imports_on_another_instance() {
    let (source, target) = pair();
    source.spec_with_keys("payroll", "salary", 1).await;
    target.spec_with_keys("payroll", "salary", 0).await;
    let key = source.services.catalog.keys(name("salary")).await.expect("keys")[0].id.clone();
    let p = params(&target, "salary", None).await;
    let bad = source.services.byok.export_key(&admin(), key.clone(), "not a key".into()).await;
    assert!(matches!(bad, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{bad:?}");

    let exported = source.services.byok.export_key(&admin(), key.clone(), p.public_key_pem.clone()).await;
    let exported = exported.expect("export");
    assert_eq!(exported.key_id, key);
    assert_eq!(exported.public_key_sha256.len(), 64);
    let audit = entries(&source, "key.export").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].event.outcome, Outcome::Success);
    assert!(audit[0].event.details.contains(&exported.public_key_sha256));
    let imported = target.services.byok.import_key(&admin(), p.token, name("salary"), exported.wrapped).await;
    assert_eq!(imported.expect("the export opens with the import key").state, KeyState::Active);
}
