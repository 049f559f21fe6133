//! Bring your own key, both ways, against the stock `openssl` CLI: a key made
//! and wrapped by openssl is imported with kmfctl into a running kmfd, used
//! for Encrypt/Decrypt, exported for an RSA key openssl made, and unwrapped by
//! openssl to the same bytes. The refusals (tampered or wrong-size blobs, a
//! reused or expired token, a spec not exportable, a caller not admin, a
//! policy) get their exact gRPC code and store nothing. `KMF_OPENSSL` names
//! another openssl binary; without one the interop test is skipped (`skip.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kmf::app::StartOptions;
use kmf::clock::ManualClock;
use kmf::domain::key::DataKey;
use kmf::rpc::pb;
use kmf::signer::byok::{recipient, wrap_for};
use kmf::store::ByokStore;
use tonic::Code;
use zeroize::Zeroizing;

use crate::binaries::{Daemon, Settings, init, ok, run, start};
use crate::support::{Pki, TestNode};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json")
}

/// `openssl pkeyutl` options for RSA-OAEP with SHA-256 and MGF1-SHA-256.
const OAEP_SHA256: [&str; 6] =
    ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"];

/// The openssl CLI, or None after recording the skip.
fn openssl_or_skip(test: &str) -> Option<PathBuf> {
    let bin = PathBuf::from(std::env::var_os("KMF_OPENSSL").unwrap_or_else(|| "openssl".into()));
    match Command::new(&bin).arg("version").output() {
        Ok(out) if out.status.success() => Some(bin),
        _ => {
            crate::skip::skip(test, "the openssl CLI is not installed (apt-get install openssl)");
            None
        }
    }
}

/// Runs openssl in `dir` with `args`; panics with its stderr on failure.
fn openssl(bin: &Path, dir: &Path, args: &[&str]) {
    ok(Command::new(bin).current_dir(dir).args(args));
}

