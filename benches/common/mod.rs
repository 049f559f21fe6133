//! Shared by the exchange benchmarks: one Adhoc exchange of N keys between two
//! local instances over mTLS, timed from the approval call to
//! REQUEST_COMPLETED, and the table that reports median and best of runs.

use std::time::{Duration, Instant};

use kmf::app::{SignerConfig, start_loopback_with};
use kmf::cli::kmfctl::{Operator, aes_spec};
use kmf::domain::auth::Role;
use kmf::domain::ids::Name;
use kmf::rpc::pb;
use kmf::tls::pki::{create_ca, issue_operator, tls_files};

pub struct Run {
    pub keys: u32,
    pub approve_to_completed: Duration,
    pub imported: u32,
}

/// One exchange of `n` keys on fresh instances; a signer of `None` is the
/// software signer in the instance's directory.
pub async fn exchange(n: u32, source: Option<SignerConfig>, target: Option<SignerConfig>) -> anyhow::Result<Run> {
    let tmp = tempfile::tempdir()?;
    let ca = create_ca("bench CA")?;
    let op = tls_files(&ca, &issue_operator(&ca, "bench", &[Role::Admin])?);
    let idle = Duration::from_secs(3600);
    let signer =
        |s: Option<SignerConfig>, name: &str| s.unwrap_or_else(|| SignerConfig::software_in(&tmp.path().join(name)));
    let (source_app, source_id, source_host) =
        start_loopback_with(tmp.path(), "source", &ca, idle, signer(source, "source")).await?;
    let (target_app, _, target_host) =
        start_loopback_with(tmp.path(), "target", &ca, idle, signer(target, "target")).await?;
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

pub const RUNS: usize = 3;

/// Sizes from the command line (numbers only; cargo adds `--bench`), else `default`.
pub fn sizes(default: &[u32]) -> Vec<u32> {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() { default.to_vec() } else { sizes }
}

/// Runs every size `RUNS` times and prints median and best; returns the
/// median duration per size.
pub fn table(
    sizes: &[u32],
    mut run: impl FnMut(u32, usize) -> anyhow::Result<Run>,
) -> anyhow::Result<Vec<(u32, Duration)>> {
    println!("each size runs {RUNS} times on fresh instances; median and best of approve -> REQUEST_COMPLETED");
    println!("{:>8}  {:>12}  {:>12}  {:>14}  {:>9}", "keys", "median", "best", "keys/s (med)", "imported");
    let mut medians = Vec::new();
    for &n in sizes {
        let mut runs = Vec::new();
        for i in 0..RUNS {
            runs.push(run(n, i)?);
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
        medians.push((n, median.approve_to_completed));
    }
    Ok(medians)
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
