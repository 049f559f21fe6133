//! Settings for `kmfd run`: one TOML file, overridden by flags and `KMF_*`
//! variables (clap reads those). Resolution is a pure function of the parsed
//! arguments and the file text, so tests never touch the process environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::app::{AppConfig, DB_FILE, KEK_FILE, SignerConfig};
use crate::domain::ids::Host;
use crate::signer::pkcs11::{DEFAULT_KEK_LABEL, PinSource, Pkcs11Config};
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
    #[serde(default)]
    pub rekey: FileRekey,
    #[serde(default)]
    pub connections: FileConnections,
    #[serde(default)]
    pub clone: FileClone,
    pub signer: Option<FileSigner>,
}

/// `[connections]`: limits on the gRPC listener's connections.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConnections {
    /// Open connections at most (default 1024).
    pub max_connections: Option<usize>,
    /// Close a connection with no traffic for this long, e.g. "5m" (the default).
    pub idle_timeout: Option<String>,
    /// TCP keepalive probes after this much silence, e.g. "60s" (the default).
    pub keepalive_interval: Option<String>,
    /// Concurrent calls per connection (default 128).
    pub max_concurrent_streams: Option<u32>,
    /// TLS handshakes in progress at most (default 256); a newer one displaces the oldest.
    pub max_handshakes: Option<usize>,
    /// A client has this long to complete the TLS handshake, e.g. "3s" (the default).
    pub handshake_timeout: Option<String>,
    /// MiB of request messages held at once across every connection (default 256, at least 16).
    pub request_memory_mib: Option<usize>,
}

/// `[clone]`: serving clones (source side).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClone {
    /// How long after its snapshot a clone grant approves the target's
    /// requests after the clone, e.g. "1h" (the default).
    pub grant_lifetime: Option<String>,
}

