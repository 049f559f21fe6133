//! `kmfd` daemons as child processes for the benchmarks that measure two
//! real processes (clone and rekey of a million records): start, stop,
//! peak RSS, and instance initialisation with the `kmfctl` PKI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kmf::domain::ids::Host;
use kmf::tls::TlsFiles;
use tempfile::TempDir;

pub const KMFD: &str = env!("CARGO_BIN_EXE_kmfd");
pub const KMFCTL: &str = env!("CARGO_BIN_EXE_kmfctl");

pub fn ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

pub struct Daemon {
    pub child: Child,
    pub host: Host,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    pub fn start(dir: &Path, pki: &Path) -> anyhow::Result<Daemon> {
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(dir.join("kmfd.log"))?;
        let child = Command::new(KMFD)
            .args(["run", "--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .arg("--data-dir")
            .arg(dir)
            .arg("--tls-ca")
            .arg(pki.join("ca.pem"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut daemon = Daemon { child, host: Host::parse("127.0.0.1:1")? };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(addr) = std::fs::read_to_string(&ready) {
                daemon.host = Host::parse(addr.trim())?;
                return Ok(daemon);
            }
            std::thread::sleep(Duration::from_millis(20)); // poll interval; bounded by the deadline
        }
        anyhow::bail!("kmfd in {} did not become ready", dir.display())
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]))?;
        self.child.wait()?;
        Ok(())
    }

    /// Peak resident set size in MB (VmHWM).
    pub fn peak_rss_mb(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?
            .parse()?;
        Ok(kb / 1024.0)
    }
}

pub fn init(dir: &Path, pki: &Path) -> anyhow::Result<String> {
    let out = ok(Command::new(KMFD).args(["init", "--host", "127.0.0.1:0", "--data-dir"]).arg(dir))?;
    let sys_id = out.split_whitespace().nth(2).ok_or_else(|| anyhow::anyhow!("no sys_id in {out}"))?.to_owned();
    ok(Command::new(KMFCTL)
        .args(["pki", "issue-instance", "--host", "127.0.0.1", "--sys-id", &sys_id, "--ca-dir"])
        .arg(pki)
        .arg("--out")
        .arg(dir))?;
    Ok(sys_id)
}

/// Two initialised, stopped instances `source` and `target` in a temporary
/// directory, with the deployment CA and an admin operator "bench".
pub struct TwoInstances {
    pub tmp: TempDir,
    pub pki: PathBuf,
    /// The operator's TLS files.
    pub files: TlsFiles,
    pub source_dir: PathBuf,
    pub target_dir: PathBuf,
    pub source_id: String,
    pub target_id: String,
}

impl TwoInstances {
    pub fn new() -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let pki = tmp.path().join("pki");
        ok(Command::new(KMFCTL).args(["pki", "init-ca", "--out"]).arg(&pki))?;
        ok(Command::new(KMFCTL)
            .args(["pki", "issue-operator", "--name", "bench", "--role", "admin", "--ca-dir"])
            .arg(&pki)
            .arg("--out")
            .arg(&pki))?;
        let files = TlsFiles::load(&pki.join("ca.pem"), &pki.join("bench.pem"), &pki.join("bench.key"))?;
        let (source_dir, target_dir) = (tmp.path().join("source"), tmp.path().join("target"));
        let source_id = init(&source_dir, &pki)?;
        let target_id = init(&target_dir, &pki)?;
        Ok(TwoInstances { tmp, pki, files, source_dir, target_dir, source_id, target_id })
    }
}
