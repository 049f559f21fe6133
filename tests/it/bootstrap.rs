//! `kmfctl bootstrap --manifest`: a deployment from nothing (CA, operator,
//! a software instance and one on a SoftHSM2 token it makes itself), kept as
//! it is on a second run, refused when an instance's bootstrap was cut short,
//! and the result accepted by `kmfd config check`. Child processes only: the
//! module is loaded by them, with their own SOFTHSM2_CONF.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::binaries::{KMFCTL, KMFD, ok, run};
use crate::softhsm::MODULE;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn manifest(root: &Path) -> String {
    let r = root.display();
    format!(
        r#"ca_dir = "{r}/ca"
[[operator]]
name = "ops"
roles = ["admin"]
dir = "{r}/ops"
[[instance]]
name = "soft"
data_dir = "{r}/soft"
host = "soft:8443"
cert_names = ["soft", "127.0.0.1"]
[[instance]]
name = "hsm"
data_dir = "{r}/hsm"
host = "hsm:8443"
cert_names = ["hsm"]
[instance.pkcs11]
module = "{MODULE}"
token_label = "kmf-boot"
user_pin_file = "{r}/pin/user.pin"
so_pin_file = "{r}/ca/so.pin"
token_dir = "{r}/hsm/tokens"
"#
    )
}

#[test]
fn bootstrap_makes_a_deployment_once_and_keeps_it() {
    if !crate::softhsm::installed() {
        let test = "bootstrap::bootstrap_makes_a_deployment_once_and_keeps_it";
        crate::skip::skip(test, "softhsm2 not installed (apt-get install softhsm2)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path();
    std::fs::create_dir_all(root.join("pin")).expect("pin dir");
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}/hsm/tokens\nobjectstore.backend = file\n", root.display()),
    )
    .expect("conf");
    let plan = root.join("cluster.toml");
    std::fs::write(&plan, manifest(root)).expect("manifest");
    let bootstrap = || {
        let mut c = Command::new(KMFCTL);
        c.env("SOFTHSM2_CONF", &conf).arg("bootstrap").arg("--manifest").arg(&plan);
        c
    };

    let first = ok(&mut bootstrap());
    assert!(first.contains("token 'kmf-boot': initialised, user PIN set"), "{first}");
    let pins = [root.join("pin/user.pin"), root.join("ca/so.pin")];
    for pin in &pins {
        assert_eq!(mode(pin), 0o600, "{pin:?}");
        let pin = std::fs::read_to_string(pin).expect("pin");
        assert_eq!(pin.trim().len(), 32, "a 128-bit hex PIN");
        assert!(!first.contains(pin.trim()), "a PIN in the output: {first}");
    }
    for key in ["ca/ca.key", "ops/ops.key", "soft/instance.key", "soft/kek.key", "hsm/instance.key"] {
        assert_eq!(mode(&root.join(key)), 0o600, "{key}");
    }
    assert!(!root.join("hsm/kek.key").exists(), "the HSM instance's KEK is on the token");
    let sys_id =
        |name: &str| std::fs::read_to_string(root.join(name).join("sys_id")).expect("sys_id").trim().to_owned();
    let (soft, hsm) = (sys_id("soft"), sys_id("hsm"));
    assert!(first.ends_with(&format!("bootstrap complete: soft {soft}, hsm {hsm}\n")), "{first}");
    for dir in ["ops", "soft", "hsm"] {
        assert_eq!(std::fs::read(root.join(dir).join("ca.pem")).ok(), std::fs::read(root.join("ca/ca.pem")).ok());
    }

    // Both instances are what kmfd expects: the software KEK file, and the
    // token logged in to with the PIN file bootstrap wrote.
    let check = ok(Command::new(KMFD)
        .args(["config", "check", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.join("soft")));
    assert!(check.contains("signer software"), "{check}");
    let check = ok(Command::new(KMFD)
        .env("SOFTHSM2_CONF", &conf)
        .args(["config", "check", "--listen", "127.0.0.1:0", "--signer", "pkcs11", "--pkcs11-module", MODULE])
        .args(["--pkcs11-token", "kmf-boot", "--pkcs11-pin-file"])
        .arg(&pins[0])
        .arg("--data-dir")
        .arg(root.join("hsm")));
    assert!(check.contains("signer pkcs11 (token 'kmf-boot', KEK 'kmf-kek'"), "{check}");

    // A second run keeps everything.
    let ca_before = std::fs::read(root.join("ca/ca.key")).expect("ca");
    let pin_before = std::fs::read(&pins[0]).expect("pin");
    let second = ok(&mut bootstrap());
    for line in ["CA in", "operator ops: kept", "token", "instance soft: kept", "instance hsm: kept"] {
        if line == "token" {
            assert!(!second.contains("token"), "the token is not touched once its instance is done: {second}");
        } else {
            assert!(second.contains(line), "{line}: {second}");
        }
    }
    assert!(second.ends_with(&format!("bootstrap complete: soft {soft}, hsm {hsm}\n")), "{second}");
    assert_eq!(std::fs::read(root.join("ca/ca.key")).expect("ca"), ca_before);
    assert_eq!(std::fs::read(&pins[0]).expect("pin"), pin_before);

    // An instance with a database but no sys_id was cut short: refused, not reused.
    std::fs::remove_file(root.join("soft/sys_id")).expect("rm");
    let out = run(&mut bootstrap());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("instance soft") && stderr.contains("interrupted"), "{stderr}");

    // A manifest with an unknown field is refused, naming it.
    std::fs::write(&plan, format!("{}\nca_key = \"x\"\n", manifest(root))).expect("manifest");
    let out = run(&mut bootstrap());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca_key"), "{}", String::from_utf8_lossy(&out.stderr));
}
