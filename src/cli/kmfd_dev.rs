//! `kmfd dev`: throwaway instances with nothing to prepare (as `vault server
//! -dev`). A directory (temporary unless `--dir`) gets a CA, an admin operator
//! certificate and, per instance, a data directory with a software KEK and its
//! certificate — the same layout `kmfd init` and `kmfctl pki` make, so a kept
//! directory restarts with `kmfd run --data-dir`. Every instance listens on
//! loopback only and trusts the others through the shared CA. It prints the
//! `export KMF_*` lines for kmfctl and the grpcurl flags, serves until SIGINT or
//! SIGTERM, then removes the directory unless `--keep`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::net::TcpListener;

use super::ctl_pki::write_private;
use crate::app::{self, RunningApp, SignerConfig};
use crate::config::{RunArgs, resolve};
use crate::domain::auth::Role;
use crate::domain::ids::{Host, SysId};
use crate::tls::pki::{IssuedCert, create_ca, issue_instance, issue_operator};

/// Flags of `kmfd dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Instances to start: 1 (`dev`), 2 (`source` and `target`), up to 4
    /// (`source`, `target`, `target2`, `target3`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub peers: u8,
    /// Keep the directory on exit (it restarts with `kmfd run --data-dir`).
    #[arg(long)]
    pub keep: bool,
    /// Use this directory (created; must be empty or absent) instead of a
    /// temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// First loopback port (the next instances take the following ports);
    /// 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// One running dev instance.
struct DevInstance {
    name: &'static str,
    sys_id: SysId,
    addr: SocketAddr,
    data_dir: PathBuf,
    app: RunningApp,
}

/// The instance names for `peers` instances.
fn names(peers: u8) -> &'static [&'static str] {
    const ALL: [&str; 4] = ["source", "target", "target2", "target3"];
    if peers == 1 { &["dev"] } else { &ALL[..usize::from(peers.min(4))] }
}

/// The dev directory: removed on drop unless kept.
enum DevDir {
    Temporary(tempfile::TempDir),
    Given(PathBuf),
}

impl DevDir {
    fn make(args: &DevArgs) -> anyhow::Result<Self> {
        match &args.dir {
            None => Ok(DevDir::Temporary(tempfile::Builder::new().prefix("kmf-dev-").tempdir()?)),
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let empty = std::fs::read_dir(dir)?.next().is_none();
                anyhow::ensure!(empty, "{} is not empty (kmfd dev starts from nothing)", dir.display());
                Ok(DevDir::Given(dir.clone()))
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            DevDir::Temporary(t) => t.path(),
            DevDir::Given(p) => p,
        }
    }

    /// Removes the directory unless `keep`; says what happened.
    fn finish(self, keep: bool) -> anyhow::Result<()> {
        match (self, keep) {
            (DevDir::Temporary(t), true) => println!("kept {}", t.keep().display()),
            (DevDir::Given(p), true) => println!("kept {}", p.display()),
            (DevDir::Temporary(t), false) => {
                let path = t.path().to_path_buf();
                t.close().with_context(|| format!("removing {}", path.display()))?;
                println!("removed {}", path.display());
            }
            (DevDir::Given(p), false) => {
                std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
                println!("removed {}", p.display());
            }
        }
        Ok(())
    }
}

pub fn main(args: DevArgs) -> anyhow::Result<()> {
    crate::telemetry::init_with_default(crate::config::LogFormat::Text, "warn");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let dir = DevDir::make(&args)?;
    let served = rt.block_on(serve(dir.path(), &args));
    // Remove what was made even when starting failed half way.
    let finished = dir.finish(args.keep);
    served.and(finished)
}

async fn serve(root: &Path, args: &DevArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let ca = create_ca("kmf dev CA")?;
    write_pem_pair(root, "ca", &ca)?;
    write_pem_pair(root, "admin", &issue_operator(&ca, "dev-admin", &[Role::Admin])?)?;
    let mut instances = Vec::new();
    for (i, name) in names(args.peers).iter().enumerate() {
        let port = if args.port == 0 { 0 } else { args.port.checked_add(i as u16).context("--port too high")? };
        match start_instance(root, name, &ca, port).await {
            Ok(instance) => instances.push(instance),
            Err(e) => {
                stop_all(instances).await;
                return Err(e.context(format!("starting instance {name}")));
            }
        }
    }
    print!("{}", banner(root, &instances, args.keep));
    use std::io::Write;
    std::io::stdout().flush()?;
    tokio::select! {
        _ = term.recv() => println!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => println!("SIGINT: stopping"),
    }
    stop_all(instances).await;
    Ok(())
}

