//! kmfctl's data commands through the binaries: records (put, get, list,
//! put-many, digest, delete) and batch encrypt / rewrap / decrypt of JSON
//! lines files; the shell completions.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as b64;

use crate::binaries::{Daemon, Settings, init, ok, run, start};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json")
}

/// A daemon with module hr (Track access), spec salary and its key.
fn daemon(tmp: &Path) -> (Daemon, std::path::PathBuf) {
    let (pki, dir) = (tmp.join("pki"), tmp.join("a"));
    crate::binaries::operator_pki(&pki);
    init(&dir, &pki);
    let d = start(&dir, &pki, Settings::Flags);
    ok(d.ctl(&pki).args(["module", "create", "hr", "--default-access", "track"]));
    ok(d.ctl(&pki).args(["spec", "create", "salary", "--module", "hr"]));
    ok(d.ctl(&pki).args(["key", "generate", "salary"]));
    (d, pki)
}

#[test]
fn kmfctl_records_round_trip() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (d, pki) = daemon(tmp.path());
    let ctl = |args: &[&str]| ok(d.ctl(&pki).args(args));
    let at = ["--table", "emp", "--field", "salary", "--id", "7"];

    let put =
        json(&ctl(&[&["--json", "record", "put", "--spec", "salary", "--text", "4200 EUR"][..], &at[..]].concat()));
    assert_eq!(put["record"]["address"]["recordId"], "7", "{put}");
    assert_eq!(ctl(&[&["record", "get"][..], &at[..]].concat()), "4200 EUR\n");
    let got = json(&ctl(&[&["--json", "record", "get"][..], &at[..]].concat()));
    assert_eq!(got["plaintext"], b64.encode("4200 EUR"), "bytes are base64 with --json");

    let file = tmp.path().join("records.jsonl");
    let mut lines = String::new();
    for i in 1..=3 {
        let text = b64.encode(format!("bonus {i}"));
        writeln!(lines, r#"{{"address":{{"table":"emp","field":"bonus","recordId":"{i}"}},"plaintext":"{text}"}}"#)
            .expect("line");
    }
    std::fs::write(&file, lines).expect("write");
    let many = json(&ok(d.ctl(&pki).args(["--json", "record", "put-many", "--spec", "salary", "--in"]).arg(&file)));
    assert_eq!(many["records"].as_array().map(Vec::len), Some(3), "{many}");

    let listed = json(&ctl(&["--json", "record", "list"]));
    assert_eq!(listed["records"].as_array().map(Vec::len), Some(4), "{listed}");
    let bonus = json(&ctl(&["--json", "record", "list", "--field", "bonus"]));
    assert_eq!(bonus["records"].as_array().map(Vec::len), Some(3), "{bonus}");
    let digest = json(&ctl(&["--json", "record", "digest"]));
    assert_eq!(digest["records"], "4", "uint64 as a string: {digest}");
    let table = ctl(&["record", "list"]);
    assert!(table.starts_with("TABLE") && table.lines().count() == 5, "{table}");

    assert_eq!(ctl(&[&["--json", "record", "delete"][..], &at[..]].concat()), "{\n  \n}\n");
    let gone = run(d.ctl(&pki).args([&["record", "get"][..], &at[..]].concat()));
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(!gone.status.success() && stderr.contains("code=NotFound"), "{stderr}");
    assert_eq!(json(&ctl(&["--json", "record", "digest"]))["records"], "3");
}

/// Runs `kmfctl batch <what> --in <input> --out <output> [extra]`; returns
/// (success, stderr, output lines).
fn batch(
    d: &Daemon,
    pki: &Path,
    what: &str,
    input: &Path,
    output: &Path,
    extra: &[&str],
) -> (bool, String, Vec<String>) {
    let out = run(d.ctl(pki).args(["batch", what, "--in"]).arg(input).arg("--out").arg(output).args(extra));
    let lines = std::fs::read_to_string(output).unwrap_or_default().lines().map(str::to_owned).collect();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), lines)
}

