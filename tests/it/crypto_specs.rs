//! The spec table through gRPC, and every purpose's operations: AES-GCM/CBC/
//! CTR encryption and key wrapping, equality-preserving AES-SIV, HMAC, RSA
//! encryption, key wrapping and signatures; wrong purpose, tampering and
//! policy denials refused; RSA and HMAC keys survive an exchange.

use kmf::cli::kmfctl::aes_spec;
use kmf::domain::auth::Role;
use kmf::rpc::pb::{self, Algorithm as A, CryptoPurpose as P, Decision, RequestStatus};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Verifier};
use tonic::Code;

use crate::support::{Ops, Pki, TestNode, status};

fn spec(module: &str, name: &str, purpose: P, algorithm: A, bits: u32, ep: bool) -> pb::CreateSpecRequest {
    pb::CreateSpecRequest {
        module: module.into(),
        name: name.into(),
        purpose: purpose as i32,
        algorithm: algorithm as i32,
        key_size_bits: bits,
        equality_preserving: ep,
        exportable: false,
    }
}

async fn spec_count(ops: &mut Ops) -> usize {
    ops.keys.list_specs(pb::ListSpecsRequest::default()).await.expect("list").into_inner().specs.len()
}

async fn encrypt(ops: &mut Ops, spec: &str, pt: &[u8], aad: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let req = pb::EncryptRequest { spec: spec.into(), plaintext: pt.to_vec(), associated_data: aad.to_vec() };
    ops.crypto.encrypt(req).await.map(|r| r.into_inner().ciphertext)
}

async fn wrap(ops: &mut Ops, spec: &str, material: &[u8], aad: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let req = pb::WrapRequest { spec: spec.into(), key_material: material.to_vec(), associated_data: aad.to_vec() };
    ops.crypto.wrap(req).await.map(|r| r.into_inner().wrapped_key)
}

async fn unwrap(ops: &mut Ops, wrapped: &[u8], aad: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let req = pb::UnwrapRequest { wrapped_key: wrapped.to_vec(), associated_data: aad.to_vec() };
    ops.crypto.unwrap(req).await.map(|r| r.into_inner().key_material)
}

async fn sign(ops: &mut Ops, spec: &str, msg: &[u8]) -> Result<pb::SignResponse, tonic::Status> {
    ops.crypto.sign(pb::SignRequest { spec: spec.into(), message: msg.to_vec() }).await.map(|r| r.into_inner())
}

async fn verify(ops: &mut Ops, sig: &[u8], msg: &[u8]) -> Result<bool, tonic::Status> {
    let req = pb::VerifyRequest { signature: sig.to_vec(), message: msg.to_vec() };
    ops.crypto.verify(req).await.map(|r| r.into_inner().valid)
}

async fn mac(ops: &mut Ops, spec: &str, msg: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    ops.crypto.mac(pb::MacRequest { spec: spec.into(), message: msg.to_vec() }).await.map(|r| r.into_inner().mac)
}

async fn verify_mac(ops: &mut Ops, tag: &[u8], msg: &[u8]) -> Result<bool, tonic::Status> {
    let req = pb::VerifyMacRequest { mac: tag.to_vec(), message: msg.to_vec() };
    ops.crypto.verify_mac(req).await.map(|r| r.into_inner().valid)
}

