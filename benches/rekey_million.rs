//! Benchmark (a program, not a test): rekey of 1,000,000 records of 256
//! bytes. Two `kmfd` processes over mTLS: the source holds the records under
//! its key and a One Time Clone configured with rekey for the target; the
//! target clones it, the configured exchange imports the key, and the
//! target's rekey job re-encrypts every record under its own new key.
//! Prints the rekey's records/s (from the job's own start and end times),
//! the target's peak RSS (VmHWM, clone included), and checks a sample of
//! records against their plaintexts. Targets: >= 150,000 records/s;
//! RSS <= 256 MB.
//!
//! Run: cargo bench --bench rekey_million [-- RECORDS]   (default 1,000,000)
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
/// Longest the program waits for the clone, the exchange or the rekey.
const PATIENCE: Duration = Duration::from_secs(900);
/// Records encrypted per EncryptBatch call while seeding.
const SEED_BATCH: u64 = 1_000;
/// Records checked against their plaintexts on the target afterwards.
const SAMPLE: u64 = 200;

fn address(i: u64) -> anyhow::Result<RecordAddress> {
    Ok(RecordAddress::parse("bench", "payload", &format!("r{i:08}"))?)
}

fn plaintext(i: u64) -> Vec<u8> {
    let mut p = i.to_le_bytes().repeat(32);
    p.truncate(256);
    p
}

