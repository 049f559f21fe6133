//! Benchmark (a program, not a test): clone of 1,000,000 records of 256 bytes
//! between two `kmfd` processes over mTLS, then the automatic exchange of
//! their key. Prints records/s (StartClone to `completed`), the time until
//! the automatic request is COMPLETED, and the peak RSS (VmHWM) of both
//! daemons. Targets: >= 150,000 records/s; RSS <= 256 MB each.
//!
//! Run: cargo bench --bench clone_million [-- RECORDS]   (default 1,000,000)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::load::verdict;
use common::processes::{Daemon, TwoInstances};
use kmf::cli::kmfctl::{Operator, aes_spec};
use kmf::domain::ids::{KeyId, UnixMillis};
use kmf::domain::record::{RecordAddress, StoredRecord};
use kmf::rpc::pb;

const RATE_TARGET: f64 = 150_000.0;
const RSS_TARGET_MB: f64 = 256.0;
/// Longest the program waits for the clone or the exchange.
const PATIENCE: Duration = Duration::from_secs(600);

/// Writes `n` records of 256 bytes under `key_id` into a stopped daemon's store.
fn seed(runtime: &tokio::runtime::Runtime, dir: &Path, key_id: &KeyId, n: u64) -> anyhow::Result<()> {
    let store = std::sync::Arc::new(kmf::store::Store::open_redb(&dir.join("kmf.redb"))?);
    let records = kmf::store::RecordStore::new(&store);
    let mut next = 0;
    while next < n {
        let batch: Vec<StoredRecord> = (next..(next + 50_000).min(n))
            .map(|i| {
                Ok(StoredRecord {
                    address: RecordAddress::parse("bench", "payload", &format!("r{i:08}"))?,
                    ciphertext: vec![(i % 251) as u8; 256],
                    key_id: key_id.clone(),
                    updated_at: UnixMillis(1),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        next += batch.len() as u64;
        runtime.block_on(records.put_records(batch))?;
    }
    Ok(())
}

async fn wait_clone(ops: &mut Operator, id: &str) -> anyhow::Result<pb::CloneInfo> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let c = ops
            .clones
            .get_clone(pb::GetCloneRequest { clone_id: id.into() })
            .await?
            .into_inner()
            .clone
            .unwrap_or_default();
        if c.state != "running" {
            return Ok(c);
        }
        anyhow::ensure!(Instant::now() < deadline, "clone still running after {PATIENCE:?}: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; bounded by PATIENCE
    }
}

async fn wait_exchange(ops: &mut Operator, id: &str) -> anyhow::Result<pb::ExchangeRequest> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = ops.exchange.get_request(pb::GetRequestRequest { request_id: id.into() }).await;
        if let Ok(r) = got {
            let r = r.into_inner().request.unwrap_or_default();
            if r.status == pb::RequestStatus::RequestCompleted as i32 {
                return Ok(r);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "automatic request {id} not completed after {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; bounded by PATIENCE
    }
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let TwoInstances { tmp: _tmp, pki, files, source_dir, target_dir, source_id, target_id } = TwoInstances::new()?;
    let runtime = tokio::runtime::Runtime::new()?;

    // The source: a spec with one key, then n records under it (seeded while stopped).
    let source = Daemon::start(&source_dir, &pki)?;
    let key_id = runtime.block_on(async {
        let mut ops = Operator::connect_with(&source.host, &files).await?;
        let module = pb::CreateModuleRequest { name: "bench".into(), default_access: pb::DefaultAccess::Track as i32 };
        ops.keys.create_module(module).await?;
        ops.keys.create_spec(aes_spec("bench", "payload", 256)).await?;
        let key = ops.keys.generate_key(pb::GenerateKeyRequest { spec: "payload".into() }).await?.into_inner();
        Ok::<_, anyhow::Error>(KeyId::parse(&key.key.unwrap_or_default().key_id)?)
    })?;
    source.stop()?;
    let seeding = Instant::now();
    seed(&runtime, &source_dir, &key_id, n)?;
    println!(
        "Clone of {n} records of 256 bytes + automatic exchange ({}; seeding took {:.1} s)",
        common::machine(),
        seeding.elapsed().as_secs_f64()
    );
    let (source, target) = (Daemon::start(&source_dir, &pki)?, Daemon::start(&target_dir, &pki)?);

    runtime.block_on(async {
        let mut on_source = Operator::connect_with(&source.host, &files).await?;
        let mut on_target = Operator::connect_with(&target.host, &files).await?;
        let add = pb::AddCloneTargetRequest { sys_id: target_id.clone(), host: target.host.to_string() };
        on_source.clones.add_clone_target(add).await?;
        let started = Instant::now();
        let start = pb::StartCloneRequest { source_sys_id: source_id.clone(), source_host: source.host.to_string() };
        let run = on_target.clones.start_clone(start).await?.into_inner().clone.unwrap_or_default();
        let done = wait_clone(&mut on_target, &run.clone_id).await?;
        let cloned_in = started.elapsed().as_secs_f64();
        anyhow::ensure!(done.state == "completed" && done.records_copied == n, "clone ended {done:?}");
        let exchanged = wait_exchange(&mut on_target, &run.clone_id).await?;
        let exchanged_in = started.elapsed().as_secs_f64();
        let rate = n as f64 / cloned_in;
        let (rss_s, rss_t) = (source.peak_rss_mb()?, target.peak_rss_mb()?);
        println!("  clone: {n} records in {cloned_in:.2} s = {rate:.0} records/s (the job's own copy rate {:.0}/s)   target >= {RATE_TARGET:.0}: {}", done.records_per_second, verdict(rate >= RATE_TARGET));
        println!("  automatic exchange: {} key(s) imported, COMPLETED {:.2} s after StartClone (no approval by a person)", exchanged.imported_key_count, exchanged_in);
        println!("  peak RSS: source {rss_s:.0} MB, target {rss_t:.0} MB   target <= {RSS_TARGET_MB:.0} MB each: {}", verdict(rss_s <= RSS_TARGET_MB && rss_t <= RSS_TARGET_MB));
        Ok::<_, anyhow::Error>(())
    })?;
    source.stop()?;
    target.stop()?;
    Ok(())
}
