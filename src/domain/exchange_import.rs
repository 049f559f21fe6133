//! The target's decisions on a request, their pure half: a retry here, the
//! source's answer to the opening, a rejection or expiry the source
//! reports, and the import of a bundle (whether it is accepted, which
//! entries are imported, skipped or refused, the lines and the receipt it
//! ends with). The service reads, unwraps and wraps keys, calls these, and
//! writes with one conditional write.

use std::collections::HashMap;

use super::DomainError;
use super::bundle::{Bundle, BundleEntry, Receipt};
use super::exchange::{ExchangeRequest, ExchangeRole, RequestEvent, RequestStatus, SpecLine, SpecLineStatus};
use super::exchange_decide::decision_refusal;
use super::ids::{KeyId, Name, SysId, UnixMillis};
use super::spec::{MaterialShape, Spec, SpecChoice};

/// Retries a failed request here (the target) as `actor`: Pending again,
/// to be opened on the source again. Returns the `exchange.retry` details.
pub fn retry_here(req: &mut ExchangeRequest, actor: &str, now: UnixMillis) -> Result<String, DomainError> {
    let found = req.clone();
    req.apply(RequestEvent::Retry { resume_at: RequestStatus::Pending }, actor, now)
        .map_err(|e| decision_refusal(&found, e, "retried"))?;
    Ok(format!("from {}", found.status.label()))
}

/// Whether a retried request needs a new transport key: only when its
/// key's handle is gone (`has_handle`) or its public key was never kept.
/// Otherwise the same key is sent again, so a bundle the source wrapped
/// for it still opens.
pub fn needs_new_transport_key(req: &ExchangeRequest, has_handle: bool) -> bool {
    !has_handle || req.transport_public_key.is_empty()
}

/// Takes in the source's answer to the opening: its closed lines (a
/// pending one keeps ours), its key count, and, when the source completed
/// a request with nothing to exchange, completes it here too.
pub fn take_source_view(
    req: &mut ExchangeRequest,
    view_status: RequestStatus,
    view_lines: &[SpecLine],
    view_total: u32,
    now: UnixMillis,
) -> Result<(), DomainError> {
    for line in &mut req.lines {
        if let Some(s) = view_lines.iter().find(|l| l.spec == line.spec)
            && s.status != SpecLineStatus::Pending
        {
            *line = s.clone();
        }
    }
    req.total_key_count = view_total;
    if view_status == RequestStatus::Completed && req.status == RequestStatus::Pending {
        req.apply(RequestEvent::Approve, "system", now)?;
        req.apply(RequestEvent::Complete, "system", now)?;
    }
    Ok(())
}

/// The opening failed (`error`): a request still pending here becomes
/// ERROR_ON_REMOTE_INSTANCE; returns the `exchange.fail` details to write
/// with it, or None when it had moved on (nothing to write).
pub fn opening_failed(req: &mut ExchangeRequest, error: &str, now: UnixMillis) -> Result<Option<String>, DomainError> {
    if req.status != RequestStatus::Pending {
        return Ok(None);
    }
    req.apply(RequestEvent::FailRemote { reason: error.to_owned() }, "system", now)?;
    Ok(Some(format!("opening on the source failed: {error}")))
}

/// What a status notice from the source does here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeEffect {
    /// The request already has that status: nothing to write.
    Unchanged,
    /// The request is closed; write it with this audit action (details
    /// "reported by the source").
    Closed { action: &'static str },
}

/// The source (`caller`) reports `status` (rejected, with `reason`, or
/// expired) for `req`. Its clock decided the expiry, so ours is not asked:
/// the expiry is recorded at `now` or the request's expiry, whichever is later.
pub fn take_notice(
    req: &mut ExchangeRequest,
    caller: &SysId,
    status: RequestStatus,
    reason: &str,
    now: UnixMillis,
) -> Result<NoticeEffect, DomainError> {
    if req.role != ExchangeRole::Target || &req.source.sys_id != caller {
        return Err(DomainError::PermissionDenied("sender is not the request's source".into()));
    }
    let (event, at, action) = match status {
        RequestStatus::Rejected => (RequestEvent::Reject { reason: reason.to_owned() }, now, "exchange.reject"),
        RequestStatus::Expired => (RequestEvent::Expire, now.max(req.expires_at), "exchange.expire"),
        other => return Err(DomainError::invalid("status", format!("{} cannot be notified", other.label()))),
    };
    if req.status.is_terminal() && req.status == status {
        return Ok(NoticeEffect::Unchanged);
    }
    req.apply(event, &format!("instance:{caller}"), at)?;
    Ok(NoticeEffect::Closed { action })
}

/// Whether a bundle from `caller` may be imported into `req` (this
/// instance `this` is the target): the request is ours as target, the
/// sender is its source, the bundle is addressed to it and unexpired. A
/// request whose import failed here before (ERROR_ON_LOCAL_INSTANCE) is
/// made pending again (the redelivery is the retry); any other request not
/// pending is refused: a bundle is accepted once.
pub fn accept_bundle(
    req: &mut ExchangeRequest,
    bundle: &Bundle,
    this: &SysId,
    caller: &SysId,
    now: UnixMillis,
) -> Result<(), DomainError> {
    if req.role != ExchangeRole::Target {
        return Err(DomainError::FailedPrecondition("request is not a target-side request here".into()));
    }
    if &req.source.sys_id != caller {
        return Err(DomainError::PermissionDenied("bundle sender is not the request's source".into()));
    }
    bundle.check_addressed(this, &req.source.sys_id, &req.id, now)?;
    if req.status == RequestStatus::ErrorOnLocalInstance {
        req.apply(RequestEvent::Retry { resume_at: RequestStatus::Pending }, &format!("instance:{caller}"), now)?;
    }
    if req.status != RequestStatus::Pending {
        return Err(DomainError::FailedPrecondition(format!(
            "request is {}; a bundle is accepted once, for a pending request",
            req.status_summary()
        )));
    }
    Ok(())
}

