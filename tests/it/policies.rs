//! Module access policies through gRPC: evaluation on every Encrypt/Decrypt,
//! the explain call, management refusals, and audited denials.

use kmf::domain::auth::Role;
use kmf::rpc::pb::{self, Operation, PolicyResult, PolicyType};
use tonic::Code;

use crate::support::{Ops, Pki, TestNode};

fn role_policy(name: &str, role: &str, result: PolicyResult, ops: &[Operation]) -> pb::AccessPolicy {
    pb::AccessPolicy {
        name: name.into(),
        module: "hr".into(),
        r#type: PolicyType::Role as i32,
        result: result as i32,
        role: role.into(),
        operations: ops.iter().map(|o| *o as i32).collect(),
        ..Default::default()
    }
}

async fn create(ops: &mut Ops, p: pb::AccessPolicy) -> Result<pb::AccessPolicy, tonic::Status> {
    ops.policies
        .create_policy(pb::CreatePolicyRequest { policy: Some(p) })
        .await
        .map(|r| r.into_inner().policy.expect("p"))
}

async fn try_encrypt(ops: &mut Ops) -> Result<Vec<u8>, tonic::Status> {
    let req = pb::EncryptRequest { spec: "pay".into(), plaintext: b"42".to_vec(), associated_data: vec![] };
    ops.crypto.encrypt(req).await.map(|r| r.into_inner().ciphertext)
}

async fn set_active(ops: &mut Ops, name: &str, active: bool) {
    let req = pb::UpdatePolicyRequest { module: "hr".into(), name: name.into(), active };
    ops.policies.update_policy(req).await.expect("update");
}

