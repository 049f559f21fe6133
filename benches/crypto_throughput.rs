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
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod common;

use common::Site;
use common::load::{drive, seconds_arg};
use kmf::rpc::client::connect;
use kmf::rpc::pb;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Requests in flight at once on the one connection.
const CONCURRENCY: usize = 32;
/// Batch calls in flight at once.
const BATCH_CONCURRENCY: usize = 4;
const BATCH_ITEMS: usize = 1000;

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
    let secs = seconds_arg(3.0);
    common::block_on(async move {
        let site = Site::new()?;
        let (app, host, _) = site.crypto_node().await?;
        let ch = connect(&host, &site.op, None).await.map_err(|e| anyhow::anyhow!(e))?;
        println!(
            "Crypto throughput over one mTLS connection ({} cores, {secs} s per measurement, {CONCURRENCY} unary calls in flight)",
            common::num_cpus()
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
        println!(
            "  EncryptBatch x{BATCH_ITEMS:<5}      {b:>10.0} items/s (target >= 300,000; {BATCH_CONCURRENCY} calls in flight)"
        );
        app.shutdown().await?;
        Ok(())
    })
}