/// `[rekey]`: the rekey that follows an import.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRekey {
    /// How long a failed rekey waits before it tries again, e.g. "24h" (the default).
    pub retry_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The CA's revocation list (PEM, from `kmfctl pki revoke`); none by default.
    pub crl: Option<PathBuf>,
    /// Refuse every certificate while the CRL is past its nextUpdate (fail
    /// closed); false by default: such a CRL is used, the diagnosis says Degraded.
    pub crl_enforce_next_update: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum FileSigner {
    Software {
        kek_file: Option<PathBuf>,
    },
    Pkcs11 {
        module: Option<PathBuf>,
        token_label: Option<String>,
        pin_file: Option<PathBuf>,
        pin_env: Option<String>,
        kek_label: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SignerKind {
    Software,
    Pkcs11,
}

/// Signer flags, shared by `kmfd init`, `run` and `config check` (each also a
/// `KMF_*` variable).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct SignerArgs {
    /// Where the KEK lives: software (a key file) or pkcs11 (a token).
    #[arg(long, env = "KMF_SIGNER", value_enum)]
    pub signer: Option<SignerKind>,
    /// Software KEK file; default <data-dir>/kek.key.
    #[arg(long, env = "KMF_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// PKCS#11 module (shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, env = "KMF_PKCS11_MODULE")]
    pub pkcs11_module: Option<PathBuf>,
    /// Label of the token holding the KEK.
    #[arg(long, env = "KMF_PKCS11_TOKEN")]
    pub pkcs11_token: Option<String>,
    /// File holding the token's user PIN (mode 0600).
    #[arg(long, env = "KMF_PKCS11_PIN_FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,
    /// Name of the environment variable holding the token's user PIN.
    #[arg(long, env = "KMF_PKCS11_PIN_ENV")]
    pub pkcs11_pin_env: Option<String>,
    /// Label of the KEK on the token; default kmf-kek.
    #[arg(long, env = "KMF_PKCS11_KEK_LABEL")]
    pub pkcs11_kek_label: Option<String>,
}

impl SignerArgs {
    fn any_pkcs11(&self) -> bool {
        self.pkcs11_module.is_some()
            || self.pkcs11_token.is_some()
            || self.pkcs11_pin_file.is_some()
            || self.pkcs11_pin_env.is_some()
            || self.pkcs11_kek_label.is_some()
    }
}

/// The signer from flags over the file's `[signer]` table. Pure: the PIN is
/// only named here; it is read when the signer is opened.
pub fn resolve_signer(
    args: &SignerArgs,
    file: Option<FileSigner>,
    data_dir: &Path,
) -> Result<SignerConfig, ConfigError> {
    let file_kind = match &file {
        Some(FileSigner::Pkcs11 { .. }) => SignerKind::Pkcs11,
        _ => SignerKind::Software,
    };
    match args.signer.unwrap_or(file_kind) {
        SignerKind::Software => {
            if args.any_pkcs11() {
                return Err(bad("signer", "pkcs11 settings were given but the signer is software (--signer pkcs11)"));
            }
            let file_kek = match file {
                Some(FileSigner::Software { kek_file }) => kek_file,
                _ => None,
            };
            let kek_file = args.kek_file.clone().or(file_kek).unwrap_or_else(|| data_dir.join(KEK_FILE));
            Ok(SignerConfig::Software { kek_file })
        }
        SignerKind::Pkcs11 => {
            if args.kek_file.is_some() {
                return Err(bad("signer.kek_file", "is for the software signer; the signer is pkcs11"));
            }
            let (f_module, f_token, f_pin_file, f_pin_env, f_kek) = match file {
                Some(FileSigner::Pkcs11 { module, token_label, pin_file, pin_env, kek_label }) => {
                    (module, token_label, pin_file, pin_env, kek_label)
                }
                _ => (None, None, None, None, None),
            };
            let module = args
                .pkcs11_module
                .clone()
                .or(f_module)
                .ok_or_else(|| bad("signer.module", "required for the pkcs11 signer (the PKCS#11 library path)"))?;
            let token_label =
                args.pkcs11_token.clone().or(f_token).ok_or_else(|| bad("signer.token_label", "required"))?;
            if token_label.is_empty() || token_label.len() > 32 {
                return Err(bad("signer.token_label", "must be 1 to 32 bytes (a PKCS#11 token label)"));
            }
            // Flags win as a pair: a PIN flag replaces the file's PIN source.
            let (pin_file, pin_env) = if args.pkcs11_pin_file.is_some() || args.pkcs11_pin_env.is_some() {
                (args.pkcs11_pin_file.clone(), args.pkcs11_pin_env.clone())
            } else {
                (f_pin_file, f_pin_env)
            };
            let pin = match (pin_file, pin_env) {
                (Some(path), None) => PinSource::File(path),
                (None, Some(var)) => {
                    if var.is_empty() || var.contains(['=', '\0']) {
                        return Err(bad("signer.pin_env", "must be an environment variable name"));
                    }
                    PinSource::Env(var)
                }
                (Some(_), Some(_)) => return Err(bad("signer.pin_file", "give exactly one of pin_file and pin_env")),
                (None, None) => return Err(bad("signer.pin_file", "required (or pin_env): where the token PIN is")),
            };
            let kek_label = args.pkcs11_kek_label.clone().or(f_kek).unwrap_or_else(|| DEFAULT_KEK_LABEL.to_owned());
            if kek_label.is_empty() {
                return Err(bad("signer.kek_label", "must not be empty"));
            }
            Ok(SignerConfig::Pkcs11(Pkcs11Config { module, token_label, pin, kek_label }))
        }
    }
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
    /// The CA's revocation list (PEM); certificates it lists are refused.
    #[arg(long, env = "KMF_TLS_CRL")]
    pub tls_crl: Option<PathBuf>,
    #[command(flatten)]
    pub signer: SignerArgs,
    /// Log format.
    #[arg(long, env = "KMF_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Retry/expiry interval, e.g. 2s.
    #[arg(long, env = "KMF_BACKGROUND_INTERVAL")]
    pub background_interval: Option<String>,
    /// Serve Prometheus metrics over HTTPS (operator certificates only) on ip:port.
    #[arg(long, env = "KMF_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// How long a failed rekey waits before it tries again, e.g. 24h (rekey.retry_interval).
    #[arg(long, env = "KMF_REKEY_RETRY_INTERVAL")]
    pub rekey_retry_interval: Option<String>,
    /// How long after its snapshot a clone grant approves, e.g. 1h (clone.grant_lifetime).
    #[arg(long, env = "KMF_CLONE_GRANT_LIFETIME")]
    pub clone_grant_lifetime: Option<String>,
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
    pub tls_crl: Option<PathBuf>,
    /// `[tls] crl_enforce_next_update` (false by default).
    pub tls_crl_enforce_next_update: bool,
    pub signer: SignerConfig,
    pub log_format: LogFormat,
    pub background_interval: Duration,
    /// How often the daemon diagnoses itself; not configurable (the
    /// reference re-runs its diagnostics every 15 s).
    pub health_interval: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub rekey_retry_interval: Duration,
    pub connections: crate::connections::ConnectionLimits,
    pub clone_grant_lifetime: Duration,
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
    let background_interval = positive_duration("background_interval", &interval_text)?;
    let retry_text = args.rekey_retry_interval.clone().or(file.rekey.retry_interval).unwrap_or_else(|| "24h".into());
    let rekey_retry_interval = positive_duration("rekey.retry_interval", &retry_text)?;
    let grant_text = args.clone_grant_lifetime.clone().or(file.clone.grant_lifetime).unwrap_or_else(|| "1h".into());
    let clone_grant_lifetime = positive_duration("clone.grant_lifetime", &grant_text)?;
    let metrics_listen = args
        .metrics_listen
        .clone()
        .or(file.metrics_listen)
        .map(|t| t.parse().map_err(|_| bad("metrics_listen", format!("`{t}` is not ip:port"))))
        .transpose()?;
    let connections = resolve_connections(&file.connections)?;
    let signer = resolve_signer(&args.signer, file.signer, &data_dir)?;
    let in_dir = |p: Option<PathBuf>, default: &str| p.unwrap_or_else(|| data_dir.join(default));
    Ok(Settings {
        tls_ca: in_dir(args.tls_ca.clone().or(file.tls.ca), "ca.pem"),
        tls_cert: in_dir(args.tls_cert.clone().or(file.tls.cert), "instance.pem"),
        tls_key: in_dir(args.tls_key.clone().or(file.tls.key), "instance.key"),
        tls_crl: args.tls_crl.clone().or(file.tls.crl),
        tls_crl_enforce_next_update: file.tls.crl_enforce_next_update.unwrap_or(false),
        signer,
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        data_dir,
        listen,
        host,
        background_interval,
        health_interval: crate::node::diagnostics::WATCH_EVERY,
        metrics_listen,
        rekey_retry_interval,
        connections,
        clone_grant_lifetime,
    })
}

/// A duration setting such as "2s" or "24h"; zero is refused.
fn positive_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(bad(field, "must be positive")),
        Err(e) => Err(bad(field, e)),
    }
}

