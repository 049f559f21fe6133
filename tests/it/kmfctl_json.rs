//! `kmfctl --json` prints byte for byte what grpcurl prints for the same call
//! against the same daemon: names, enums, 64-bit integers, bytes, timestamps,
//! durations, empty messages, escaping.

use std::path::Path;
use std::process::Command;

use crate::binaries::{Daemon, Settings, init, ok, start};

/// grpcurl's stdout for `method` with `data` as operator "ops".
fn grpcurl(bin: &Path, pki: &Path, daemon: &Daemon, method: &str, data: &str) -> String {
    let mut cmd = Command::new(bin);
    cmd.arg("-cacert")
        .arg(pki.join("ca.pem"))
        .arg("-cert")
        .arg(pki.join("ops.pem"))
        .arg("-key")
        .arg(pki.join("ops.key"))
        .args(["-max-time", "30", "-d", data, &daemon.addr, method]);
    ok(&mut cmd)
}

/// Asserts that `kmfctl --json <args>` and grpcurl's `method` print the same bytes.
fn same(bin: &Path, pki: &Path, daemon: &Daemon, args: &[&str], method: &str, data: &str) -> String {
    let ours = ok(daemon.ctl(pki).arg("--json").args(args));
    let theirs = grpcurl(bin, pki, daemon, method, data);
    assert_eq!(ours, theirs, "kmfctl --json {args:?} differs from grpcurl {method} {data}");
    ours
}