/// kmfctl failed with the gRPC `code`; returns its stderr.
fn refused(daemon_cmd: &mut Command, code: &str) -> String {
    let out = run(daemon_cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{daemon_cmd:?} succeeded");
    assert!(stderr.contains(&format!("code={code}")), "{daemon_cmd:?}: expected {code}: {stderr}");
    stderr
}

fn keys_of(d: &Daemon, pki: &Path, spec: &str) -> Vec<serde_json::Value> {
    // An empty list is left out of the JSON mapping.
    json(&ok(d.ctl(pki).args(["--json", "key", "list", spec])))["keys"].as_array().cloned().unwrap_or_default()
}

/// `wrapped.bin` = RSA-OAEP-SHA-256(aes.bin) under `import.pem` || KWP(aes.bin)(`material`), by openssl.
fn openssl_wrap(bin: &Path, dir: &Path, material: &str, out: &str) {
    openssl(bin, dir, &["rand", "-out", "aes.bin", "32"]);
    let encrypt = ["pkeyutl", "-encrypt", "-pubin", "-inkey", "import.pem", "-in", "aes.bin", "-out", "aes.enc"];
    openssl(bin, dir, &[&encrypt[..], &OAEP_SHA256[..]].concat());
    let kek = hex::encode(std::fs::read(dir.join("aes.bin")).expect("aes.bin"));
    let args = ["enc", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K", &kek, "-in", material, "-out", "key.kwp"];
    openssl(bin, dir, &args);
    let mut blob = std::fs::read(dir.join("aes.enc")).expect("aes.enc");
    assert_eq!(blob.len(), 384, "RSA-3072 OAEP output");
    blob.extend(std::fs::read(dir.join("key.kwp")).expect("key.kwp"));
    std::fs::write(dir.join(out), blob).expect("wrapped");
}

fn import_params(d: &Daemon, pki: &Path, dir: &Path, spec: &str) -> String {
    let out = dir.join("import.pem");
    let _ = std::fs::remove_file(&out);
    let p = json(&ok(d.ctl(pki).args(["--json", "key", "import-params", "--spec", spec, "--out"]).arg(&out)));
    assert_eq!(p["wrappingAlgorithm"], "RSA_AES_KEY_WRAP_SHA_256");
    let pem = std::fs::read_to_string(&out).expect("import.pem");
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    p["importToken"].as_str().expect("token").to_owned()
}

fn flip(dir: &Path, from: &str, at: usize, to: &str) {
    let mut b = std::fs::read(dir.join(from)).expect("read");
    b[at] ^= 0x01;
    std::fs::write(dir.join(to), b).expect("write");
}

#[test]
fn openssl_wraps_for_import_and_unwraps_an_export() {
    let test = "byok::openssl_wraps_for_import_and_unwraps_an_export";
    let Some(bin) = openssl_or_skip(test) else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let (pki, data, work) = (tmp.path().join("pki"), tmp.path().join("a"), tmp.path().join("work"));
    std::fs::create_dir_all(&work).expect("work dir");
    crate::binaries::operator_pki(&pki);
    init(&data, &pki);
    let d = start(&data, &pki, Settings::Flags);
    ok(d.ctl(&pki).args(["module", "create", "hr", "--default-access", "track"]));
    ok(d.ctl(&pki).args(["spec", "create", "byok", "--module", "hr", "--exportable"]));
    ok(d.ctl(&pki).args(["spec", "create", "plain", "--module", "hr"]));
    let specs = json(&ok(d.ctl(&pki).args(["--json", "spec", "list", "--module", "hr"])));
    let exportable: Vec<(String, bool)> = specs["specs"]
        .as_array()
        .expect("specs")
        .iter()
        .map(|s| (s["name"].as_str().unwrap_or("").to_owned(), s["exportable"].as_bool().unwrap_or(false)))
        .collect();
    assert!(exportable.contains(&("byok".into(), true)) && exportable.contains(&("plain".into(), false)), "{specs}");

    // The key, made by openssl; wrapped for a one-time import key.
    let token = import_params(&d, &pki, &work, "byok");
    openssl(&bin, &work, &["rand", "-out", "key.bin", "32"]);
    openssl_wrap(&bin, &work, "key.bin", "wrapped.bin");
    let import = |file: &str, token: &str, spec: &str| {
        let mut c = d.ctl(&pki);
        c.args(["--json", "key", "import", "--spec", spec, "--token", token, "--wrapped"]).arg(work.join(file));
        c
    };

    // Refused without using the token up: a flipped byte in either part, a
    // truncated blob, another spec than the token's, a 128-bit key for a
    // 256-bit spec (wrapped by openssl the same way).
    flip(&work, "wrapped.bin", 10, "bad-rsa.bin");
    flip(&work, "wrapped.bin", 384 + 5, "bad-kwp.bin");
    let e = refused(&mut import("bad-rsa.bin", &token, "byok"), "InvalidArgument");
    assert!(e.contains("does not decrypt with the import key"), "{e}");
    let e = refused(&mut import("bad-kwp.bin", &token, "byok"), "InvalidArgument");
    assert!(e.contains("integrity check failed"), "{e}");
    let whole = std::fs::read(work.join("wrapped.bin")).expect("wrapped");
    std::fs::write(work.join("short.bin"), &whole[..300]).expect("short");
    refused(&mut import("short.bin", &token, "byok"), "InvalidArgument");
    let e = refused(&mut import("wrapped.bin", &token, "plain"), "InvalidArgument");
    assert!(e.contains("is for spec byok"), "{e}");
    let aes_of_good = std::fs::read(work.join("aes.bin")).expect("aes");
    openssl(&bin, &work, &["rand", "-out", "short-key.bin", "16"]);
    openssl_wrap(&bin, &work, "short-key.bin", "wrapped-16.bin");
    let e = refused(&mut import("wrapped-16.bin", &token, "byok"), "InvalidArgument");
    assert!(e.contains("key is 128 bits, spec wants 256"), "{e}");
    assert!(keys_of(&d, &pki, "byok").is_empty(), "a refused import stored a key");
    // openssl_wrap made a new aes.bin; the good blob was wrapped with the first.
    assert_ne!(std::fs::read(work.join("aes.bin")).expect("aes"), aes_of_good);

    // The import: an Active key of origin BYOK, then the token is used up.
    let keys = json(&ok(&mut import("wrapped.bin", &token, "byok")));
    let key_id = keys["key"]["keyId"].as_str().expect("key id").to_owned();
    assert_eq!(
        (keys["key"]["origin"].as_str(), keys["key"]["state"].as_str()),
        (Some("BYOK"), Some("ACTIVE")),
        "{keys}"
    );
    let e = refused(&mut import("wrapped.bin", &token, "byok"), "FailedPrecondition");
    assert!(e.contains("already used"), "{e}");
    refused(&mut import("wrapped.bin", &"0".repeat(32), "byok"), "NotFound");
    assert_eq!(keys_of(&d, &pki, "byok").len(), 1);

    // Encrypt and decrypt with the spec use the imported key.
    let ct = json(&ok(d.ctl(&pki).args(["--json", "encrypt", "--spec", "byok", "--text", "brought", "--aad", "a"])));
    assert_eq!(ct["keyId"], key_id.as_str());
    let ct = ct["ciphertext"].as_str().expect("ciphertext").to_owned();
    let pt = json(&ok(d.ctl(&pki).args(["--json", "decrypt", "--ciphertext", &ct, "--aad", "a"])));
    let brought = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "brought");
    assert_eq!((pt["plaintext"].as_str(), pt["keyId"].as_str()), (Some(brought.as_str()), Some(key_id.as_str())));

    // Export for an RSA key openssl made; openssl unwraps the same 32 bytes.
    openssl(&bin, &work, &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", "their.key"]);
    openssl(&bin, &work, &["pkey", "-in", "their.key", "-pubout", "-out", "their.pub"]);
    let out = json(&ok(d
        .ctl(&pki)
        .args(["--json", "key", "export", &key_id, "--public-key"])
        .arg(work.join("their.pub"))
        .arg("--out")
        .arg(work.join("out.bin"))));
    let their_der = ok(Command::new(&bin)
        .current_dir(&work)
        .args(["pkey", "-pubin", "-in", "their.pub", "-outform", "DER"])
        .arg("-out")
        .arg("their.der"));
    assert!(their_der.is_empty());
    let fingerprint =
        hex::encode(kmf::signer::primitives::sha256(&std::fs::read(work.join("their.der")).expect("der")));
    assert_eq!(out["publicKeySha256"], fingerprint.as_str());
    let exported = std::fs::read(work.join("out.bin")).expect("out.bin");
    std::fs::write(work.join("out.rsa"), &exported[..384]).expect("rsa part");
    std::fs::write(work.join("out.kwp"), &exported[384..]).expect("kwp part");
    let decrypt = ["pkeyutl", "-decrypt", "-inkey", "their.key", "-in", "out.rsa", "-out", "out.aes"];
    openssl(&bin, &work, &[&decrypt[..], &OAEP_SHA256[..]].concat());
    let kek = hex::encode(std::fs::read(work.join("out.aes")).expect("out.aes"));
    openssl(
        &bin,
        &work,
        &["enc", "-d", "-id-aes256-wrap-pad", "-iv", "A65959A6", "-K", &kek, "-in", "out.kwp", "-out", "back.bin"],
    );
    assert_eq!(
        std::fs::read(work.join("back.bin")).expect("back"),
        std::fs::read(work.join("key.bin")).expect("key"),
        "the exported key is the imported one"
    );

    // Export refusals: a spec not exportable; a caller not admin; a policy.
    let plain = json(&ok(d.ctl(&pki).args(["--json", "key", "generate", "plain"])));
    let plain_id = plain["key"]["keyId"].as_str().expect("id").to_owned();
    let export = |key: &str| {
        let mut c = d.ctl(&pki);
        c.args(["key", "export", key, "--public-key"]).arg(work.join("their.pub")).arg("--out").arg(work.join("x.bin"));
        c
    };
    let e = refused(&mut export(&plain_id), "FailedPrecondition");
    assert!(e.contains("spec plain is not exportable"), "{e}");
    ok(Command::new(crate::binaries::KMFCTL)
        .args(["pki", "issue-operator", "--name", "mgr", "--role", "cryptographic_manager", "--ca-dir"])
        .arg(&pki)
        .arg("--out")
        .arg(&pki));
    let e = refused(
        export(&key_id).env("KMF_CERT", pki.join("mgr.pem")).env("KMF_KEY", pki.join("mgr.key")),
        "PermissionDenied",
    );
    assert!(e.contains("admin"), "{e}");
    ok(d.ctl(&pki).args([
        "policy",
        "create",
        "no-export",
        "--module",
        "hr",
        "--type",
        "role",
        "--role",
        "admin",
        "--result",
        "strict-reject",
        "--operation",
        "export",
    ]));
    let e = refused(&mut export(&key_id), "PermissionDenied");
    assert!(e.contains("export on byok") && e.contains("StrictReject policy no-export"), "{e}");
    // Encrypting is still allowed: the policy names export only.
    ok(d.ctl(&pki).args(["encrypt", "--spec", "byok", "--text", "still"]));
    let why = json(&ok(d.ctl(&pki).args(["--json", "policy", "explain", "--spec", "byok", "--operation", "export"])));
    assert!(!why["allowed"].as_bool().unwrap_or(false), "false is left out of the JSON mapping: {why}");
    assert!(!work.join("x.bin").exists(), "a refused export wrote a file");
    assert_eq!(keys_of(&d, &pki, "byok").len(), 1, "refusals change no key");
    let refusals = json(&ok(d.ctl(&pki).args(["--json", "audit", "list", "--limit", "1000"])));
    let refusals: Vec<&serde_json::Value> = refusals["entries"].as_array().expect("entries").iter().collect();
    assert!(
        refusals
            .iter()
            .any(|e| e["action"] == "call.refused" && e["subject"].as_str().unwrap_or("").contains("ExportKey")),
        "the role refusal is audited"
    );
    assert!(
        refusals
            .iter()
            .any(|e| e["action"] == "policy.denied" && e["details"].as_str().unwrap_or("").starts_with("export:")),
        "the policy refusal is audited"
    );

    // The audit: one import, one export (naming the fingerprint), the refusals; never material.
    let audit = json(&ok(d.ctl(&pki).args(["--json", "audit", "list", "--action", "key.", "--limit", "1000"])));
    let entries: Vec<&serde_json::Value> = audit["entries"].as_array().expect("entries").iter().collect();
    let count = |action: &str, outcome: &str| {
        entries.iter().filter(|e| e["action"] == action && e["outcome"] == outcome).count()
    };
    assert_eq!(count("key.import", "success"), 1);
    assert_eq!(count("key.export", "success"), 1);
    assert_eq!(
        count("key.export", "refused"),
        1,
        "not exportable (the role and policy refusals are call.refused / policy.denied)"
    );
    let exported_entry =
        entries.iter().find(|e| e["action"] == "key.export" && e["outcome"] == "success").expect("export");
    assert!(exported_entry["details"].as_str().unwrap_or("").contains(&fingerprint), "{exported_entry}");
    let key_hex = hex::encode(std::fs::read(work.join("key.bin")).expect("key"));
    assert!(!audit.to_string().contains(&key_hex), "material in the audit log");
    let log = std::fs::read_to_string(&d.log).expect("log");
    assert!(!log.contains(&key_hex), "material in the daemon log");
}

/// Import keys expire (FAILED_PRECONDITION) and the next GetImportParameters
/// deletes them; an unknown token is NOT_FOUND. With a manual clock, in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_tokens_expire_and_are_swept() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let options = StartOptions { clock: clock.clone() as Arc<dyn kmf::clock::Clock>, ..Default::default() };
    let node = TestNode::start_opts(&pki, None, None, options).await;
    let mut ops = node.admin(&pki).await;
    let mut spec = kmf::cli::kmfctl::aes_spec("m", "s", 256);
    spec.exportable = true;
    ops.spec_from(spec, false).await;
    let params =
        |expires_in: Option<prost_types::Duration>| pb::GetImportParametersRequest { spec: "s".into(), expires_in };
    let p = ops.keys.get_import_parameters(params(None)).await.expect("params").into_inner();
    let expires = p.expires_at.expect("expiry");
    let day = expires.seconds - kmf::clock::Clock::now(&*clock).0 / 1000;
    assert!((86_399..=86_400).contains(&day), "default lifetime 24 h: {day}");
    let to = recipient(&p.public_key_pem).expect("the import key as a recipient");
    let wrapped = wrap_for(&to, &DataKey::new(Zeroizing::new(vec![5u8; 32]))).expect("wrap");
    let import = |token: &str, wrapped: &[u8]| pb::ImportKeyRequest {
        import_token: token.into(),
        spec: "s".into(),
        wrapped_key: wrapped.to_vec(),
    };
    let store = ByokStore::new(node.running().services.store());
    assert_eq!(store.count_import_keys().await.unwrap(), 1);

    clock.advance_millis(24 * 3_600_000);
    let e = ops.keys.import_key(import(&p.import_token, &wrapped)).await.expect_err("expired");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("expired"), "{e:?}");
    assert!(ops.keys_of("s").await.is_empty());
    let unknown = ops.keys.import_key(import(&"a".repeat(32), &wrapped)).await.expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
    let bad = ops.keys.import_key(import("not-a-token", &wrapped)).await.expect_err("malformed token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    for (secs, code) in [(0, Code::InvalidArgument), (8 * 86_400, Code::InvalidArgument)] {
        let d = prost_types::Duration { seconds: secs, nanos: 0 };
        let e = ops.keys.get_import_parameters(params(Some(d))).await.expect_err("bad lifetime");
        assert_eq!(e.code(), code);
    }

    // The next parameters sweep the expired one (audited); a short one works at once.
    let short = prost_types::Duration { seconds: 60, nanos: 0 };
    let p2 = ops.keys.get_import_parameters(params(Some(short))).await.expect("params").into_inner();
    assert_eq!(store.count_import_keys().await.unwrap(), 1, "the expired import key was deleted");
    let swept = ops.audit_entries("key.import_parameters.delete").await;
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].subject, p.import_token);
    let e = ops.keys.import_key(import(&p.import_token, &wrapped)).await.expect_err("swept");
    assert_eq!(e.code(), Code::NotFound);
    let to = recipient(&p2.public_key_pem).expect("recipient");
    let wrapped = wrap_for(&to, &DataKey::new(Zeroizing::new(vec![6u8; 32]))).expect("wrap");
    let key =
        ops.keys.import_key(import(&p2.import_token, &wrapped)).await.expect("import").into_inner().key.expect("key");
    assert_eq!((key.origin, key.state), (pb::KeyOrigin::Byok as i32, pb::KeyState::Active as i32));
    assert!(key.imported_at.is_some());
    // A used import key stays (marked used) until it expires.
    assert_eq!(store.count_import_keys().await.unwrap(), 1);
    clock.advance_millis(61_000);
    ops.keys.get_import_parameters(params(None)).await.expect("params");
    assert_eq!(store.count_import_keys().await.unwrap(), 1, "the used one swept, the new one kept");
}