#[test]
fn kmfctl_batch_encrypts_rewraps_and_decrypts_a_file_reporting_bad_lines() {
    const LINES: usize = 2_500;
    const BAD: usize = 1_234;
    const UNKNOWN_SPEC: usize = 2_001;
    let tmp = tempfile::tempdir().expect("tmp");
    let (d, pki) = daemon(tmp.path());
    let path = |name: &str| tmp.path().join(name);

    // 2,500 items (three calls), one line that does not parse and one naming
    // a spec that does not exist.
    let mut input = String::new();
    for n in 1..=LINES {
        let (text, aad) = (b64.encode(format!("item {n}")), b64.encode(format!("row:{n}")));
        match n {
            BAD => input.push_str("{\"plaintext\": \"not base64!\"}\n"),
            UNKNOWN_SPEC => {
                writeln!(input, r#"{{"plaintext":"{text}","associatedData":"{aad}","spec":"nope"}}"#).expect("line")
            }
            _ => writeln!(input, r#"{{"plaintext":"{text}","associatedData":"{aad}"}}"#).expect("line"),
        }
    }
    std::fs::write(path("plain.jsonl"), input).expect("write");
    let (success, stderr, encrypted) =
        batch(&d, &pki, "encrypt", &path("plain.jsonl"), &path("sealed.jsonl"), &["--spec", "salary"]);
    assert!(!success, "a failed item makes the batch fail");
    assert!(stderr.contains("2500 item(s), 2 failed") && stderr.contains(&format!("line {BAD}")), "{stderr}");
    assert_eq!(encrypted.len(), LINES, "one result per input line");
    let bad = json(&encrypted[BAD - 1]);
    assert_eq!(bad["error"]["code"], 3, "{bad}");
    assert!(bad["error"]["message"].as_str().is_some_and(|m| m.starts_with(&format!("line {BAD}:"))), "{bad}");
    assert_eq!(json(&encrypted[UNKNOWN_SPEC - 1])["error"]["code"], 5, "NOT_FOUND from the daemon");

    // The good ones rewrapped after a rotation, then decrypted.
    let old_key = json(&encrypted[0])["keyId"].as_str().expect("keyId").to_owned();
    ok(d.ctl(&pki).args(["key", "rotate", "salary"]));
    let mut sealed = String::new();
    let mut kept = Vec::new();
    for (i, line) in encrypted.iter().enumerate() {
        let v = json(line);
        if let Some(ct) = v["ciphertext"].as_str() {
            let aad = b64.encode(format!("row:{}", i + 1));
            writeln!(sealed, r#"{{"ciphertext":"{ct}","associatedData":"{aad}"}}"#).expect("line");
            kept.push(i + 1);
        }
    }
    assert_eq!(kept.len(), LINES - 2);
    std::fs::write(path("sealed-ok.jsonl"), sealed).expect("write");
    let (success, stderr, rewrapped) =
        batch(&d, &pki, "rewrap", &path("sealed-ok.jsonl"), &path("rewrapped.jsonl"), &[]);
    assert!(success, "{stderr}");
    let first = json(&rewrapped[0]);
    assert_eq!(first["previousKeyId"], old_key.as_str(), "{first}");
    assert_ne!(first["keyId"], old_key.as_str(), "{first}");

    let mut again = String::new();
    for (n, line) in kept.iter().zip(&rewrapped) {
        let ct = json(line)["ciphertext"].as_str().expect("ciphertext").to_owned();
        writeln!(again, r#"{{"ciphertext":"{ct}","associatedData":"{}"}}"#, b64.encode(format!("row:{n}")))
            .expect("line");
    }
    std::fs::write(path("rewrapped-in.jsonl"), again).expect("write");
    let (success, stderr, opened) = batch(&d, &pki, "decrypt", &path("rewrapped-in.jsonl"), &path("open.jsonl"), &[]);
    assert!(success, "{stderr}");
    assert_eq!(opened.len(), kept.len());
    for (n, line) in kept.iter().zip(&opened) {
        let plain = b64.decode(json(line)["plaintext"].as_str().expect("plaintext")).expect("base64");
        assert_eq!(plain, format!("item {n}").into_bytes());
    }
}

#[test]
fn kmfctl_prints_completions_bash_accepts() {
    let bash = ok(std::process::Command::new(crate::binaries::KMFCTL).args(["completions", "bash"]));
    for word in ["record", "batch", "exchange", "completions", "--json"] {
        assert!(bash.contains(word), "the bash completions lack {word}");
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let script = tmp.path().join("kmfctl.bash");
    std::fs::write(&script, &bash).expect("write");
    ok(std::process::Command::new("bash").arg("-n").arg(&script));
    let zsh = ok(std::process::Command::new(crate::binaries::KMFCTL).args(["completions", "zsh"]));
    assert!(zsh.starts_with("#compdef kmfctl") && zsh.contains("record"), "{}", &zsh[..zsh.len().min(200)]);
}