/// Encrypts `n` records of 256 bytes on the running source (the daemon's
/// own EncryptBatch, with each record's address as associated data, as
/// PutRecord does); the caller writes them into the stopped store.
async fn encrypt_records(ops: &mut Operator, n: u64) -> anyhow::Result<Vec<StoredRecord>> {
    let mut out = Vec::with_capacity(n as usize);
    let mut next = 0;
    while next < n {
        let range = next..(next + SEED_BATCH).min(n);
        let items = range
            .clone()
            .map(|i| {
                Ok(pb::EncryptRequest {
                    spec: "payload".into(),
                    plaintext: plaintext(i),
                    associated_data: address(i)?.associated_data(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let results = ops.crypto.encrypt_batch(pb::EncryptBatchRequest { items }).await?.into_inner().results;
        for (i, r) in range.zip(results) {
            anyhow::ensure!(r.error.is_none(), "record {i}: {:?}", r.error);
            out.push(StoredRecord {
                address: address(i)?,
                ciphertext: r.ciphertext,
                key_id: KeyId::parse(&r.key_id)?,
                updated_at: UnixMillis(1),
            });
        }
        next += SEED_BATCH;
    }
    Ok(out)
}

fn write_records(runtime: &tokio::runtime::Runtime, dir: &Path, records: Vec<StoredRecord>) -> anyhow::Result<()> {
    let store = std::sync::Arc::new(kmf::store::Store::open_redb(&dir.join("kmf.redb"))?);
    let store = kmf::store::RecordStore::new(&store);
    let mut rest = records.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<StoredRecord> = rest.by_ref().take(50_000).collect();
        runtime.block_on(store.put_records(chunk))?;
    }
    Ok(())
}

/// Polls `get` until it gives a value (bounded by PATIENCE).
async fn poll<T, F, Fut>(what: &str, mut get: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = get().await? {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not done after {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval; bounded by PATIENCE
    }
}

fn millis(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let TwoInstances { tmp: _tmp, pki, files, source_dir, target_dir, source_id, target_id } = TwoInstances::new()?;
    let runtime = tokio::runtime::Runtime::new()?;

    // The source: a spec with one key, n records encrypted under it by the
    // daemon, written into its store while it is stopped.
    let seeding = Instant::now();
    let source = Daemon::start(&source_dir, &pki)?;
    let records = runtime.block_on(async {
        let mut ops = Operator::connect_with(&source.host, &files).await?;
        let module = pb::CreateModuleRequest { name: "bench".into(), default_access: pb::DefaultAccess::Track as i32 };
        ops.keys.create_module(module).await?;
        ops.keys.create_spec(aes_spec("bench", "payload", 256)).await?;
        ops.keys.generate_key(pb::GenerateKeyRequest { spec: "payload".into() }).await?;
        encrypt_records(&mut ops, n).await
    })?;
    source.stop()?;
    write_records(&runtime, &source_dir, records)?;
    println!(
        "Rekey of {n} records of 256 bytes after a One Time Clone with rekey ({}; seeding took {:.1} s)",
        common::machine(),
        seeding.elapsed().as_secs_f64()
    );
    let (source, target) = (Daemon::start(&source_dir, &pki)?, Daemon::start(&target_dir, &pki)?);

    runtime.block_on(async {
        let mut on_source = Operator::connect_with(&source.host, &files).await?;
        let mut on_target = Operator::connect_with(&target.host, &files).await?;
        let off = pb::SetPropertyRequest {
            name: "glide_encryption.auto_key_exchange.enabled".into(),
            value: "false".into(),
        };
        on_source.properties.set_property(off).await?;
        let config = pb::CreateCloneExchangeRequest {
            frequency: pb::Frequency::OneTimeClone as i32,
            target_sys_id: target_id.clone(),
            target_host: target.host.to_string(),
            spec_names: vec!["payload".into()],
            rekey_after_import: true,
        };
        on_source.exchange.create_clone_exchange(config).await?;
        let started = Instant::now();
        let start = pb::StartCloneRequest { source_sys_id: source_id.clone(), source_host: source.host.to_string() };
        on_target.clones.start_clone(start).await?;
        let rekeys = on_target.rekeys.clone();
        let done = poll("rekey", || {
            let mut rekeys = rekeys.clone();
            async move {
                let list = rekeys.list_rekeys(pb::ListRekeysRequest {}).await?.into_inner().rekeys;
                Ok(list.into_iter().find(|r| r.state == pb::RekeyState::RekeyCompleted as i32))
            }
        })
        .await?;
        let total = started.elapsed().as_secs_f64();
        anyhow::ensure!(done.records_done == n && done.attempts == 1, "rekey ended {done:?}");
        let took = (millis(&done.finished_at) - millis(&done.created_at)).max(1) as f64 / 1000.0;
        let rate = n as f64 / took;
        let rss = target.peak_rss_mb()?;
        let debt = on_target.rekeys.list_rekey_debt(pb::ListRekeyDebtRequest {}).await?.into_inner();
        anyhow::ensure!(debt.total_records == 0, "records still under imported keys: {debt:?}");
        for i in (0..n).step_by((n / SAMPLE).max(1) as usize) {
            let a = address(i)?;
            let addr = pb::RecordAddress { table: a.table.to_string(), field: a.field.to_string(), record_id: a.record_id };
            let got = on_target.crypto.get_record(pb::GetRecordRequest { address: Some(addr) }).await?.into_inner();
            anyhow::ensure!(got.plaintext == plaintext(i), "record {i} does not open to its plaintext");
            let key = got.record.map(|r| r.key_id).unwrap_or_default();
            anyhow::ensure!(key.starts_with(&target_id), "record {i} is under {key}, not the target's key");
        }
        println!("  rekey: {n} records in {took:.2} s = {rate:.0} records/s (import to completed; the attempt's own rate {:.0}/s)   target >= {RATE_TARGET:.0}: {}", done.records_per_second, verdict(rate >= RATE_TARGET));
        println!("  StartClone to rekey completed: {total:.2} s (clone, exchange and rekey); {SAMPLE} sampled records open to their plaintexts under the target's own key; debt 0");
        println!("  peak RSS: target {rss:.0} MB   target <= {RSS_TARGET_MB:.0} MB: {}", verdict(rss <= RSS_TARGET_MB));
        Ok::<_, anyhow::Error>(())
    })?;
    source.stop()?;
    target.stop()?;
    Ok(())
}
