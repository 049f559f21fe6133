//! The crypto service in memory: encrypt/decrypt, batches, rewrap after a
//! rotation, and the encrypted records.

use super::{MAX_BATCH, NewRecord, OpenItem, SealItem};
use crate::domain::DomainError;
use crate::domain::key::{KeyAction, KeyState, LifecycleDefinition};
use crate::domain::record::RecordAddress;
use crate::error::AppError;
use crate::node::testing::{Instance, admin, name, test_ca};

async fn with_key() -> Instance {
    let solo = Instance::new(&test_ca(), "solo");
    solo.spec_with_keys("payroll", "salary", 1).await;
    solo
}

fn address(id: &str) -> RecordAddress {
    RecordAddress::parse("hr", "pay", id).expect("address")
}

fn seal(text: &str) -> SealItem {
    SealItem { spec: name("salary"), plaintext: text.as_bytes().to_vec(), aad: b"row-1".to_vec() }
}

#[tokio::test]
async fn encrypt_then_decrypt_gives_the_plaintext_back_under_the_active_key() {
    let solo = with_key().await;
    let crypto = &solo.services.crypto;
    let active = solo.services.catalog.keys(name("salary")).await.expect("keys")[0].id.clone();
    let (sealed, key) =
        crypto.encrypt(&admin(), name("salary"), b"hello".to_vec(), b"aad".to_vec()).await.expect("enc");
    assert_eq!(key, active);
    assert!(!sealed.windows(5).any(|w| w == b"hello"), "the ciphertext hides the plaintext");
    let (plain, by) = crypto.decrypt(&admin(), sealed.clone(), b"aad".to_vec()).await.expect("decrypt");
    assert_eq!((plain.as_slice(), by), (&b"hello"[..], active));
    // The second call runs inline on the warm cache and agrees.
    let (again, _) = crypto.decrypt(&admin(), sealed, b"aad".to_vec()).await.expect("decrypt again");
    assert_eq!(again, b"hello");
}

#[tokio::test]
async fn a_ciphertext_does_not_decrypt_with_other_associated_data_or_when_tampered() {
    let solo = with_key().await;
    let crypto = &solo.services.crypto;
    let (sealed, _) = crypto.encrypt(&admin(), name("salary"), b"hello".to_vec(), b"row-1".to_vec()).await.expect("e");
    let wrong = crypto.decrypt(&admin(), sealed.clone(), b"row-2".to_vec()).await;
    assert!(wrong.is_err(), "other AAD: {wrong:?}");
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(crypto.decrypt(&admin(), tampered, b"row-1".to_vec()).await.is_err(), "a flipped bit");
    let garbage = crypto.decrypt(&admin(), b"not a kmf ciphertext".to_vec(), Vec::new()).await;
    assert!(garbage.is_err(), "{garbage:?}");
}

#[tokio::test]
async fn a_batch_holds_one_to_max_batch_items_and_each_item_fails_on_its_own() {
    let solo = with_key().await;
    let crypto = &solo.services.crypto;
    let empty = crypto.encrypt_batch(&admin(), Vec::new()).await;
    assert!(matches!(empty, Err(AppError::Domain(DomainError::InvalidArgument { .. }))), "{empty:?}");
    let too_many = crypto.encrypt_batch(&admin(), vec![seal("x"); MAX_BATCH + 1]).await;
    assert!(matches!(too_many, Err(AppError::Domain(DomainError::InvalidArgument { .. }))));

    let unknown = SealItem { spec: name("nosuch"), ..seal("b") };
    let results = crypto.encrypt_batch(&admin(), vec![seal("a"), unknown, seal("c")]).await.expect("batch");
    assert_eq!(results.iter().map(Result::is_ok).collect::<Vec<_>>(), [true, false, true]);
    let items: Vec<OpenItem> = results
        .into_iter()
        .flatten()
        .map(|(ciphertext, _)| OpenItem { ciphertext, aad: b"row-1".to_vec() })
        .chain([OpenItem { ciphertext: vec![1, 2, 3], aad: Vec::new() }])
        .collect();
    let opened = crypto.decrypt_batch(&admin(), items).await.expect("batch");
    let texts: Vec<Option<Vec<u8>>> = opened.into_iter().map(|r| r.ok().map(|(p, _)| p)).collect();
    assert_eq!(texts, [Some(b"a".to_vec()), Some(b"c".to_vec()), None]);
}

