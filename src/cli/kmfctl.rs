//! `kmfctl`: the operator CLI. Every operator RPC, the PKI commands and the
//! quickstart. Tables by default, `--json` for machines; on failure it prints
//! the gRPC code and message and exits 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;

use super::ctl_clone::{CloneCommand, clone};
use super::ctl_crypto::{CryptoCommand, crypto, spec_request};
use super::ctl_exchange;
use super::ctl_lifecycle::{AuditCommand, LifecycleCommand, audit, key_action, lifecycle};
use super::ctl_pki::{PkiCommand, pki_command};
use super::ctl_policies::{PolicyCommand, policy};
use super::ctl_properties::{PropertyCommand, property};
use super::print;
use crate::domain::ids::Host;
use crate::rpc::client::connect;
use crate::rpc::pb;
use crate::tls::TlsFiles;

#[derive(Parser, Debug)]
#[command(name = "kmfctl", version, about = "Operate kmf instances: keys, exchanges, PKI")]
pub struct Kmfctl {
    #[command(flatten)]
    conn: Conn,
    /// Print the response message in the protobuf JSON mapping instead of a
    /// table: byte for byte what grpcurl prints for the same call. Commands
    /// that make several calls print the last response (lists: one response
    /// holding every page's items).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Conn {
    /// Daemon to talk to (name:port).
    #[arg(long, env = "KMF_ENDPOINT", global = true, default_value = "localhost:8443")]
    endpoint: String,
    /// CA certificate (PEM).
    #[arg(long, env = "KMF_CA", global = true, default_value = "ca.pem")]
    ca: PathBuf,
    /// Operator certificate (PEM).
    #[arg(long, env = "KMF_CERT", global = true, default_value = "operator.pem")]
    cert: PathBuf,
    /// Operator private key (PEM).
    #[arg(long, env = "KMF_KEY", global = true, default_value = "operator.key")]
    key: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a source and a target on loopback, exchange a key, show the result.
    Quickstart,
    /// Make a deployment from a TOML manifest (CA, operators, instances,
    /// tokens); keeps what exists, so it can run on every start.
    Bootstrap {
        #[arg(long)]
        manifest: PathBuf,
    },
    /// Deployment PKI (CA, instance and operator certificates).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// This instance: sys_id, host, version, signer.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Cryptographic modules.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Crypto specifications.
    #[command(subcommand)]
    Spec(SpecCommand),
    /// Module keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Encrypt with a spec's Active key; prints base64 ciphertext.
    Encrypt {
        #[arg(long)]
        spec: String,
        /// Plaintext as text.
        #[arg(long)]
        text: String,
        /// Associated data as text.
        #[arg(long, default_value = "")]
        aad: String,
    },
    /// Decrypt base64 ciphertext; prints the plaintext as text (`--json`:
    /// the Decrypt response, plaintext in base64).
    Decrypt {
        #[arg(long)]
        ciphertext: String,
        #[arg(long, default_value = "")]
        aad: String,
    },
    /// Re-encrypt base64 ciphertext under its spec's current key (the
    /// plaintext stays in the daemon); prints the new base64 ciphertext.
    Rewrap {
        #[arg(long)]
        ciphertext: String,
        #[arg(long, default_value = "")]
        aad: String,
    },
    /// Encrypted records addressed by table, field and record id.
    #[command(subcommand)]
    Record(super::ctl_records::RecordCommand),
    /// Encrypt, decrypt or rewrap a JSON lines file through the batch calls.
    #[command(subcommand)]
    Batch(super::ctl_batch::BatchCommand),
    /// Print a shell completion script, e.g.
    /// `kmfctl completions bash > /etc/bash_completion.d/kmfctl` or
    /// `kmfctl completions zsh > "${fpath[1]}/_kmfctl"`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Sign/verify, MAC/verify, wrap/unwrap and RSA public keys.
    #[command(subcommand)]
    Crypto(CryptoCommand),
    /// Key-exchange requests.
    #[command(subcommand)]
    Exchange(ExchangeCommand),
    /// Key lifecycle definitions and policies.
    #[command(subcommand)]
    Lifecycle(LifecycleCommand),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// System properties.
    #[command(subcommand)]
    Property(PropertyCommand),
    /// Module access policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Clone: the targets this instance serves clones to.
    #[command(subcommand)]
    Clone(CloneCommand),
    /// Rekey after import (target side): progress and the rekey debt.
    #[command(subcommand)]
    Rekey(super::ctl_rekey::RekeyCommand),
    /// Diagnose the instance (exit 0 Operational, 2 Degraded, 3 Malfunction).
    Diag,
}