/// `[connections]` over the defaults; every value must be positive.
fn resolve_connections(file: &FileConnections) -> Result<crate::connections::ConnectionLimits, ConfigError> {
    let defaults = crate::connections::ConnectionLimits::default();
    let duration = |field: &str, text: &Option<String>, default: Duration| match text {
        None => Ok(default),
        Some(t) => positive_duration(field, t),
    };
    let limits = crate::connections::ConnectionLimits {
        max_connections: file.max_connections.unwrap_or(defaults.max_connections),
        idle_timeout: duration("connections.idle_timeout", &file.idle_timeout, defaults.idle_timeout)?,
        keepalive_interval: duration(
            "connections.keepalive_interval",
            &file.keepalive_interval,
            defaults.keepalive_interval,
        )?,
        max_concurrent_streams: file.max_concurrent_streams.unwrap_or(defaults.max_concurrent_streams),
        max_handshakes: file.max_handshakes.unwrap_or(defaults.max_handshakes),
        handshake_timeout: duration(
            "connections.handshake_timeout",
            &file.handshake_timeout,
            defaults.handshake_timeout,
        )?,
        request_memory: file.request_memory_mib.map_or(defaults.request_memory, |mib| mib.saturating_mul(1 << 20)),
    };
    if limits.max_handshakes == 0 {
        return Err(bad("connections.max_handshakes", "must be positive"));
    }
    if limits.request_memory < crate::app::LARGE_MESSAGE_BYTES {
        return Err(bad("connections.request_memory_mib", "must be at least 16 (the largest request message)"));
    }
    if limits.max_connections == 0 {
        return Err(bad("connections.max_connections", "must be positive"));
    }
    if limits.max_concurrent_streams == 0 {
        return Err(bad("connections.max_concurrent_streams", "must be positive"));
    }
    Ok(limits)
}

fn must_exist(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.exists() { Ok(()) } else { Err(bad(field, format!("{} does not exist", path.display()))) }
}

impl Settings {
    /// Warnings for secret files and the data directory that group or others
    /// may read or enter (`kmfd config check` prints them): the data dir
    /// should be 0700; the database, the KEK file, the TLS key and a PIN file 0600.
    pub fn loose_modes(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let mut files =
            vec![(self.data_dir.clone(), 0o700), (self.data_dir.join(DB_FILE), 0o600), (self.tls_key.clone(), 0o600)];
        match &self.signer {
            SignerConfig::Software { kek_file } => files.push((kek_file.clone(), 0o600)),
            SignerConfig::Pkcs11(cfg) => {
                if let crate::signer::pkcs11::PinSource::File(pin) = &cfg.pin {
                    files.push((pin.clone(), 0o600));
                }
            }
        }
        files
            .into_iter()
            .filter_map(|(path, want)| {
                let mode = std::fs::metadata(&path).ok()?.permissions().mode() & 0o777;
                (mode & 0o077 != 0).then(|| {
                    format!("{} is mode {mode:04o}: group or others can use it; chmod {want:04o} it", path.display())
                })
            })
            .collect()
    }