#[tokio::test]
async fn rewrap_moves_a_ciphertext_to_the_current_key_after_a_rotation() {
    let solo = with_key().await;
    let crypto = &solo.services.crypto;
    let (sealed, old) = crypto.encrypt(&admin(), name("salary"), b"pay".to_vec(), b"r".to_vec()).await.expect("enc");
    let (_, new) = solo.services.catalog.rotate_key(&admin(), name("salary")).await.expect("rotate");
    let rewrapped = crypto.rewrap(&admin(), sealed.clone(), b"r".to_vec()).await.expect("rewrap");
    assert_eq!((&rewrapped.previous_key_id, &rewrapped.key_id), (&old, &new.id));
    let (plain, by) = crypto.decrypt(&admin(), rewrapped.ciphertext, b"r".to_vec()).await.expect("decrypt");
    assert_eq!((plain.as_slice(), by), (&b"pay"[..], new.id.clone()));
    let (plain, by) = crypto.decrypt(&admin(), sealed, b"r".to_vec()).await.expect("a Deactivated key decrypts");
    assert_eq!((plain.as_slice(), by), (&b"pay"[..], old));
    let (_, now) = crypto.encrypt(&admin(), name("salary"), b"x".to_vec(), Vec::new()).await.expect("encrypt");
    assert_eq!(now, new.id, "new data goes under the new key");
}

#[tokio::test]
async fn a_suspended_key_encrypts_nothing_and_a_destroyed_one_decrypts_nothing() {
    let solo = with_key().await;
    let (crypto, catalog) = (&solo.services.crypto, &solo.services.catalog);
    let lifecycle = LifecycleDefinition { expire_after: None, destroy_after_idle: Some(1_000) };
    catalog.set_spec_lifecycle(&admin(), name("salary"), lifecycle).await.expect("lifecycle");
    let (sealed, key) = crypto.encrypt(&admin(), name("salary"), b"pay".to_vec(), Vec::new()).await.expect("enc");
    catalog.change_key_state(&admin(), key.clone(), KeyAction::Suspend).await.expect("suspend");
    let refused = crypto.encrypt(&admin(), name("salary"), b"pay".to_vec(), Vec::new()).await;
    assert!(refused.is_err(), "no current key: {refused:?}");
    catalog.change_key_state(&admin(), key.clone(), KeyAction::Resume).await.expect("resume");
    catalog.rotate_key(&admin(), name("salary")).await.expect("rotate");
    solo.clock.advance_millis(1_000);
    assert_eq!(catalog.sweep_lifecycle().await.expect("sweep"), 1);
    let keys = catalog.keys(name("salary")).await.expect("keys");
    assert_eq!(keys.iter().find(|k| k.id == key).map(|k| k.state), Some(KeyState::Destroyed));
    let gone = crypto.decrypt(&admin(), sealed, Vec::new()).await;
    assert!(gone.is_err(), "the material is erased: {gone:?}");
}

