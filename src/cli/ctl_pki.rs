//! kmfctl pki: the deployment CA and the instance and operator certificates
//! (private keys written with mode 0600, never overwritten).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use crate::domain::auth::Role;
use crate::domain::ids::{Host, SysId};
use crate::tls::pki::{self, IssuedCert};

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create a CA: <out>/ca.pem and <out>/ca.key (0600).
    InitCa {
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Lifetime in days (notBefore is 5 minutes before now).
        #[arg(long, default_value_t = pki::CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
    },
    /// Issue an instance certificate: <out>/instance.pem, <out>/instance.key.
    IssueInstance {
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        #[arg(long)]
        sys_id: String,
        /// NAME or NAME:PORT (the name goes into the certificate); repeat it for more names,
        /// e.g. `--host prod --host 127.0.0.1` (the first is the name peers dial).
        #[arg(long, required = true)]
        host: Vec<String>,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Lifetime in days (notBefore is 5 minutes before now).
        #[arg(long, default_value_t = pki::INSTANCE_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Revoke a certificate by serial (as `pki` printed it): adds it to the
    /// CA's revocation list (<ca-dir>/crl.pem unless --crl), signed by the CA.
    /// Daemons with `tls.crl` naming that file refuse it from their next reload.
    Revoke {
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        #[arg(long, required = true)]
        serial: Vec<String>,
        #[arg(long)]
        crl: Option<PathBuf>,
    },
    /// Issue the CA's revocation list again (new dates, same entries), or
    /// its first, empty one: <ca-dir>/crl.pem unless --crl.
    Crl {
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        #[arg(long)]
        crl: Option<PathBuf>,
    },
    /// Issue an operator certificate: <out>/<name>.pem, <out>/<name>.key.
    IssueOperator {
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// admin, cryptographic_manager, cryptographic_operator, cryptographic_auditor.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Lifetime in days (notBefore is 5 minutes before now).
        #[arg(long, default_value_t = pki::OPERATOR_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
}

pub(super) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {} (refusing to overwrite)", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// "serial <hex>, valid until <rfc3339>" of a PEM certificate.
pub(super) fn describe_cert(cert_pem: &str) -> anyhow::Result<String> {
    let der = crate::tls::pem_certs(cert_pem.as_bytes())?.into_iter().next().context("no certificate in the PEM")?;
    Ok(crate::tls::validity::summary(&der)?)
}

pub(super) fn write_pair(out: &Path, stem: &str, cert: &IssuedCert) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let pem = out.join(format!("{stem}.pem"));
    if pem.exists() {
        anyhow::bail!("{} exists (refusing to overwrite)", pem.display());
    }
    write_private(&out.join(format!("{stem}.key")), &cert.key_pem)?;
    std::fs::write(&pem, &cert.cert_pem)?;
    println!(
        "wrote {} and {} ({})",
        pem.display(),
        out.join(format!("{stem}.key")).display(),
        describe_cert(&cert.cert_pem)?
    );
    Ok(())
}

pub(super) fn load_ca(dir: &Path) -> anyhow::Result<IssuedCert> {
    let read =
        |f: &str| std::fs::read_to_string(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()));
    Ok(IssuedCert { cert_pem: read("ca.pem")?, key_pem: read("ca.key")? })
}

/// Reads the CRL at `path` (none yet: empty), lets `change` edit its
/// entries, and writes it again signed by the CA with the next number
/// (through a temporary file, so a daemon never reads half of it).
fn rewrite_crl(
    ca_dir: &Path,
    path: Option<PathBuf>,
    change: impl FnOnce(&mut crate::tls::crl::CrlContents),
) -> anyhow::Result<()> {
    use crate::tls::crl;
    let path = path.unwrap_or_else(|| ca_dir.join("crl.pem"));
    let mut contents = match std::fs::read(&path) {
        Ok(pem) => crl::read_crl(&pem).with_context(|| format!("reading {}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crl::CrlContents::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    change(&mut contents);
    contents.number += 1;
    let pem = crl::issue_crl(&load_ca(ca_dir)?, &contents, crate::clock::now())?;
    let tmp = path.with_extension("pem.tmp");
    std::fs::write(&tmp, pem).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} (CRL number {}, {} revoked)", path.display(), contents.number, contents.revoked.len());
    Ok(())
}

pub fn pki_command(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Revoke { ca_dir, serial, crl } => {
            let serials = serial
                .iter()
                .map(|s| {
                    let s = crate::tls::validity::normalize_serial(s);
                    if s.is_empty() || hex::decode(&s).is_err() {
                        anyhow::bail!("--serial {s:?} is not a hex serial number (as `kmfctl pki` prints it)");
                    }
                    Ok(s)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            rewrite_crl(&ca_dir, crl, |contents| {
                let now = crate::clock::now();
                for s in serials {
                    if contents.revoked.iter().any(|r| r.serial == s) {
                        println!("serial {s} was revoked already");
                    } else {
                        println!("revoked serial {s}");
                        contents.revoked.push(crate::tls::crl::Revoked { serial: s, at: now });
                    }
                }
            })
        }
        PkiCommand::Crl { ca_dir, crl } => rewrite_crl(&ca_dir, crl, |_| {}),
        PkiCommand::InitCa { out, days } => {
            let valid = pki::valid_for(crate::clock::now(), days);
            write_pair(&out, "ca", &pki::create_ca_valid("kmf deployment CA", valid)?)
        }
        PkiCommand::IssueInstance { ca_dir, sys_id, host, out, days } => {
            let sys_id = SysId::parse(&sys_id)?;
            let names = host
                .iter()
                .map(|host| {
                    Ok(match Host::parse(host) {
                        Ok(h) => h.name().to_owned(),
                        Err(_) => Host::parse(&format!("{host}:0"))?.name().to_owned(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let (from, until) = pki::valid_for(crate::clock::now(), days);
            let cert = pki::issue_instance_valid(&load_ca(&ca_dir)?, &sys_id, &names, from, until)?;
            write_pair(&out, "instance", &cert)
        }
        PkiCommand::IssueOperator { ca_dir, name, roles, out, days } => {
            let roles = roles.iter().map(|r| Role::parse(r)).collect::<Result<Vec<_>, _>>()?;
            let valid = pki::valid_for(crate::clock::now(), days);
            let cert = pki::issue_operator_valid(&load_ca(&ca_dir)?, &name, &roles, valid)?;
            write_pair(&out, &name, &cert)
        }
    }
}
