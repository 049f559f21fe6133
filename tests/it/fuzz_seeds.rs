//! The fuzz targets' seed corpora (fuzz/corpus/<target>/, README "Fuzzing")
//! are real values: `write_fuzz_seeds` runs a One Time Clone with its key
//! exchange and rekey between two in-process nodes and keeps the bundle the
//! source delivered, the receipt the target signed, ciphertexts from Encrypt,
//! every kind of row both databases hold, and the shipped config files.
//! It is ignored (it rewrites the committed seeds); regenerate them with
//! `cargo test --test it fuzz_seeds::write_fuzz_seeds -- --ignored`.
//! `corpora_and_regressions_run_clean` feeds every committed seed and crash
//! input to its target's checks on every test run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kmf::app::DB_FILE;
use kmf::rpc::pb;
use kmf::rpc::pb::clones_client::ClonesClient;
use kmf::rpc::pb::rekeys_client::RekeysClient;
use kmf::store::RedbEngine;
use kmf::store::engine::{ALL_TABLES, Engine, KeyRange, Table, Visit};

use crate::clone::{admin_channel, finished, put_records};
use crate::clone_exchange::{config, ended_requests, set_auto};
use crate::support::{Ops, Pki, Recorder, TestNode};

/// A target's checks (the body of its fuzz target).
type Check = fn(&[u8]);