#[tokio::test]
async fn records_are_put_read_listed_and_deleted() {
    let solo = with_key().await;
    let crypto = &solo.services.crypto;
    let stored = crypto.put_record(&admin(), address("a"), name("salary"), b"one".to_vec()).await.expect("put");
    let batch = vec![
        NewRecord { address: address("b"), spec: name("salary"), plaintext: b"two".to_vec() },
        NewRecord { address: address("c"), spec: name("salary"), plaintext: b"three".to_vec() },
    ];
    assert_eq!(crypto.put_records(&admin(), batch).await.expect("put many").len(), 2);
    let (read, plain) = crypto.get_record(&admin(), address("a")).await.expect("get");
    assert_eq!((read.key_id, plain.as_slice()), (stored.key_id, &b"one"[..]));

    let first = crypto.list_records(None, None, None, 2).await.expect("list");
    assert_eq!(first.iter().map(|r| r.address.record_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let rest = crypto.list_records(None, None, first.last().map(|r| r.address.clone()), 2).await.expect("page");
    assert_eq!(rest.iter().map(|r| r.address.record_id.as_str()).collect::<Vec<_>>(), ["c"]);
    let digest = crypto.digest_records(&admin(), None, None).await.expect("digest");
    assert_eq!(digest.records, 3);

    crypto.delete_record(&admin(), address("b")).await.expect("delete");
    assert_eq!(crypto.list_records(None, None, None, 10).await.expect("list").len(), 2);
    let missing = crypto.delete_record(&admin(), address("b")).await;
    assert!(matches!(missing, Err(AppError::Domain(DomainError::NotFound { .. }))), "{missing:?}");
    assert!(crypto.get_record(&admin(), address("b")).await.is_err());
}

#[tokio::test]
async fn a_record_is_bound_to_its_address() {
    let solo = with_key().await;
    let crypto = &solo.services.crypto;
    let stored = crypto.put_record(&admin(), address("a"), name("salary"), b"one".to_vec()).await.expect("put");
    // The same ciphertext moved to another address no longer opens.
    let moved = crate::domain::record::StoredRecord { address: address("z"), ..stored.clone() };
    crate::store::RecordStore::new(solo.services.store()).put_record(moved).await.expect("plant");
    assert!(crypto.get_record(&admin(), address("z")).await.is_err(), "the address is the associated data");
    let aad = address("a").associated_data();
    let (plain, _) = crypto.decrypt(&admin(), stored.ciphertext, aad).await.expect("decrypt with its address");
    assert_eq!(plain, b"one");
}

async fn denials(solo: &Instance) -> Vec<crate::domain::audit::AuditEntry> {
    let filter =
        crate::node::audit::AuditFilter { limit: 100, action_prefix: "policy.denied".into(), ..Default::default() };
    solo.services.audit.audit_entries(filter).await.expect("audit").0
}

/// A rewrap checks an item's Encrypt access only once the item opened, as
/// one item at a time would: a ciphertext that does not open audits no
/// refusal to encrypt; the first one that opens is refused and audited.
#[tokio::test]
async fn a_rewrap_checks_encrypt_only_for_the_items_that_opened() {
    use crate::domain::auth::{Caller, Role};
    use crate::domain::policy::{AccessPolicy, Operation, PolicyResult, PolicyType};
    let solo = with_key().await;
    let (crypto, catalog) = (&solo.services.crypto, &solo.services.catalog);
    let no_encrypt = AccessPolicy {
        name: name("no-encrypt"),
        module: name("payroll"),
        kind: PolicyType::Script("ops".into()),
        result: PolicyResult::StrictReject,
        spec: None,
        operations: vec![Operation::Encrypt],
        active: true,
        created_at: solo.now(),
    };
    catalog.create_policy(&admin(), no_encrypt).await.expect("policy");
    let (sealed, _) = crypto.encrypt(&admin(), name("salary"), b"pay".to_vec(), b"r".to_vec()).await.expect("enc");
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let operator = Caller::Operator { name: "ops".into(), roles: vec![Role::CryptographicOperator] };
    let item = |c: &Vec<u8>| OpenItem { ciphertext: c.clone(), aad: b"r".to_vec() };
    let invalid = |r: &Result<super::Rewrapped, AppError>| {
        matches!(r, Err(AppError::Domain(DomainError::InvalidArgument { .. })))
    };
    let denied =
        |r: &Result<super::Rewrapped, AppError>| matches!(r, Err(AppError::Domain(DomainError::PermissionDenied(_))));

    let answers = crypto.rewrap_batch(&operator, vec![item(&tampered)]).await.expect("batch");
    assert!(answers.len() == 1 && invalid(&answers[0]), "{answers:?}");
    assert!(denials(&solo).await.is_empty(), "nothing opened, nothing was refused");

    let items = vec![item(&tampered), item(&sealed), item(&tampered), item(&sealed)];
    let answers = crypto.rewrap_batch(&operator, items).await.expect("batch");
    let kinds: Vec<(bool, bool)> = answers.iter().map(|r| (invalid(r), denied(r))).collect();
    assert_eq!(kinds, [(true, false), (false, true), (true, false), (false, true)], "{answers:?}");
    let audited = denials(&solo).await;
    assert_eq!(audited.len(), 1, "one refusal, written once: {audited:?}");
    assert!(audited[0].event.details.starts_with("encrypt"), "{:?}", audited[0].event);
    let rewrapped = crypto.rewrap(&admin(), sealed, b"r".to_vec()).await.expect("the admin may");
    assert_eq!(rewrapped.key_id, rewrapped.previous_key_id, "no rotation: the same key");
}
