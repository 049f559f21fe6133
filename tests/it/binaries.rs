//! Driving the built binaries: `kmfd` daemons as child processes (killed on
//! drop if a test fails) and `kmfctl` commands.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KMFD: &str = env!("CARGO_BIN_EXE_kmfd");
pub const KMFCTL: &str = env!("CARGO_BIN_EXE_kmfctl");

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

/// How a daemon gets its settings.
#[derive(Clone, Copy)]
pub enum Settings {
    Flags,
    /// A TOML file passed with --config.
    ConfigFile,
    /// KMF_* variables, JSON logs.
    EnvJson,
}

pub fn start(dir: &Path, pki: &Path, settings: Settings) -> Daemon {
    start_listening(dir, pki, settings, "127.0.0.1:0")
}

/// As `start`, on `listen` (a port to come back to after a kill).
pub fn start_listening(dir: &Path, pki: &Path, settings: Settings, listen: &str) -> Daemon {
    let mut daemon = spawn_listening(dir, pki, settings, listen);
    daemon.wait_ready(dir);
    daemon
}

/// Starts kmfd on `listen` without waiting for it to be ready (to kill it
/// while it starts); `Daemon::wait_ready` waits.
pub fn spawn_listening(dir: &Path, pki: &Path, settings: Settings, listen: &str) -> Daemon {
    spawn_with_env(dir, pki, settings, listen, &[])
}

/// As `spawn_listening`, with more environment variables (e.g. KMF_TLS_CRL).
pub fn spawn_with_env(dir: &Path, pki: &Path, settings: Settings, listen: &str, env: &[(&str, &Path)]) -> Daemon {
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let log = dir.join(format!("kmfd-{}.log", std::process::id()));
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
    let mut cmd = Command::new(KMFD);
    cmd.args(["run", "--ready-file"]).arg(&ready).env("RUST_LOG", "debug");
    match settings {
        Settings::Flags => {
            cmd.args(["--listen", listen, "--background-interval", "200ms", "--data-dir"])
                .arg(dir)
                .arg("--tls-ca")
                .arg(pki.join("ca.pem"));
        }
        Settings::ConfigFile => {
            let config = dir.join("kmfd.toml");
            let text = format!(
                "data_dir = {:?}\nlisten = {listen:?}\nbackground_interval = \"200ms\"\n[tls]\nca = {:?}\n[signer]\nbackend = \"software\"\n",
                dir.display().to_string(),
                pki.join("ca.pem").display().to_string()
            );
            std::fs::write(&config, text).expect("config");
            cmd.arg("--config").arg(config);
        }
        Settings::EnvJson => {
            cmd.env("KMF_DATA_DIR", dir)
                .env("KMF_LISTEN", listen)
                .env("KMF_TLS_CA", pki.join("ca.pem"))
                .env("KMF_BACKGROUND_INTERVAL", "200ms")
                .env("KMF_LOG_FORMAT", "json");
        }
    }
    for (name, value) in env {
        cmd.env(name, value);
    }
    let child = cmd.stdout(Stdio::null()).stderr(log_file).spawn().expect("spawn kmfd");
    // From here on, Drop kills the daemon if the test fails.
    Daemon { child, addr: String::new(), log }
}

impl Drop for Daemon {
    /// A failed test must not leave a daemon running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    /// Waits (at most 20 s) for the ready file kmfd writes in `dir`.
    pub fn wait_ready(&mut self, dir: &Path) {
        let ready = dir.join("ready");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(addr) = std::fs::read_to_string(&ready) {
                self.addr = addr;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kmfd did not become ready; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20)); // poll interval; the loop is bounded by its deadline
        }
    }

    pub fn ctl(&self, pki: &Path) -> Command {
        let mut c = Command::new(KMFCTL);
        c.env("KMF_ENDPOINT", &self.addr)
            .env("KMF_CA", pki.join("ca.pem"))
            .env("KMF_CERT", pki.join("ops.pem"))
            .env("KMF_KEY", pki.join("ops.key"));
        c
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> String {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "kmfd did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20)); // poll interval; the loop is bounded by its deadline
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.success(), "kmfd exited with {status}; log:\n{log}");
        assert!(log.contains("SIGTERM received"), "{log}");
        log
    }
}

pub fn init(dir: &Path, pki: &Path) -> String {
    let out = ok(Command::new(KMFD).args(["init", "--host", "127.0.0.1:0", "--data-dir"]).arg(dir));
    let sys_id = out.split_whitespace().nth(2).expect("sys_id").to_owned();
    ok(Command::new(KMFCTL)
        .args(["pki", "issue-instance", "--host", "127.0.0.1", "--sys-id", &sys_id, "--ca-dir"])
        .arg(pki)
        .arg("--out")
        .arg(dir));
    sys_id
}

/// A deployment CA and an admin operator "ops" (ops.pem, ops.key) in `pki`.
pub fn operator_pki(pki: &Path) {
    ok(Command::new(KMFCTL).args(["pki", "init-ca", "--out"]).arg(pki));
    ok(Command::new(KMFCTL)
        .args(["pki", "issue-operator", "--name", "ops", "--role", "admin", "--ca-dir"])
        .arg(pki)
        .arg("--out")
        .arg(pki));
}

/// xorshift64*: enough to spread kill moments, reproducible from its seed.
pub struct Rng(pub u64);

/// How many trials a crash test runs (`var`, else `default`) and its random
/// source, seeded from `KMF_CRASH_SEED` or the clock; both are printed so a
/// failure can be replayed.
pub fn trials(what: &str, var: &str, default: usize) -> (usize, u64, Rng) {
    let trials: usize = std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let seed: u64 = std::env::var("KMF_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| kmf::clock::now().0 as u64 | 1);
    println!("{what} trials: {trials}, seed {seed} (KMF_CRASH_SEED={seed} replays them)");
    (trials, seed, Rng(seed))
}

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A free 127.0.0.1 port, as host:port (for a daemon restarted on the same port).
pub fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
    l.local_addr().expect("addr").to_string()
}
