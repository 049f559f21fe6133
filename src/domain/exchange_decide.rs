//! The source's decisions on a request, their pure half: whether a request
//! a target opens is acceptable and what it starts as, what an operator's
//! approve / reject / retry does, when a request is overdue and what its
//! expiry asks for, and who approves a request after a clone without a
//! person. The service reads the request (and the facts named here), calls
//! one of these, and writes the result with one conditional write.

use super::DomainError;
use super::exchange::{
    ExchangeRequest, ExchangeRole, Frequency, MAX_EXPIRY_MILLIS, RequestEvent, RequestStatus, SpecLine, SpecLineStatus,
};
use super::ids::{Name, SysId, UnixMillis};

/// An operator's decision on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject {
        reason: String,
    },
    /// Retry a request that ended in ERROR_ON_*: deliver its bundle again,
    /// or, without one, make it pending again.
    Retry,
}

/// Why a target's `OpenRequest` is refused before anything is read:
/// the target it claims is not the certificate's (`caller`), it is
/// addressed to another source than `this`, or its expiry is not in the
/// future and at most 90 days away.
pub fn opening_refusal(
    caller: &SysId,
    claimed_target: &SysId,
    claimed_source: &SysId,
    this: &SysId,
    expires_at: UnixMillis,
    now: UnixMillis,
) -> Result<(), DomainError> {
    if claimed_target != caller {
        return Err(DomainError::PermissionDenied(format!(
            "request claims target {claimed_target} but the certificate names {caller}"
        )));
    }
    if claimed_source != this {
        return Err(DomainError::PermissionDenied(format!(
            "request is addressed to {claimed_source}, this instance is {this}"
        )));
    }
    if expires_at <= now || expires_at > now.plus_millis(MAX_EXPIRY_MILLIS) {
        return Err(DomainError::invalid("expires_at", "must be in the future and at most 90 days away"));
    }
    Ok(())
}

/// The source's lines for the specs a target asks for, in its order, with
/// how many keys each has here (None: no such spec here), and the total.
pub fn opening_lines(specs: Vec<(Name, Option<u64>)>) -> (Vec<SpecLine>, u32) {
    let mut total = 0u32;
    let lines = specs
        .into_iter()
        .map(|(spec, keys)| match keys {
            None => SpecLine {
                spec,
                status: SpecLineStatus::NotOnSource,
                key_count: 0,
                reason: "spec not found on source".into(),
            },
            Some(n) => {
                total += n as u32;
                SpecLine::pending(spec)
            }
        })
        .collect();
    (lines, total)
}

/// A new request with nothing to approve (every spec is missing here) is
/// completed at once, by "system". Returns whether it was.
pub fn close_if_nothing_pending(req: &mut ExchangeRequest, now: UnixMillis) -> Result<bool, DomainError> {
    if req.pending_specs().next().is_some() {
        return Ok(false);
    }
    req.apply(RequestEvent::Approve, "system", now)?;
    req.apply(RequestEvent::Complete, "system", now)?;
    Ok(true)
}

/// Whether `opened`, refused because its id is taken by `existing`, is the
/// same request opened again (the target retried after losing the answer):
/// same target and same transport key. Else the id is someone else's.
pub fn is_repeat_opening(existing: &ExchangeRequest, opened: &ExchangeRequest) -> bool {
    existing.target == opened.target && existing.transport_public_key == opened.transport_public_key
}

/// What a repeat opening does to the request already here (`existing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RepeatOpening {
    /// The target refused the delivery (ERROR_ON_REMOTE_INSTANCE here), say
    /// because its own record was in error when the bundle came, and it has
    /// retried since: its opening again is the retry of the delivery, as
    /// a `Retry` by the target (the bundle, wrapped for the same transport
    /// key, is sent again; nothing new is approved).
    RetryDelivery,
    /// Otherwise the request is answered as it stands (a grant may approve
    /// it if it is still pending).
    AsItStands,
}

/// What the target's opening again of `existing` (a repeat opening, see
/// `is_repeat_opening`) does.
pub fn repeat_opening(existing: &ExchangeRequest) -> RepeatOpening {
    if existing.status == RequestStatus::ErrorOnRemoteInstance {
        RepeatOpening::RetryDelivery
    } else {
        RepeatOpening::AsItStands
    }
}

/// Pending or Approved at or after its expiry: the sweep (or a decision)
/// expires it.
pub fn is_overdue(req: &ExchangeRequest, now: UnixMillis) -> bool {
    !req.status.is_terminal() && now >= req.expires_at
}

/// What an expiry writes besides the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpiryEffects {
    /// Clear the stored bundle.
    pub clear_bundle: bool,
    /// Schedule the Notify job now (the source tells the target).
    pub notify_target: bool,
}

/// Expires `req` (by "system"); on the source the bundle goes and the
/// target is told, on the target nothing else changes.
pub fn expire(req: &mut ExchangeRequest, now: UnixMillis) -> Result<ExpiryEffects, DomainError> {
    req.apply(RequestEvent::Expire, "system", now)?;
    let source = req.role == ExchangeRole::Source;
    Ok(ExpiryEffects { clear_bundle: source, notify_target: source })
}

/// Whether a decision may go ahead on the request as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecideGate {
    /// Apply the decision (`apply_decision`).
    Decide,
    /// The request is overdue: expire it (`expire`), then refuse with
    /// `expired_refusal`.
    ExpireFirst,
}

