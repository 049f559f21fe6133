//! `kmfctl exchange approve --wait`: UpdateRequest may answer while the
//! delivery still runs in the background (REQUEST_APPROVED); `--wait` polls
//! GetRequest every 200 ms, at most `--timeout`, until the request ends, with
//! a spinner on stderr when it is a terminal. kmfctl then prints the request
//! and exits non-zero unless it ended REQUEST_COMPLETED.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::ProgressBar;
use tokio::time::Instant;

use super::kmfctl::Operator;
use super::print::status_label;
use crate::rpc::pb;

/// How often `--wait` asks for the request.
pub const POLL_EVERY: Duration = Duration::from_millis(200);

/// Pending and Approved requests still move; every other status is final.
fn in_progress(r: &pb::ExchangeRequest) -> bool {
    matches!(
        pb::RequestStatus::try_from(r.status),
        Ok(pb::RequestStatus::RequestPending | pb::RequestStatus::RequestApproved)
    )
}

/// Polls GetRequest until `r` is final or `timeout` has passed (every call
/// is bounded by it too); returns the last request seen.
pub async fn wait_until_final(
    ops: &mut Operator,
    mut r: pb::ExchangeRequest,
    timeout: Duration,
) -> anyhow::Result<pb::ExchangeRequest> {
    if !in_progress(&r) {
        return Ok(r);
    }
    let deadline = Instant::now() + timeout;
    let spinner = std::io::stderr().is_terminal().then(|| {
        let s = ProgressBar::new_spinner();
        s.enable_steady_tick(Duration::from_millis(100));
        s
    });
    let show = |r: &pb::ExchangeRequest| {
        if let Some(s) = &spinner {
            s.set_message(format!("request {} is {}; waiting for the delivery", r.request_id, status_label(r.status)));
        }
    };
    show(&r);
    while in_progress(&r) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep(POLL_EVERY.min(deadline - now)).await;
        let req = pb::GetRequestRequest { request_id: r.request_id.clone() };
        match tokio::time::timeout_at(deadline, ops.exchange.get_request(req)).await {
            Ok(answer) => r = answer?.into_inner().request.unwrap_or_default(),
            Err(_) => break,
        }
        show(&r);
    }
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    Ok(r)
}

/// Ok when `r` ended REQUEST_COMPLETED; else the error kmfctl exits with
/// (after the request was printed).
pub fn outcome(r: &pb::ExchangeRequest, timeout: Duration) -> anyhow::Result<()> {
    let (id, status) = (&r.request_id, status_label(r.status));
    if r.status == pb::RequestStatus::RequestCompleted as i32 {
        Ok(())
    } else if in_progress(r) {
        anyhow::bail!(
            "request {id} is still {status} after {}s; delivery continues in the background — check with `kmfctl exchange get {id}`",
            timeout.as_secs_f64()
        )
    } else {
        match r.history.last().map(|t| t.note.as_str()).filter(|n| !n.is_empty()) {
            Some(note) => anyhow::bail!("request {id} ended {status}: {note}"),
            None => anyhow::bail!("request {id} ended {status}"),
        }
    }
}

/// `exchange get ID [--receipt]`: the request, and with `receipt` its
/// proof, checked (an error when a check fails or there is no receipt yet).
/// With `--json` the GetRequest response is printed as it is (the proof's
/// receipt, signature and certificate in base64); the check's findings go to
/// stderr and its verdict is the exit code.
pub async fn get(ops: &mut Operator, request_id: String, receipt: bool, as_json: bool) -> anyhow::Result<()> {
    let r = ops.exchange.get_request(pb::GetRequestRequest { request_id }).await?.into_inner();
    let req = r.request.clone().unwrap_or_default();
    if as_json {
        super::print::json(&r)?;
    } else {
        super::print::request(&req);
    }
    if !receipt {
        return Ok(());
    }
    let Some(proof) = r.proof else {
        anyhow::bail!("request {} has no receipt yet: it is {}", req.request_id, status_label(req.status));
    };
    let check = check_proof(&req, &proof, &ops.ca_pem);
    let report = |line: String| if as_json { eprintln!("{line}") } else { println!("{line}") };
    report(format!(
        "receipt signed by instance {} for bundle sha256 {} ({} imported key(s)):",
        check.signed_by, check.bundle_sha256, check.imported_keys
    ));
    report(format!("  imported at {}: {}", super::print::time(&proof.imported_at), proof.imported_key_ids.join(", ")));
    for f in &check.findings {
        report(format!("  - {f}"));
    }
    report(format!("receipt {}", if check.verified { "VERIFIED" } else { "NOT VERIFIED" }));
    anyhow::ensure!(check.verified, "the receipt of request {} did not verify", req.request_id);
    Ok(())
}

