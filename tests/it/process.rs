//! The built binaries end to end: two `kmfd` processes driven by `kmfctl`,
//! graceful SIGTERM, restart with persisted keys, config check, and a scan of
//! the databases and logs for plaintext key material.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use kmf::domain::ids::Name;
use kmf::signer::Signer;
use kmf::signer::software::SoftwareSigner;
use kmf::store::{CatalogStore, Store};

use crate::binaries::{KMFD, Settings, init, ok, run, start};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json")
}

#[test]
fn two_daemons_exchange_keys_driven_by_kmfctl() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (pki, a_dir, b_dir) = (tmp.path().join("pki"), tmp.path().join("a"), tmp.path().join("b"));
    crate::binaries::operator_pki(&pki);
    let a_id = init(&a_dir, &pki);
    let b_id = init(&b_dir, &pki);
    let second_init = run(Command::new(KMFD).args(["init", "--host", "127.0.0.1:0", "--data-dir"]).arg(&a_dir));
    assert!(!second_init.status.success(), "init overwrote an instance");

    // config check: good, then each bad field named.
    let good = ok(Command::new(KMFD)
        .args(["config", "check", "--data-dir"])
        .arg(&a_dir)
        .arg("--tls-ca")
        .arg(pki.join("ca.pem")));
    assert!(good.contains("config ok"));
    let bad = run(Command::new(KMFD).args(["config", "check", "--listen", "nowhere", "--data-dir"]).arg(&a_dir));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`listen`"), "{}", String::from_utf8_lossy(&bad.stderr));

    let a = start(&a_dir, &pki, Settings::ConfigFile);
    let b = start(&b_dir, &pki, Settings::Flags);
    let info = json(&ok(a.ctl(&pki).args(["--json", "instance", "info"])));
    assert_eq!(info["sysId"], a_id.as_str());
    assert_eq!(info["signerKind"], "software");

    ok(a.ctl(&pki).args(["module", "create", "hr", "--default-access", "track"]));
    ok(a.ctl(&pki).args(["spec", "create", "salary", "--module", "hr"]));
    ok(a.ctl(&pki).args(["key", "generate", "salary"]));
    ok(a.ctl(&pki).args(["key", "rotate", "salary"]));
    ok(b.ctl(&pki).args(["module", "create", "hr", "--default-access", "track"]));
    ok(b.ctl(&pki).args(["spec", "create", "salary", "--module", "hr"]));

    // The other purposes through kmfctl: a signature spec, sign, verify, public key.
    let spec = ["spec", "create", "releases", "--module", "hr", "--purpose", "signature", "--algorithm", "rsa"];
    let listed = json(&ok(a.ctl(&pki).arg("--json").args(spec).args(["--size", "2048"])));
    assert_eq!(listed["spec"]["scheme"], "RSA-2048 PSS-SHA-256");
    ok(a.ctl(&pki).args(["key", "generate", "releases"]));
    let sig = json(&ok(a.ctl(&pki).args(["--json", "crypto", "sign", "--spec", "releases", "--text", "v1.0"])));
    let sig = sig["signature"].as_str().expect("signature").to_owned();
    let good = ok(a.ctl(&pki).args(["crypto", "verify", "--signature", &sig, "--text", "v1.0"]));
    let bad = ok(a.ctl(&pki).args(["crypto", "verify", "--signature", &sig, "--text", "v1.1"]));
    assert_eq!((good.trim(), bad.trim()), ("true", "false"));
    let pem = ok(a.ctl(&pki).args(["crypto", "public-key", "--spec", "releases"]));
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let hmac =
        json(&ok(a.ctl(&pki).args(["--json", "spec", "create", "tags", "--module", "hr", "--algorithm", "hmac"])));
    assert_eq!(
        (hmac["spec"]["purpose"].as_str(), hmac["spec"]["scheme"].as_str()),
        (Some("SYMMETRIC_AUTHENTICITY"), Some("HMAC-SHA-256"))
    );
    let refused = run(a.ctl(&pki).args([
        "spec",
        "create",
        "x",
        "--module",
        "hr",
        "--purpose",
        "symmetric_data_encryption",
        "--algorithm",
        "hmac",
    ]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("symmetric_data_encryption takes"), "{stderr}");

    let ct =
        json(&ok(a.ctl(&pki).args(["--json", "encrypt", "--spec", "salary", "--text", "4200 EUR", "--aad", "emp:7"])));
    let ct = ct["ciphertext"].as_str().expect("ciphertext").to_owned();

    let before = run(b.ctl(&pki).args(["decrypt", "--ciphertext", &ct, "--aad", "emp:7"]));
    assert!(!before.status.success(), "target decrypted before the exchange");
    assert!(
        String::from_utf8_lossy(&before.stderr).contains("code=NotFound"),
        "{}",
        String::from_utf8_lossy(&before.stderr)
    );

    let created = json(&ok(b.ctl(&pki).args([
        "--json",
        "exchange",
        "create",
        "--source-sys-id",
        &a_id,
        "--source-host",
        &a.addr,
        "--spec",
        "salary",
    ])));
    let id = created["request"]["requestId"].as_str().expect("id").to_owned();
    assert_eq!(created["request"]["status"], "REQUEST_PENDING");
    let pending = json(&ok(a.ctl(&pki).args(["--json", "exchange", "list", "--status", "pending"])));
    assert_eq!(pending["requests"][0]["requestId"], id.as_str());
    assert_eq!(pending["requests"][0]["targetSysId"], b_id.as_str());
    // --wait: exit 0 only once the request is COMPLETED (here at once).
    let approved = json(&ok(a.ctl(&pki).args(["--json", "exchange", "approve", &id, "--wait", "--timeout", "30s"])));
    assert_eq!(approved["request"]["status"], "REQUEST_COMPLETED");
    assert_eq!(approved["request"]["exportedKeyCount"], 2);
    let on_b = json(&ok(b.ctl(&pki).args(["--json", "exchange", "get", &id])));
    let on_b = &on_b["request"];
    assert_eq!((on_b["status"].as_str(), on_b["importedKeyCount"].as_u64()), (Some("REQUEST_COMPLETED"), Some(2)));
    let plain = ok(b.ctl(&pki).args(["decrypt", "--ciphertext", &ct, "--aad", "emp:7"]));
    assert_eq!(plain.trim(), "4200 EUR");
    let again = run(a.ctl(&pki).args(["exchange", "approve", &id]));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("code=FailedPrecondition"));
    // The table output is readable too.
    let table = ok(b.ctl(&pki).args(["key", "list", "salary"]));
    assert!(table.starts_with("KEY_ID") && table.contains("Expired"), "{table}");

    // A client without a certificate: refused, and logged at warn with the peer address.
    refuse_plain_tls_client(&a.addr);
    wait_for_log(&a.log, "TLS handshake refused");

    let a_log = {
        let mut a = a;
        a.stop()
    };
    let b_log = {
        let mut b = b;
        b.stop()
    };
    assert!(
        a_log.contains("WARN") && a_log.contains("TLS handshake refused") && a_log.contains("peer=127.0.0.1:"),
        "{a_log}"
    );

    // Restart (settings from KMF_* variables, JSON logs): keys and requests persisted.
    let log_len = std::fs::metadata(b_dir.join(format!("kmfd-{}.log", std::process::id()))).map_or(0, |m| m.len());
    let b = start(&b_dir, &pki, Settings::EnvJson);
    let keys = json(&ok(b.ctl(&pki).args(["--json", "key", "list", "salary"])));
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2));
    let plain = ok(b.ctl(&pki).args(["decrypt", "--ciphertext", &ct, "--aad", "emp:7"]));
    assert_eq!(plain.trim(), "4200 EUR");
    let b_log2 = {
        let mut b = b;
        b.stop()
    };
    let json_lines: Vec<&str> = b_log2[log_len as usize..].lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!json_lines.is_empty(), "the restarted daemon logged nothing");
    for line in json_lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{line}");
    }

    scan_for_key_material(&[&a_dir, &b_dir], &[a_log, b_log, b_log2].concat());
}

