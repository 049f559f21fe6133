//! `kmfd dev` through the binary: what it prints is enough to use it (the
//! export lines, the grpcurl flags, the exchange-by-hand commands run as
//! printed), and it removes its directory on exit unless `--keep`, whose
//! directory restarts with `kmfd run`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::binaries::{Daemon, KMFCTL, KMFD, ok};

/// A running `kmfd dev`: its printed lines until "kmfd dev: ready".
struct Dev {
    child: Child,
    banner: Vec<String>,
    rest: mpsc::Receiver<String>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Dev {
    fn start(args: &[&str]) -> Dev {
        let mut child = Command::new(KMFD)
            .arg("dev")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kmfd dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rest) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut dev = Dev { child, banner: Vec::new(), rest };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = dev.rest.recv_timeout(left).unwrap_or_else(|_| panic!("no ready line: {:?}", dev.banner));
            let ready = line == "kmfd dev: ready";
            dev.banner.push(line);
            if ready {
                return dev;
            }
        }
    }

    /// The value of `export NAME=value`.
    fn export(&self, name: &str) -> String {
        let prefix = format!("export {name}=");
        let line = self.banner.iter().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("{name}"));
        line[prefix.len()..].to_owned()
    }

    /// kmfctl with the printed environment.
    fn kmfctl(&self) -> Command {
        let mut cmd = Command::new(KMFCTL);
        for var in ["KMF_CA", "KMF_CERT", "KMF_KEY", "KMF_ENDPOINT"] {
            cmd.env(var, self.export(var));
        }
        cmd
    }

    /// The printed commands (indented lines) that start with `program`.
    fn commands(&self, program: &str) -> Vec<Vec<String>> {
        let prefix = format!("{program} ");
        self.banner
            .iter()
            .filter_map(|l| l.strip_prefix("  "))
            .filter(|l| l.starts_with(&prefix))
            .map(|l| l.split_whitespace().skip(1).map(str::to_owned).collect())
            .collect()
    }

    fn dir(&self) -> PathBuf {
        Path::new(&self.export("KMF_CA")).parent().expect("dir").to_path_buf()
    }

    /// Sends `signal`, waits (bounded) for a clean exit; the lines printed after the banner.
    fn stop(mut self, signal: &str) -> Vec<String> {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut after = Vec::new();
        while let Ok(line) = self.rest.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            after.push(line);
        }
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "kmfd dev exited with {status}: {after:?}");
        after
    }
}

#[test]
fn dev_with_two_peers_prints_what_kmfctl_needs_and_the_exchange_runs_as_printed() {
    let dev = Dev::start(&["--peers", "2"]);
    let dir = dev.dir();
    assert!(dir.join("source").join("kmf.redb").is_file(), "{:?}", dev.banner);
    let info = ok(dev.kmfctl().args(["instance", "info"]));
    assert!(info.contains("software"), "{info}");

    // Every printed kmfctl command, in order; the request id comes from the pending list.
    let mut request_id = String::new();
    let mut last = String::new();
    for args in dev.commands("kmfctl") {
        let args: Vec<String> =
            args.into_iter().map(|a| if a == "<REQUEST_ID>" { request_id.clone() } else { a }).collect();
        let out = ok(dev.kmfctl().args(&args));
        if args.ends_with(&["--status".into(), "pending".into()]) {
            let row = out.lines().nth(1).unwrap_or_else(|| panic!("no pending request: {out}"));
            request_id = row.split_whitespace().next().expect("id").to_owned();
        }
        if args.iter().any(|a| a == "approve") {
            assert!(out.contains("REQUEST_COMPLETED"), "{out}");
        }
        last = out;
    }
    assert!(!request_id.is_empty(), "the banner showed no exchange: {:?}", dev.banner);
    // The last printed command lists the target's keys: the imported one.
    assert!(last.contains("Expired") && last.contains("salary"), "{last}");

    let after = dev.stop("-INT");
    assert!(after.iter().any(|l| l == &format!("removed {}", dir.display())), "{after:?}");
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn dev_prints_grpcurl_flags_that_work() {
    let Some(grpcurl) = crate::grpcurl::grpcurl_or_skip("dev_mode::dev_prints_grpcurl_flags_that_work") else {
        return;
    };
    let dev = Dev::start(&[]);
    let printed = dev.commands("grpcurl");
    assert_eq!(printed.len(), 1, "{:?}", dev.banner);
    let out = Command::new(grpcurl).args(&printed[0]).output().expect("grpcurl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("kmf.v1.KeyManagement"), "{text}");
    dev.stop("-TERM");
}

#[test]
fn dev_keep_leaves_a_directory_that_kmfd_run_serves_again() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("dev");
    let dev = Dev::start(&["--keep", "--dir", dir.to_str().expect("utf8")]);
    ok(dev.kmfctl().args(["module", "create", "kept"]));
    let after = dev.stop("-TERM");
    assert!(after.iter().any(|l| l == &format!("kept {}", dir.display())), "{after:?}");

    // The printed restart command's layout: `kmfd run --data-dir <dir>/dev`.
    let data_dir = dir.join("dev");
    let log = tmp.path().join("kmfd.log");
    let child = Command::new(KMFD)
        .args(["run", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .arg("--ready-file")
        .arg(data_dir.join("ready"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("kmfd run");
    // Killed on drop if an assertion fails.
    let mut daemon = Daemon { child, addr: String::new(), log };
    daemon.wait_ready(&data_dir);
    let modules = Command::new(KMFCTL)
        .env("KMF_CA", dir.join("ca.pem"))
        .env("KMF_CERT", dir.join("admin.pem"))
        .env("KMF_KEY", dir.join("admin.key"))
        .env("KMF_ENDPOINT", &daemon.addr)
        .args(["module", "list"])
        .output()
        .expect("kmfctl");
    let text = String::from_utf8_lossy(&modules.stdout);
    assert!(modules.status.success() && text.contains("kept"), "{text}{}", String::from_utf8_lossy(&modules.stderr));
}