/// An ImportKey request for a new import token of spec "s" with 32 bytes of `fill`.
async fn import_request(
    mut keys: pb::key_management_client::KeyManagementClient<tonic::transport::Channel>,
    fill: u8,
) -> pb::ImportKeyRequest {
    let params = pb::GetImportParametersRequest { spec: "s".into(), expires_in: None };
    let p = keys.get_import_parameters(params).await.expect("params").into_inner();
    let to = recipient(&p.public_key_pem).expect("recipient");
    let wrapped = wrap_for(&to, &DataKey::new(Zeroizing::new(vec![fill; 32]))).expect("wrap");
    pb::ImportKeyRequest { import_token: p.import_token, spec: "s".into(), wrapped_key: wrapped }
}

/// Concurrent callers: one token imported by 8 callers at once stores one key
/// (the others FAILED_PRECONDITION); 8 tokens imported at once into one spec
/// all succeed with distinct versions and one current key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_imports_use_a_token_once_and_share_a_spec() {
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec_from(kmf::cli::kmfctl::aes_spec("m", "s", 256), false).await;
    let same = import_request(ops.keys.clone(), 1).await;
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut keys, req) = (ops.keys.clone(), same.clone());
        racers.spawn(async move { keys.import_key(req).await.map(|_| ()).map_err(|e| e.code()) });
    }
    let outcomes: Vec<_> = racers.join_all().await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, Ok(()) | Err(Code::FailedPrecondition))), "{outcomes:?}");
    assert_eq!(ops.keys_of("s").await.len(), 1);

    let mut requests = Vec::new();
    for fill in 2..10 {
        requests.push(import_request(ops.keys.clone(), fill).await);
    }
    let mut importers = tokio::task::JoinSet::new();
    for req in requests {
        let mut keys = ops.keys.clone();
        importers.spawn(async move { keys.import_key(req).await.map(|_| ()).map_err(|e| e.to_string()) });
    }
    let outcomes: Vec<_> = importers.join_all().await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let keys = ops.keys_of("s").await;
    let mut ids: Vec<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9, "{keys:?}");
    let current = keys.iter().filter(|k| k.state == pb::KeyState::Active as i32).count();
    assert_eq!(current, 1, "one current key: {keys:?}");
}