fn flip_last(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    let last = v.len() - 1;
    v[last] ^= 1;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spec_table_is_enforced_with_the_rule_named_and_nothing_created() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("m", "seed", false).await;

    let good = [
        (P::SymmetricDataEncryption, A::AesGcm, 128, false),
        (P::SymmetricDataEncryption, A::AesCbc, 192, false),
        (P::SymmetricDataEncryption, A::AesCbc, 256, true),
        (P::SymmetricDataEncryption, A::AesCtr, 256, false),
        (P::SymmetricKeyWrapping, A::AesGcm, 256, false),
        (P::SymmetricKeyWrapping, A::AesCbc, 128, false),
        (P::SymmetricKeyWrapping, A::AesCtr, 192, false),
        (P::SymmetricAuthenticity, A::Hmac, 384, false),
        (P::AsymmetricDataEncryption, A::Rsa, 2048, false),
        (P::AsymmetricKeyWrapping, A::Rsa, 4096, false),
        (P::Signature, A::Rsa, 3072, false),
        // 0 = the algorithm's default size; unset purpose or algorithm take defaults.
        (P::Signature, A::Rsa, 0, false),
        (P::Unspecified, A::Unspecified, 0, false),
        (P::Signature, A::Unspecified, 0, false),
        (P::Unspecified, A::Hmac, 0, false),
    ];
    for (i, (p, a, bits, ep)) in good.into_iter().enumerate() {
        let r = ops.keys.create_spec(spec("m", &format!("ok{i}"), p, a, bits, ep)).await;
        let s = r.unwrap_or_else(|e| panic!("{p:?} {a:?} {bits}: {e}")).into_inner().spec.expect("spec");
        if p != P::Unspecified && a != A::Unspecified {
            assert_eq!((s.purpose, s.algorithm, s.equality_preserving), (p as i32, a as i32, ep));
        }
        assert!(!s.scheme.is_empty());
    }
    let listed = ops.keys.list_specs(pb::ListSpecsRequest::default()).await.expect("list").into_inner().specs;
    let default_rsa = listed.iter().find(|s| s.name == "ok11").expect("ok11");
    assert_eq!((default_rsa.key_size_bits, default_rsa.scheme.as_str()), (3072, "RSA-3072 PSS-SHA-256"));
    let siv = listed.iter().find(|s| s.name == "ok2").expect("ok2");
    assert_eq!(siv.scheme, "AES-256-SIV");
    let scheme = |name: &str| listed.iter().find(|s| s.name == name).expect(name).scheme.clone();
    assert_eq!(scheme("ok12"), "AES-256-GCM", "nothing set: the default spec");
    assert_eq!(scheme("ok13"), "RSA-3072 PSS-SHA-256", "a purpose alone takes its first algorithm");
    assert_eq!(scheme("ok14"), "HMAC-SHA-256", "HMAC alone is symmetric authenticity");

    let before = spec_count(&mut ops).await;
    let bad = [
        (
            P::SymmetricAuthenticity,
            A::AesGcm,
            256,
            false,
            "algorithm",
            "symmetric_authenticity takes hmac, not aes_gcm",
        ),
        (P::Signature, A::Hmac, 256, false, "algorithm", "signature takes rsa, not hmac"),
        (P::SymmetricDataEncryption, A::Rsa, 2048, false, "algorithm", "not rsa"),
        (P::SymmetricDataEncryption, A::AesGcm, 512, false, "key_size_bits", "aes_gcm keys are 128, 192, 256 bits"),
        (P::SymmetricAuthenticity, A::Hmac, 128, false, "key_size_bits", "hmac keys are 256, 384, 512 bits"),
        (P::AsymmetricDataEncryption, A::Rsa, 1024, false, "key_size_bits", "rsa keys are 2048, 3072, 4096 bits"),
        (
            P::SymmetricDataEncryption,
            A::AesGcm,
            256,
            true,
            "equality_preserving",
            "only symmetric_data_encryption with aes_cbc",
        ),
        (P::SymmetricKeyWrapping, A::AesCbc, 256, true, "equality_preserving", "not symmetric_key_wrapping"),
        (P::Unspecified, A::Rsa, 2048, false, "purpose", "set a purpose: rsa serves"),
    ];
    for (p, a, bits, ep, field, rule) in bad {
        let err = ops.keys.create_spec(spec("m", "bad", p, a, bits, ep)).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{p:?} {a:?} {bits}: {err}");
        assert!(err.message().contains(field) && err.message().contains(rule), "{p:?} {a:?} {bits}: {}", err.message());
    }
    let mut unknown = spec("m", "bad", P::Signature, A::Rsa, 2048, false);
    unknown.purpose = 99;
    let err = ops.keys.create_spec(unknown).await.expect_err("unknown purpose");
    assert!(err.code() == Code::InvalidArgument && err.message().contains("unknown purpose 99"), "{err}");
    assert_eq!(spec_count(&mut ops).await, before, "no refused spec was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_schemes_encrypt_wrap_and_mac_and_refuse_the_wrong_purpose() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    let data = [("gcm", A::AesGcm, 128), ("cbc", A::AesCbc, 192), ("ctr", A::AesCtr, 256)];
    for (name, a, bits) in data {
        ops.spec_from(spec("m", name, P::SymmetricDataEncryption, a, bits, false), true).await;
        ops.spec_from(spec("m", &format!("w{name}"), P::SymmetricKeyWrapping, a, bits, false), true).await;
    }
    ops.spec_from(spec("m", "siv", P::SymmetricDataEncryption, A::AesCbc, 256, true), true).await;
    ops.spec_from(spec("m", "hmac", P::SymmetricAuthenticity, A::Hmac, 512, false), true).await;

    for name in ["gcm", "cbc", "ctr", "siv"] {
        let ct = encrypt(&mut ops, name, b"4200 EUR", b"emp:7").await.expect(name);
        assert_eq!(ops.decrypt(&ct, b"emp:7").await.expect(name), b"4200 EUR", "{name}");
        assert_eq!(ops.decrypt(&ct, b"emp:8").await.expect_err("aad").code(), Code::InvalidArgument, "{name}");
        let err = ops.decrypt(&flip_last(&ct), b"emp:7").await.expect_err("tampered");
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        let again = encrypt(&mut ops, name, b"4200 EUR", b"emp:7").await.expect(name);
        // Only the equality-preserving spec is deterministic.
        assert_eq!(again == ct, name == "siv", "{name}");
        let empty = encrypt(&mut ops, name, b"", b"").await.expect("empty plaintext");
        assert_eq!(ops.decrypt(&empty, b"").await.expect("empty"), b"", "{name}");
        let err = wrap(&mut ops, name, &[1; 32], b"").await.expect_err("a data spec does not wrap");
        assert!(err.code() == Code::InvalidArgument && err.message().contains("serves encrypt and decrypt"), "{err}");
    }
    let other_aad = encrypt(&mut ops, "siv", b"4200 EUR", b"emp:8").await.expect("siv");
    assert_ne!(other_aad, encrypt(&mut ops, "siv", b"4200 EUR", b"emp:7").await.expect("siv"));

    for name in ["wgcm", "wcbc", "wctr"] {
        let material: Vec<u8> = (0..32).collect();
        let w = wrap(&mut ops, name, &material, b"kid:1").await.expect(name);
        assert_eq!(unwrap(&mut ops, &w, b"kid:1").await.expect(name), material);
        assert_eq!(unwrap(&mut ops, &w, b"kid:2").await.expect_err("aad").code(), Code::InvalidArgument);
        assert_eq!(unwrap(&mut ops, &flip_last(&w), b"kid:1").await.expect_err("bit").code(), Code::InvalidArgument);
        let err = encrypt(&mut ops, name, b"x", b"").await.expect_err("a wrapping spec does not encrypt");
        assert!(err.code() == Code::InvalidArgument && err.message().contains("serves wrap and unwrap"), "{err}");
        let err = ops.decrypt(&w, b"kid:1").await.expect_err("decrypt is not unwrap");
        assert_eq!(err.code(), Code::InvalidArgument);
        for (bad, what) in [(vec![], "is empty"), (vec![0u8; 8193], "at most 8192 bytes")] {
            let err = wrap(&mut ops, name, &bad, b"").await.map(|w| w.len()).expect_err(what);
            assert!(err.code() == Code::InvalidArgument && err.message().contains(what), "{err}");
            assert!(err.message().contains("key_material"), "{err}");
        }
    }

    let tag = mac(&mut ops, "hmac", b"invoice 17").await.expect("mac");
    assert!(verify_mac(&mut ops, &tag, b"invoice 17").await.expect("verify"));
    assert!(!verify_mac(&mut ops, &tag, b"invoice 18").await.expect("other message"));
    assert!(!verify_mac(&mut ops, &flip_last(&tag), b"invoice 17").await.expect("other tag"));
    let err = verify_mac(&mut ops, b"not a mac", b"x").await.expect_err("malformed");
    assert!(err.code() == Code::InvalidArgument && err.message().contains("mac"), "{err}");
    assert_eq!(encrypt(&mut ops, "hmac", b"x", b"").await.expect_err("hmac").code(), Code::InvalidArgument);
    assert_eq!(mac(&mut ops, "gcm", b"x").await.expect_err("gcm does not mac").code(), Code::InvalidArgument);

    // After a rotation MACs use the new key and old MACs still verify.
    ops.keys.rotate_key(pb::RotateKeyRequest { spec: "hmac".into() }).await.expect("rotate");
    let newer = ops.crypto.mac(pb::MacRequest { spec: "hmac".into(), message: b"m".to_vec() }).await.expect("mac");
    assert!(newer.into_inner().key_id.ends_with(":v2"), "the new key MACs");
    assert!(verify_mac(&mut ops, &tag, b"invoice 17").await.expect("old MAC still verifies"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_encrypts_wraps_and_signs_and_signatures_verify_outside_kmf() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec_from(spec("m", "oaep", P::AsymmetricDataEncryption, A::Rsa, 2048, false), true).await;
    ops.spec_from(spec("m", "rwrap", P::AsymmetricKeyWrapping, A::Rsa, 2048, false), true).await;
    ops.spec_from(spec("m", "sig", P::Signature, A::Rsa, 2048, false), true).await;

    let ct = encrypt(&mut ops, "oaep", b"card 4111", b"row:1").await.expect("oaep");
    assert_eq!(ops.decrypt(&ct, b"row:1").await.expect("decrypt"), b"card 4111");
    assert_eq!(ops.decrypt(&ct, b"row:2").await.expect_err("label").code(), Code::InvalidArgument);
    let err = encrypt(&mut ops, "oaep", &[0; 191], b"").await.expect_err("too long for OAEP");
    assert!(err.code() == Code::InvalidArgument && err.message().contains("at most 190 bytes"), "{err}");

    let material = vec![0x5a; 64];
    let w = wrap(&mut ops, "rwrap", &material, b"kid").await.expect("rsa wrap");
    assert_eq!(unwrap(&mut ops, &w, b"kid").await.expect("rsa unwrap"), material);
    assert_eq!(unwrap(&mut ops, &flip_last(&w), b"kid").await.expect_err("bit").code(), Code::InvalidArgument);

    let signed = sign(&mut ops, "sig", b"release 1.2.3").await.expect("sign");
    assert!(verify(&mut ops, &signed.signature, b"release 1.2.3").await.expect("verify"));
    assert!(!verify(&mut ops, &signed.signature, b"release 1.2.4").await.expect("other message"));
    assert!(!verify(&mut ops, &flip_last(&signed.signature), b"release 1.2.3").await.expect("other signature"));
    assert_eq!(sign(&mut ops, "oaep", b"x").await.expect_err("oaep does not sign").code(), Code::InvalidArgument);

    // The public key and the raw signature let anyone verify with openssl.
    let pk = ops.crypto.get_public_key(pb::GetPublicKeyRequest { spec: "sig".into() }).await.expect("pk").into_inner();
    assert_eq!((pk.key_id.as_str(), pk.scheme.as_str()), (signed.key_id.as_str(), "RSA-2048 PSS-SHA-256"));
    let public = PKey::public_key_from_pem(pk.public_key_pem.as_bytes()).expect("pem");
    assert_eq!(public.public_key_to_der().expect("der"), pk.public_key_der);
    let mut v = Verifier::new(MessageDigest::sha256(), &public).expect("verifier");
    v.set_rsa_padding(Padding::PKCS1_PSS).expect("pss");
    v.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH).expect("salt");
    v.update(b"release 1.2.3").expect("update");
    assert!(v.verify(&signed.raw_signature).expect("verify"), "openssl verifies the raw signature");
    assert!(signed.signature.ends_with(&signed.raw_signature));
    let err = ops.crypto.get_public_key(pb::GetPublicKeyRequest { spec: "nope".into() }).await.expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);

    // A rotated-out key still verifies what it signed; signing uses the new key.
    ops.keys.rotate_key(pb::RotateKeyRequest { spec: "sig".into() }).await.expect("rotate");
    assert!(verify(&mut ops, &signed.signature, b"release 1.2.3").await.expect("old signature"));
    let newer = sign(&mut ops, "sig", b"x").await.expect("sign");
    assert_ne!(newer.key_id, signed.key_id);

    // Wrong state: with its only current key suspended the spec cannot sign,
    // but what that key signed still verifies.
    let req = pb::ChangeKeyStateRequest {
        key_id: newer.key_id.clone(),
        action: pb::KeyAction::Suspend as i32,
        reason: String::new(),
    };
    ops.keys.change_key_state(req).await.expect("suspend");
    let err = sign(&mut ops, "sig", b"y").await.expect_err("no Active key");
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("no Active key"), "{err}");
    let err = verify(&mut ops, &newer.signature, b"x").await.expect_err("a Suspended key does not verify");
    assert!(err.code() == Code::FailedPrecondition && err.message().contains("Suspended"), "{err}");
    assert!(verify(&mut ops, &signed.signature, b"release 1.2.3").await.expect("Deactivated key verifies"));

    // Wrong role: an auditor may not use keys.
    let mut auditor = Ops::new(node.channel(&pki.operator("eve", &[Role::CryptographicAuditor])).await);
    let err = verify(&mut auditor, &signed.signature, b"release 1.2.3").await.expect_err("auditor");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = wrap(&mut auditor, "rwrap", &[1; 16], b"").await.expect_err("auditor");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_mac_are_checked_against_access_policies() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut admin = node.admin(&pki).await;
    let module = pb::CreateModuleRequest { name: "rel".into(), default_access: pb::DefaultAccess::Reject as i32 };
    admin.keys.create_module(module).await.expect("module");
    admin.spec_from(spec("rel", "sig", P::Signature, A::Rsa, 2048, false), true).await;
    admin.spec_from(spec("rel", "tag", P::SymmetricAuthenticity, A::Hmac, 256, false), true).await;
    let verify_only = pb::AccessPolicy {
        name: "ci-verifies".into(),
        module: "rel".into(),
        r#type: pb::PolicyType::Script as i32,
        result: pb::PolicyResult::Track as i32,
        script: "ci".into(),
        operations: vec![pb::Operation::OpVerify as i32, pb::Operation::OpVerifyMac as i32],
        ..Default::default()
    };
    admin.policies.create_policy(pb::CreatePolicyRequest { policy: Some(verify_only) }).await.expect("policy");
    let signer_policy = pb::AccessPolicy {
        name: "release-signs".into(),
        module: "rel".into(),
        r#type: pb::PolicyType::Script as i32,
        result: pb::PolicyResult::Track as i32,
        script: "release".into(),
        ..Default::default()
    };
    admin.policies.create_policy(pb::CreatePolicyRequest { policy: Some(signer_policy) }).await.expect("policy");
    let mut ci = Ops::new(node.channel(&pki.operator("ci", &[Role::CryptographicOperator])).await);
    let mut release = Ops::new(node.channel(&pki.operator("release", &[Role::CryptographicOperator])).await);

    let signed = sign(&mut release, "sig", b"v1").await.expect("release signs");
    let tag = mac(&mut release, "tag", b"v1").await.expect("release MACs");
    assert!(verify(&mut ci, &signed.signature, b"v1").await.expect("ci verifies"));
    assert!(verify_mac(&mut ci, &tag, b"v1").await.expect("ci verifies MACs"));
    for (what, err) in [
        ("sign", sign(&mut ci, "sig", b"v2").await.expect_err("ci may not sign")),
        ("mac", mac(&mut ci, "tag", b"v2").await.map(|_| ()).expect_err("ci may not MAC")),
    ] {
        assert!(err.code() == Code::PermissionDenied && err.message().contains(what), "{err}");
    }
    let audit = pb::ListAuditEntriesRequest { action_prefix: "policy.denied".into(), limit: 10, ..Default::default() };
    let denied = admin.audit.list_audit_entries(audit).await.expect("audit").into_inner().entries;
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().all(|e| e.actor == "operator:ci"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_hmac_keys_travel_in_an_exchange_and_verify_on_the_target() {
    let pki = Pki::new();
    let (mut source, mut target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    for ops in [&mut s, &mut t] {
        ops.spec_from(spec("m", "sig", P::Signature, A::Rsa, 2048, false), false).await;
        ops.spec_from(spec("m", "tag", P::SymmetricAuthenticity, A::Hmac, 256, false), false).await;
        ops.spec_from(spec("m", "siv", P::SymmetricDataEncryption, A::AesCbc, 128, true), false).await;
        // Same name, other shape: the source's keys must not import here.
    }
    s.spec_from(aes_spec("m", "mismatch", 256), false).await;
    t.spec_from(aes_spec("m", "mismatch", 128), false).await;
    // Same material length (32 bytes), other algorithm: refused as well.
    s.spec_from(aes_spec("m", "same-length", 256), false).await;
    t.spec_from(spec("m", "same-length", P::SymmetricAuthenticity, A::Hmac, 256, false), false).await;
    for name in ["sig", "tag", "siv"] {
        s.keys.generate_key(pb::GenerateKeyRequest { spec: name.into() }).await.expect("key");
    }
    for name in ["mismatch", "same-length"] {
        s.keys.generate_key(pb::GenerateKeyRequest { spec: name.into() }).await.expect("key");
    }
    let signed = sign(&mut s, "sig", b"contract").await.expect("sign");
    let tag = mac(&mut s, "tag", b"contract").await.expect("mac");
    let det = encrypt(&mut s, "siv", b"alice@example.com", b"users.email").await.expect("siv");

    // The target's "mismatch" spec is AES-128 while the source's is AES-256;
    // its "same-length" spec is HMAC-256 while the source's is AES-256-GCM.
    let names = ["sig", "tag", "siv", "mismatch", "same-length"];
    let created = t.create_request(&source, &names).await.expect("create");
    let approved = s.decide(&created.request_id, Decision::Approve, "").await.expect("approve");
    let done = t
        .wait_for(&created.request_id, "a final status", |r| {
            status(r) != RequestStatus::RequestPending && status(r) != RequestStatus::RequestApproved
        })
        .await;
    assert_eq!(approved.exported_key_count, 5, "{approved:?}");
    assert_eq!(done.imported_key_count, 3, "{done:?}");
    for (name, theirs, ours) in [
        ("mismatch", "symmetric_data_encryption aes_gcm 256", "symmetric_data_encryption aes_gcm 128"),
        ("same-length", "symmetric_data_encryption aes_gcm 256", "symmetric_authenticity hmac 256"),
    ] {
        let line = done.lines.iter().find(|l| l.spec == name).expect("line");
        assert_eq!(line.status, pb::SpecLineStatus::Failed as i32, "{line:?}");
        let want = format!("spec differs: the source's is {theirs}, this instance's is {ours}");
        assert!(line.reason.contains(&want), "{line:?}");
        assert!(t.keys_of(name).await.is_empty(), "{name}: nothing imported");
    }

    assert!(verify(&mut t, &signed.signature, b"contract").await.expect("verify on target"));
    assert!(verify_mac(&mut t, &tag, b"contract").await.expect("MAC verifies on target"));
    assert_eq!(t.decrypt(&det, b"users.email").await.expect("siv decrypts"), b"alice@example.com");
    source.stop().await;
    target.stop().await;
}