/// Module "hr" (default Reject) with spec "pay" and a key; the admin, and an
/// operator "app" (cryptographic_operator) whom no policy allows yet.
async fn reject_module_and_app(node: &TestNode, pki: &Pki) -> (Ops, Ops) {
    let mut admin = node.admin(pki).await;
    let req = pb::CreateModuleRequest { name: "hr".into(), default_access: pb::DefaultAccess::Reject as i32 };
    admin.keys.create_module(req).await.expect("module");
    admin.keys.create_spec(kmf::cli::kmfctl::aes_spec("hr", "pay", 256)).await.expect("spec");
    admin.keys.generate_key(pb::GenerateKeyRequest { spec: "pay".into() }).await.expect("key");
    let app = Ops::new(node.channel(&pki.operator("app", &[Role::CryptographicOperator])).await);
    (admin, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_decide_every_crypto_call() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let (mut admin, mut app) = reject_module_and_app(&node, &pki).await;

    // No policy: denied, and the denial is audited with the caller's identity.
    let err = try_encrypt(&mut app).await.expect_err("no policy allows");
    assert!(err.code() == Code::PermissionDenied && err.message().contains("no access policy"), "{err}");
    let audit = pb::ListAuditEntriesRequest { action_prefix: "policy.denied".into(), limit: 10, ..Default::default() };
    let denied = admin.audit.list_audit_entries(audit.clone()).await.expect("audit").into_inner().entries;
    assert_eq!(denied.len(), 1);
    assert_eq!((denied[0].actor.as_str(), denied[0].subject.as_str()), ("operator:app", "pay"));

    // Reject alone denies; Reject + Track allows; StrictReject + Track denies.
    create(&mut admin, role_policy("a-reject", "cryptographic_operator", PolicyResult::RejectUnlessTracked, &[]))
        .await
        .expect("reject");
    assert_eq!(try_encrypt(&mut app).await.expect_err("reject alone").code(), Code::PermissionDenied);
    create(&mut admin, role_policy("b-track", "cryptographic_operator", PolicyResult::Track, &[]))
        .await
        .expect("track");
    let ct = try_encrypt(&mut app).await.expect("reject + track allows");
    assert_eq!(app.decrypt(&ct, b"").await.expect("decrypt"), b"42");
    assert_eq!(try_encrypt(&mut admin).await.expect_err("admin has no policy here").code(), Code::PermissionDenied);
    create(&mut admin, role_policy("c-strict", "cryptographic_operator", PolicyResult::StrictReject, &[]))
        .await
        .expect("strict");
    assert_eq!(try_encrypt(&mut app).await.expect_err("strict").code(), Code::PermissionDenied);
    set_active(&mut admin, "c-strict", false).await;
    assert!(try_encrypt(&mut app).await.is_ok(), "deactivated StrictReject no longer applies");

    // Granular: an encrypt-only Track for a Script identity.
    set_active(&mut admin, "b-track", false).await;
    let script = pb::AccessPolicy {
        name: "d-app-encrypt".into(),
        module: "hr".into(),
        r#type: PolicyType::Script as i32,
        result: PolicyResult::Track as i32,
        script: "app".into(),
        spec: "pay".into(),
        operations: vec![Operation::OpEncrypt as i32],
        ..Default::default()
    };
    create(&mut admin, script).await.expect("script policy");
    let ct2 = try_encrypt(&mut app).await.expect("encrypt-only allows encrypt");
    let err = app.decrypt(&ct2, b"").await.expect_err("encrypt-only denies decrypt");
    assert!(err.code() == Code::PermissionDenied && err.message().contains("decrypt"), "{err}");

    // Explain: every policy of the module, in order, with the decision.
    let explain = pb::ExplainAccessRequest {
        spec: "pay".into(),
        operation: Operation::OpDecrypt as i32,
        as_operator: "app".into(),
        as_roles: vec!["cryptographic_operator".into()],
        as_system: false,
        ..Default::default()
    };
    let d = app.policies.explain_access(explain).await.expect("explain").into_inner();
    let names: Vec<&str> = d.evaluated.iter().map(|e| e.policy.as_str()).collect();
    assert_eq!(names, vec!["a-reject", "b-track", "c-strict", "d-app-encrypt"]);
    let matched: Vec<bool> = d.evaluated.iter().map(|e| e.matched).collect();
    assert_eq!(matched, vec![true, false, false, false]);
    assert!(!d.allowed && d.reason.contains("a-reject"), "{}", d.reason);
    assert_eq!(d.evaluated[3].why, "only for encrypt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_management_refusals_change_nothing() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut admin = node.admin(&pki).await;
    admin.spec("hr", "pay", true).await;
    admin.spec("fin", "ledger", false).await;
    let list = |m: &str| pb::ListPoliciesRequest { module: m.into() };
    let before = admin.policies.list_policies(list("")).await.expect("list").into_inner();
    assert_eq!(before.policies.len(), 6, "three AutoGen policies for each Track module");

    let mut auditor = Ops::new(node.channel(&pki.operator("aud", &[Role::CryptographicAuditor])).await);
    let ok = role_policy("x", "admin", PolicyResult::Track, &[]);
    assert_eq!(create(&mut auditor, ok.clone()).await.expect_err("auditor").code(), Code::PermissionDenied);
    let bad: Vec<(&str, pb::AccessPolicy, Code)> = vec![
        ("unknown module", pb::AccessPolicy { module: "nope".into(), ..ok.clone() }, Code::NotFound),
        ("unspecified type", pb::AccessPolicy { r#type: 0, ..ok.clone() }, Code::InvalidArgument),
        ("unspecified result", pb::AccessPolicy { result: 0, ..ok.clone() }, Code::InvalidArgument),
        ("unknown role", pb::AccessPolicy { role: "root".into(), ..ok.clone() }, Code::InvalidArgument),
        ("spec of another module", pb::AccessPolicy { spec: "ledger".into(), ..ok.clone() }, Code::InvalidArgument),
        ("unknown spec", pb::AccessPolicy { spec: "nope".into(), ..ok.clone() }, Code::NotFound),
        ("bad name", pb::AccessPolicy { name: "has space".into(), ..ok.clone() }, Code::InvalidArgument),
        ("duplicate", pb::AccessPolicy { name: "AutoGen-admin".into(), ..ok.clone() }, Code::AlreadyExists),
        ("empty script", pb::AccessPolicy { r#type: PolicyType::Script as i32, ..ok.clone() }, Code::InvalidArgument),
    ];
    for (what, p, code) in bad {
        let err = create(&mut admin, p).await.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err}");
    }
    let after = admin.policies.list_policies(list("")).await.expect("list").into_inner();
    assert_eq!(before, after, "refused creations changed nothing");
    let err = admin
        .policies
        .update_policy(pb::UpdatePolicyRequest { module: "hr".into(), name: "nope".into(), active: false })
        .await
        .expect_err("unknown policy");
    assert_eq!(err.code(), Code::NotFound);
}

/// A caller who keeps being refused cannot flood the audit log: the first
/// refusal is written at once, the repeats within the window are counted and
/// written as one entry when it closes (or at shutdown), and every call is
/// still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_are_audited_once_with_their_count() {
    let pki = Pki::new();
    let clock = kmf::clock::ManualClock::starting_now();
    let options = kmf::app::StartOptions { clock: clock.clone(), ..Default::default() };
    let mut node = TestNode::start_opts(&pki, None, None, options).await;
    let (mut admin, mut app) = reject_module_and_app(&node, &pki).await;

    for i in 0..20 {
        let err = try_encrypt(&mut app).await.expect_err("every call is refused");
        assert!(err.code() == Code::PermissionDenied && err.message().contains("no access policy"), "call {i}: {err}");
    }
    assert_eq!(admin.audit_entries("policy.denied").await.len(), 1, "the first refusal only");
    assert!(admin.audit_entries("policy.denied.repeated").await.is_empty(), "the window is still open");

    // The window closes; the job runner's loop writes the count.
    clock.advance_millis(kmf::domain::refusals::WINDOW_MILLIS);
    node.app.as_ref().expect("running").services.jobs.wake();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let repeated = loop {
        let r = admin.audit_entries("policy.denied.repeated").await;
        if !r.is_empty() {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "the repeats were never written");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    };
    assert_eq!(repeated.len(), 1);
    assert_eq!((repeated[0].actor.as_str(), repeated[0].subject.as_str()), ("operator:app", "pay"));
    assert!(repeated[0].details.contains("19 more refusals"), "{}", repeated[0].details);

    // A new window: audited at once again; its repeats are written at shutdown.
    for _ in 0..3 {
        let err = try_encrypt(&mut app).await.expect_err("refused");
        assert!(err.code() == Code::PermissionDenied && err.message().contains("no access policy"), "{err}");
    }
    assert_eq!(admin.audit_entries("policy.denied").await.len(), 2);
    drop((admin, app));
    node.restart().await;
    let mut admin = node.admin(&pki).await;
    let repeated = admin.audit_entries("policy.denied.repeated").await;
    assert_eq!(repeated.len(), 2, "the open window was flushed at shutdown: {repeated:?}");
    assert!(repeated.iter().any(|e| e.details.contains("2 more refusals")), "{repeated:?}");
    let verify = admin.audit.verify_audit_chain(pb::VerifyAuditChainRequest {}).await.expect("verify").into_inner();
    assert!(verify.intact, "{verify:?}");
}