/// What `exchange get --receipt` found out about a request's proof.
pub struct ProofCheck {
    pub signed_by: String,
    pub bundle_sha256: String,
    pub imported_keys: usize,
    /// Every check passed (signature, identity, chain, content).
    pub verified: bool,
    /// One line per check, for people.
    pub findings: Vec<String>,
}

/// Checks a request's receipt: it decodes and names this request and the
/// bundle digest shown; the signer's certificate names the signing instance
/// and chains to the deployment CA (`ca_pem`); the signature verifies.
pub fn check_proof(r: &pb::ExchangeRequest, p: &pb::RequestProof, ca_pem: &[u8]) -> ProofCheck {
    use crate::domain::bundle::Receipt;
    let mut findings = Vec::new();
    let mut verified = true;
    let mut check = |ok: bool, yes: String, no: String| {
        verified &= ok;
        findings.push(if ok { yes } else { no });
    };
    match Receipt::decode(&p.receipt) {
        Ok(receipt) => {
            let names_this = receipt.request_id.as_str() == r.request_id
                && receipt.bundle_sha256.as_slice() == p.bundle_sha256.as_slice()
                && receipt.target.as_str() == p.signed_by_sys_id;
            check(
                names_this,
                format!("the receipt names request {} and {} imported key(s)", r.request_id, receipt.imported.len()),
                "the receipt does not match this request, its bundle digest or its signer".into(),
            );
        }
        Err(e) => check(false, String::new(), format!("the receipt does not decode: {e}")),
    }
    let cert = &p.signer_certificate;
    if cert.is_empty() {
        check(
            false,
            String::new(),
            "no certificate of the signer is known here; check the receipt on the source".into(),
        );
    } else {
        let named = crate::tls::identity::instance_sys_id(cert).is_some_and(|id| id.as_str() == p.signed_by_sys_id);
        check(
            named,
            format!("the signer's certificate names instance {}", p.signed_by_sys_id),
            format!("the signer's certificate does not name instance {}", p.signed_by_sys_id),
        );
        match crate::signer::primitives::chains_to(cert, ca_pem) {
            Ok(()) => check(true, "the certificate chains to the deployment CA".into(), String::new()),
            Err(e) => check(false, String::new(), format!("the certificate does not chain to the deployment CA: {e}")),
        }
        let signature = crate::signer::primitives::verify_sha256_with_cert(cert, &p.receipt, &p.receipt_signature);
        check(
            signature.is_ok(),
            "the signature over the receipt verifies with that certificate".into(),
            "the signature over the receipt does NOT verify with that certificate".into(),
        );
    }
    ProofCheck {
        signed_by: p.signed_by_sys_id.clone(),
        bundle_sha256: hex::encode(&p.bundle_sha256),
        imported_keys: p.imported_key_ids.len(),
        verified,
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(status: pb::RequestStatus, note: &str) -> pb::ExchangeRequest {
        let history = vec![pb::Transition { status: status as i32, note: note.into(), ..Default::default() }];
        pb::ExchangeRequest { request_id: "ab".into(), status: status as i32, history, ..Default::default() }
    }

    #[test]
    fn only_completed_succeeds_and_messages_name_the_status() {
        let minute = Duration::from_secs(60);
        assert!(outcome(&request(pb::RequestStatus::RequestCompleted, ""), minute).is_ok());
        let still = outcome(&request(pb::RequestStatus::RequestApproved, ""), minute).unwrap_err().to_string();
        assert_eq!(
            still,
            "request ab is still REQUEST_APPROVED after 60s; delivery continues in the background — check with `kmfctl exchange get ab`"
        );
        let short = outcome(&request(pb::RequestStatus::RequestApproved, ""), Duration::from_millis(1500));
        assert!(short.unwrap_err().to_string().contains("after 1.5s;"));
        let failed = outcome(&request(pb::RequestStatus::ErrorOnRemoteInstance, "refused"), minute);
        assert_eq!(failed.unwrap_err().to_string(), "request ab ended ERROR_ON_REMOTE_INSTANCE: refused");
        let rejected = outcome(&request(pb::RequestStatus::RequestRejected, ""), minute);
        assert_eq!(rejected.unwrap_err().to_string(), "request ab ended REQUEST_REJECTED");
    }
}