    /// Reads and checks the files the settings name (before any port is bound).
    pub fn load(&self) -> Result<AppConfig, ConfigError> {
        must_exist("data_dir", &self.data_dir.join(DB_FILE))
            .map_err(|_| bad("data_dir", format!("no instance in {} (run `kmfd init`)", self.data_dir.display())))?;
        must_exist("tls.ca", &self.tls_ca)?;
        must_exist("tls.cert", &self.tls_cert)?;
        must_exist("tls.key", &self.tls_key)?;
        if let Some(crl) = &self.tls_crl {
            must_exist("tls.crl", crl)?;
        }
        let mut tls = TlsFiles::load_with_crl(&self.tls_ca, &self.tls_cert, &self.tls_key, self.tls_crl.as_deref())
            .map_err(|e| bad("tls", e))?;
        tls.crl_enforce_next_update = self.tls_crl_enforce_next_update;
        let leaf = tls.chain().map_err(|e| bad("tls.cert", e))?;
        if leaf.first().and_then(|c| crate::tls::identity::instance_sys_id(c)).is_none() {
            return Err(bad("tls.cert", "is not an instance certificate (no kmf://instance/<sys_id> SAN)"));
        }
        match &self.signer {
            SignerConfig::Software { kek_file } => {
                crate::signer::software::SoftwareSigner::load(kek_file).map_err(|e| bad("signer.kek_file", e))?;
            }
            SignerConfig::Pkcs11(cfg) => {
                crate::signer::pkcs11::Pkcs11Signer::open(cfg)
                    .map_err(|e| bad(&format!("signer.{}", e.field), e.reason))?;
            }
        }
        Ok(AppConfig {
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            host: self.host.clone(),
            tls,
            signer: self.signer.clone(),
            background_interval: self.background_interval,
            health_interval: self.health_interval,
            metrics_listen: self.metrics_listen,
            rekey_retry_interval: self.rekey_retry_interval,
            clone_grant_lifetime: self.clone_grant_lifetime,
            connections: self.connections,
            tls_paths: Some(crate::app::TlsPaths {
                ca: self.tls_ca.clone(),
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                crl: self.tls_crl.clone(),
            }),
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
        assert_eq!(s.health_interval, Duration::from_secs(15));
        assert_eq!(s.metrics_listen, None, "no metrics listener unless asked");
        assert!(!s.tls_crl_enforce_next_update, "a stale CRL is used unless asked");
        let s = resolve(&args, Some("data_dir = \"/d\"\n[tls]\ncrl_enforce_next_update = true\n")).unwrap();
        assert!(s.tls_crl_enforce_next_update);
        let args = RunArgs { metrics_listen: Some("127.0.0.1:9443".into()), ..Default::default() };
        let s = resolve(&args, Some("data_dir = \"/d\"\nmetrics_listen = \"0.0.0.0:1\"")).unwrap();
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9443".parse().unwrap()));
    }

    #[test]
    fn a_clone_grant_lasts_an_hour_unless_configured() {
        let s = resolve(&RunArgs::default(), Some("data_dir = \"/d\"")).unwrap();
        assert_eq!(s.clone_grant_lifetime, Duration::from_secs(3600));
        let s = resolve(&RunArgs::default(), Some("data_dir = \"/d\"\n[clone]\ngrant_lifetime = \"10m\"")).unwrap();
        assert_eq!(s.clone_grant_lifetime, Duration::from_secs(600));
        let zero = resolve(&RunArgs::default(), Some("data_dir = \"/d\"\n[clone]\ngrant_lifetime = \"0s\""));
        assert!(zero.is_err_and(|e| e.to_string().contains("clone.grant_lifetime")));
    }

    const PKCS11: &str = "data_dir = \"/d\"\n[signer]\nbackend = \"pkcs11\"\nmodule = \"/m.so\"\n";

    #[test]
    fn pkcs11_signer_from_file_flags_and_defaults() {
        let file = format!("{PKCS11}token_label = \"kmf\"\npin_file = \"/etc/kmf/pin\"");
        let s = resolve(&RunArgs::default(), Some(&file)).unwrap();
        let expected = Pkcs11Config {
            module: "/m.so".into(),
            token_label: "kmf".into(),
            pin: PinSource::File("/etc/kmf/pin".into()),
            kek_label: DEFAULT_KEK_LABEL.into(),
        };
        assert_eq!(s.signer, SignerConfig::Pkcs11(expected));

        // A PIN flag replaces the file's PIN source; other flags override field by field.
        let signer = SignerArgs {
            pkcs11_pin_env: Some("HSM_PIN".into()),
            pkcs11_kek_label: Some("kek-2".into()),
            ..Default::default()
        };
        let s = resolve(&RunArgs { signer, ..Default::default() }, Some(&file)).unwrap();
        let SignerConfig::Pkcs11(cfg) = s.signer else { panic!("pkcs11 expected") };
        assert_eq!((cfg.pin, cfg.kek_label.as_str()), (PinSource::Env("HSM_PIN".into()), "kek-2"));

        // Flags alone select pkcs11 over a software file.
        let signer = SignerArgs {
            signer: Some(SignerKind::Pkcs11),
            pkcs11_module: Some("/lib.so".into()),
            pkcs11_token: Some("t".into()),
            pkcs11_pin_file: Some("/p".into()),
            ..Default::default()
        };
        let file = "data_dir = \"/d\"\n[signer]\nbackend = \"software\"\nkek_file = \"/k\"";
        let s = resolve(&RunArgs { signer, ..Default::default() }, Some(file)).unwrap();
        assert!(matches!(s.signer, SignerConfig::Pkcs11(ref c) if c.token_label == "t"), "{:?}", s.signer);

        // The software signer is the default; pkcs11 flags without pkcs11 are refused.
        let s = resolve(&RunArgs::default(), Some("data_dir = \"/d\"")).unwrap();
        assert_eq!(s.signer, SignerConfig::Software { kek_file: "/d/kek.key".into() });
        let signer = SignerArgs { pkcs11_token: Some("t".into()), ..Default::default() };
        let err = resolve(&RunArgs { signer, ..Default::default() }, Some("data_dir = \"/d\"")).unwrap_err();
        assert_eq!(err.field, "signer");
        let signer = SignerArgs { kek_file: Some("/k".into()), ..Default::default() };
        let err = resolve(&RunArgs { signer, ..Default::default() }, Some(&format!("{PKCS11}token_label = \"t\"")));
        assert_eq!(err.unwrap_err().field, "signer.kek_file");
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
            ("data_dir = \"/d\"\n[signer]\nbackend = \"pkcs11\"\npin = \"1234\"", "config"),
            ("data_dir = \"/d\"\n[signer]\nbackend = \"pkcs11\"", "signer.module"),
            ("data_dir = \"/d\"\n[signer]\nbackend = \"pkcs11\"\nmodule = \"/m.so\"", "signer.token_label"),
            (&format!("{PKCS11}token_label = \"{}\"\npin_env = \"P\"", "x".repeat(33)), "signer.token_label"),
            (&format!("{PKCS11}token_label = \"t\""), "signer.pin_file"),
            (&format!("{PKCS11}token_label = \"t\"\npin_file = \"/p\"\npin_env = \"P\""), "signer.pin_file"),
            (&format!("{PKCS11}token_label = \"t\"\npin_env = \"A=B\""), "signer.pin_env"),
            (&format!("{PKCS11}token_label = \"t\"\npin_env = \"P\"\nkek_label = \"\""), "signer.kek_label"),
        ];
        for (text, field) in cases {
            let err = resolve(&RunArgs::default(), Some(text)).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
        }
    }
}

#[cfg(test)]
mod connections_tests {
    use super::*;

