//! `kmfd`: init, run, config check.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app::{self, SignerConfig};
use crate::config::{RunArgs, SignerArgs, resolve, resolve_signer};
use crate::domain::ids::Host;

#[derive(Parser, Debug)]
#[command(
    name = "kmfd",
    version,
    about = "kmf daemon: holds an instance's keys and exchanges them with peers over mTLS"
)]
pub struct Kmfd {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Throwaway instances on loopback with nothing to prepare: their own CA,
    /// an admin operator certificate, software KEKs; prints the kmfctl and
    /// grpcurl settings; removes everything on exit unless --keep.
    Dev(super::kmfd_dev::DevArgs),
    /// Create a new instance: sys_id, KEK (a software key file of mode 0600,
    /// or with --signer pkcs11 a non-extractable AES-256 key on the token), database.
    Init {
        #[arg(long, env = "KMF_DATA_DIR")]
        data_dir: PathBuf,
        /// name:port peers will dial (port 0: the port bound at start).
        #[arg(long, env = "KMF_HOST")]
        host: String,
        #[command(flatten)]
        signer: SignerArgs,
        /// With --signer pkcs11: use the KEK already on the token (labelled
        /// --pkcs11-kek-label) instead of creating one; it must be AES,
        /// sensitive, non-extractable and wrap/unwrap only.
        #[arg(long)]
        pkcs11_existing_kek: bool,
    },
    /// Serve until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        args: RunArgs,
        /// Write the bound address here once serving (for scripts and tests).
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration and the files it names; binds nothing.
    Check {
        #[command(flatten)]
        args: RunArgs,
    },
}

fn settings(args: &RunArgs) -> anyhow::Result<crate::config::Settings> {
    let text = match &args.config {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    Ok(resolve(args, text.as_deref())?)
}

pub fn main() -> ExitCode {
    let cli = Kmfd::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kmfd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Kmfd) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => super::kmfd_dev::main(args),
        Command::Init { data_dir, host, signer, pkcs11_existing_kek } => {
            let host = Host::parse(&host)?;
            let signer = resolve_signer(&signer, None, &data_dir)?;
            let kek = if pkcs11_existing_kek { app::KekSetup::AdoptExisting } else { app::KekSetup::Create };
            let sys_id = app::init_instance_kek(&data_dir, &host, &signer, kek)?;
            println!("initialised instance {sys_id} in {} (host {host})", data_dir.display());
            if let SignerConfig::Pkcs11(cfg) = &signer {
                let (verb, what) = match kek {
                    app::KekSetup::Create => ("created", "AES-256, sensitive, non-extractable, wrap/unwrap only"),
                    app::KekSetup::AdoptExisting => {
                        ("adopted", "checked: AES, sensitive, non-extractable, wrap/unwrap only")
                    }
                };
                println!("{verb} KEK '{}' on token '{}' ({what})", cfg.kek_label, cfg.token_label);
                println!("run it with these settings in its config file (or the same --signer and --pkcs11-* flags):");
                println!("{}", signer_toml(cfg));
            }
            println!("next: issue its certificate with `kmfctl pki issue-instance --sys-id {sys_id} --host {host}`");
            Ok(())
        }
        Command::Config { command: ConfigCommand::Check { args } } => {
            let s = settings(&args)?;
            s.load()?;
            let signer = match &s.signer {
                SignerConfig::Software { kek_file } => format!("software (KEK file {})", kek_file.display()),
                SignerConfig::Pkcs11(cfg) => format!(
                    "pkcs11 (token '{}', KEK '{}', logged in with the PIN from {})",
                    cfg.token_label, cfg.kek_label, cfg.pin
                ),
            };
            println!("config ok: data_dir {}, listen {}, signer {signer}", s.data_dir.display(), s.listen);
            for warning in s.loose_modes() {
                println!("warning: {warning}");
            }
            Ok(())
        }
        Command::Run { args, ready_file } => {
            let s = settings(&args)?;
            let cfg = s.load()?;
            crate::telemetry::init(s.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(serve(cfg, ready_file))
        }
    }
}

/// The `[signer]` table for a pkcs11 instance (names the PIN's source only).
fn signer_toml(cfg: &crate::signer::pkcs11::Pkcs11Config) -> String {
    use crate::signer::pkcs11::PinSource;
    let pin = match &cfg.pin {
        PinSource::File(path) => format!("pin_file = {:?}", path.display().to_string()),
        PinSource::Env(var) => format!("pin_env = {var:?}"),
    };
    format!(
        "[signer]\nbackend = \"pkcs11\"\nmodule = {:?}\ntoken_label = {:?}\n{pin}\nkek_label = {:?}",
        cfg.module.display().to_string(),
        cfg.token_label,
        cfg.kek_label
    )
}

async fn serve(cfg: app::AppConfig, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let running = app::start(cfg).await?;
    if let Some(path) = ready_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, running.local_addr.to_string())?;
        std::fs::rename(&tmp, &path)?;
    }
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
    }
    running.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