/// Records the transport keys a signer destroys (and delegates everything).
struct DestroyLog {
    inner: Arc<dyn kmf::signer::Signer>,
    destroyed: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl kmf::signer::Signer for DestroyLog {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn wrap(&self, key: &DataKey) -> Result<kmf::domain::key::WrappedKey, kmf::signer::CryptoError> {
        self.inner.wrap(key)
    }
    fn unwrap(&self, wrapped: &kmf::domain::key::WrappedKey) -> Result<DataKey, kmf::signer::CryptoError> {
        self.inner.unwrap(wrapped)
    }
    fn create_transport_key(&self) -> Result<kmf::signer::TransportKey, kmf::signer::CryptoError> {
        self.inner.create_transport_key()
    }
    fn open_transport_key(
        &self,
        handle: &[u8],
        wrapping: kmf::domain::bundle::WrappingAlgorithm,
        wrapped_aes_key: &[u8],
    ) -> Result<DataKey, kmf::signer::CryptoError> {
        self.inner.open_transport_key(handle, wrapping, wrapped_aes_key)
    }
    fn destroy_transport_key(&self, handle: &[u8]) -> Result<(), kmf::signer::CryptoError> {
        self.destroyed.lock().expect("log").push(handle.to_vec());
        self.inner.destroy_transport_key(handle)
    }
}

/// The import destroys its signer key after the commit, then erases the
/// handle; a crash between (the key stored, the handle still in the used row)
/// is made good by the sweep of expired import keys, which destroys it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_import_keys_signer_key_is_destroyed_even_after_a_crash() {
    let pki = Pki::new();
    let clock = ManualClock::starting_now();
    let destroyed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = destroyed.clone();
    let options = StartOptions {
        clock: clock.clone() as Arc<dyn kmf::clock::Clock>,
        wrap_signer: Box::new(move |inner| Arc::new(DestroyLog { inner, destroyed: log })),
        ..Default::default()
    };
    let node = TestNode::start_opts(&pki, None, None, options).await;
    let mut ops = node.admin(&pki).await;
    ops.spec_from(kmf::cli::kmfctl::aes_spec("m", "s", 256), false).await;
    let store = ByokStore::new(node.running().services.store());
    let token_of = |req: &pb::ImportKeyRequest| kmf::domain::ids::ImportToken::parse(&req.import_token).expect("token");

