//! `kmfd`: init, run, config check.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::app;
use crate::config::{RunArgs, resolve};
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
    /// Create a new instance: sys_id, software KEK file (0600), database.
    Init {
        #[arg(long, env = "KMF_DATA_DIR")]
        data_dir: PathBuf,
        /// name:port peers will dial (port 0: the port bound at start).
        #[arg(long, env = "KMF_HOST")]
        host: String,
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
        Command::Init { data_dir, host } => {
            let host = Host::parse(&host)?;
            let sys_id = app::init_instance(&data_dir, &host)?;
            println!("initialised instance {sys_id} in {} (host {host})", data_dir.display());
            println!("next: issue its certificate with `kmfctl pki issue-instance --sys-id {sys_id} --host {host}`");
            Ok(())
        }
        Command::Config { command: ConfigCommand::Check { args } } => {
            let s = settings(&args)?;
            s.load()?;
            println!("config ok: data_dir {}, listen {}", s.data_dir.display(), s.listen);
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