/// Checks a request before a decision: only the source decides, and an
/// overdue request is expired instead of decided.
pub fn decide_gate(req: &ExchangeRequest, now: UnixMillis) -> Result<DecideGate, DomainError> {
    if req.role != ExchangeRole::Source {
        return Err(DomainError::FailedPrecondition(
            "this instance is the request's target; decide on it on the source".into(),
        ));
    }
    Ok(if is_overdue(req, now) { DecideGate::ExpireFirst } else { DecideGate::Decide })
}

/// The answer to a decision on a request that `decide_gate` found overdue.
pub fn expired_refusal() -> DomainError {
    DomainError::FailedPrecondition("the request has expired and can no longer be approved".into())
}

/// A refused transition said with the request as it was found: "request X
/// is REQUEST_REJECTED (rejected by bob at 5); it cannot be approved".
/// Other errors pass through.
pub fn decision_refusal(found: &ExchangeRequest, e: DomainError, verb: &str) -> DomainError {
    match e {
        DomainError::FailedPrecondition(_) => DomainError::FailedPrecondition(format!(
            "request {} is {}; it cannot be {verb}",
            found.id,
            found.status_summary()
        )),
        other => other,
    }
}

/// What a decision writes besides the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecisionEffects {
    /// Write with `exchange.reject` (`audit`: its details) and the Notify job now.
    Rejected { audit: String },
    /// Build and sign the bundle into the request, then write it with the
    /// Deliver job now, `exchange.approve` and `exchange.export`.
    Approved,
    /// Write with `exchange.retry` (`audit`: its details); `deliver`: the
    /// bundle is still stored, so the Deliver job is scheduled now.
    Retried { deliver: bool, audit: String },
}

/// Applies an operator's (or the system's) decision to `req` as `actor`.
/// `has_bundle`: whether the request's signed bundle is stored (read for
/// `Retry` only; ignored otherwise). A refused transition is said with
/// `decision_refusal`.
pub fn apply_decision(
    req: &mut ExchangeRequest,
    decision: &Decision,
    has_bundle: bool,
    actor: &str,
    now: UnixMillis,
) -> Result<DecisionEffects, DomainError> {
    let found = req.clone();
    match decision {
        Decision::Reject { reason } => {
            req.apply(RequestEvent::Reject { reason: reason.clone() }, actor, now)
                .map_err(|e| decision_refusal(&found, e, "rejected"))?;
            Ok(DecisionEffects::Rejected { audit: format!("reason: {reason}") })
        }
        Decision::Approve => {
            req.apply(RequestEvent::Approve, actor, now).map_err(|e| decision_refusal(&found, e, "approved"))?;
            Ok(DecisionEffects::Approved)
        }
        Decision::Retry => {
            let resume_at = if has_bundle { RequestStatus::Approved } else { RequestStatus::Pending };
            req.apply(RequestEvent::Retry { resume_at }, actor, now)
                .map_err(|e| decision_refusal(&found, e, "retried"))?;
            if !has_bundle {
                reopen_exported_lines(req);
            }
            Ok(DecisionEffects::Retried { deliver: has_bundle, audit: format!("from {}", found.status.label()) })
        }
    }
}

/// Without a bundle a retried request waits for a decision again, and its
/// next approval exports again: the lines an earlier export closed
/// (EXCHANGED, FAILED) are pending again, with no count and no reason.
fn reopen_exported_lines(req: &mut ExchangeRequest) {
    for line in &mut req.lines {
        if matches!(line.status, SpecLineStatus::Exchanged | SpecLineStatus::Failed) {
            line.status = SpecLineStatus::Pending;
            line.key_count = 0;
            line.reason.clear();
        }
    }
}

/// The refusal when a request changed under every attempt of a decision.
pub fn keeps_changing(req: &ExchangeRequest) -> DomainError {
    DomainError::FailedPrecondition(format!("request {} keeps changing; it is {}", req.id, req.status_summary()))
}

/// Whether a request could be approved without a person at all: after a
/// clone (not Adhoc) and still pending. Only then are the grant and the
/// policies read.
pub fn wants_system_approval(req: &ExchangeRequest) -> bool {
    req.frequency != Frequency::Adhoc && req.status == RequestStatus::Pending
}

/// The next step in finding who approves a request after a clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApproverStep {
    /// Nobody but a person: the request stays pending (`why` is logged).
    LeaveForPerson(String),
    /// Approve now as this actor, checking the grant again in the approving write.
    ApproveAs(String),
    /// Evaluate the Resource Exchange policies of its pending specs
    /// (`clone_decide::approving_policies`), then `approver_by_policies`.
    CheckPolicies,
}

/// After the grant check (`refusal`, from the store's
/// `system_approval_refusal`): an AUTOMATIC request is approved by its
/// clone grant; a One Time / Recurring Clone one needs its policies.
pub fn approver_after_grant(req: &ExchangeRequest, refusal: Result<(), String>) -> ApproverStep {
    if let Err(why) = refusal {
        return ApproverStep::LeaveForPerson(why);
    }
    if req.frequency == Frequency::Automatic {
        let grant = req.clone_grant.as_deref().unwrap_or_default();
        return ApproverStep::ApproveAs(format!("system (clone grant {grant})"));
    }
    ApproverStep::CheckPolicies
}

/// After the policies (`approving`: the policies that approve every
/// pending spec, or why one does not): the actor that approves, or why
/// the request waits for a person.
pub fn approver_by_policies(approving: Result<Vec<Name>, String>) -> Result<String, String> {
    let policies = approving?;
    let names: Vec<&str> = policies.iter().map(|n| n.as_str()).collect();
    Ok(format!("system (policy {})", names.join(", ")))
}

#[cfg(test)]
#[path = "exchange_decide_tests.rs"]
mod tests;