fn refuse_plain_tls_client(addr: &str) {
    use std::io::{Read, Write};
    // Bytes that are not a TLS ClientHello: the handshake fails and the
    // daemon must log the refusal with the peer address.
    let mut tcp = std::net::TcpStream::connect(addr).expect("tcp");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    tcp.write_all(b"this is not TLS\r\n\r\n").expect("write");
    let mut buf = [0u8; 64];
    let _ = tcp.read(&mut buf);
}

fn wait_for_log(log: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(log).unwrap_or_default().contains(needle) {
        assert!(Instant::now() < deadline, "log never showed `{needle}`");
        std::thread::sleep(Duration::from_millis(20)); // poll interval; the loop is bounded by its deadline
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Recovers every data key with the KEK, then looks for it (raw, hex,
/// base64) in the database files and the logs. It also checks that the
/// wrapped form IS in the database, so the scan demonstrably reads the data.
fn scan_for_key_material(dirs: &[&Path], logs: &str) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut checked = 0;
    for dir in dirs {
        let db_bytes = std::fs::read(dir.join("kmf.redb")).expect("db file");
        let signer = SoftwareSigner::load(&dir.join("kek.key")).expect("kek");
        let store = std::sync::Arc::new(Store::open_redb(&dir.join("kmf.redb")).expect("open store"));
        let keys =
            crate::support::wait_for(CatalogStore::new(&store).keys(Name::parse("salary", "spec").expect("name")));
        for (_, wrapped) in keys.expect("keys") {
            let dek = signer.unwrap(&wrapped).expect("unwrap");
            let raw = dek.expose();
            assert_eq!(raw.len(), 32);
            for form in [raw.to_vec(), hex::encode(raw).into_bytes(), b64.encode(raw).into_bytes()] {
                assert!(!contains(&db_bytes, &form), "plaintext key material in {}", dir.display());
                assert!(!contains(logs.as_bytes(), &form), "plaintext key material in the logs");
            }
            assert!(
                contains(&db_bytes, hex::encode(&wrapped.0).as_bytes()),
                "wrapped key not found: the scan is blind"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4, "two keys on each instance");
    assert!(logs.len() > 1000, "the logs were captured");
}