#[derive(Subcommand, Debug)]
enum InstanceCommand {
    Info,
}

#[derive(Subcommand, Debug)]
enum ModuleCommand {
    Create {
        name: String,
        /// What the module allows before any access policy exists: reject
        /// (deny every crypto call) or track (AutoGen Track policies for the
        /// roles that may use keys).
        #[arg(long, value_parser = ["reject", "track"], default_value = "reject")]
        default_access: String,
    },
    List,
}

#[derive(Subcommand, Debug)]
enum SpecCommand {
    /// Create a spec (default: AES-256-GCM symmetric data encryption).
    Create {
        name: String,
        #[arg(long)]
        module: String,
        /// symmetric_data_encryption, symmetric_key_wrapping, symmetric_authenticity,
        /// asymmetric_data_encryption, asymmetric_key_wrapping or signature
        /// (unset: the algorithm's purpose, or symmetric_data_encryption).
        #[arg(long)]
        purpose: Option<String>,
        /// aes_gcm, aes_cbc, aes_ctr, hmac or rsa (unset: the purpose's first, or aes_gcm).
        #[arg(long)]
        algorithm: Option<String>,
        /// Key size in bits; 0 picks the algorithm's default (AES 256, HMAC 256, RSA 3072).
        #[arg(long, default_value_t = 0)]
        size: u32,
        /// Deterministic encryption (AES-SIV); only with aes_cbc data encryption.
        #[arg(long)]
        equality_preserving: bool,
        /// Allow `key export` of this spec's keys (cannot be changed later).
        #[arg(long)]
        exportable: bool,
    },
    List {
        #[arg(long)]
        module: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// A new key of the spec (Active when the spec has no current key, else Generated).
    Generate { spec: String },
    /// A new Active key; the current one is deactivated (decrypt only).
    Rotate { spec: String },
    /// Every key of the spec, with its state and times.
    List { spec: String },
    /// Generated -> Active (when the spec has no current key).
    Activate { key_id: String },
    /// Extend expiration: now + (expiration - activation).
    Renew { key_id: String },
    /// Active or Renewed -> Suspended (unusable until resumed).
    Suspend { key_id: String },
    /// Suspended -> Active (when the spec has no other current key).
    Resume { key_id: String },
    /// Revoke (reason required); a new Active key replaces a current one.
    Revoke {
        key_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Mark compromised; a new Active key replaces a current one.
    Compromise {
        key_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    #[command(flatten)]
    Byok(super::ctl_byok::ByokCommand),
}

#[derive(Subcommand, Debug)]
enum ExchangeCommand {
    /// On the target: ask a source for the keys of some specs (Adhoc).
    Create {
        #[arg(long)]
        source_sys_id: String,
        #[arg(long)]
        source_host: String,
        #[arg(long = "spec", required = true)]
        specs: Vec<String>,
        /// e.g. 7d, 12h (default 7 days).
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Requests, every page (`--json`: one ListRequests response holding all).
    List {
        /// pending, approved, completed, rejected, expired, error_on_local_instance, error_on_remote_instance.
        #[arg(long)]
        status: Option<String>,
    },
    Get {
        request_id: String,
        /// Also show the signed receipt (once imported) and check it: its
        /// signature against the signer's certificate, that certificate
        /// against the deployment CA. Exits 1 if a check fails. With `--json`
        /// stdout is the GetRequest response (the proof in base64) and the
        /// check goes to stderr.
        #[arg(long)]
        receipt: bool,
    },
    /// On the source: approve a pending request (exports and delivers the keys).
    Approve {
        request_id: String,
        /// Wait until the request ends instead of returning while the delivery
        /// may still run (REQUEST_APPROVED); exit non-zero unless it ends
        /// REQUEST_COMPLETED. `--json` prints the last state seen as an
        /// UpdateRequest response.
        #[arg(long)]
        wait: bool,
        /// With --wait: how long to wait, e.g. 60s, 5m.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Duration,
    },
    /// On the source: reject a pending request.
    Reject {
        request_id: String,
        #[arg(long)]
        reason: String,
    },
    /// On the source: retry a request that ended in ERROR_ON_LOCAL_INSTANCE or
    /// ERROR_ON_REMOTE_INSTANCE (its bundle is delivered again; one that failed
    /// before approval becomes pending again).
    Retry { request_id: String },
    /// On the source: One Time / Recurring Clone configurations.
    #[command(subcommand)]
    CloneConfig(super::ctl_clone_exchange::CloneConfigCommand),
}

pub fn main() -> ExitCode {
    let cli = Kmfctl::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kmfctl: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(code) = super::ctl_diag::exit_code(&e) {
                return code;
            }
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => {
                    // A transport failure's reason (e.g. the TLS alert CertificateRevoked) is in its sources.
                    let mut why = String::new();
                    let mut source = std::error::Error::source(s);
                    while let Some(cause) = source {
                        why.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    eprintln!("kmfctl: error: code={:?} message={}{why}", s.code(), s.message())
                }
                None => eprintln!("kmfctl: error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Kmfctl) -> anyhow::Result<()> {
    let as_json = cli.json;
    match cli.command {
        Command::Quickstart => super::quickstart::run().await,
        Command::Pki(cmd) => pki_command(cmd),
        Command::Bootstrap { manifest } => super::ctl_bootstrap::bootstrap(&manifest),
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a failed write (a closed pipe).
            let (mut command, mut script) = (<Kmfctl as clap::CommandFactory>::command(), Vec::new());
            clap_complete::generate(shell, &mut command, "kmfctl", &mut script);
            std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
            Ok(())
        }
        other => {
            let mut ctl = Operator::connect(&cli.conn).await?;
            ctl.run(other, as_json).await
        }
    }
}

// === operator calls ===

/// Clients for every operator service over one mTLS channel.
pub struct Operator {
    pub instance: pb::instance_client::InstanceClient<Channel>,
    pub keys: pb::key_management_client::KeyManagementClient<Channel>,
    pub crypto: pb::crypto_client::CryptoClient<Channel>,
    pub exchange: pb::resource_exchange_client::ResourceExchangeClient<Channel>,
    pub audit: pb::audit_client::AuditClient<Channel>,
    pub properties: pb::properties_client::PropertiesClient<Channel>,
    pub policies: pb::policies_client::PoliciesClient<Channel>,
    pub clones: pb::clones_client::ClonesClient<Channel>,
    pub rekeys: pb::rekeys_client::RekeysClient<Channel>,
    /// The deployment CA kmfctl trusts (to check receipts' certificates).
    pub ca_pem: Vec<u8>,
}

impl Operator {
    async fn connect(conn: &Conn) -> anyhow::Result<Self> {
        let files = TlsFiles::load(&conn.ca, &conn.cert, &conn.key)?;
        let host = Host::parse(&conn.endpoint)?;
        Self::connect_with(&host, &files).await
    }

    pub async fn connect_with(host: &Host, files: &TlsFiles) -> anyhow::Result<Self> {
        let ch = connect(host, files, None).await.map_err(|e| anyhow::anyhow!("connecting to {host}: {e}"))?;
        Ok(Operator {
            instance: pb::instance_client::InstanceClient::new(ch.clone()),
            keys: pb::key_management_client::KeyManagementClient::new(ch.clone()),
            crypto: pb::crypto_client::CryptoClient::new(ch.clone()),
            exchange: pb::resource_exchange_client::ResourceExchangeClient::new(ch.clone()),
            audit: pb::audit_client::AuditClient::new(ch.clone()),
            properties: pb::properties_client::PropertiesClient::new(ch.clone()),
            policies: pb::policies_client::PoliciesClient::new(ch.clone()),
            clones: pb::clones_client::ClonesClient::new(ch.clone()),
            rekeys: pb::rekeys_client::RekeysClient::new(ch),
            ca_pem: files.ca_pem.clone(),
        })
    }

    async fn run(&mut self, cmd: Command, as_json: bool) -> anyhow::Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        match cmd {
            Command::Quickstart | Command::Pki(_) | Command::Bootstrap { .. } | Command::Completions { .. } => {
                unreachable!("handled before connecting")
            }
            Command::Instance(InstanceCommand::Info) => {
                let i = self.instance.info(pb::InfoRequest {}).await?.into_inner();
                if as_json {
                    print::json(&i)?;
                } else {
                    print::table(
                        &["SYS_ID", "HOST", "VERSION", "SIGNER"],
                        &[vec![i.sys_id, i.host, i.version, i.signer_kind]],
                    );
                }
            }
            Command::Module(ModuleCommand::Create { name, default_access }) => {
                let access =
                    if default_access == "track" { pb::DefaultAccess::Track } else { pb::DefaultAccess::Reject };
                let req = pb::CreateModuleRequest { name, default_access: access as i32 };
                let r = self.keys.create_module(req).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print_modules(&r.module.into_iter().collect::<Vec<_>>());
            }
            Command::Module(ModuleCommand::List) => {
                let r = self.keys.list_modules(pb::ListModulesRequest {}).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print_modules(&r.modules);
            }
            Command::Spec(SpecCommand::Create {
                name,
                module,
                purpose,
                algorithm,
                size,
                equality_preserving,
                exportable,
            }) => {
                let mut req =
                    spec_request(&module, &name, purpose.as_deref(), algorithm.as_deref(), size, equality_preserving)?;
                req.exportable = exportable;
                let r = self.keys.create_spec(req).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print_specs(&r.spec.into_iter().collect::<Vec<_>>());
            }
            Command::Spec(SpecCommand::List { module }) => {
                let req = pb::ListSpecsRequest { module: module.unwrap_or_default() };
                let r = self.keys.list_specs(req).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print_specs(&r.specs);
            }
            Command::Key(KeyCommand::Generate { spec }) => {
                let r = self.keys.generate_key(pb::GenerateKeyRequest { spec }).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print::keys(&r.key.into_iter().collect::<Vec<_>>());
            }
            Command::Key(KeyCommand::Rotate { spec }) => {
                let r = self.keys.rotate_key(pb::RotateKeyRequest { spec }).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print::keys(&r.deactivated.into_iter().chain(r.active).collect::<Vec<_>>());
            }
            Command::Key(KeyCommand::List { spec }) => {
                let r = self.keys.list_keys(pb::ListKeysRequest { spec }).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print::keys(&r.keys);
            }
            Command::Key(KeyCommand::Byok(cmd)) => super::ctl_byok::byok(self, cmd, as_json).await?,
            Command::Key(KeyCommand::Activate { key_id }) => {
                key_action(self, key_id, pb::KeyAction::Activate, String::new(), as_json).await?;
            }
            Command::Key(KeyCommand::Renew { key_id }) => {
                key_action(self, key_id, pb::KeyAction::Renew, String::new(), as_json).await?;
            }
            Command::Key(KeyCommand::Suspend { key_id }) => {
                key_action(self, key_id, pb::KeyAction::Suspend, String::new(), as_json).await?;
            }
            Command::Key(KeyCommand::Resume { key_id }) => {
                key_action(self, key_id, pb::KeyAction::Resume, String::new(), as_json).await?;
            }
            Command::Key(KeyCommand::Revoke { key_id, reason }) => {
                key_action(self, key_id, pb::KeyAction::Revoke, reason, as_json).await?;
            }
            Command::Key(KeyCommand::Compromise { key_id, reason }) => {
                key_action(self, key_id, pb::KeyAction::MarkCompromised, reason, as_json).await?;
            }
            Command::Lifecycle(cmd) => lifecycle(self, cmd, as_json).await?,
            Command::Audit(cmd) => audit(self, cmd, as_json).await?,
            Command::Property(cmd) => property(self, cmd, as_json).await?,
            Command::Policy(cmd) => policy(self, cmd, as_json).await?,
            Command::Clone(cmd) => clone(self, cmd, as_json).await?,
            Command::Rekey(cmd) => super::ctl_rekey::rekey(self, cmd, as_json).await?,
            Command::Diag => super::ctl_diag::diag(self, as_json).await?,
            Command::Encrypt { spec, text, aad } => {
                let req = pb::EncryptRequest { spec, plaintext: text.into_bytes(), associated_data: aad.into_bytes() };
                let r = self.crypto.encrypt(req).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                println!("{}", b64.encode(&r.ciphertext));
            }
            Command::Decrypt { ciphertext, aad } => {
                let ciphertext = b64.decode(ciphertext.trim()).context("ciphertext is not base64")?;
                let req = pb::DecryptRequest { ciphertext, associated_data: aad.into_bytes() };
                let r = self.crypto.decrypt(req).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                println!("{}", String::from_utf8_lossy(&r.plaintext));
            }
            Command::Rewrap { ciphertext, aad } => {
                let ciphertext = b64.decode(ciphertext.trim()).context("ciphertext is not base64")?;
                let req = pb::RewrapRequest { ciphertext, associated_data: aad.into_bytes() };
                let r = self.crypto.rewrap(req).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                println!("{}", b64.encode(&r.ciphertext));
            }
            Command::Record(cmd) => super::ctl_records::record(self, cmd, as_json).await?,
            Command::Batch(cmd) => super::ctl_batch::batch(self, cmd).await?,
            Command::Crypto(cmd) => crypto(self, cmd, as_json).await?,
            Command::Exchange(cmd) => self.exchange_command(cmd, as_json).await?,
        }
        Ok(())
    }

    async fn exchange_command(&mut self, cmd: ExchangeCommand, as_json: bool) -> anyhow::Result<()> {
        match cmd {
            ExchangeCommand::Create { source_sys_id, source_host, specs, expires_in } => {
                let expires_in = expires_in
                    .map(|t| humantime::parse_duration(&t).context("--expires-in"))
                    .transpose()?
                    .map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 });
                let req = pb::CreateRequestRequest {
                    source_sys_id,
                    source_host,
                    spec_names: specs,
                    expires_in,
                    frequency: pb::Frequency::Adhoc as i32,
                    rekey_after_import: false,
                };
                let r = self.exchange.create_request(req).await?.into_inner();
                if as_json {
                    return print::json(&r);
                }
                print::request(&r.request.unwrap_or_default());
            }
            ExchangeCommand::List { status } => {
                let status = match status {
                    None => pb::RequestStatus::Unspecified,
                    Some(s) => parse_status(&s)?,
                };
                // Every page, in creation order.
                let (mut all, mut page_token) = (Vec::new(), String::new());
                loop {
                    let ask = pb::ListRequestsRequest { status: status as i32, page_size: 1000, page_token };
                    let page = self.exchange.list_requests(ask).await?.into_inner();
                    all.extend(page.requests);
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if as_json {
                    return print::json(&pb::ListRequestsResponse { requests: all, next_page_token: String::new() });
                }
                print::requests(&all);
            }
            ExchangeCommand::Get { request_id, receipt } => {
                super::ctl_exchange::get(self, request_id, receipt, as_json).await?;
            }
            ExchangeCommand::Approve { request_id, wait, timeout } => {
                let req = pb::UpdateRequestRequest {
                    request_id,
                    decision: pb::Decision::Approve as i32,
                    reason: String::new(),
                };
                let r = self.exchange.update_request(req).await?.into_inner();
                if !wait {
                    return print::update_response(&r, as_json);
                }
                let r = ctl_exchange::wait_until_final(self, r.request.unwrap_or_default(), timeout).await?;
                print::update_response(&pb::UpdateRequestResponse { request: Some(r.clone()) }, as_json)?;
                ctl_exchange::outcome(&r, timeout)?;
            }
            ExchangeCommand::Reject { request_id, reason } => {
                let req = pb::UpdateRequestRequest { request_id, decision: pb::Decision::Reject as i32, reason };
                let r = self.exchange.update_request(req).await?.into_inner();
                print::update_response(&r, as_json)?;
            }
            ExchangeCommand::Retry { request_id } => {
                let req = pb::UpdateRequestRequest {
                    request_id,
                    decision: pb::Decision::Retry as i32,
                    reason: String::new(),
                };
                let r = self.exchange.update_request(req).await?.into_inner();
                print::update_response(&r, as_json)?;
            }
            ExchangeCommand::CloneConfig(cmd) => super::ctl_clone_exchange::clone_config(self, cmd, as_json).await?,
        }
        Ok(())
    }
}

pub fn aes_spec(module: &str, name: &str, size: u32) -> pb::CreateSpecRequest {
    pb::CreateSpecRequest {
        module: module.into(),
        name: name.into(),
        purpose: pb::CryptoPurpose::SymmetricDataEncryption as i32,
        algorithm: pb::Algorithm::AesGcm as i32,
        key_size_bits: size,
        equality_preserving: false,
        exportable: false,
    }
}

fn parse_status(text: &str) -> anyhow::Result<pb::RequestStatus> {
    let upper = text.to_ascii_uppercase();
    pb::RequestStatus::from_str_name(&upper)
        .or_else(|| pb::RequestStatus::from_str_name(&format!("REQUEST_{upper}")))
        .filter(|s| *s != pb::RequestStatus::Unspecified)
        .ok_or_else(|| anyhow::anyhow!("unknown status `{text}`"))
}

fn print_modules(list: &[pb::Module]) {
    let rows: Vec<_> = list.iter().map(|m| vec![m.name.clone(), print::time(&m.created_at)]).collect();
    print::table(&["MODULE", "CREATED"], &rows);
}

fn print_specs(list: &[pb::Spec]) {
    let alg = |s: &pb::Spec| pb::Algorithm::try_from(s.algorithm).map(|a| a.as_str_name()).unwrap_or("UNKNOWN");
    let purpose = |s: &pb::Spec| pb::CryptoPurpose::try_from(s.purpose).map(|a| a.as_str_name()).unwrap_or("UNKNOWN");
    let rows: Vec<_> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.module.clone(),
                purpose(s).into(),
                alg(s).into(),
                s.key_size_bits.to_string(),
                s.scheme.clone(),
            ]
        })
        .collect();
    print::table(&["SPEC", "MODULE", "PURPOSE", "ALGORITHM", "BITS", "SCHEME"], &rows);
}