async fn stop_all(instances: Vec<DevInstance>) {
    for instance in instances {
        if let Err(e) = instance.app.shutdown().await {
            eprintln!("kmfd dev: stopping {}: {e:#}", instance.name);
        }
    }
}

/// `<dir>/<stem>.pem` and `<dir>/<stem>.key` (0600).
fn write_pem_pair(dir: &Path, stem: &str, cert: &IssuedCert) -> anyhow::Result<()> {
    write_private(&dir.join(format!("{stem}.key")), &cert.key_pem)?;
    std::fs::write(dir.join(format!("{stem}.pem")), &cert.cert_pem)?;
    Ok(())
}

/// `kmfd init` on loopback, the instance certificate in its data directory,
/// and `kmfd run` with the defaults that layout implies.
async fn start_instance(root: &Path, name: &'static str, ca: &IssuedCert, port: u16) -> anyhow::Result<DevInstance> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    let data_dir = root.join(name);
    let signer = SignerConfig::software_in(&data_dir);
    let sys_id = app::init_instance_with(&data_dir, &Host::parse(&addr.to_string())?, &signer)?;
    let cert = issue_instance(ca, &sys_id, &["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    std::fs::write(data_dir.join("ca.pem"), &ca.cert_pem)?;
    write_pem_pair(&data_dir, "instance", &cert)?;
    let run_args = RunArgs { data_dir: Some(data_dir.clone()), listen: Some(addr.to_string()), ..Default::default() };
    let cfg = resolve(&run_args, None)?.load()?;
    let app = app::start_custom(cfg, listener, app::StartOptions::default()).await?;
    Ok(DevInstance { name, sys_id, addr, data_dir, app })
}

/// What `kmfd dev` prints once every instance serves.
fn banner(root: &Path, instances: &[DevInstance], keep: bool) -> String {
    let mut out = String::new();
    let d = root.display();
    let first = &instances[0];
    let _ = writeln!(out, "kmfd dev: {} throwaway instance(s) in {d}", instances.len());
    let _ = writeln!(out, "  NOT FOR PRODUCTION: software KEKs, the CA key and an admin key on local disk\n");
    for i in instances {
        let _ = writeln!(out, "  {:<8} sys_id {}  listening on {} (mTLS, TLS 1.3)", i.name, i.sys_id, i.addr);
    }
    let _ = writeln!(out, "\nkmfctl (admin):");
    let _ = writeln!(out, "export KMF_CA={d}/ca.pem");
    let _ = writeln!(out, "export KMF_CERT={d}/admin.pem");
    let _ = writeln!(out, "export KMF_KEY={d}/admin.key");
    let _ = writeln!(out, "export KMF_ENDPOINT={}", first.addr);
    let _ = writeln!(out, "\ngrpcurl (server reflection):");
    let flags = format!("-cacert {d}/ca.pem -cert {d}/admin.pem -key {d}/admin.key");
    let _ = writeln!(out, "  grpcurl {flags} {} list", first.addr);
    if let [source, target, ..] = instances {
        let (s, t, sid) = (source.addr, target.addr, &source.sys_id);
        let _ = writeln!(out, "\nan Adhoc exchange by hand (source {s}, target {t}):");
        let _ = writeln!(out, "  kmfctl --endpoint {s} module create demo --default-access track");
        let _ = writeln!(out, "  kmfctl --endpoint {s} spec create salary --module demo");
        let _ = writeln!(out, "  kmfctl --endpoint {s} key generate salary");
        let _ = writeln!(out, "  kmfctl --endpoint {t} module create demo --default-access track");
        let _ = writeln!(out, "  kmfctl --endpoint {t} spec create salary --module demo");
        let _ = writeln!(
            out,
            "  kmfctl --endpoint {t} exchange create --source-sys-id {sid} --source-host {s} --spec salary"
        );
        let _ = writeln!(out, "  kmfctl --endpoint {s} exchange list --status pending");
        let _ = writeln!(out, "  kmfctl --endpoint {s} exchange approve <REQUEST_ID> --wait");
        let _ = writeln!(out, "  kmfctl --endpoint {t} key list salary");
    }
    let restart: Vec<String> =
        instances.iter().map(|i| format!("kmfd run --data-dir {} --listen {}", i.data_dir.display(), i.addr)).collect();
    if keep {
        let _ = writeln!(out, "\n--keep: the directory stays after exit; restart with\n  {}", restart.join("\n  "));
    } else {
        let _ = writeln!(out, "\nCtrl-C stops and removes {d} (--keep keeps it).");
    }
    let _ = writeln!(out, "kmfd dev: ready");
    out
}
