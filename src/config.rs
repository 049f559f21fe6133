//! Settings for `kmfd run`: one TOML file, overridden by flags and `KMF_*`
//! variables (clap reads those). Resolution is a pure function of the parsed
//! arguments and the file text, so tests never touch the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::app::{AppConfig, DB_FILE, KEK_FILE};
use crate::domain::ids::Host;
use crate::tls::TlsFiles;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("config field `{field}`: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl ToString) -> ConfigError {
    ConfigError { field: field.to_owned(), reason: reason.to_string() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub host: Option<String>,
    pub log_format: Option<LogFormat>,
    /// e.g. "2s"
    pub background_interval: Option<String>,
    /// Operator-only HTTPS metrics listener, e.g. "127.0.0.1:9443".
    pub metrics_listen: Option<String>,
    #[serde(default)]
    pub tls: FileTls,
    pub signer: Option<FileSigner>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum FileSigner {
    Software { kek_file: Option<PathBuf> },
}

/// Flags of `kmfd run` and `kmfd config check` (each also a `KMF_*` variable).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RunArgs {
    /// TOML configuration file.
    #[arg(long, env = "KMF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Instance directory (created by `kmfd init`).
    #[arg(long, env = "KMF_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8443 (port 0 picks a free port).
    #[arg(long, env = "KMF_LISTEN")]
    pub listen: Option<String>,
    /// name:port peers dial; overrides the host recorded at init.
    #[arg(long, env = "KMF_HOST")]
    pub host: Option<String>,
    /// CA certificate (PEM); default <data-dir>/ca.pem.
    #[arg(long, env = "KMF_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Instance certificate (PEM); default <data-dir>/instance.pem.
    #[arg(long, env = "KMF_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Instance private key (PEM); default <data-dir>/instance.key.
    #[arg(long, env = "KMF_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Software KEK file; default <data-dir>/kek.key.
    #[arg(long, env = "KMF_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "KMF_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Retry/expiry interval, e.g. 2s.
    #[arg(long, env = "KMF_BACKGROUND_INTERVAL")]
    pub background_interval: Option<String>,
    /// Serve Prometheus metrics over HTTPS (operator certificates only) on ip:port.
    #[arg(long, env = "KMF_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// Validated settings; paths not yet read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub host: Option<Host>,
    pub tls_ca: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub kek_file: PathBuf,
    pub log_format: LogFormat,
    pub background_interval: Duration,
    pub metrics_listen: Option<SocketAddr>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// Merges flags over the file and validates every field.
pub fn resolve(args: &RunArgs, file_text: Option<&str>) -> Result<Settings, ConfigError> {
    let file: FileConfig = match file_text {
        Some(text) => toml::from_str(text).map_err(|e| bad("config", e.message()))?,
        None => FileConfig::default(),
    };
    let data_dir = args.data_dir.clone().or(file.data_dir).ok_or_else(|| bad("data_dir", "required"))?;
    let listen_text = args.listen.clone().or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = listen_text.parse().map_err(|_| bad("listen", format!("`{listen_text}` is not ip:port")))?;
    let host = args.host.clone().or(file.host).map(|h| Host::parse(&h).map_err(|e| bad("host", e))).transpose()?;
    let interval_text = args.background_interval.clone().or(file.background_interval).unwrap_or_else(|| "2s".into());
    let background_interval = humantime::parse_duration(&interval_text).map_err(|e| bad("background_interval", e))?;
    if background_interval.is_zero() {
        return Err(bad("background_interval", "must be positive"));
    }
    let metrics_listen = args
        .metrics_listen
        .clone()
        .or(file.metrics_listen)
        .map(|t| t.parse().map_err(|_| bad("metrics_listen", format!("`{t}` is not ip:port"))))
        .transpose()?;
    let file_kek = match file.signer {
        Some(FileSigner::Software { kek_file }) => kek_file,
        None => None,
    };
    let in_dir = |p: Option<PathBuf>, default: &str| p.unwrap_or_else(|| data_dir.join(default));
    Ok(Settings {
        tls_ca: in_dir(args.tls_ca.clone().or(file.tls.ca), "ca.pem"),
        tls_cert: in_dir(args.tls_cert.clone().or(file.tls.cert), "instance.pem"),
        tls_key: in_dir(args.tls_key.clone().or(file.tls.key), "instance.key"),
        kek_file: in_dir(args.kek_file.clone().or(file_kek), KEK_FILE),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        data_dir,
        listen,
        host,
        background_interval,
        metrics_listen,
    })
}

fn must_exist(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.exists() { Ok(()) } else { Err(bad(field, format!("{} does not exist", path.display()))) }
}

impl Settings {
    /// Reads and checks the files the settings name (before any port is bound).
    pub fn load(&self) -> Result<AppConfig, ConfigError> {
        must_exist("data_dir", &self.data_dir.join(DB_FILE))
            .map_err(|_| bad("data_dir", format!("no instance in {} (run `kmfd init`)", self.data_dir.display())))?;
        must_exist("tls.ca", &self.tls_ca)?;
        must_exist("tls.cert", &self.tls_cert)?;
        must_exist("tls.key", &self.tls_key)?;
        let tls = TlsFiles::load(&self.tls_ca, &self.tls_cert, &self.tls_key).map_err(|e| bad("tls", e))?;
        let leaf = tls.chain().map_err(|e| bad("tls.cert", e))?;
        if leaf.first().and_then(|c| crate::tls::identity::instance_sys_id(c)).is_none() {
            return Err(bad("tls.cert", "is not an instance certificate (no kmf://instance/<sys_id> SAN)"));
        }
        crate::signer::software::SoftwareSigner::load(&self.kek_file).map_err(|e| bad("signer.kek_file", e))?;
        Ok(AppConfig {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            host: self.host.clone(),
            tls,
            kek_file: self.kek_file.clone(),
            background_interval: self.background_interval,
            metrics_listen: self.metrics_listen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults_fill_in() {
        let file = "data_dir = \"/d\"\nlisten = \"0.0.0.0:1\"\n[tls]\nca = \"/x/ca.pem\"\n";
        let args = RunArgs { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        let s = resolve(&args, Some(file)).unwrap();
        assert_eq!(s.listen, "127.0.0.1:2".parse().unwrap());
        assert_eq!(s.tls_ca, PathBuf::from("/x/ca.pem"));
        assert_eq!(s.tls_cert, PathBuf::from("/d/instance.pem"));
        assert_eq!(s.background_interval, Duration::from_secs(2));
        assert_eq!(s.metrics_listen, None, "no metrics listener unless asked");
        let args = RunArgs { metrics_listen: Some("127.0.0.1:9443".into()), ..Default::default() };
        let s = resolve(&args, Some("data_dir = \"/d\"\nmetrics_listen = \"0.0.0.0:1\"")).unwrap();
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9443".parse().unwrap()));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "data_dir"),
            ("data_dir = \"/d\"\nlisten = \"nope\"", "listen"),
            ("data_dir = \"/d\"\nhost = \"no port\"", "host"),
            ("data_dir = \"/d\"\nbackground_interval = \"soon\"", "background_interval"),
            ("data_dir = \"/d\"\nmetrics_listen = \"9443\"", "metrics_listen"),
            ("data_dir = \"/d\"\nunknown = 1", "config"),
            ("data_dir = \"/d\"\n[signer]\nbackend = \"hsm\"", "config"),
        ];
        for (text, field) in cases {
            let err = resolve(&RunArgs::default(), Some(text)).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
        }
    }
}
