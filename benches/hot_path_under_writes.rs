//! Benchmark (a program, not a test): unary `Crypto.Encrypt` throughput while
//! the store is being written.
//!
//! QUIET: 32-byte Encrypts, 32 calls in flight over one mTLS connection.
//! LOADED: the same, while on a second connection a stream of 500 records/s
//! is stored (`Crypto.PutRecord`, 64 bytes, distinct ids, each a durable
//! commit) and 500 calls/s Encrypt on a spec whose module denies everything
//! (every answer must be PERMISSION_DENIED; refusals are audited). Quiet and
//! loaded alternate twice. Target: loaded >= 0.80 x quiet.
//! SATURATED (for reference, no target): the side load as fast as 2 + 2
//! closed-loop tasks can go. On 2 cores shared by client and server, that
//! side load takes its CPU share away from the Encrypts whatever the store
//! does, so its ratio says how much CPU a write costs, not whether writes
//! stall the hot path.
//!
//! Run: cargo bench --bench hot_path_under_writes [-- SECONDS]   (default 3)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::load::{drive, every, seconds_arg, verdict};
use common::{Site, add_module, add_spec};
use kmf::rpc::client::connect;
use kmf::rpc::pb;
use kmf::rpc::pb::crypto_client::CryptoClient;
use tonic::transport::Channel;

/// Encrypt calls in flight on the measured connection.
const CONCURRENCY: usize = 32;
/// Tasks storing records, and tasks making refused calls, when loaded.
const WRITERS: usize = 2;
const REFUSERS: usize = 2;
/// Calls per second of each side task in the paced (LOADED) runs.
const PACED_PER_TASK: u32 = 250;
/// Upper bound on the calls of one measurement, whatever its length.
const MAX_CALLS: u64 = 5_000_000;
const TARGET: f64 = 0.80;

fn encrypt(spec: &str) -> pb::EncryptRequest {
    pb::EncryptRequest { spec: spec.into(), plaintext: vec![7u8; 32], associated_data: b"aad".to_vec() }
}

async fn encrypt_rate(ch: Channel, secs: f64) -> anyhow::Result<f64> {
    drive(CONCURRENCY, secs, MAX_CALLS, move || {
        let mut c = CryptoClient::new(ch.clone());
        async move {
            let r = c.encrypt(encrypt("bench")).await?.into_inner();
            anyhow::ensure!(r.ciphertext.len() > 32, "short ciphertext");
            Ok(())
        }
    })
    .await
}

async fn put_record(ch: Channel, id: u64) -> anyhow::Result<()> {
    let address = pb::RecordAddress { table: "bench".into(), field: "payload".into(), record_id: format!("r{id}") };
    let req = pb::PutRecordRequest { address: Some(address), spec: "bench".into(), plaintext: vec![9u8; 64] };
    CryptoClient::new(ch).put_record(req).await?;
    Ok(())
}

async fn refused_encrypt(ch: Channel) -> anyhow::Result<()> {
    match CryptoClient::new(ch).encrypt(encrypt("locked")).await {
        Err(s) if s.code() == tonic::Code::PermissionDenied => Ok(()),
        Err(s) => anyhow::bail!("Encrypt on \"locked\": expected PERMISSION_DENIED, got {s}"),
        Ok(_) => anyhow::bail!("Encrypt on \"locked\" succeeded; the module denies every call"),
    }
}

async fn put_record_rate(ch: Channel, secs: f64, next_id: Arc<AtomicU64>) -> anyhow::Result<f64> {
    drive(WRITERS, secs, MAX_CALLS, move || put_record(ch.clone(), next_id.fetch_add(1, Ordering::Relaxed))).await
}

async fn refusal_rate(ch: Channel, secs: f64) -> anyhow::Result<f64> {
    drive(REFUSERS, secs, MAX_CALLS, move || refused_encrypt(ch.clone())).await
}

/// One saturated measurement: (Encrypt/s, records/s, refusals/s).
async fn saturated(
    measured: Channel,
    side: Channel,
    secs: f64,
    ids: Arc<AtomicU64>,
) -> anyhow::Result<(f64, f64, f64)> {
    tokio::try_join!(encrypt_rate(measured, secs), put_record_rate(side.clone(), secs, ids), refusal_rate(side, secs))
}

