//! Crash trials through the binaries: a source holding 10,000 keys, and for
//! each trial a fresh target; `kmfctl exchange approve` runs while the test
//! kill -9s the source or the target at a random moment of the approval or
//! the delivery, then starts it again on the same port. Every request must
//! complete by itself (an approval that never committed is given again, as
//! an operator would after a transport error), with every key imported once
//! and one import in the target's audit log.
//!
//! `KMF_CRASH_TRIALS` sets the number of trials (default 20) and
//! `KMF_CRASH_SEED` the random seed (printed, so a failure can be replayed).

use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kmf::domain::audit::AuditEntry;
use kmf::domain::ids::{Name, RequestId};
use kmf::domain::key::KeyState;
use kmf::store::{RequestStore, Store};

use crate::binaries::{Daemon, Settings, free_port, init, ok, run, start_listening};
use crate::support::{Ops, wait_for};

const KEYS: u32 = 10_000;
/// Kill moments are drawn from 0 to this many milliseconds after approval starts.
const KILL_WINDOW_MS: u64 = 1_500;

pub(crate) fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("json")
}

pub(crate) fn status_of(daemon: &Daemon, pki: &Path, id: &str) -> Option<String> {
    let out = run(daemon.ctl(pki).args(["--json", "exchange", "get", id]));
    out.status
        .success()
        .then(|| json(&String::from_utf8_lossy(&out.stdout))["request"]["status"].as_str().unwrap_or("").to_owned())
}

/// Seeds the source with `KEYS` keys of spec "salary" (in-process, before
/// its daemon starts: seeding 10,000 keys one RPC at a time would take minutes).
fn seed_source(dir: &Path, pki: &Path) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let args = kmf::config::RunArgs {
            data_dir: Some(dir.to_owned()),
            listen: Some("127.0.0.1:0".into()),
            tls_ca: Some(pki.join("ca.pem")),
            ..Default::default()
        };
        let cfg = kmf::config::resolve(&args, None).expect("settings").load().expect("config");
        let app = kmf::app::start(cfg).await.expect("start the source in-process");
        let host = kmf::domain::ids::Host::parse(&app.local_addr.to_string()).expect("host");
        let files = kmf::tls::TlsFiles::load(&pki.join("ca.pem"), &pki.join("ops.pem"), &pki.join("ops.key"))
            .expect("operator files");
        let mut ops = Ops::new(kmf::rpc::client::connect(&host, &files, None).await.expect("connect"));
        ops.spec("hr", "salary", true).await;
        app.services
            .catalog
            .seed_rotations(Name::parse("salary", "spec").expect("name"), KEYS - 1)
            .await
            .expect("seed");
        app.shutdown().await.expect("shutdown");
    });
}

struct Trial {
    victim: &'static str,
    kill_after_ms: u64,
    approval_lost: bool,
    recovered_in: Duration,
}

