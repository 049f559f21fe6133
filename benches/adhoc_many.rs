//! Benchmark (a program, not a test): 100 Adhoc requests from 5 targets to
//! one source, approved 10 at a time.
//!
//! The source holds spec "data" with 100 keys; 5 target instances hold the
//! same spec without keys. Each target opens 20 requests (each makes an
//! RSA-3072 transport key; the targets create theirs concurrently). The
//! source then approves them from a pool of 10 concurrent workers: each sends
//! `UpdateRequest` APPROVE and, unless the answer is already
//! REQUEST_COMPLETED, polls `GetRequest` every 10 ms (at most 60 s). Prints
//! the time from sending the approval to seeing REQUEST_COMPLETED (p50, p99,
//! max) and the total wall time. Checks that every request is COMPLETED on
//! both sides with a bundle of all 100 keys, and that every target then holds
//! the 100 keys: a target imports them with its first completed request and
//! counts them as already present in the other 19 (keys are never stored
//! twice). Must be 100/100 and 5/5; otherwise exits non-zero.
//!
//! Run: cargo bench --bench adhoc_many
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod common;

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::load::{Latencies, ms, verdict};
use common::{Site, add_module, add_spec};
use kmf::domain::ids::Name;
use kmf::rpc::pb;
use kmf::rpc::pb::resource_exchange_client::ResourceExchangeClient;
use tonic::transport::Channel;

const TARGETS: usize = 5;
const PER_TARGET: usize = 20;
const REQUESTS: usize = TARGETS * PER_TARGET;
const KEYS: u32 = 100;
const POOL: usize = 10;
const POLL_EVERY: Duration = Duration::from_millis(10);
const POLL_LIMIT: Duration = Duration::from_secs(60);

type Exchange = ResourceExchangeClient<Channel>;

async fn request(client: &mut Exchange, request_id: &str) -> anyhow::Result<pb::ExchangeRequest> {
    let r = client.get_request(pb::GetRequestRequest { request_id: request_id.into() }).await?;
    r.into_inner().request.ok_or_else(|| anyhow::anyhow!("GetRequest {request_id}: no request in the answer"))
}

/// Approves `request_id` on the source and waits for REQUEST_COMPLETED;
/// returns the time from sending the approval to seeing it completed.
async fn approve(mut source: Exchange, request_id: String) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let approve = pb::UpdateRequestRequest {
        request_id: request_id.clone(),
        decision: pb::Decision::Approve as i32,
        reason: String::new(),
    };
    let answer = source.update_request(approve).await?.into_inner().request.unwrap_or_default();
    let mut status = answer.status();
    while status != pb::RequestStatus::RequestCompleted {
        anyhow::ensure!(
            matches!(status, pb::RequestStatus::RequestApproved | pb::RequestStatus::RequestPending),
            "request {request_id} ended {status:?}"
        );
        anyhow::ensure!(started.elapsed() < POLL_LIMIT, "request {request_id} still {status:?} after {POLL_LIMIT:?}");
        tokio::time::sleep(POLL_EVERY).await; // poll interval; bounded by POLL_LIMIT
        status = request(&mut source, &request_id).await?.status();
    }
    Ok(started.elapsed())
}

