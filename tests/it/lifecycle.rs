//! The key lifecycle through gRPC: every action, refusals with nothing
//! changed, lifecycle definitions and their caps, destruction by policy.

use kmf::domain::auth::Role;
use kmf::domain::ids::Name;
use kmf::rpc::pb::{self, KeyAction, KeyState};
use tonic::Code;

use crate::support::{Ops, Pki, TestNode};

async fn act(ops: &mut Ops, key_id: &str, action: KeyAction, reason: &str) -> Result<Vec<pb::Key>, tonic::Status> {
    let req = pb::ChangeKeyStateRequest { key_id: key_id.into(), action: action as i32, reason: reason.into() };
    ops.keys.change_key_state(req).await.map(|r| r.into_inner().keys)
}

fn state(k: &pb::Key) -> KeyState {
    KeyState::try_from(k.state).expect("state")
}

fn days(n: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: n * 86_400, nanos: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_and_its_refusals() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("m", "s", true).await;
    let k1 = ops.keys_of("s").await.remove(0);
    assert_eq!((state(&k1), k1.version), (KeyState::Active, 1));
    let ct1 = ops.encrypt("s", b"one", b"").await;

    // Rotate: k1 Deactivated (decrypt only), k2 Active.
    let r = ops.keys.rotate_key(pb::RotateKeyRequest { spec: "s".into() }).await.expect("rotate").into_inner();
    let k2 = r.active.expect("active");
    assert_eq!(state(&r.deactivated.expect("old")), KeyState::Deactivated);
    assert_eq!(ops.decrypt(&ct1, b"").await.expect("decrypt after rotate"), b"one");
    let ct2 = ops.encrypt("s", b"two", b"").await;

    // Suspend k2: nothing encrypts, k2's data does not decrypt.
    assert_eq!(
        state(&act(&mut ops, &k2.key_id, KeyAction::Suspend, "").await.expect("suspend")[0]),
        KeyState::Suspended
    );
    let err = ops
        .crypto
        .encrypt(pb::EncryptRequest { spec: "s".into(), plaintext: b"x".to_vec(), associated_data: vec![] })
        .await;
    assert_eq!(err.expect_err("encrypt while suspended").code(), Code::FailedPrecondition);
    assert_eq!(ops.decrypt(&ct2, b"").await.expect_err("suspended decrypts").code(), Code::FailedPrecondition);

    // A new key becomes Active; resuming k2 now is refused and changes nothing.
    let k3 = ops
        .keys
        .generate_key(pb::GenerateKeyRequest { spec: "s".into() })
        .await
        .expect("gen")
        .into_inner()
        .key
        .expect("key");
    assert_eq!(state(&k3), KeyState::Active);
    let before = ops.keys_of("s").await;
    let err = act(&mut ops, &k2.key_id, KeyAction::Resume, "").await.expect_err("resume with another Active");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    // Transitions outside the table, an unknown key, an unspecified action.
    let err = act(&mut ops, &k1.key_id, KeyAction::Suspend, "").await.expect_err("suspend a Deactivated key");
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("Deactivated"), "{err}");
    let err = act(&mut ops, &k3.key_id, KeyAction::Activate, "").await.expect_err("activate an Active key");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let unknown = format!("{}:s:v99", node.sys_id);
    assert_eq!(act(&mut ops, &unknown, KeyAction::Suspend, "").await.expect_err("unknown").code(), Code::NotFound);
    assert_eq!(
        act(&mut ops, &k3.key_id, KeyAction::Unspecified, "").await.expect_err("unspecified").code(),
        Code::InvalidArgument
    );
    assert_eq!(
        act(&mut ops, "garbage", KeyAction::Suspend, "").await.expect_err("bad id").code(),
        Code::InvalidArgument
    );
    // Roles: an auditor changes nothing; an operator may revoke but not suspend.
    let mut auditor = Ops::new(node.channel(&pki.operator("aud", &[Role::CryptographicAuditor])).await);
    assert_eq!(
        act(&mut auditor, &k3.key_id, KeyAction::Suspend, "").await.expect_err("auditor").code(),
        Code::PermissionDenied
    );
    let mut operator = Ops::new(node.channel(&pki.operator("op", &[Role::CryptographicOperator])).await);
    assert_eq!(
        act(&mut operator, &k3.key_id, KeyAction::Suspend, "").await.expect_err("operator").code(),
        Code::PermissionDenied
    );
    assert_eq!(ops.keys_of("s").await, before, "refusals changed nothing");

    // Revoke needs a reason; revoking the current key makes a new Active key.
    let ct3 = ops.encrypt("s", b"three", b"").await;
    assert_eq!(
        act(&mut ops, &k3.key_id, KeyAction::Revoke, " ").await.expect_err("no reason").code(),
        Code::InvalidArgument
    );
    let revoked = act(&mut operator, &k3.key_id, KeyAction::Revoke, "left the company").await.expect("revoke");
    assert_eq!((state(&revoked[0]), revoked[0].reason.as_str()), (KeyState::Revoked, "left the company"));
    let k4 = revoked.get(1).expect("replacement key").clone();
    assert_eq!(state(&k4), KeyState::Active);
    assert_eq!(ops.decrypt(&ct3, b"").await.expect("revoked keys decrypt"), b"three");

    // Mark compromised: decrypt only, replaced.
    let ct4 = ops.encrypt("s", b"four", b"").await;
    let comp = act(&mut ops, &k4.key_id, KeyAction::MarkCompromised, "found in a log").await.expect("compromise");
    assert_eq!(state(&comp[0]), KeyState::Compromised);
    assert_eq!(ops.decrypt(&ct4, b"").await.expect("compromised keys decrypt"), b"four");
    let k5 = comp.get(1).expect("replacement").clone();

    // Renew needs an expiration date from the lifecycle definition.
    assert_eq!(
        act(&mut ops, &k5.key_id, KeyAction::Renew, "").await.expect_err("no expiry").code(),
        Code::FailedPrecondition
    );
    let lc = pb::SetSpecLifecycleRequest { spec: "s".into(), expire_after: Some(days(10)), destroy_after_idle: None };
    ops.keys.set_spec_lifecycle(lc).await.expect("lifecycle");
    let k6 = ops
        .keys
        .rotate_key(pb::RotateKeyRequest { spec: "s".into() })
        .await
        .expect("rotate")
        .into_inner()
        .active
        .expect("k6");
    let expires = k6.expires_at.expect("expiry set from the definition").seconds;
    assert_eq!(expires - k6.activated_at.expect("activated").seconds, 10 * 86_400);
    let renewed = act(&mut operator, &k6.key_id, KeyAction::Renew, "").await.expect("renew");
    assert_eq!(state(&renewed[0]), KeyState::Renewed);
    assert!(renewed[0].expires_at.expect("expiry").seconds >= expires);
    let ct5 = ops.encrypt("s", b"five", b"").await;
    let d = ops.crypto.decrypt(pb::DecryptRequest { ciphertext: ct5, associated_data: vec![] }).await.expect("decrypt");
    assert_eq!(d.get_ref().key_id, k6.key_id, "the Renewed key is the one that encrypts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_policies_cap_definitions() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("hr", "s", true).await;
    ops.spec("fin", "t", true).await;
    let set = |module: &str, max: i64| pb::SetLifecyclePolicyRequest {
        policy: Some(pb::LifecyclePolicy { module: module.into(), active: true, max_expire_after: Some(days(max)) }),
    };
    ops.keys.set_lifecycle_policy(set("", 365)).await.expect("instance policy");
    let too_long = |spec: &str| pb::SetSpecLifecycleRequest {
        spec: spec.into(),
        expire_after: Some(days(400)),
        destroy_after_idle: None,
    };
    let err = ops.keys.set_spec_lifecycle(too_long("s")).await.expect_err("over the cap");
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("365"), "{err}");
    ops.keys.set_lifecycle_policy(set("hr", 730)).await.expect("module exception");
    ops.keys.set_spec_lifecycle(too_long("s")).await.expect("the exception allows 400 days in hr");
    assert_eq!(
        ops.keys.set_spec_lifecycle(too_long("t")).await.expect_err("fin keeps the cap").code(),
        Code::FailedPrecondition
    );
    assert_eq!(ops.keys.set_lifecycle_policy(set("nope", 1)).await.expect_err("unknown module").code(), Code::NotFound);
    let policies =
        ops.keys.list_lifecycle_policies(pb::ListLifecyclePoliciesRequest {}).await.expect("list").into_inner();
    assert_eq!(policies.policies.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_deactivated_keys_are_destroyed_and_their_material_erased() {
    let pki = Pki::new();
    // A manual clock: the idle day passes at once, and the lifecycle sweep job runs on waking.
    let clock = kmf::clock::ManualClock::starting_now();
    let options = kmf::app::StartOptions { clock: clock.clone(), ..Default::default() };
    let mut node = TestNode::start_opts(&pki, None, None, options).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("m", "s", true).await;
    let ct = ops.encrypt("s", b"old", b"").await;
    let idle = prost_types::Duration { seconds: 86_400, nanos: 0 };
    let lc = pb::SetSpecLifecycleRequest { spec: "s".into(), expire_after: None, destroy_after_idle: Some(idle) };
    ops.keys.set_spec_lifecycle(lc).await.expect("lifecycle");
    ops.keys.rotate_key(pb::RotateKeyRequest { spec: "s".into() }).await.expect("rotate");
    assert!(ops.keys_of("s").await.iter().all(|k| state(k) != KeyState::Destroyed), "not idle yet");
    clock.advance_millis(86_400_000 + 1_000);
    node.app.as_ref().expect("running").services.jobs.wake();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let keys = ops.keys_of("s").await;
        if keys.iter().any(|k| state(k) == KeyState::Destroyed) {
            assert!(keys.iter().any(|k| state(k) == KeyState::Active), "the current key is untouched");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never destroyed: {keys:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll interval; the loop is bounded by its deadline
    }
    let err = ops.decrypt(&ct, b"").await.expect_err("destroyed keys decrypt nothing");
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("Destroyed"), "{err}");
    drop(ops);
    node.stop().await;
    let store = std::sync::Arc::new(kmf::store::Store::open_redb(&node.dir.path().join("kmf.redb")).expect("open"));
    let rows = kmf::store::CatalogStore::new(&store).keys(Name::parse("s", "spec").expect("name")).await.expect("keys");
    let destroyed = rows.iter().find(|(k, _)| k.state == kmf::domain::key::KeyState::Destroyed).expect("destroyed row");
    assert!(destroyed.1.0.is_empty(), "the destroyed key's wrapped material is erased");
    assert!(
        rows.iter().filter(|(k, _)| k.state != kmf::domain::key::KeyState::Destroyed).all(|(_, w)| !w.0.is_empty())
    );
}
