//! Benchmark (a program, not a test): an Adhoc exchange of N keys between two
//! local instances over mTLS, N = 1, 1,000, 10,000. Prints the time from the
//! approval call to REQUEST_COMPLETED on both sides, and keys/s.
//!
//! Run: cargo bench --bench adhoc_exchange            (all sizes)
//!      cargo bench --bench adhoc_exchange -- 10000   (chosen sizes)

use std::time::{Duration, Instant};

use kmf::app::start_loopback;
use kmf::cli::kmfctl::{Operator, aes_spec};
use kmf::domain::auth::Role;
use kmf::domain::ids::Name;
use kmf::rpc::pb;
use kmf::tls::pki::{create_ca, issue_operator, tls_files};

struct Run {
    keys: u32,
    approve_to_completed: Duration,
    imported: u32,
}

async fn exchange(n: u32) -> anyhow::Result<Run> {
    let tmp = tempfile::tempdir()?;
    let ca = create_ca("bench CA")?;
    let op = tls_files(&ca, &issue_operator(&ca, "bench", &[Role::Admin])?);
    let idle = Duration::from_secs(3600);
    let (source_app, source_id, source_host) = start_loopback(tmp.path(), "source", &ca, idle).await?;
    let (target_app, _, target_host) = start_loopback(tmp.path(), "target", &ca, idle).await?;
    let mut s = Operator::connect_with(&source_host, &op).await?;
    let mut t = Operator::connect_with(&target_host, &op).await?;
    for ops in [&mut s, &mut t] {
        ops.keys
            .create_module(pb::CreateModuleRequest {
                name: "bench".into(),
                default_access: pb::DefaultAccess::Track as i32,
            })
            .await?;
        ops.keys.create_spec(aes_spec("bench", "data", 256)).await?;
    }
    source_app.node.seed_rotations(Name::parse("data", "spec")?, n).await?;
    let created = t
        .exchange
        .create_request(pb::CreateRequestRequest {
            source_sys_id: source_id.to_string(),
            source_host: source_host.to_string(),
            spec_names: vec!["data".into()],
            expires_in: None,
            frequency: pb::Frequency::Adhoc as i32,
        })
        .await?
        .into_inner()
        .request
        .unwrap_or_default();
    let approve = pb::UpdateRequestRequest {
        request_id: created.request_id.clone(),
        decision: pb::Decision::Approve as i32,
        reason: String::new(),
    };
    let started = Instant::now();
    let done = s.exchange.update_request(approve).await?.into_inner().request.unwrap_or_default();
    let elapsed = started.elapsed();
    anyhow::ensure!(done.status == pb::RequestStatus::RequestCompleted as i32, "source did not complete: {done:?}");
    let on_target = t.exchange.get_request(pb::GetRequestRequest { request_id: created.request_id }).await?;
    let on_target = on_target.into_inner().request.unwrap_or_default();
    anyhow::ensure!(on_target.status == pb::RequestStatus::RequestCompleted as i32, "target not completed");
    anyhow::ensure!(on_target.imported_key_count == n, "imported {} of {n}", on_target.imported_key_count);
    source_app.shutdown().await?;
    target_app.shutdown().await?;
    Ok(Run { keys: n, approve_to_completed: elapsed, imported: on_target.imported_key_count })
}

const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 1_000, 10_000] } else { sizes };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!("Adhoc exchange, software signer, two instances on loopback over mTLS ({} cores)", num_cpus());
    println!("each size runs {RUNS} times on fresh instances; median and best of approve -> REQUEST_COMPLETED");
    println!("{:>8}  {:>12}  {:>12}  {:>14}  {:>9}", "keys", "median", "best", "keys/s (med)", "imported");
    for n in sizes {
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            runs.push(rt.block_on(exchange(n))?);
        }
        runs.sort_by_key(|r| r.approve_to_completed);
        let (median, best) = (&runs[RUNS / 2], &runs[0]);
        let secs = median.approve_to_completed.as_secs_f64();
        println!(
            "{:>8}  {:>9.1} ms  {:>9.1} ms  {:>14.0}  {:>9}",
            median.keys,
            secs * 1000.0,
            best.approve_to_completed.as_secs_f64() * 1000.0,
            f64::from(median.keys) / secs,
            median.imported
        );
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
