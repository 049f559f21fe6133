//! `kmfctl quickstart`: two instances on loopback, in a temporary directory,
//! with their own PKI; an Adhoc exchange from end to end through the same
//! gRPC calls an operator makes.

use std::time::Duration;

use base64::Engine;

use super::kmfctl::{Operator, aes_spec};
use super::print;
use crate::app::{RunningApp, start_loopback};
use crate::domain::auth::Role;
use crate::domain::ids::Host;
use crate::rpc::pb;
use crate::tls::pki::{IssuedCert, create_ca, issue_operator, tls_files};

async fn instance(root: &std::path::Path, name: &str, ca: &IssuedCert) -> anyhow::Result<(RunningApp, String, Host)> {
    let (app, sys_id, host) = start_loopback(root, name, ca, Duration::from_secs(1)).await?;
    println!("  {name:<6} sys_id {sys_id}  listening on {host} (mTLS, TLS 1.3)");
    Ok((app, sys_id.to_string(), host))
}

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

pub async fn run() -> anyhow::Result<()> {
    crate::telemetry::init_with_default(crate::config::LogFormat::Text, "warn");
    let tmp = tempfile::tempdir()?;
    println!("kmf quickstart: a source and a target instance in {}", tmp.path().display());

    step(1, "Minting a deployment CA and an operator certificate (role admin)");
    let ca = create_ca("kmf quickstart CA")?;
    let operator = tls_files(&ca, &issue_operator(&ca, "quickstart-admin", &[Role::Admin])?);

    step(2, "Starting two daemons");
    let (source_app, source_id, source_host) = instance(tmp.path(), "source", &ca).await?;
    let (target_app, _target_id, target_host) = instance(tmp.path(), "target", &ca).await?;
    let mut source = Operator::connect_with(&source_host, &operator).await?;
    let mut target = Operator::connect_with(&target_host, &operator).await?;

    step(3, "On the source: module `payroll`, spec `salary` (AES-256-GCM), a key, a rotation");
    source
        .keys
        .create_module(pb::CreateModuleRequest {
            name: "payroll".into(),
            default_access: pb::DefaultAccess::Track as i32,
        })
        .await?;
    source.keys.create_spec(aes_spec("payroll", "salary", 256)).await?;
    source.keys.generate_key(pb::GenerateKeyRequest { spec: "salary".into() }).await?;
    source.keys.rotate_key(pb::RotateKeyRequest { spec: "salary".into() }).await?;
    print::keys(&source.keys.list_keys(pb::ListKeysRequest { spec: "salary".into() }).await?.into_inner().keys);

    step(4, "On the source: encrypt a salary record");
    let ct = source
        .crypto
        .encrypt(pb::EncryptRequest {
            spec: "salary".into(),
            plaintext: b"4200 EUR".to_vec(),
            associated_data: b"employee:7".to_vec(),
        })
        .await?
        .into_inner();
    println!("  ciphertext {} (key {})", base64::engine::general_purpose::STANDARD.encode(&ct.ciphertext), ct.key_id);

    step(5, "On the target (a clone: same module and spec, no keys): decrypting fails");
    target
        .keys
        .create_module(pb::CreateModuleRequest {
            name: "payroll".into(),
            default_access: pb::DefaultAccess::Track as i32,
        })
        .await?;
    target.keys.create_spec(aes_spec("payroll", "salary", 256)).await?;
    let decrypt = pb::DecryptRequest { ciphertext: ct.ciphertext.clone(), associated_data: b"employee:7".to_vec() };
    match target.crypto.decrypt(decrypt.clone()).await {
        Err(s) => println!("  refused as expected: code={:?} message={}", s.code(), s.message()),
        Ok(_) => anyhow::bail!("the target decrypted before the exchange"),
    }

    step(6, "On the target: open an Adhoc request for `salary` (and `bonus`, which the source lacks)");
    target.keys.create_spec(aes_spec("payroll", "bonus", 256)).await?;
    let created = target
        .exchange
        .create_request(pb::CreateRequestRequest {
            source_sys_id: source_id.clone(),
            source_host: source_host.to_string(),
            spec_names: vec!["salary".into(), "bonus".into()],
            expires_in: None,
            frequency: pb::Frequency::Adhoc as i32,
            rekey_after_import: false,
        })
        .await?
        .into_inner()
        .request
        .unwrap_or_default();
    let id = created.request_id.clone();
    println!("  request {id}: {}", print::status_label(created.status));

    step(7, "On the source: the pending requests");
    let pending = pb::ListRequestsRequest { status: pb::RequestStatus::RequestPending as i32, ..Default::default() };
    print::requests(&source.exchange.list_requests(pending).await?.into_inner().requests);

    step(8, "On the source: approve (one explicit UpdateRequest call)");
    let approve = pb::UpdateRequestRequest {
        request_id: id.clone(),
        decision: pb::Decision::Approve as i32,
        reason: String::new(),
    };
    let approved = source.exchange.update_request(approve).await?.into_inner().request.unwrap_or_default();
    println!("  {}", print::status_label(approved.status));

    step(9, "On the target: decrypt the source's ciphertext");
    let plain = target.crypto.decrypt(decrypt).await?.into_inner();
    println!("  plaintext \"{}\" with key {}", String::from_utf8_lossy(&plain.plaintext), plain.key_id);

    step(10, "The request records");
    println!("--- on the source");
    print::request(
        &source
            .exchange
            .get_request(pb::GetRequestRequest { request_id: id.clone() })
            .await?
            .into_inner()
            .request
            .unwrap_or_default(),
    );
    println!("--- on the target");
    print::request(
        &target
            .exchange
            .get_request(pb::GetRequestRequest { request_id: id })
            .await?
            .into_inner()
            .request
            .unwrap_or_default(),
    );
    println!("--- imported keys on the target");
    print::keys(&target.keys.list_keys(pb::ListKeysRequest { spec: "salary".into() }).await?.into_inner().keys);

    step(11, "Stopping the daemons");
    source_app.shutdown().await?;
    target_app.shutdown().await?;
    println!("  done. Next: README.md shows the same with kmfd, kmfctl and grpcurl.");
    Ok(())
}