/// `tasks` tasks each making `call` PACED_PER_TASK times a second; returns calls/s.
async fn paced<F, Fut>(tasks: usize, secs: f64, call: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let period = std::time::Duration::from_secs(1) / PACED_PER_TASK;
    let started = std::time::Instant::now();
    let runs: Vec<_> = (0..tasks)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move { every(period, secs, MAX_CALLS, |_| call()).await })
        })
        .collect();
    let mut done = 0;
    for r in runs {
        done += r.await??;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// One loaded (paced) measurement: (Encrypt/s, records/s, refusals/s).
async fn loaded(measured: Channel, side: Channel, secs: f64, ids: Arc<AtomicU64>) -> anyhow::Result<(f64, f64, f64)> {
    let writes = {
        let ch = side.clone();
        paced(WRITERS, secs, move || put_record(ch.clone(), ids.fetch_add(1, Ordering::Relaxed)))
    };
    let refusals = paced(REFUSERS, secs, move || refused_encrypt(side.clone()));
    tokio::try_join!(encrypt_rate(measured, secs), writes, refusals)
}

fn main() -> anyhow::Result<()> {
    let secs = seconds_arg(3.0);
    common::block_on(async move {
        let site = Site::new()?;
        let (app, host, mut ops) = site.crypto_node().await?;
        add_module(&mut ops, "locked", pb::DefaultAccess::Reject).await?;
        add_spec(&mut ops, "locked", "locked", 1).await?;
        let dial = || async { connect(&host, &site.op, None).await.map_err(|e| anyhow::anyhow!(e)) };
        let (measured, side) = (dial().await?, dial().await?);
        println!(
            "Encrypt hot path under writes ({}, {secs} s per run, {CONCURRENCY} Encrypts of 32 B in flight on one mTLS connection)",
            common::machine()
        );
        let per_kind = PACED_PER_TASK as usize * WRITERS;
        println!(
            "  loaded = same load while, on a second connection, {per_kind} PutRecord/s (64 B, new ids) and {} Encrypt/s on a REJECT module (audited refusals)",
            PACED_PER_TASK as usize * REFUSERS
        );
        let ids = Arc::new(AtomicU64::new(0));
        // Warm up every path, then alternate quiet and loaded twice.
        saturated(measured.clone(), side.clone(), 0.5, ids.clone()).await?;
        let (mut quiet, mut busy) = (Vec::new(), Vec::new());
        for run in 1..=2 {
            let q = encrypt_rate(measured.clone(), secs).await?;
            println!("  run {run} quiet    Encrypt {q:>9.0} req/s");
            let (e, w, r) = loaded(measured.clone(), side.clone(), secs, ids.clone()).await?;
            println!("  run {run} loaded   Encrypt {e:>9.0} req/s   PutRecord {w:>7.0}/s   refused {r:>7.0}/s");
            quiet.push(q);
            busy.push((e, w, r));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let q = mean(&quiet);
        let e = mean(&busy.iter().map(|b| b.0).collect::<Vec<_>>());
        let w = mean(&busy.iter().map(|b| b.1).collect::<Vec<_>>());
        let r = mean(&busy.iter().map(|b| b.2).collect::<Vec<_>>());
        println!("  mean quiet   Encrypt {q:>9.0} req/s");
        println!("  mean loaded  Encrypt {e:>9.0} req/s   PutRecord {w:>7.0}/s   refused {r:>7.0}/s");
        let ratio = e / q;
        println!("  ratio loaded/quiet {ratio:>6.2}   (target >= {TARGET:.2}: {})", verdict(ratio >= TARGET));
        let (e, w, r) = saturated(measured.clone(), side.clone(), secs, ids.clone()).await?;
        let q = encrypt_rate(measured.clone(), secs).await?;
        println!(
            "  saturated (reference, no target): {WRITERS} + {REFUSERS} closed-loop side tasks: Encrypt {e:.0} req/s ({:.2} x quiet {q:.0}), PutRecord {w:.0}/s, refused {r:.0}/s",
            e / q
        );
        println!("  PutRecord calls issued in all (warm-up included): {}", ids.load(Ordering::Relaxed));
        app.shutdown().await?;
        Ok(())
    })
}