    #[test]
    fn connections_handshake_and_memory_settings_resolve_and_are_checked() {
        let base = "data_dir = \"/d\"\n[connections]\n";
        let s = resolve(&RunArgs::default(), Some(base)).unwrap();
        assert_eq!(s.connections, crate::connections::ConnectionLimits::default());
        assert_eq!((s.connections.max_handshakes, s.connections.handshake_timeout), (256, Duration::from_secs(3)));
        let text = format!("{base}max_handshakes = 8\nhandshake_timeout = \"1s\"\nrequest_memory_mib = 64\n");
        let s = resolve(&RunArgs::default(), Some(&text)).unwrap();
        assert_eq!(s.connections.max_handshakes, 8);
        assert_eq!(s.connections.handshake_timeout, Duration::from_secs(1));
        assert_eq!(s.connections.request_memory, 64 << 20);
        for (line, field) in [
            ("max_handshakes = 0", "connections.max_handshakes"),
            ("handshake_timeout = \"0s\"", "connections.handshake_timeout"),
            ("request_memory_mib = 15", "connections.request_memory_mib"),
        ] {
            let err = resolve(&RunArgs::default(), Some(&format!("{base}{line}\n"))).unwrap_err();
            assert_eq!(err.field, field, "{line}: {err}");
        }
    }
}
