//! The built `kmfd` with a pkcs11 signer on SoftHSM2: `kmfd init --signer
//! pkcs11` creates the KEK on the token (and no key file), `config check`
//! opens the token, a wrong PIN stops `config check` and `run` with a message
//! naming the PIN's source and never the PIN, and a daemon serves with it.
//! Only the child processes load the module, so no isolation is needed here.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::softhsm::{MODULE, SoftHsm};

const KMFD: &str = env!("CARGO_BIN_EXE_kmfd");
const KMFCTL: &str = env!("CARGO_BIN_EXE_kmfctl");

fn output(cmd: &mut Command) -> (bool, String, String) {
    let out: Output = cmd.output().expect("spawn");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn ok(cmd: &mut Command) -> String {
    let (success, stdout, stderr) = output(cmd);
    assert!(success, "{cmd:?} failed: {stderr}\n{stdout}");
    stdout
}

#[test]
fn kmfd_init_check_and_run_with_a_pkcs11_token() {
    if !crate::softhsm::installed() {
        let test = "hsm_process::kmfd_init_check_and_run_with_a_pkcs11_token";
        crate::skip::skip(test, "softhsm2 not installed (apt-get install softhsm2)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let hsm = SoftHsm::for_processes(&tmp.path().join("hsm"));
    let token = hsm.token();
    let (pki, dir) = (tmp.path().join("pki"), tmp.path().join("node"));
    let kmfd = || {
        let mut c = Command::new(KMFD);
        c.env("SOFTHSM2_CONF", &hsm.conf);
        c
    };
    crate::binaries::operator_pki(&pki);

    let init = ok(kmfd()
        .args(["init", "--host", "127.0.0.1:0", "--signer", "pkcs11", "--pkcs11-module", MODULE, "--pkcs11-token"])
        .arg(&token.label)
        .arg("--pkcs11-pin-file")
        .arg(&token.pin_file)
        .arg("--data-dir")
        .arg(&dir));
    let sys_id = init.split_whitespace().nth(2).expect("sys_id").to_owned();
    assert!(init.contains(&format!("created KEK 'kmf-kek' on token '{}'", token.label)), "{init}");
    assert!(!dir.join("kek.key").exists(), "no software KEK file for a pkcs11 instance");
    assert!(!init.contains(&token.pin), "{init}");
    let toml_start = init.find("\n[signer]\n").expect("a [signer] table is printed") + 1;
    let signer_toml: String = init[toml_start..].lines().take(6).map(|l| format!("{l}\n")).collect();
    let again = output(
        kmfd()
            .args(["init", "--host", "127.0.0.1:0", "--signer", "pkcs11", "--pkcs11-module", MODULE, "--pkcs11-token"])
            .arg(&token.label)
            .arg("--pkcs11-pin-file")
            .arg(&token.pin_file)
            .arg("--data-dir")
            .arg(tmp.path().join("second")),
    );
    assert!(!again.0 && again.2.contains("refusing to overwrite"), "a second KEK with the same label: {again:?}");
    // An instance may adopt a KEK already on the token instead.
    let adopted = ok(kmfd()
        .args(["init", "--host", "127.0.0.1:0", "--signer", "pkcs11", "--pkcs11-module", MODULE, "--pkcs11-token"])
        .arg(&token.label)
        .arg("--pkcs11-pin-file")
        .arg(&token.pin_file)
        .arg("--pkcs11-existing-kek")
        .arg("--data-dir")
        .arg(tmp.path().join("adopting")));
    assert!(adopted.contains(&format!("adopted KEK 'kmf-kek' on token '{}'", token.label)), "{adopted}");
    ok(Command::new(KMFCTL)
        .args(["pki", "issue-instance", "--host", "127.0.0.1", "--sys-id", &sys_id, "--ca-dir"])
        .arg(&pki)
        .arg("--out")
        .arg(&dir));

    // The printed [signer] table, in a config file.
    let config = dir.join("kmfd.toml");
    let text = format!(
        "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\n[tls]\nca = {:?}\n{signer_toml}",
        dir.display().to_string(),
        pki.join("ca.pem").display().to_string()
    );
    std::fs::write(&config, text).expect("config");
    let good = ok(kmfd().args(["config", "check", "--config"]).arg(&config));
    assert!(good.contains("config ok") && good.contains(&format!("signer pkcs11 (token '{}'", token.label)), "{good}");

    // The PIN from a variable (KMF_PKCS11_PIN_ENV names it).
    let good = ok(kmfd()
        .args(["config", "check", "--config"])
        .arg(&config)
        .env("KMF_PKCS11_PIN_ENV", "KMF_TEST_HSM_PIN")
        .env("KMF_TEST_HSM_PIN", &token.pin));
    assert!(good.contains("pin_env $KMF_TEST_HSM_PIN"), "{good}");

    // A wrong PIN: config check and run refuse, naming the source only.
    let wrong = tmp.path().join("wrong.pin");
    std::fs::write(&wrong, "99999999\n").expect("pin");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    for sub in [&["config", "check"][..], &["run"][..]] {
        let (success, stdout, stderr) =
            output(kmfd().args(sub).arg("--config").arg(&config).arg("--pkcs11-pin-file").arg(&wrong));
        assert!(!success, "{sub:?} with a wrong PIN succeeded: {stdout}");
        assert!(stderr.contains("`signer.pin_file`") && stderr.contains(&wrong.display().to_string()), "{stderr}");
        assert!(stderr.contains("PinIncorrect"), "{stderr}");
        assert!(!stderr.contains("99999999") && !stderr.contains(&token.pin), "the PIN is printed: {stderr}");
    }

    // It serves with the token's KEK.
    let ready = dir.join("ready");
    let log = std::fs::File::create(dir.join("kmfd.log")).expect("log");
    let mut child = kmfd()
        .args(["run", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("kmfd run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        if let Ok(addr) = std::fs::read_to_string(&ready) {
            break addr;
        }
        if Instant::now() > deadline || child.try_wait().expect("wait").is_some() {
            let _ = child.kill();
            panic!("kmfd did not become ready: {}", std::fs::read_to_string(dir.join("kmfd.log")).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval; bounded by the deadline
    };
    let ctl = |args: &[&str]| {
        let mut c = Command::new(KMFCTL);
        c.env("KMF_ENDPOINT", &addr)
            .env("KMF_CA", pki.join("ca.pem"))
            .env("KMF_CERT", pki.join("ops.pem"))
            .env("KMF_KEY", pki.join("ops.key"))
            .args(args);
        output(&mut c)
    };
    let info = ctl(&["--json", "instance", "info"]);
    let diag = ctl(&["--json", "diag"]);
    let keys = [
        ctl(&["module", "create", "hr", "--default-access", "track"]),
        ctl(&["spec", "create", "salary", "--module", "hr"]),
        ctl(&["key", "generate", "salary"]),
    ];
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.wait().expect("wait");
    let log_text = std::fs::read_to_string(dir.join("kmfd.log")).unwrap_or_default();
    assert!(info.0 && info.1.contains("\"signerKind\": \"pkcs11\""), "{info:?}");
    assert!(diag.0 && diag.1.contains("pkcs11 KEK wrap and unwrap succeeded"), "{diag:?}");
    for k in keys {
        assert!(k.0, "{k:?}");
    }
    assert!(status.success(), "kmfd exited with {status}: {log_text}");
    assert!(!log_text.contains(&token.pin), "the PIN is in the log");
}