fn main() -> anyhow::Result<ExitCode> {
    common::block_on(async move {
        println!(
            "{REQUESTS} Adhoc requests of {KEYS} keys from {TARGETS} targets to one source, approved {POOL} at a time ({})",
            common::machine()
        );
        let site = Site::new()?;
        let (source_app, source_id, source_host, mut s) = site.instance("source").await?;
        add_module(&mut s, "bench", pb::DefaultAccess::Track).await?;
        add_spec(&mut s, "bench", "data", 1).await?;
        source_app.services.catalog.seed_rotations(Name::parse("data", "spec")?, KEYS - 1).await?;
        let mut apps = vec![source_app];
        let mut targets = Vec::new();
        for i in 0..TARGETS {
            let (app, _, _, mut t) = site.instance(&format!("target{i}")).await?;
            add_module(&mut t, "bench", pb::DefaultAccess::Track).await?;
            add_spec(&mut t, "bench", "data", 0).await?;
            apps.push(app);
            targets.push(t);
        }

        // Each target opens its requests one after another; the targets run at once.
        let started = Instant::now();
        let mut creating = tokio::task::JoinSet::new();
        for (i, client) in targets.iter().enumerate() {
            let (mut client, source_id, source_host) =
                (client.exchange.clone(), source_id.to_string(), source_host.to_string());
            creating.spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..PER_TARGET {
                    let req = pb::CreateRequestRequest {
                        source_sys_id: source_id.clone(),
                        source_host: source_host.clone(),
                        spec_names: vec!["data".into()],
                        expires_in: None,
                        frequency: pb::Frequency::Adhoc as i32,
                        rekey_after_import: false,
                    };
                    let created = client.create_request(req).await?.into_inner().request.unwrap_or_default();
                    anyhow::ensure!(!created.request_id.is_empty(), "CreateRequest on target {i}: no request id");
                    ids.push((i, created.request_id));
                }
                Ok::<_, anyhow::Error>(ids)
            });
        }
        let mut requests = Vec::new();
        while let Some(done) = creating.join_next().await {
            requests.extend(done??);
        }
        let creation = started.elapsed();
        println!(
            "  CreateRequest x{REQUESTS} ({TARGETS} targets at once): {:.2} s ({:.1} ms per request)",
            creation.as_secs_f64(),
            ms(creation) / REQUESTS as f64
        );

        // The source approves them from a pool of POOL workers.
        let queue = Arc::new(Mutex::new(requests.iter().map(|(_, id)| id.clone()).collect::<VecDeque<_>>()));
        let started = Instant::now();
        let mut approving = tokio::task::JoinSet::new();
        for _ in 0..POOL {
            let (queue, source) = (queue.clone(), s.exchange.clone());
            approving.spawn(async move {
                let mut timed = Vec::new();
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(id) = next else { return timed };
                    timed.push(approve(source.clone(), id.clone()).await.map_err(|e| format!("{id}: {e:#}")));
                }
            });
        }
        let mut latencies = Vec::new();
        let mut failures = Vec::new();
        while let Some(done) = approving.join_next().await {
            for r in done? {
                match r {
                    Ok(d) => latencies.push(d),
                    Err(e) => failures.push(e),
                }
            }
        }
        let wall = started.elapsed();

        // Every request COMPLETED on both sides with all keys in its bundle.
        let mut completed = 0;
        let mut imported = [0u32; TARGETS];
        for (i, id) in &requests {
            let on_source = request(&mut s.exchange, id).await?;
            let on_target = request(&mut targets[*i].exchange, id).await?;
            imported[*i] += on_target.imported_key_count;
            let done = |r: &pb::ExchangeRequest| r.status() == pb::RequestStatus::RequestCompleted;
            if done(&on_source) && done(&on_target) && on_target.exported_key_count == KEYS {
                completed += 1;
            } else {
                failures.push(format!(
                    "{id}: source {:?}, target {:?} with {} of {KEYS} keys in the bundle",
                    on_source.status(),
                    on_target.status(),
                    on_target.exported_key_count
                ));
            }
        }
        // Every target holds the keys once: imported by one request, present for the rest.
        let mut holding = 0;
        for (i, t) in targets.iter_mut().enumerate() {
            let held = t.keys.list_keys(pb::ListKeysRequest { spec: "data".into() }).await?.into_inner().keys.len();
            if held == KEYS as usize && imported[i] == KEYS {
                holding += 1;
            } else {
                failures.push(format!("target {i}: holds {held} keys, {} imported, expected {KEYS}", imported[i]));
            }
        }
        let latencies = Latencies::new(latencies);
        println!("  approve -> REQUEST_COMPLETED on the source: {}", latencies.summary());
        println!(
            "  all {REQUESTS} approvals: {:.2} s wall ({:.0} keys/s exported)",
            wall.as_secs_f64(),
            f64::from(KEYS) * latencies.count() as f64 / wall.as_secs_f64()
        );
        let ok = completed == REQUESTS && holding == TARGETS;
        println!("  COMPLETED on both sides with all {KEYS} keys in the bundle: {completed}/{REQUESTS}");
        println!("  targets holding the {KEYS} keys (imported once, then already present): {holding}/{TARGETS}");
        println!("  target {REQUESTS}/{REQUESTS} and {TARGETS}/{TARGETS}: {}", verdict(ok));
        for f in failures.iter().take(10) {
            println!("  failed: {f}");
        }
        for app in apps {
            app.shutdown().await?;
        }
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    })
}
