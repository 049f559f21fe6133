//! Benchmark (a program, not a test): an Adhoc exchange of N keys from a
//! software-signer source into an HSM-backed target (pkcs11 signer on
//! SoftHSM2), N = 1,000 and 10,000, 3 runs each on fresh instances. Prints the
//! time from the approval call to REQUEST_COMPLETED, keys/s, and whether
//! 10,000 keys took at most 3 s.
//!
//! Run: cargo bench --bench hsm_exchange            (1,000 and 10,000)
//!      cargo bench --bench hsm_exchange -- 500     (chosen sizes)
//!
//! SoftHSM reads SOFTHSM2_CONF when the module is initialised, so the program
//! makes a private token directory and runs itself again with it set (the
//! environment of a running process is never changed). Without softhsm2 it
//! says why and exits non-zero.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use kmf::app::SignerConfig;
use kmf::signer::pkcs11::{PinSource, Pkcs11Config};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "kmf-bench";
const CHILD: &str = "KMF_BENCH_SOFTHSM_DIR";
const TARGET: Duration = Duration::from_secs(3);

fn main() -> ExitCode {
    let result = match std::env::var(CHILD) {
        Ok(dir) => bench(Path::new(&dir)),
        Err(_) => parent(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hsm_exchange: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Makes the token directory and token, then runs the benchmark in a child.
fn parent() -> anyhow::Result<ExitCode> {
    let util = Command::new("softhsm2-util").arg("--version").output();
    if !Path::new(MODULE).exists() || !util.is_ok_and(|o| o.status.success()) {
        eprintln!("hsm_exchange: softhsm2 is not installed (apt-get install softhsm2); nothing was measured");
        return Ok(ExitCode::FAILURE);
    }
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )?;
    let pin = hex::encode(kmf::signer::primitives::random_bytes::<8>());
    let so_pin = hex::encode(kmf::signer::primitives::random_bytes::<8>());
    let init = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", TOKEN, "--pin", &pin, "--so-pin", &so_pin])
        .output()?;
    anyhow::ensure!(init.status.success(), "softhsm2-util --init-token: {}", String::from_utf8_lossy(&init.stderr));
    let pin_file = pin_file(dir.path());
    std::fs::write(&pin_file, format!("{pin}\n"))?;
    std::fs::set_permissions(&pin_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .env("SOFTHSM2_CONF", &conf)
        .env(CHILD, dir.path())
        .status()?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn pin_file(dir: &Path) -> PathBuf {
    dir.join("user.pin")
}

fn bench(dir: &Path) -> anyhow::Result<ExitCode> {
    let sizes = common::sizes(&[1_000, 10_000]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    println!(
        "Adhoc exchange into an HSM-backed target (pkcs11 on SoftHSM2; source: software signer), loopback mTLS, {} cores",
        common::num_cpus()
    );
    let mut next = 0u32;
    let medians = common::table(&sizes, |n, _| {
        // One token, a fresh KEK per run.
        next += 1;
        let target = SignerConfig::Pkcs11(Pkcs11Config {
            module: MODULE.into(),
            token_label: TOKEN.into(),
            pin: PinSource::File(pin_file(dir)),
            kek_label: format!("kmf-bench-kek-{next}"),
        });
        rt.block_on(common::exchange(n, None, Some(target)))
    })?;
    let mut met = true;
    for (n, median) in medians.into_iter().filter(|(n, _)| *n >= 10_000) {
        let scaled = median.mul_f64(10_000.0 / f64::from(n));
        let ok = scaled <= TARGET;
        met &= ok;
        println!(
            "target: 10,000 keys in <= {:.0} s: {} ({n} keys, median {:.2} s)",
            TARGET.as_secs_f64(),
            if ok { "met" } else { "NOT met" },
            median.as_secs_f64()
        );
    }
    Ok(if met { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