    let normal = import_request(ops.keys.clone(), 1).await;
    let row = store.import_key(token_of(&normal)).await.unwrap().expect("row");
    ops.keys.import_key(normal.clone()).await.expect("import");
    assert_eq!(*destroyed.lock().unwrap(), vec![row.handle.clone()], "destroyed after the commit");
    assert!(store.import_key(token_of(&normal)).await.unwrap().expect("used row").handle.is_empty());

    // As if kmfd died right after the import's commit: used, handle still there.
    let crashed = import_request(ops.keys.clone(), 2).await;
    let row = store.import_key(token_of(&crashed)).await.unwrap().expect("row");
    let (sys_id, now) = (node.running().services.sys_id().clone(), kmf::clock::Clock::now(&*clock));
    let plan = move |existing: &[kmf::domain::key::KeyRecord]| {
        let key = kmf::domain::key::plan_import(
            &sys_id,
            &kmf::domain::ids::Name::parse("s", "spec").expect("name"),
            existing,
            &Default::default(),
            now,
        );
        (key, Vec::new())
    };
    let spec = kmf::domain::ids::Name::parse("s", "spec").expect("name");
    let wrapped = kmf::domain::key::WrappedKey(vec![7; 40]);
    store.use_import_key(row.token.clone(), now, spec, wrapped, plan).await.expect("use");
    assert_eq!(store.import_key(row.token.clone()).await.unwrap().expect("row").handle, row.handle);