/// What the keys of spec `ours` (defined here) must be to be imported: its
/// material, when the bundle describes the spec exactly as it is here;
/// else why none of its keys can be.
pub fn import_shape(ours: &Spec, bundle_specs: &[(Name, SpecChoice)]) -> Result<MaterialShape, String> {
    let mine = ours.choice();
    match bundle_specs.iter().find(|(n, _)| *n == ours.name) {
        Some((_, theirs)) if *theirs == mine => Ok(ours.material()),
        Some((_, theirs)) => {
            Err(format!("spec differs: the source's is {}, this instance's is {}", theirs.describe(), mine.describe()))
        }
        None => Err("the source did not describe this spec".to_owned()),
    }
}

/// The material `entry` must have (`shapes`: `import_shape` of each
/// requested spec defined here), or why it cannot be imported.
pub fn entry_shape(
    shapes: &HashMap<Name, Result<MaterialShape, String>>,
    entry: &BundleEntry,
) -> Result<MaterialShape, String> {
    shapes.get(&entry.key_id.spec).ok_or("spec was not requested or is not on this instance")?.clone()
}

/// The bundle's entries split into those whose key is already held here
/// (`present`: compared, never stored twice or replaced) and the new ones,
/// each in the bundle's order.
pub fn split_entries<'a>(
    entries: &'a [BundleEntry],
    present: &[KeyId],
) -> (Vec<&'a BundleEntry>, Vec<&'a BundleEntry>) {
    entries.iter().partition(|e| present.contains(&e.key_id))
}

/// The refusal of a bundle entry whose material differs from the key of
/// the same id held here.
pub fn differs_from_held(key: &KeyId) -> DomainError {
    DomainError::PermissionDenied(format!(
        "bundle entry {key} differs from the key of that id already held here; \
         an import never replaces a key; nothing imported"
    ))
}

/// What a finished import writes: the `exchange.import` details and the
/// receipt to sign (then kept in the request and under the bundle's digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOutcome {
    pub audit: String,
    pub receipt: Receipt,
}

/// What an import found and did, for `finish_import`.
#[derive(Clone, Debug)]
pub struct ImportFacts<'a> {
    /// This instance (the target).
    pub this: &'a SysId,
    /// The sender (the request's source).
    pub caller: &'a SysId,
    /// Keys of the bundle already held here.
    pub present: &'a [KeyId],
    /// Entries not imported: their spec and why, in the bundle's order.
    pub failed: &'a [(String, String)],
    /// The keys stored, in the bundle's order.
    pub imported: Vec<KeyId>,
    /// The bundle's SHA-256.
    pub digest: [u8; 32],
}

/// Ends the import into `req` (accepted by `accept_bundle`): each line takes
/// the source's outcome, then says how many of its keys were already here
/// and why some failed; the counts; approved by the source and completed.
pub fn finish_import(
    req: &mut ExchangeRequest,
    bundle: &Bundle,
    facts: ImportFacts<'_>,
    now: UnixMillis,
) -> Result<ImportOutcome, DomainError> {
    for line in &mut req.lines {
        if let Some(src) = bundle.lines.iter().find(|l| l.spec == line.spec) {
            *line = src.clone();
        }
        let n = facts.present.iter().filter(|k| k.spec == line.spec).count();
        if n > 0 {
            line.reason = format!("{n} key(s) already present, not imported twice");
        }
        let fails: Vec<&String> =
            facts.failed.iter().filter(|(s, _)| s == line.spec.as_str()).map(|(_, r)| r).collect();
        if let Some(first) = fails.first() {
            line.status = SpecLineStatus::Failed;
            line.reason = format!("{} key(s) not imported: {first}", fails.len());
        }
    }
    req.total_key_count = bundle.lines.iter().map(|l| l.key_count).sum();
    req.exported_key_count = bundle.entries.len() as u32;
    req.apply(RequestEvent::Approve, &format!("instance:{}", facts.caller), now)?;
    req.apply(RequestEvent::Complete, "system", now)?;
    req.imported_key_count = facts.imported.len() as u32;
    let ids: Vec<String> = facts.imported.iter().map(ToString::to_string).collect();
    let audit = format!("{} key(s) from {}: {}", ids.len(), req.source.sys_id, ids.join(" "));
    let receipt = Receipt {
        request_id: req.id.clone(),
        source: req.source.sys_id.clone(),
        target: facts.this.clone(),
        imported_at: now,
        bundle_sha256: facts.digest,
        imported: facts.imported,
    };
    Ok(ImportOutcome { audit, receipt })
}

/// The import failed through this instance's fault (its KEK): `req`
/// becomes ERROR_ON_LOCAL_INSTANCE with `reason` (nothing imported; the
/// transport key stays, so the source's redelivery retries). Returns the
/// answer for the source; write the request with `reason` as the
/// `exchange.fail` details.
pub fn fail_import_here(req: &mut ExchangeRequest, reason: &str, now: UnixMillis) -> Result<DomainError, DomainError> {
    req.apply(RequestEvent::FailLocal { reason: reason.to_owned() }, "system", now)?;
    Ok(DomainError::FailedPrecondition(format!("the target could not import the keys: {reason}")))
}

#[cfg(test)]
#[path = "exchange_import_tests.rs"]
mod tests;
