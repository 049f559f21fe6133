//! Benchmark (a program, not a test): Crypto throughput over ONE mutual-TLS
//! connection to a local daemon.
//!
//! 1. Unary `Crypto.Encrypt` (32-byte plaintexts) requests/s, side by side in
//!    the same run with the bare `grpc.health.v1.Health/Check` RPC the same
//!    daemon serves on the same connection (the "echo" baseline: tonic and
//!    mTLS with no work behind it). Target: Encrypt >= 0.7 x baseline.
//! 2. `Crypto.EncryptBatch` with 1,000 items per call: items/s. Target on a
//!    2-core machine: >= 300,000 items/s.
//!
//! Run: cargo bench --bench crypto_throughput [-- SECONDS]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kmf::app::start_loopback;
use kmf::cli::kmfctl::aes_spec;
use kmf::domain::auth::Role;
use kmf::rpc::client::connect;
use kmf::rpc::pb;
use kmf::tls::pki::{create_ca, issue_operator, tls_files};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Requests in flight at once on the one connection.
const CONCURRENCY: usize = 32;
/// Batch calls in flight at once.
const BATCH_CONCURRENCY: usize = 4;
const BATCH_ITEMS: usize = 1000;

/// Runs `call` from `workers` tasks for `secs` seconds (and at most
/// `max_calls` calls); returns calls completed per second.
async fn drive<F, Fut>(workers: usize, secs: f64, max_calls: u64, call: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (call, done, stop) = (call.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && done.load(Ordering::Relaxed) < max_calls
            {
                call().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            stop.store(true, Ordering::Relaxed);
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

async fn health_rate(ch: Channel, secs: f64) -> anyhow::Result<f64> {
    drive(CONCURRENCY, secs, 5_000_000, move || {
        let mut c = HealthClient::new(ch.clone());
        async move {
            c.check(HealthCheckRequest { service: "kmf.v1.Crypto".into() }).await?;
            Ok(())
        }
    })
    .await
}

async fn encrypt_rate(ch: Channel, secs: f64) -> anyhow::Result<f64> {
    drive(CONCURRENCY, secs, 5_000_000, move || {
        let mut c = pb::crypto_client::CryptoClient::new(ch.clone());
        async move {
            let req =
                pb::EncryptRequest { spec: "bench".into(), plaintext: vec![7u8; 32], associated_data: b"aad".to_vec() };
            let r = c.encrypt(req).await?.into_inner();
            anyhow::ensure!(r.ciphertext.len() > 32, "short ciphertext");
            Ok(())
        }
    })
    .await
}

async fn batch_rate(ch: Channel, secs: f64) -> anyhow::Result<f64> {
    let calls = drive(BATCH_CONCURRENCY, secs, 100_000, move || {
        let mut c = pb::crypto_client::CryptoClient::new(ch.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        async move {
            let item =
                pb::EncryptRequest { spec: "bench".into(), plaintext: vec![7u8; 32], associated_data: b"aad".to_vec() };
            let r = c.encrypt_batch(pb::EncryptBatchRequest { items: vec![item; BATCH_ITEMS] }).await?.into_inner();
            anyhow::ensure!(
                r.results.len() == BATCH_ITEMS && r.results.iter().all(|x| x.error.is_none()),
                "batch item failed"
            );
            Ok(())
        }
    })
    .await?;
    Ok(calls * BATCH_ITEMS as f64)
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3.0);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let tmp = tempfile::tempdir()?;
        let ca = create_ca("bench CA")?;
        let op = tls_files(&ca, &issue_operator(&ca, "bench", &[Role::Admin])?);
        let (app, _, host) = start_loopback(tmp.path(), "node", &ca, Duration::from_secs(3600)).await?;
        let ch = connect(&host, &op, None).await.map_err(|e| anyhow::anyhow!(e))?;
        let mut keys = pb::key_management_client::KeyManagementClient::new(ch.clone());
        keys.create_module(pb::CreateModuleRequest { name: "m".into(), default_access: pb::DefaultAccess::Track as i32 }).await?;
        keys.create_spec(aes_spec("m", "bench", 256)).await?;
        keys.generate_key(pb::GenerateKeyRequest { spec: "bench".into() }).await?;
        println!(
            "Crypto throughput over one mTLS connection ({} cores, {secs} s per measurement, {CONCURRENCY} unary calls in flight)",
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
        // Warm up both paths, then measure them alternately twice.
        health_rate(ch.clone(), 0.5).await?;
        encrypt_rate(ch.clone(), 0.5).await?;
        let mut health = Vec::new();
        let mut encrypt = Vec::new();
        for _ in 0..2 {
            health.push(health_rate(ch.clone(), secs).await?);
            encrypt.push(encrypt_rate(ch.clone(), secs).await?);
        }
        let h = health.iter().sum::<f64>() / health.len() as f64;
        let e = encrypt.iter().sum::<f64>() / encrypt.len() as f64;
        println!("  baseline Health/Check   {h:>10.0} req/s   (runs: {:.0}, {:.0})", health[0], health[1]);
        println!("  Crypto/Encrypt (32 B)   {e:>10.0} req/s   (runs: {:.0}, {:.0})", encrypt[0], encrypt[1]);
        println!("  ratio Encrypt/baseline  {:>10.2}       (target >= 0.70)", e / h);
        let b = batch_rate(ch.clone(), secs).await?;
        println!("  EncryptBatch x{BATCH_ITEMS:<5}      {b:>10.0} items/s (target >= 300,000; {BATCH_CONCURRENCY} calls in flight)");
        app.shutdown().await?;
        Ok(())
    })
}
