//! kill -9 during a BYOK import, through the binaries: `kmfctl key import`
//! runs while the test kills `kmfd` at a random moment, then starts it again on
//! the same port. The import is all or nothing: either the key is stored and
//! its token used up (a retry is FAILED_PRECONDITION), or nothing is stored and
//! the same token imports it now. Never two keys for one token, never a key
//! whose token is still usable, and the stored key exports back to exactly
//! the material that was wrapped.
//!
//! `KMF_BYOK_CRASH_TRIALS` sets the number of trials (default 10),
//! `KMF_CRASH_SEED` the seed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kmf::domain::bundle::WrappingAlgorithm;
use kmf::domain::key::DataKey;
use kmf::signer::byok::{recipient, wrap_for};
use kmf::signer::primitives::{kwp_unwrap, random_key, rsa_oaep_decrypt};
use openssl::pkey::PKey;
use openssl::rsa::Rsa;

use crate::binaries::{Daemon, Settings, free_port, init, ok, run, start_listening};

/// Kill moments are drawn from 0 to this many milliseconds after kmfctl starts.
const KILL_WINDOW_MS: u64 = 60;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json")
}

fn byok_keys(d: &Daemon, pki: &Path) -> Vec<String> {
    let keys = json(&ok(d.ctl(pki).args(["--json", "key", "list", "brought"])))["keys"].as_array().cloned();
    keys.unwrap_or_default()
        .iter()
        .filter(|k| k["origin"] == "BYOK")
        .map(|k| k["keyId"].as_str().expect("keyId").to_owned())
        .collect()
}

#[test]
fn kill_9_during_a_byok_import_stores_the_key_once_or_not_at_all() {
    let (trials, seed, mut rng) = crate::binaries::trials("byok crash", "KMF_BYOK_CRASH_TRIALS", 10);
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = tmp.path().join("pki");
    crate::binaries::operator_pki(&pki);
    let dir = tmp.path().join("kmf");
    init(&dir, &pki);
    let listen = free_port();
    let mut daemon = start_listening(&dir, &pki, Settings::Flags, &listen);
    ok(daemon.ctl(&pki).args(["module", "create", "hr", "--default-access", "track"]));
    ok(daemon.ctl(&pki).args(["spec", "create", "brought", "--module", "hr", "--exportable"]));
    let ours = PKey::from_rsa(Rsa::generate(3072).expect("rsa")).expect("pkey");
    let ours_pem = tmp.path().join("ours.pub");
    std::fs::write(&ours_pem, ours.public_key_to_pem().expect("pem")).expect("write");

    let (mut stored_before_restart, mut imported_after_restart) = (0, 0);
    for trial in 0..trials {
        let import_pem = tmp.path().join(format!("import-{trial}.pem"));
        let params = json(&ok(daemon
            .ctl(&pki)
            .args(["--json", "key", "import-params", "--spec", "brought", "--out"])
            .arg(&import_pem)));
        let token = params["importToken"].as_str().expect("token").to_owned();
        let to = recipient(&std::fs::read_to_string(&import_pem).expect("pem")).expect("recipient");
        let material = random_key(32);
        let wrapped = tmp.path().join(format!("wrapped-{trial}.bin"));
        std::fs::write(&wrapped, wrap_for(&to, &material).expect("wrap")).expect("write");
        let before = byok_keys(&daemon, &pki);

        let mut import = daemon
            .ctl(&pki)
            .args(["key", "import", "--spec", "brought", "--token", &token, "--wrapped"])
            .arg(&wrapped)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kmfctl");
        let kill_after = rng.next() % KILL_WINDOW_MS;
        std::thread::sleep(Duration::from_millis(kill_after)); // the random kill moment is what the trial varies
        daemon.child.kill().expect("kill -9");
        daemon.child.wait().expect("reap");
        let _ = import.wait();
        daemon = start_listening(&dir, &pki, Settings::Flags, &listen);

        let after_crash = byok_keys(&daemon, &pki);
        let retry = run(daemon
            .ctl(&pki)
            .args(["key", "import", "--spec", "brought", "--token", &token, "--wrapped"])
            .arg(&wrapped));
        let retry_err = String::from_utf8_lossy(&retry.stderr).into_owned();
        match after_crash.len() - before.len() {
            1 => {
                stored_before_restart += 1;
                assert!(!retry.status.success(), "trial {trial}: the token imported twice");
                assert!(retry_err.contains("code=FailedPrecondition"), "trial {trial}: {retry_err}");
            }
            0 => {
                imported_after_restart += 1;
                assert!(retry.status.success(), "trial {trial}: the unused token was refused: {retry_err}");
            }
            n => panic!("trial {trial}: {n} keys appeared for one token"),
        }
        let now = byok_keys(&daemon, &pki);
        assert_eq!(now.len(), before.len() + 1, "trial {trial}: one key per token");
        let new_key = now.iter().find(|k| !before.contains(k)).expect("the new key").clone();
        let exported = exported_material(&daemon, &pki, &new_key, &ours_pem, &ours);
        assert!(exported.expose() == material.expose(), "trial {trial}: the stored key is not the wrapped material");
    }
    println!(
        "byok crash trials: {trials} run (seed {seed}); key stored before the kill in {stored_before_restart}, \
         imported by the retry after the restart in {imported_after_restart}; 0 doubled, 0 lost"
    );
    daemon.stop();
}

/// `kmfctl key export` for our RSA key, opened here.
fn exported_material(d: &Daemon, pki: &Path, key: &str, pem: &Path, ours: &PKey<openssl::pkey::Private>) -> DataKey {
    let out = pem.with_file_name("export.bin");
    let _ = std::fs::remove_file(&out);
    ok(d.ctl(pki).args(["key", "export", key, "--public-key"]).arg(pem).arg("--out").arg(&out));
    let blob = std::fs::read(&out).expect("export");
    let aes = rsa_oaep_decrypt(ours, WrappingAlgorithm::RsaAesKeyWrapSha256, &blob[..384]).expect("rsa");
    DataKey::new(kwp_unwrap(&aes, &blob[384..]).expect("kwp"))
}