    clock.advance_millis(24 * 3_600_000 + 1_000);
    let p = pb::GetImportParametersRequest { spec: "s".into(), expires_in: None };
    ops.keys.get_import_parameters(p).await.expect("params (sweeps)");
    assert!(destroyed.lock().unwrap().contains(&row.handle), "the sweep destroyed the crashed import's key");
    assert!(store.import_key(row.token.clone()).await.unwrap().is_none(), "and deleted its row");
}

/// The store's side of invariant 17 on both engines: the import stores the
/// key and uses the import key up in one conditional transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_keys_are_used_once_on_both_engines() {
    use kmf::domain::audit::{AuditEvent, Outcome};
    use kmf::domain::bundle::WrappingAlgorithm;
    use kmf::domain::byok::ImportKey;
    use kmf::domain::ids::{ImportToken, UnixMillis};
    use kmf::domain::key::{KeyOrigin, LifecycleDefinition, WrappedKey, plan_import};
    use kmf::store::{CatalogStore, StoreError};

    use crate::store_contract::{name, subjects, sys};

    for s in subjects() {
        let (store, imports) = (&s.store, ByokStore::new(&s.store));
        let event = |action: &str| AuditEvent::new(UnixMillis(1), "test", action, "subject", Outcome::Success);
        let import = |n: u8, expires: i64| ImportKey {
            token: ImportToken::from_random([n; 16]),
            spec: name("s"),
            created_at: UnixMillis(1),
            expires_at: UnixMillis(expires),
            handle: vec![n; 8],
            wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256,
            used: None,
        };
        let (a, old) = (import(1, 1000), import(2, 50));
        imports.insert_import_key(old.clone(), vec![], vec![event("params")]).await.unwrap();
        // A new import key sweeps the expired one in its own transaction.
        assert_eq!(imports.expired_import_keys(UnixMillis(60), 10).await.unwrap(), vec![old.clone()], "{}", s.name);
        imports.insert_import_key(a.clone(), vec![old.token.clone()], vec![event("params")]).await.unwrap();
        assert_eq!(imports.count_import_keys().await.unwrap(), 1, "{}", s.name);
        assert!(imports.import_key(old.token.clone()).await.unwrap().is_none());

        let lc = LifecycleDefinition::default();
        let key = plan_import(&sys(1), &name("s"), &[], &lc, UnixMillis(5));
        assert_eq!(key.origin, KeyOrigin::Byok);
        let w = WrappedKey(vec![9; 40]);
        // The plan sees the spec's keys as the transaction reads them.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let planned = || {
            let seen = Arc::clone(&seen);
            move |existing: &[kmf::domain::key::KeyRecord]| {
                seen.lock().unwrap().push(existing.len());
                (plan_import(&sys(1), &name("s"), existing, &lc, UnixMillis(5)), vec![event("import")])
            }
        };
        let expired = imports.use_import_key(a.token.clone(), UnixMillis(1000), name("s"), w.clone(), planned()).await;
        assert!(matches!(expired, Err(StoreError::Missing { .. })), "{}: {expired:?}", s.name);
        let stored = imports.use_import_key(a.token.clone(), UnixMillis(5), name("s"), w.clone(), planned()).await;
        assert_eq!(stored.unwrap(), key, "{}", s.name);
        // Used, with the handle kept until the signer's key is destroyed.
        let used = imports.import_key(a.token.clone()).await.unwrap().unwrap();
        assert_eq!((used.used, &used.handle), (Some((UnixMillis(5), key.id.clone())), &a.handle), "{}", s.name);
        imports.erase_import_handle(a.token.clone(), b"another handle".to_vec()).await.unwrap();
        let kept = imports.import_key(a.token.clone()).await.unwrap().unwrap().handle;
        assert_eq!(kept, a.handle, "{}: not that handle", s.name);
        imports.erase_import_handle(a.token.clone(), a.handle.clone()).await.unwrap();
        assert!(imports.import_key(a.token.clone()).await.unwrap().unwrap().handle.is_empty(), "{}", s.name);
        assert_eq!(CatalogStore::new(store).key(key.id.clone()).await.unwrap().unwrap(), (key.clone(), w.clone()));
        let again = imports.use_import_key(a.token.clone(), UnixMillis(6), name("s"), w.clone(), planned()).await;
        assert!(matches!(again, Err(StoreError::Stale { .. })), "{}: {again:?}", s.name);
        // A plan naming a key id that is taken: nothing written, the import key unused.
        let b = import(3, 1000);
        imports.insert_import_key(b.clone(), vec![], vec![event("params")]).await.unwrap();
        let taken_id = key.clone();
        let stale_plan = move |_: &[kmf::domain::key::KeyRecord]| (taken_id.clone(), vec![event("import")]);
        let taken = imports.use_import_key(b.token.clone(), UnixMillis(6), name("s"), w.clone(), stale_plan).await;
        assert!(matches!(taken, Err(StoreError::AlreadyExists { .. })), "{}: {taken:?}", s.name);
        assert_eq!(imports.import_key(b.token.clone()).await.unwrap().unwrap(), b, "{}", s.name);
        // A plan made inside the transaction takes the next version instead.
        let next = imports.use_import_key(b.token.clone(), UnixMillis(7), name("s"), w.clone(), planned()).await;
        assert_eq!(next.unwrap().id.version, 2, "{}", s.name);
        assert_eq!(*seen.lock().unwrap(), vec![0, 1], "{}: the plans saw 0 keys, then 1", s.name);
        assert_eq!(CatalogStore::new(store).count_keys().await.unwrap(), 2);
        assert!(CatalogStore::new(store).key(key.id.clone()).await.unwrap().unwrap().0.origin == KeyOrigin::Byok);
    }
}

