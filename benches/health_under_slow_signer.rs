//! Benchmark (a program, not a test): grpc.health.v1 `Health/Check` latency
//! while Encrypt calls wait on a slow signer.
//!
//! The daemon's signer takes 50 ms per unwrap (`DelayedSigner`, standing for
//! a slow HSM). Load: 32 Encrypt calls in flight over one mTLS connection,
//! round-robin over 8 specs, while a task rotates one spec's key every 25 ms
//! (the specs in turn), so new keys keep needing an unwrap. A prober on a
//! separate mTLS connection sends `Health/Check` (service "") one at a time
//! and records each latency: first with no load (baseline), then under load.
//! Target: p99 under load <= 10 ms.
//!
//! Run: cargo bench --bench health_under_slow_signer [-- SECONDS]   (default 3)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::load::{Latencies, drive, every, ms, probe, seconds_arg, verdict};
use common::{IDLE, Site, add_module, add_spec};
use kmf::app::{SignerConfig, StartOptions, start_loopback_custom};
use kmf::cli::kmfctl::Operator;
use kmf::rpc::client::connect;
use kmf::rpc::pb;
use kmf::signer::delayed::DelayedSigner;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

const UNWRAP_DELAY: Duration = Duration::from_millis(50);
const SPECS: usize = 8;
const CONCURRENCY: usize = 32;
const ROTATE_EVERY: Duration = Duration::from_millis(25);
/// Upper bounds on the calls of one measurement, whatever its length.
const MAX_CALLS: u64 = 5_000_000;
const MAX_PROBES: usize = 1_000_000;
const TARGET: Duration = Duration::from_millis(10);

fn spec(i: usize) -> String {
    format!("s{}", i % SPECS)
}

async fn health_latencies(ch: Channel, secs: f64) -> anyhow::Result<Latencies> {
    let c = HealthClient::new(ch);
    probe(secs, MAX_PROBES, move || {
        let mut c = c.clone();
        async move {
            let r = c.check(HealthCheckRequest { service: String::new() }).await?.into_inner();
            anyhow::ensure!(r.status == ServingStatus::Serving as i32, "Health/Check answered {:?}", r.status());
            Ok(())
        }
    })
    .await
}

async fn encrypt_load(ch: Channel, secs: f64) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    drive(CONCURRENCY, secs, MAX_CALLS, move || {
        let mut c = pb::crypto_client::CryptoClient::new(ch.clone());
        let spec = spec(next.fetch_add(1, Ordering::Relaxed));
        async move {
            let req = pb::EncryptRequest { spec, plaintext: vec![7u8; 32], associated_data: b"aad".to_vec() };
            let r = c.encrypt(req).await?.into_inner();
            anyhow::ensure!(r.ciphertext.len() > 32, "short ciphertext");
            Ok(())
        }
    })
    .await
}

async fn rotations(ch: Channel, secs: f64) -> anyhow::Result<u64> {
    let keys = pb::key_management_client::KeyManagementClient::new(ch);
    every(ROTATE_EVERY, secs, MAX_CALLS, move |i| {
        let mut keys = keys.clone();
        async move {
            keys.rotate_key(pb::RotateKeyRequest { spec: spec(i as usize) }).await?;
            Ok(())
        }
    })
    .await
}

fn main() -> anyhow::Result<()> {
    let secs = seconds_arg(3.0);
    common::block_on(async move {
        let site = Site::new()?;
        let root = site.dir.path();
        let options = StartOptions {
            wrap_signer: Box::new(|inner| Arc::new(DelayedSigner { inner, unwrap_delay: UNWRAP_DELAY })),
            ..Default::default()
        };
        let signer = SignerConfig::software_in(&root.join("node"));
        let (app, _, host) = start_loopback_custom(root, "node", &site.ca, IDLE, signer, options).await?;
        let mut ops = Operator::connect_with(&host, &site.op).await?;
        add_module(&mut ops, "m", pb::DefaultAccess::Track).await?;
        for i in 0..SPECS {
            add_spec(&mut ops, "m", &spec(i), 1).await?;
        }
        let dial = || async { connect(&host, &site.op, None).await.map_err(|e| anyhow::anyhow!(e)) };
        let (load, prober) = (dial().await?, dial().await?);
        println!(
            "Health/Check under Encrypt load with a slow signer ({}, {secs} s per measurement, unwrap takes {} ms)",
            common::machine(),
            UNWRAP_DELAY.as_millis()
        );
        println!(
            "  load: {CONCURRENCY} Encrypts in flight over {SPECS} specs on one connection, a RotateKey every {} ms; probe: one Health/Check at a time on another",
            ROTATE_EVERY.as_millis()
        );
        let baseline = health_latencies(prober.clone(), secs).await?;
        println!("  no load     Health/Check  {}", baseline.summary());
        let (under, rate, rotated) =
            tokio::try_join!(health_latencies(prober, secs), encrypt_load(load.clone(), secs), rotations(load, secs))?;
        println!("  under load  Health/Check  {}", under.summary());
        println!("  Encrypt {rate:.0} req/s; {rotated} rotations during the measurement");
        let p99 = under.percentile(99.0);
        println!(
            "  p99 under load {:.2} ms   (target p99 <= {} ms: {})",
            ms(p99),
            TARGET.as_millis(),
            verdict(p99 <= TARGET)
        );
        app.shutdown().await?;
        Ok(())
    })
}