#[test]
fn kmfctl_json_is_grpcurl_output() {
    let Some(bin) = crate::grpcurl::grpcurl_or_skip("kmfctl_json::kmfctl_json_is_grpcurl_output") else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let (pki, dir) = (tmp.path().join("pki"), tmp.path().join("a"));
    crate::binaries::operator_pki(&pki);
    init(&dir, &pki);
    let d = start(&dir, &pki, Settings::Flags);
    let ctl = |args: &[&str]| ok(d.ctl(&pki).args(args));
    let same = |args: &[&str], method: &str, data: &str| same(&bin, &pki, &d, args, method, data);

    same(&["instance", "info"], "kmf.v1.Instance/Info", "{}");
    // Empty list: the empty-message form.
    let empty = same(&["exchange", "list"], "kmf.v1.ResourceExchange/ListRequests", "{}");
    assert_eq!(empty, "{\n  \n}\n");

    ctl(&["module", "create", "hr", "--default-access", "track"]);
    ctl(&["spec", "create", "salary", "--module", "hr"]);
    ctl(&["spec", "create", "tags", "--module", "hr", "--algorithm", "hmac"]);
    ctl(&["spec", "create", "names", "--module", "hr", "--algorithm", "aes_cbc", "--equality-preserving"]);
    same(&["spec", "list"], "kmf.v1.KeyManagement/ListSpecs", "{}");
    same(&["module", "list"], "kmf.v1.KeyManagement/ListModules", "{}");
    ctl(&["lifecycle", "spec", "salary", "--expire-after", "365d"]);
    ctl(&["key", "generate", "salary"]);
    ctl(&["key", "rotate", "salary"]);
    ctl(&["key", "generate", "names"]);
    let keys = same(&["key", "list", "salary"], "kmf.v1.KeyManagement/ListKeys", r#"{"spec":"salary"}"#);
    assert!(keys.contains("\"state\": \"ACTIVE\"") && keys.contains("Z\""), "{keys}");

    // Deterministic encryption (AES-SIV): the same bytes from both.
    let enc = same(
        &["encrypt", "--spec", "names", "--text", "Ada <&>", "--aad", "emp:7"],
        "kmf.v1.Crypto/Encrypt",
        r#"{"spec":"names","plaintext":"QWRhIDwmPg==","associatedData":"ZW1wOjc="}"#,
    );
    let v: serde_json::Value = serde_json::from_str(&enc).expect("json");
    let ct = v["ciphertext"].as_str().expect("ciphertext").to_owned();
    same(
        &["decrypt", "--ciphertext", &ct, "--aad", "emp:7"],
        "kmf.v1.Crypto/Decrypt",
        &format!(r#"{{"ciphertext":"{ct}","associatedData":"ZW1wOjc="}}"#),
    );

    same(
        &["rewrap", "--ciphertext", &ct, "--aad", "emp:7"],
        "kmf.v1.Crypto/Rewrap",
        &format!(r#"{{"ciphertext":"{ct}","associatedData":"ZW1wOjc="}}"#),
    );

    // A record whose id needs escaping, its listing (timestamps), the digest
    // (uint64), then an empty response (delete).
    ctl(&["record", "put", "--table", "t", "--field", "f", "--id", "a<b>&c", "--spec", "salary", "--text", "x"]);
    same(&["record", "list"], "kmf.v1.Crypto/ListRecords", "{}");
    same(&["record", "digest"], "kmf.v1.Crypto/DigestRecords", "{}");
    let deleted =
        ok(d.ctl(&pki).args(["--json", "record", "delete", "--table", "t", "--field", "f", "--id", "a<b>&c"]));
    assert_eq!(deleted, "{\n  \n}\n");
    let again = r#"{"address":{"table":"t","field":"f","recordId":"a<b>&c"}}"#;
    ctl(&["record", "put", "--table", "t", "--field", "f", "--id", "a<b>&c", "--spec", "salary", "--text", "x"]);
    assert_eq!(grpcurl(&bin, &pki, &d, "kmf.v1.Crypto/DeleteRecord", again), deleted);

    // A Resource Exchange policy made with kmfctl, listed and explained.
    let target = "0123456789abcdef0123456789abcdef";
    ctl(&[
        "policy",
        "create",
        "rx",
        "--module",
        "hr",
        "--type",
        "resource-exchange",
        "--result",
        "track",
        "--target-sys-id",
        target,
        "--target-host",
        "127.0.0.1:7443",
        "--approval",
        "recurring",
    ]);
    let listed = same(&["policy", "list", "--module", "hr"], "kmf.v1.Policies/ListPolicies", r#"{"module":"hr"}"#);
    assert!(listed.contains("\"type\": \"RESOURCE_EXCHANGE\"") && listed.contains("\"approvalType\": \"RECURRING\""));
    same(&["policy", "get", "rx", "--module", "hr"], "kmf.v1.Policies/GetPolicy", r#"{"module":"hr","name":"rx"}"#);
    same(
        &[
            "policy",
            "explain",
            "--spec",
            "salary",
            "--exchange-target-sys-id",
            target,
            "--exchange-target-host",
            "127.0.0.1:7443",
            "--exchange-frequency",
            "recurring",
        ],
        "kmf.v1.Policies/ExplainAccess",
        &format!(
            r#"{{"spec":"salary","asExchangeTargetSysId":"{target}","asExchangeTargetHost":"127.0.0.1:7443","asExchangeFrequency":"RECURRING_CLONE"}}"#
        ),
    );
    same(
        &["policy", "explain", "--spec", "salary", "--operation", "encrypt"],
        "kmf.v1.Policies/ExplainAccess",
        r#"{"spec":"salary","operation":"OP_ENCRYPT","asExchangeFrequency":"ONE_TIME_CLONE"}"#,
    );
    ctl(&["lifecycle", "set-policy", "--max-expire-after", "730d"]);
    same(&["lifecycle", "policies"], "kmf.v1.KeyManagement/ListLifecyclePolicies", "{}");
    ctl(&["property", "set", "custom.note", "caf\u{e9} <tea> & \u{2028}cake"]);
    same(&["property", "get", "custom.note"], "kmf.v1.Properties/GetProperty", r#"{"name":"custom.note"}"#);
    same(&["audit", "list", "--limit", "5"], "kmf.v1.Audit/ListAuditEntries", r#"{"limit":5}"#);
    same(&["audit", "verify"], "kmf.v1.Audit/VerifyAuditChain", "{}");
}

/// A clone between two daemons: its CloneInfo (uint64 counts, the double
/// records per second, timestamps) printed by kmfctl and grpcurl.
#[test]
fn kmfctl_json_clone_info_is_grpcurl_output() {
    let Some(bin) = crate::grpcurl::grpcurl_or_skip("kmfctl_json::kmfctl_json_clone_info_is_grpcurl_output") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let (pki, a_dir, b_dir) = (tmp.path().join("pki"), tmp.path().join("a"), tmp.path().join("b"));
    crate::binaries::operator_pki(&pki);
    let a_id = init(&a_dir, &pki);
    let b_id = init(&b_dir, &pki);
    let (a, b) = (start(&a_dir, &pki, Settings::Flags), start(&b_dir, &pki, Settings::Flags));
    ok(a.ctl(&pki).args(["module", "create", "hr", "--default-access", "track"]));
    ok(a.ctl(&pki).args(["spec", "create", "salary", "--module", "hr"]));
    ok(a.ctl(&pki).args(["key", "generate", "salary"]));
    for i in 0..300 {
        let id = i.to_string();
        ok(a.ctl(&pki)
            .args(["record", "put", "--table", "t", "--field", "f", "--id", &id, "--spec", "salary"])
            .args(["--text", "some text"]));
    }
    ok(a.ctl(&pki).args(["clone", "target", "add", &b_id, &b.addr]));
    let watched = ok(b.ctl(&pki).args(["--json", "clone", "start", &a_id, &a.addr, "--watch"]));
    assert!(watched.contains("\"recordsCopied\": \"300\""), "{watched}");
    let listed = same(&bin, &pki, &b, &["clone", "list"], "kmf.v1.Clones/ListClones", "{}");
    assert!(listed.contains("\"recordsTotal\": \"300\""), "{listed}");
    assert!(listed.contains("\"recordsPerSecond\": "), "the double is compared too: {listed}");
    same(&bin, &pki, &a, &["clone", "target", "list"], "kmf.v1.Clones/ListCloneTargets", "{}");
    same(&bin, &pki, &a, &["record", "digest"], "kmf.v1.Crypto/DigestRecords", "{}");
}
