//! Shared by the benchmark programs: a site (temporary directory, CA, admin
//! operator) with modules and specs; one Adhoc exchange of N keys between two
//! local instances over mTLS, timed from the approval call to
//! REQUEST_COMPLETED, and the table that reports median and best of runs;
//! load loops and figures (`load`).
// Each benchmark is its own crate and uses only part of these helpers.
#![allow(dead_code)]

pub mod load;
pub mod processes;

use std::time::{Duration, Instant};

use kmf::app::{RunningApp, SignerConfig, start_loopback_with};
use kmf::cli::kmfctl::{Operator, aes_spec};
use kmf::domain::auth::Role;
use kmf::domain::ids::{Host, Name, SysId};
use kmf::rpc::pb;
use kmf::tls::TlsFiles;
use kmf::tls::pki::{IssuedCert, create_ca, issue_operator, tls_files};
use tempfile::TempDir;

/// Background interval of benchmark instances: long enough never to run
/// during a measurement.
pub const IDLE: Duration = Duration::from_secs(3600);

/// Where benchmark instances live: a temporary directory, the deployment CA
/// and an admin operator's TLS files.
pub struct Site {
    pub dir: TempDir,
    pub ca: IssuedCert,
    pub op: TlsFiles,
}

impl Site {
    pub fn new() -> anyhow::Result<Self> {
        let ca = create_ca("bench CA")?;
        let op = tls_files(&ca, &issue_operator(&ca, "bench", &[Role::Admin])?);
        Ok(Site { dir: tempfile::tempdir()?, ca, op })
    }

    /// A new instance `name` with a software signer and an operator
    /// connection to it.
    pub async fn instance(&self, name: &str) -> anyhow::Result<(RunningApp, SysId, Host, Operator)> {
        let signer = SignerConfig::software_in(&self.dir.path().join(name));
        let (app, sys_id, host) = start_loopback_with(self.dir.path(), name, &self.ca, IDLE, signer).await?;
        let ops = Operator::connect_with(&host, &self.op).await?;
        Ok((app, sys_id, host, ops))
    }

    /// Instance "node" with module "m" (default access TRACK) and spec
    /// "bench" (AES-256-GCM) holding one key.
    pub async fn crypto_node(&self) -> anyhow::Result<(RunningApp, Host, Operator)> {
        let (app, _, host, mut ops) = self.instance("node").await?;
        add_module(&mut ops, "m", pb::DefaultAccess::Track).await?;
        add_spec(&mut ops, "m", "bench", 1).await?;
        Ok((app, host, ops))
    }
}

/// Runs `f` to completion on a new multi-threaded runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(f)
}

/// Creates module `name` with default access `access`.
pub async fn add_module(ops: &mut Operator, name: &str, access: pb::DefaultAccess) -> anyhow::Result<()> {
    ops.keys.create_module(pb::CreateModuleRequest { name: name.into(), default_access: access as i32 }).await?;
    Ok(())
}

/// Creates an AES-256-GCM spec `spec` in `module` with `keys` keys (the
/// first generated, the rest by rotation).
pub async fn add_spec(ops: &mut Operator, module: &str, spec: &str, keys: u32) -> anyhow::Result<()> {
    ops.keys.create_spec(aes_spec(module, spec, 256)).await?;
    for i in 0..keys {
        let spec = spec.to_owned();
        if i == 0 {
            ops.keys.generate_key(pb::GenerateKeyRequest { spec }).await?;
        } else {
            ops.keys.rotate_key(pb::RotateKeyRequest { spec }).await?;
        }
    }
    Ok(())
}

pub struct Run {
    pub keys: u32,
    pub approve_to_completed: Duration,
    pub imported: u32,
}

/// One exchange of `n` keys on fresh instances; a signer of `None` is the
/// software signer in the instance's directory.
pub async fn exchange(n: u32, source: Option<SignerConfig>, target: Option<SignerConfig>) -> anyhow::Result<Run> {
    let site = Site::new()?;
    let root = site.dir.path();
    let signer = |s: Option<SignerConfig>, name: &str| s.unwrap_or_else(|| SignerConfig::software_in(&root.join(name)));
    let (source_app, source_id, source_host) =
        start_loopback_with(root, "source", &site.ca, IDLE, signer(source, "source")).await?;
    let (target_app, _, target_host) =
        start_loopback_with(root, "target", &site.ca, IDLE, signer(target, "target")).await?;
    let mut s = Operator::connect_with(&source_host, &site.op).await?;
    let mut t = Operator::connect_with(&target_host, &site.op).await?;
    for ops in [&mut s, &mut t] {
        add_module(ops, "bench", pb::DefaultAccess::Track).await?;
        add_spec(ops, "bench", "data", 0).await?;
    }
    source_app.services.catalog.seed_rotations(Name::parse("data", "spec")?, n).await?;
    let created = t
        .exchange
        .create_request(pb::CreateRequestRequest {
            source_sys_id: source_id.to_string(),
            source_host: source_host.to_string(),
            spec_names: vec!["data".into()],
            expires_in: None,
            frequency: pb::Frequency::Adhoc as i32,
            rekey_after_import: false,
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

/// "N cores, load average L": the core count, and the 1-minute load average
/// when the program started (other work on the machine skews the figures).
pub fn machine() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").ok();
    let load = load.as_deref().and_then(|l| l.split_whitespace().next()).unwrap_or("unknown");
    format!("{} cores, load average {load}", num_cpus())
}