/// With the pkcs11 signer (SoftHSM2): the import key lives on the token (and
/// says which OAEP digest the token takes: SoftHSM's is SHA-1), a tampered
/// blob leaves it there, the import destroys it; the key, wrapped under the
/// token's KEK, encrypts and exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_with_the_pkcs11_signer() {
    use kmf::app::SignerConfig;
    use kmf::domain::bundle::WrappingAlgorithm;
    use kmf::signer::primitives::{kwp_unwrap, kwp_wrap, rsa_oaep_decrypt, rsa_oaep_encrypt};

    use crate::signer_contract::transport_objects;
    use crate::softhsm::softhsm_child;

    let hsm = softhsm_child!("import_and_export_with_the_pkcs11_signer");
    let [token] = hsm.tokens();
    let pki = Pki::new();
    let mut node = TestNode::start_full(&pki, Some(SignerConfig::Pkcs11(hsm.config(&token))), |p| p).await;
    let mut ops = node.admin(&pki).await;
    let mut spec = kmf::cli::kmfctl::aes_spec("m", "s", 256);
    spec.exportable = true;
    ops.spec_from(spec, false).await;

    let req = pb::GetImportParametersRequest { spec: "s".into(), expires_in: None };
    let p = ops.keys.get_import_parameters(req).await.expect("params").into_inner();
    assert_eq!(transport_objects(&token), 1, "the import key is on the token");
    let wrapping = match pb::WrappingAlgorithm::try_from(p.wrapping_algorithm) {
        Ok(pb::WrappingAlgorithm::RsaAesKeyWrapSha256) => WrappingAlgorithm::RsaAesKeyWrapSha256,
        Ok(pb::WrappingAlgorithm::RsaAesKeyWrapSha1) => WrappingAlgorithm::RsaAesKeyWrapSha1,
        other => panic!("wrapping {other:?}"),
    };
    let material = [0x42u8; 32];
    let aes = [0x17u8; 32];
    let mut blob = rsa_oaep_encrypt(&p.public_key_der, wrapping, &aes).expect("oaep");
    blob.extend(kwp_wrap(&aes, &material).expect("kwp"));
    let import = |wrapped: Vec<u8>| pb::ImportKeyRequest {
        import_token: p.import_token.clone(),
        spec: "s".into(),
        wrapped_key: wrapped,
    };
    let mut tampered = blob.clone();
    tampered[7] ^= 1;
    let e = ops.keys.import_key(import(tampered)).await.expect_err("tampered");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert_eq!(transport_objects(&token), 1, "a refused blob leaves the import key");
    let key = ops.keys.import_key(import(blob)).await.expect("import").into_inner().key.expect("key");
    assert_eq!((key.origin, key.state), (pb::KeyOrigin::Byok as i32, pb::KeyState::Active as i32));
    assert_eq!(transport_objects(&token), 0, "the import destroyed the import key");

    let enc = pb::EncryptRequest { spec: "s".into(), plaintext: b"on the token".to_vec(), associated_data: vec![] };
    let ct = ops.crypto.encrypt(enc).await.expect("encrypt").into_inner();
    assert_eq!(ct.key_id, key.key_id);
    assert_eq!(ops.decrypt(&ct.ciphertext, b"").await.expect("decrypt"), b"on the token");

    let theirs = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).expect("rsa")).expect("pkey");
    let pem = String::from_utf8(theirs.public_key_to_pem().expect("pem")).expect("utf8");
    let req = pb::ExportKeyRequest { key_id: key.key_id.clone(), public_key_pem: pem };
    let out = ops.keys.export_key(req).await.expect("export").into_inner();
    let (rsa, kwp) = out.wrapped_key.split_at(256);
    let aes = rsa_oaep_decrypt(&theirs, WrappingAlgorithm::RsaAesKeyWrapSha256, rsa).expect("their key opens it");
    assert_eq!(&kwp_unwrap(&aes, kwp).expect("kwp")[..], &material[..]);
    node.stop().await;
}