const TARGETS: [(&str, Check); 5] = [
    ("bundle", kmf::fuzzing::bundle),
    ("receipt", kmf::fuzzing::receipt),
    ("ciphertext", kmf::fuzzing::ciphertext),
    ("stored_row", kmf::fuzzing::stored_row),
    ("config", kmf::fuzzing::config),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files under fuzz/<kind>/<target>/ (none when the folder is missing).
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else { return Vec::new() };
    let mut out: Vec<_> = dir
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn corpora_and_regressions_run_clean() {
    let mut seeds = 0;
    for (target, check) in TARGETS {
        let corpus = inputs("corpus", target);
        assert!(!corpus.is_empty(), "fuzz/corpus/{target} has no seeds");
        seeds += corpus.len();
        for (path, bytes) in corpus.iter().chain(&inputs("regressions", target)) {
            let ran = std::panic::catch_unwind(|| check(bytes));
            assert!(ran.is_ok(), "{} fails its target's checks", path.display());
        }
    }
    // The binary formats' seeds are genuine: each decodes.
    for (path, b) in inputs("corpus", "bundle") {
        kmf::domain::bundle::Bundle::decode(&b).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for (path, b) in inputs("corpus", "receipt") {
        kmf::domain::bundle::Receipt::decode(&b).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    for (path, b) in inputs("corpus", "ciphertext") {
        kmf::domain::ciphertext::parse(&b).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    assert!(seeds > 20, "only {seeds} seeds");
}

/// Writes `files` as the seeds of `target`, replacing what was there.
fn write_seeds(target: &str, files: &BTreeMap<String, Vec<u8>>) {
    let dir = fuzz_dir().join("corpus").join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
    println!("fuzz/corpus/{target}: {} seeds", files.len());
}

/// Rows worth seeding: every table with row values (not the indexes whose
/// values are empty, nor the 8-byte counters and handles).
fn seeded(table: Table) -> bool {
    !matches!(
        table,
        Table::Meta | Table::RequestsByCreated | Table::JobsDue | Table::TransportKeys | Table::Diagnostics
    ) && table != Table::RecordDebt
}

/// Up to three distinct values of each table of `node`'s database, and the
/// keys of two records (stored_row decodes record keys too).
fn rows_of(node: &TestNode, label: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    let engine = RedbEngine::open(&node.dir.path().join(DB_FILE)).expect("open the database");
    let mut tx = engine.begin_read().expect("read");
    for table in ALL_TABLES.into_iter().filter(|t| seeded(*t)) {
        let mut n = 0;
        tx.visit(table, &KeyRange::all(), &mut |k, v| {
            n += 1;
            out.insert(format!("{label}-{}-{n}", table.name()), v.to_vec());
            if table == Table::Records && n <= 2 {
                out.insert(format!("{label}-record-key-{n}"), k.to_vec());
            }
            Ok(if n >= 3 { Visit::Stop } else { Visit::Continue })
        })
        .expect("visit");
    }
}

/// Polls the target's rekey of `id` until it completed (bounded).
async fn rekey_completed(target: &TestNode, pki: &Pki, id: &str) {
    let mut rekeys = RekeysClient::new(admin_channel(target, pki).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = rekeys.get_rekey(pb::GetRekeyRequest { request_id: id.into() }).await;
        if got.is_ok_and(|r| r.into_inner().rekey.is_some_and(|r| r.state == pb::RekeyState::RekeyCompleted as i32)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rekey of {id} did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval; bounded by the deadline
    }
}

async fn ciphertexts(src: &mut Ops) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for (i, pt) in [&b""[..], b"4200 EUR", &[7u8; 100]].into_iter().enumerate() {
        out.insert(format!("pay-aes256-gcm-{i}"), src.encrypt("pay", pt, b"emp:7").await);
        out.insert(format!("bonus-aes128-gcm-{i}"), src.encrypt("bonus", pt, b"").await);
    }
    out
}

fn config_files() -> BTreeMap<String, Vec<u8>> {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let files = ["kmfd.toml", "config/dev.toml", "config/prod.toml", "config/test.toml", "config/cluster.toml"];
    files.iter().map(|f| (f.replace('/', "-"), std::fs::read(deploy.join(f)).expect("config file"))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "rewrites fuzz/corpus: cargo test --test it fuzz_seeds::write_fuzz_seeds -- --ignored"]
async fn write_fuzz_seeds() {
    let pki = Pki::new();
    let recorder: OnceLock<Arc<Recorder>> = OnceLock::new();
    let mut source = TestNode::start_with(&pki, |inner| {
        let r = Recorder::wrap(inner);
        let _ = recorder.set(r.clone());
        r
    })
    .await;
    let mut target = TestNode::start(&pki).await;
    let (mut src, mut tgt) = (source.admin(&pki).await, target.admin(&pki).await);
    src.spec("hr", "pay", true).await;
    src.spec_from(kmf::cli::kmfctl::aes_spec("hr", "bonus", 128), true).await;
    put_records(&mut src, 3).await;
    set_auto(&mut src, "false").await;
    let made = src.exchange.create_clone_exchange(config(pb::Frequency::OneTimeClone, &target, &["pay"], true));
    made.await.expect("a One Time Clone with rekey");

    let mut clones = ClonesClient::new(admin_channel(&target, &pki).await);
    let start = pb::StartCloneRequest { source_sys_id: source.sys_id.clone(), source_host: source.host.to_string() };
    let run = clones.start_clone(start).await.expect("start").into_inner().clone.expect("clone");
    assert_eq!(finished(&mut clones, &run.clone_id).await.state, "completed");
    let [request] = <[_; 1]>::try_from(ended_requests(&mut tgt, 1).await).expect("one request");
    rekey_completed(&target, &pki, &request.request_id).await;
    let schedule = pb::CreateCloneScheduleRequest {
        name: "nightly".into(),
        source_sys_id: source.sys_id.clone(),
        source_host: source.host.to_string(),
        every: None,
        cron: "0 2 * * *".into(),
    };
    clones.create_clone_schedule(schedule).await.expect("a clone schedule");

    let got = tgt.exchange.get_request(pb::GetRequestRequest { request_id: request.request_id.clone() }).await;
    let receipt = got.expect("get").into_inner().proof.expect("the receipt").receipt;
    let bundle = recorder.get().expect("recorder").last_bundle().bytes;
    let ciphertexts = ciphertexts(&mut src).await;
    source.stop().await;
    target.stop().await;

    let mut rows = BTreeMap::new();
    rows_of(&source, "source", &mut rows);
    rows_of(&target, "target", &mut rows);
    write_seeds("bundle", &BTreeMap::from([("clone-exchange".to_owned(), bundle)]));
    write_seeds("receipt", &BTreeMap::from([("clone-exchange".to_owned(), receipt)]));
    write_seeds("ciphertext", &ciphertexts);
    write_seeds("stored_row", &rows);
    write_seeds("config", &config_files());
}
