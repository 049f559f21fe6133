//! kmfctl: bring your own key. `key import-params` (a one-time import public
//! key), `key import` (a key wrapped for it), `key export` (a key wrapped for
//! the caller's RSA public key). The wrapped format is RSA-OAEP-SHA-256 of an
//! AES-256 key, then RFC 5649 of the material (see README "Bring your own key").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum ByokCommand {
    /// A one-time RSA-3072 import public key for a spec (PEM); prints the
    /// import token and its expiry.
    ImportParams {
        #[arg(long)]
        spec: String,
        /// Write the public key (PEM) here instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long the import key stays usable, e.g. 1h (default 24h, at most 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
    /// Import key material wrapped for an import key:
    /// RSA-OAEP-SHA-256(AES-256 key) || AES-KWP (RFC 5649) of the material.
    Import {
        #[arg(long)]
        spec: String,
        /// The import token from `key import-params`.
        #[arg(long)]
        token: String,
        /// The wrapped key (binary file).
        #[arg(long)]
        wrapped: PathBuf,
    },
    /// Export a key of an exportable spec, wrapped for an RSA public key
    /// (admin only; the module's access policies must grant `export`).
    Export {
        key_id: String,
        /// The recipient's RSA public key (PEM, at least 2048 bits).
        #[arg(long)]
        public_key: PathBuf,
        /// Where to write the wrapped key (binary; created, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
}

fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", path.display()))
}

pub async fn byok(ctl: &mut Operator, cmd: ByokCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        ByokCommand::ImportParams { spec, out, expires_in } => {
            let expires_in = expires_in
                .map(|d| prost_types::Duration::try_from(d).context("--expires-in is too long"))
                .transpose()?;
            let p =
                ctl.keys.get_import_parameters(pb::GetImportParametersRequest { spec, expires_in }).await?.into_inner();
            if let Some(path) = &out {
                write_new(path, p.public_key_pem.as_bytes())?;
            }
            let wrapping = pb::WrappingAlgorithm::try_from(p.wrapping_algorithm)
                .map_or_else(|_| p.wrapping_algorithm.to_string(), |w| w.as_str_name().to_owned());
            let expires = print::time(&p.expires_at);
            if as_json {
                print::json(&p)?;
            } else {
                print::table(
                    &["IMPORT_TOKEN", "SPEC", "EXPIRES_AT", "WRAPPING"],
                    &[vec![p.import_token, p.spec, expires, wrapping]],
                );
                if out.is_none() {
                    print!("{}", p.public_key_pem);
                }
            }
        }
        ByokCommand::Import { spec, token, wrapped } => {
            let wrapped_key = std::fs::read(&wrapped).with_context(|| format!("reading {}", wrapped.display()))?;
            let req = pb::ImportKeyRequest { import_token: token, spec, wrapped_key };
            let r = ctl.keys.import_key(req).await?.into_inner();
            if as_json {
                return print::json(&r);
            }
            print::keys(&r.key.into_iter().collect::<Vec<_>>());
        }
        ByokCommand::Export { key_id, public_key, out } => {
            let public_key_pem =
                std::fs::read_to_string(&public_key).with_context(|| format!("reading {}", public_key.display()))?;
            let r = ctl.keys.export_key(pb::ExportKeyRequest { key_id, public_key_pem }).await?.into_inner();
            write_new(&out, &r.wrapped_key)?;
            if as_json {
                // The response as it is (the wrapped key in base64, as also written to --out).
                print::json(&r)?;
            } else {
                print::table(
                    &["KEY_ID", "SPEC", "PUBLIC_KEY_SHA256", "BYTES"],
                    &[vec![r.key_id, r.spec, r.public_key_sha256, r.wrapped_key.len().to_string()]],
                );
            }
        }
    }
    Ok(())
}