#[test]
fn kill_9_during_approval_and_delivery_every_request_completes_once() {
    let (trials, seed, mut rng) = crate::binaries::trials("crash", "KMF_CRASH_TRIALS", 20);
    let tmp = tempfile::tempdir().expect("tmp");
    let pki = tmp.path().join("pki");
    crate::binaries::operator_pki(&pki);
    let source_dir = tmp.path().join("source");
    let source_id = init(&source_dir, &pki);
    seed_source(&source_dir, &pki);
    let source_listen = free_port();
    let mut source = start_listening(&source_dir, &pki, Settings::Flags, &source_listen);

    let mut results: Vec<Trial> = Vec::new();
    for trial in 0..trials {
        let target_dir = tmp.path().join(format!("target-{trial}"));
        init(&target_dir, &pki);
        let target_listen = free_port();
        let mut target = start_listening(&target_dir, &pki, Settings::Flags, &target_listen);
        ok(target.ctl(&pki).args(["module", "create", "hr", "--default-access", "track"]));
        ok(target.ctl(&pki).args(["spec", "create", "salary", "--module", "hr"]));
        let created = json(&ok(target.ctl(&pki).args([
            "--json",
            "exchange",
            "create",
            "--source-sys-id",
            &source_id,
            "--source-host",
            &source_listen,
            "--spec",
            "salary",
        ])));
        let id = created["request"]["requestId"].as_str().expect("request id").to_owned();

        // Approve, and kill -9 one side at a random moment.
        let victim = if rng.next().is_multiple_of(2) { "source" } else { "target" };
        let kill_after_ms = rng.next() % KILL_WINDOW_MS;
        let mut approval: Child = source
            .ctl(&pki)
            .args(["exchange", "approve", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kmfctl");
        std::thread::sleep(Duration::from_millis(kill_after_ms)); // the random kill moment, not a wait for state
        let killed_at = Instant::now();
        let dead = if victim == "source" { &mut source } else { &mut target };
        dead.child.kill().expect("kill -9");
        dead.child.wait().expect("reap");
        let _ = approval.kill();
        let _ = approval.wait();
        if victim == "source" {
            source = start_listening(&source_dir, &pki, Settings::Flags, &source_listen);
        } else {
            target = start_listening(&target_dir, &pki, Settings::Flags, &target_listen);
        }

        // An approval killed before it committed is given again.
        let approval_lost = status_of(&source, &pki, &id).as_deref() == Some("REQUEST_PENDING");
        if approval_lost {
            let again = run(source.ctl(&pki).args(["exchange", "approve", &id]));
            let err = String::from_utf8_lossy(&again.stderr);
            assert!(
                again.status.success() || err.contains("FailedPrecondition") || err.contains("cannot be approved"),
                "{err}"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (s, t) = (status_of(&source, &pki, &id), status_of(&target, &pki, &id));
            if s.as_deref() == Some("REQUEST_COMPLETED") && t.as_deref() == Some("REQUEST_COMPLETED") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trial {trial} (seed {seed}, {victim} killed after {kill_after_ms} ms): source {s:?}, target {t:?}\nsource log:\n{}",
                std::fs::read_to_string(&source.log)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50)); // poll interval; bounded by the deadline
        }
        let recovered_in = killed_at.elapsed();
        let on_source = json(&ok(source.ctl(&pki).args(["--json", "exchange", "get", &id])));
        assert_eq!(on_source["request"]["importedKeyCount"], KEYS, "trial {trial}: {on_source}");

        // Stop the target and read its database: every key once, one import.
        target.stop();
        let store = Arc::new(Store::open_redb(&target_dir.join("kmf.redb")).expect("open the target's store"));
        let catalog = kmf::store::CatalogStore::new(&store);
        let keys = wait_for(catalog.keys(Name::parse("salary", "spec").expect("name"))).expect("keys");
        assert_eq!(keys.len(), KEYS as usize, "trial {trial}: a partial or doubled import");
        assert!(keys.iter().all(|(k, w)| k.state == KeyState::Expired && !w.0.is_empty()), "trial {trial}");
        let rows = wait_for(kmf::store::AuditStore::new(&store).audit_rows(0, usize::MAX)).expect("audit");
        let imports = rows
            .iter()
            .map(|(_, b)| AuditEntry::decode(b).expect("entry"))
            .filter(|e| e.event.action == "exchange.import" && e.event.subject == id)
            .count();
        assert_eq!(imports, 1, "trial {trial}: imports in the audit log");
        let request = wait_for(RequestStore::new(&store).request(RequestId::parse(&id).expect("id")));
        let request = request.expect("read").expect("request").value;
        assert_eq!(request.imported_key_count, KEYS);
        drop(store);
        let _ = std::fs::remove_dir_all(&target_dir);
        println!(
            "trial {trial:2}: killed the {victim:6} {kill_after_ms:4} ms into the approval{}; both COMPLETED {:.2} s after the kill",
            if approval_lost { " (still pending after the restart: approved again)" } else { "" },
            recovered_in.as_secs_f64()
        );
        results.push(Trial { victim, kill_after_ms, approval_lost, recovered_in });
    }
    source.stop();

    let mut times: Vec<f64> = results.iter().map(|t| t.recovered_in.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    let killed = |who| results.iter().filter(|t| t.victim == who).count();
    println!(
        "crash trials: {} run, source killed {}, target killed {}, still pending after the restart (approved again) {}; \
         every request COMPLETED with {KEYS} keys, 0 partial imports, 0 duplicate keys, 1 import each; \
         kill -> both COMPLETED: median {:.2} s, max {:.2} s; kill moments {}..{} ms",
        results.len(),
        killed("source"),
        killed("target"),
        results.iter().filter(|t| t.approval_lost).count(),
        times[times.len() / 2],
        times[times.len() - 1],
        results.iter().map(|t| t.kill_after_ms).min().unwrap_or(0),
        results.iter().map(|t| t.kill_after_ms).max().unwrap_or(0),
    );
    assert_eq!(results.len(), trials);
}
