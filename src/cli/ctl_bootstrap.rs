//! `kmfctl bootstrap --manifest FILE`: makes a whole deployment from a TOML
//! manifest -- the CA, operator certificates, and each instance (its KEK,
//! database, certificate and a copy of the CA certificate; for an HSM-backed
//! instance first its token and PINs). Idempotent: what exists is kept, so the
//! compose cluster's one-shot `setup` service runs it on every `up`. An
//! instance is done when its `sys_id` file exists (written last); one with a
//! database but no `sys_id` was interrupted and is refused, never half-reused.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::ctl_pki::{load_ca, write_pair, write_private};
use crate::app::{self, KekSetup, SignerConfig};
use crate::domain::auth::Role;
use crate::domain::ids::{Host, SysId};
use crate::signer::pkcs11::{DEFAULT_KEK_LABEL, PinSource, Pkcs11Config, TokenSetup, ensure_token};
use crate::tls::pki;

/// The manifest: see deploy/config/cluster.toml for a commented example.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// ca.pem and ca.key: created when both are missing, reused when both exist.
    pub ca_dir: PathBuf,
    #[serde(default)]
    pub operator: Vec<OperatorPlan>,
    #[serde(default)]
    pub instance: Vec<InstancePlan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorPlan {
    pub name: String,
    pub roles: Vec<String>,
    /// Gets <name>.pem, <name>.key (0600) and ca.pem.
    pub dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancePlan {
    pub name: String,
    pub data_dir: PathBuf,
    /// name:port peers dial (recorded by init).
    pub host: String,
    /// DNS names or IP addresses in the instance certificate.
    pub cert_names: Vec<String>,
    /// Absent: a software KEK (<data_dir>/kek.key).
    pub pkcs11: Option<Pkcs11Plan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Plan {
    pub module: PathBuf,
    pub token_label: String,
    #[serde(default = "default_kek_label")]
    pub kek_label: String,
    /// The user PIN; a random one is written (0600) when the file is missing.
    pub user_pin_file: PathBuf,
    /// The security officer PIN; likewise. Keep it away from the daemon.
    pub so_pin_file: PathBuf,
    /// Created (0700) before the module loads: SoftHSM2's directories.tokendir.
    pub token_dir: Option<PathBuf>,
}

fn default_kek_label() -> String {
    DEFAULT_KEK_LABEL.to_owned()
}

/// Creates a PIN file unless it exists (32 hex digits from the OS RNG, mode
/// 0600); the signer's own `PinSource` reads it.
fn ensure_pin_file(path: &Path) -> anyhow::Result<PinSource> {
    if !path.exists() {
        let pin = zeroize::Zeroizing::new(hex::encode(crate::signer::primitives::random_bytes::<16>()));
        write_private(path, &format!("{}\n", pin.as_str()))?;
        println!("wrote a new PIN to {}", path.display());
    }
    Ok(PinSource::File(path.to_owned()))
}

fn ensure_ca(dir: &Path) -> anyhow::Result<pki::IssuedCert> {
    match (dir.join("ca.pem").exists(), dir.join("ca.key").exists()) {
        (true, true) => println!("CA in {}: kept", dir.display()),
        (false, false) => write_pair(dir, "ca", &pki::create_ca("kmf deployment CA")?)?,
        _ => anyhow::bail!("{} holds only one of ca.pem and ca.key", dir.display()),
    }
    load_ca(dir)
}

/// Copies the CA certificate into `dir` unless it is there already.
fn place_ca_cert(ca: &pki::IssuedCert, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("ca.pem");
    if !path.exists() {
        std::fs::write(&path, &ca.cert_pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn ensure_operator(ca: &pki::IssuedCert, plan: &OperatorPlan) -> anyhow::Result<()> {
    let pem = plan.dir.join(format!("{}.pem", plan.name));
    if pem.exists() {
        println!("operator {}: kept", plan.name);
    } else {
        let roles = plan.roles.iter().map(|r| Role::parse(r)).collect::<Result<Vec<_>, _>>()?;
        write_pair(&plan.dir, &plan.name, &pki::issue_operator(ca, &plan.name, &roles)?)?;
    }
    place_ca_cert(ca, &plan.dir)
}

fn signer_of(plan: &InstancePlan) -> anyhow::Result<SignerConfig> {
    let Some(p) = &plan.pkcs11 else {
        return Ok(SignerConfig::Software { kek_file: plan.data_dir.join("kek.key") });
    };
    if let Some(dir) = &p.token_dir {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let (so, user) = (ensure_pin_file(&p.so_pin_file)?, ensure_pin_file(&p.user_pin_file)?);
    match ensure_token(&p.module, &p.token_label, &so, &user)? {
        TokenSetup::Existed => println!("token '{}': kept", p.token_label),
        TokenSetup::Created => println!("token '{}': initialised, user PIN set", p.token_label),
    }
    Ok(SignerConfig::Pkcs11(Pkcs11Config {
        module: p.module.clone(),
        token_label: p.token_label.clone(),
        pin: user,
        kek_label: p.kek_label.clone(),
    }))
}

/// Bootstraps one instance unless done; returns its sys_id.
fn ensure_instance(ca: &pki::IssuedCert, plan: &InstancePlan) -> anyhow::Result<SysId> {
    let sys_id_file = plan.data_dir.join("sys_id");
    if sys_id_file.exists() {
        let text = std::fs::read_to_string(&sys_id_file)?;
        let sys_id = SysId::parse(text.trim())?;
        println!("instance {}: kept ({sys_id})", plan.name);
        return Ok(sys_id);
    }
    if plan.data_dir.join(app::DB_FILE).exists() {
        anyhow::bail!(
            "instance {}: {} holds a database but no sys_id file: an earlier bootstrap was interrupted; \
             remove the instance's data (docker-compose down -v) and run it again",
            plan.name,
            plan.data_dir.display()
        );
    }
    let host = Host::parse(&plan.host)?;
    let signer = signer_of(plan)?;
    let sys_id = app::init_instance_kek(&plan.data_dir, &host, &signer, KekSetup::Create)?;
    println!("instance {}: initialised {sys_id} (host {host})", plan.name);
    let instance = pki::issue_instance(ca, &sys_id, &plan.cert_names)?;
    write_pair(&plan.data_dir, "instance", &instance)?;
    place_ca_cert(ca, &plan.data_dir)?;
    let tmp = plan.data_dir.join("sys_id.tmp");
    std::fs::write(&tmp, format!("{sys_id}\n"))?;
    std::fs::rename(&tmp, &sys_id_file)?;
    Ok(sys_id)
}

/// The manifest from its text.
pub(crate) fn parse_manifest(text: &str) -> Result<Manifest, toml::de::Error> {
    toml::from_str(text)
}

pub fn bootstrap(manifest: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let plan = parse_manifest(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let ca = ensure_ca(&plan.ca_dir)?;
    for op in &plan.operator {
        ensure_operator(&ca, op).with_context(|| format!("operator {}", op.name))?;
    }
    let mut done = Vec::new();
    for inst in &plan.instance {
        let sys_id = ensure_instance(&ca, inst).with_context(|| format!("instance {}", inst.name))?;
        done.push(format!("{} {sys_id}", inst.name));
    }
    println!("bootstrap complete: {}", done.join(", "));
    Ok(())
}
