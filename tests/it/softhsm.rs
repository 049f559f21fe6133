//! SoftHSM2 for tests: a private token directory per test, one token per node.
//!
//! SoftHSM reads `SOFTHSM2_CONF` from the process environment when the module
//! is initialised, and a process initialises a module once. Setting the
//! variable inside this multi-threaded test process would race every other
//! thread's `getenv` (and the crate forbids `unsafe`, which `set_var` needs in
//! edition 2024). So each HSM test re-runs itself in a child process of this
//! test binary (`--exact <name>`) with its own `SOFTHSM2_CONF` and token
//! directory in a tempdir: hermetic, and nothing is shared between tests.
//!
//! Without softhsm2 the parent prints `SKIPPED ...` and passes, unless
//! CI=true, where it fails (scripts/test.sh installs softhsm2).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kmf::app::SignerConfig;
use kmf::signer::pkcs11::{PinSource, Pkcs11Config};

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const CHILD: &str = "KMF_TEST_SOFTHSM_DIR";
/// A child HSM test taking longer than this is killed and fails.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// `softhsm_test!("name")` at the top of an HSM test: in the parent it runs
/// the test in a child with its own SoftHSM and returns; in the child it
/// gives the `SoftHsm`.
macro_rules! softhsm_child {
    ($name:literal) => {{
        let path = module_path!();
        let module = path.split_once("::").map_or(path, |(_, rest)| rest);
        match crate::softhsm::isolate(&format!("{module}::{}", $name)) {
            Some(hsm) => hsm,
            None => return,
        }
    }};
}
pub(crate) use softhsm_child;

pub fn installed() -> bool {
    Path::new(MODULE).exists()
        && Command::new("softhsm2-util").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The parent runs `test` in a child and returns None; the child gets its SoftHSM.
pub fn isolate(test: &str) -> Option<SoftHsm> {
    if let Ok(root) = std::env::var(CHILD) {
        let root = PathBuf::from(root);
        return Some(SoftHsm { conf: root.join("softhsm2.conf"), root });
    }
    if !installed() {
        crate::skip::skip(test, "softhsm2 not installed (apt-get install softhsm2)");
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = write_conf(dir.path());
    let exe = std::env::current_exe().expect("test binary");
    let log = dir.path().join("child.log");
    let log_file = std::fs::File::create(&log).expect("child log");
    let mut child = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, dir.path())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("run the HSM test in a child process");
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval; bounded by the deadline
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let passed = status.is_some_and(|s| s.success()) && text.contains("test result: ok. 1 passed");
    assert!(
        passed,
        "HSM test {test} failed in its child process ({}; SOFTHSM2_CONF={}):\n{text}",
        status.map_or_else(|| format!("killed after {CHILD_TIMEOUT:?}"), |s| s.to_string()),
        conf.display()
    );
    None
}

/// Writes `softhsm2.conf` with a token directory under `root`.
pub fn write_conf(root: &Path) -> PathBuf {
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = root.join("softhsm2.conf");
    let text = format!(
        "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
        tokens.display()
    );
    std::fs::write(&conf, text).expect("softhsm2.conf");
    conf
}

/// A SoftHSM configuration: tokens live under `root/tokens`. Commands run
/// for it get `SOFTHSM2_CONF` explicitly.
pub struct SoftHsm {
    root: PathBuf,
    pub conf: PathBuf,
}

/// A token made for one node.
#[derive(Clone, Debug)]
pub struct Token {
    pub label: String,
    pub pin: String,
    pub pin_file: PathBuf,
}

static TOKENS: AtomicU32 = AtomicU32::new(0);

impl SoftHsm {
    /// A configuration in `root` for daemons run as child processes (the
    /// test process itself never loads the module with it).
    pub fn for_processes(root: &Path) -> SoftHsm {
        SoftHsm { conf: write_conf(root), root: root.to_owned() }
    }

    fn util(&self) -> Command {
        let mut cmd = Command::new("softhsm2-util");
        cmd.env("SOFTHSM2_CONF", &self.conf);
        cmd
    }

    /// `n` new tokens. SoftHSM lists tokens when the module is initialised
    /// and does not rescan: make every token a test needs before the first
    /// signer opens.
    pub fn tokens<const N: usize>(&self) -> [Token; N] {
        std::array::from_fn(|_| self.token())
    }

    /// A new token with a random user PIN written to a 0600 file.
    pub fn token(&self) -> Token {
        use std::os::unix::fs::PermissionsExt;
        let n = TOKENS.fetch_add(1, Ordering::SeqCst);
        let label = format!("kmf-test-{n}");
        let pin = hex::encode(kmf::signer::primitives::random_bytes::<8>());
        let so_pin = hex::encode(kmf::signer::primitives::random_bytes::<8>());
        let out = self
            .util()
            .args(["--init-token", "--free", "--label", &label, "--pin", &pin, "--so-pin", &so_pin])
            .output()
            .expect("softhsm2-util");
        assert!(out.status.success(), "init-token: {}", String::from_utf8_lossy(&out.stderr));
        let pin_file = self.root.join(format!("{label}.pin"));
        std::fs::write(&pin_file, format!("{pin}\n")).expect("pin file");
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Token { label, pin, pin_file }
    }

    pub fn config(&self, token: &Token) -> Pkcs11Config {
        Pkcs11Config {
            module: MODULE.into(),
            token_label: token.label.clone(),
            pin: PinSource::File(token.pin_file.clone()),
            kek_label: "kmf-kek".into(),
        }
    }

    /// A new token and the signer config for it.
    pub fn signer(&self) -> (Token, SignerConfig) {
        let token = self.token();
        let cfg = SignerConfig::Pkcs11(self.config(&token));
        (token, cfg)
    }

    /// Takes a token away from a running daemon, as an operator removing its
    /// files would. `softhsm2-util --delete-token` removes the files one by
    /// one and then the directory, which fails when the daemon's SoftHSM
    /// re-creates `token.lock` in between (it did in CI). Renaming the
    /// directory out of the token directory is atomic: from that moment the
    /// token's paths do not exist, so nothing can be re-created in them.
    pub fn delete_token(&self, token: &Token) {
        let dir = self.token_dir(token);
        let gone = self.root.join(format!("deleted-{}", token.label));
        std::fs::rename(&dir, &gone).expect("move the token directory away");
        std::fs::remove_dir_all(&gone).expect("remove the moved token directory");
    }

    /// The directory SoftHSM made for `token`: the one whose token object
    /// holds its label (stored space-padded to 32 bytes, as PKCS#11 labels are).
    fn token_dir(&self, token: &Token) -> PathBuf {
        let padded = format!("{:<32}", token.label);
        let dirs = std::fs::read_dir(self.tokens_dir()).expect("token dir");
        let mut found = dirs.filter_map(Result::ok).map(|e| e.path()).filter(|dir| {
            std::fs::read(dir.join("token.object"))
                .is_ok_and(|bytes| bytes.windows(padded.len()).any(|w| w == padded.as_bytes()))
        });
        let dir = found.next().unwrap_or_else(|| panic!("no token directory holds label {}", token.label));
        assert!(found.next().is_none(), "two token directories hold label {}", token.label);
        dir
    }

    pub fn tokens_dir(&self) -> PathBuf {
        self.root.join("tokens")
    }
}
