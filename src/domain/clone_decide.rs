//! Clone decisions, their pure half: on the source, whether a target may
//! clone and which policies approve its requests afterwards; on the
//! target, what a clone job does next, gives up or retries, what a clone
//! leads to (the requests after it, by id) and what a schedule's due run
//! does. The services read, call these, and write conditionally.

use sha2::{Digest, Sha256};

use super::DomainError;
use super::clone::{CloneRun, CloneState, FollowUp, GrantBasis, SnapshotCatalog};
use super::clone_exchange::{CloneExchange, approval_for};
use super::exchange::{ExchangeRequest, RequestStatus};
use super::ids::{CloneId, Name, RequestId, SysId, UnixMillis};
use super::policy::{AccessPolicy, ApprovalType, ExchangeAccess, PolicyResult, evaluate_exchange};

/// Whether `target` may clone this instance, and as what: a registered
/// clone target (`registered`), or the target of a One Time / Recurring
/// Clone configuration that is not used up.
pub fn clone_authorisation(registered: bool, configuration: Option<&CloneExchange>) -> Option<GrantBasis> {
    if registered {
        return Some(GrantBasis::Registered);
    }
    configuration.is_some_and(|c| c.used.is_none()).then_some(GrantBasis::Configuration)
}

/// A pending spec of a request that is defined here, with its module's policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecPolicies {
    pub spec: Name,
    pub module: Name,
    /// The access policies of `module`.
    pub policies: Vec<AccessPolicy>,
}

/// The Resource Exchange policies that approve every pending spec of a One
/// Time / Recurring Clone request (`specs`: its pending specs defined here,
/// in order; the others are skipped), or why one spec is not approved (the
/// request then waits for a person).
pub fn approving_policies(req: &ExchangeRequest, specs: &[SpecPolicies]) -> Result<Vec<Name>, String> {
    let Some(approval) = approval_for(req.frequency) else { return Err("not a clone frequency".into()) };
    let mut names = Vec::new();
    for s in specs {
        names.extend(spec_approval(req, approval, s)?);
    }
    Ok(names)
}

/// One pending spec's part of `approving_policies` (for a service that
/// reads spec by spec and stops at the first refusal): the tracking policy
/// that approves it (None: allowed without one), or why it is not approved.
pub fn spec_approval(req: &ExchangeRequest, approval: ApprovalType, s: &SpecPolicies) -> Result<Option<Name>, String> {
    let access = ExchangeAccess {
        module: s.module.clone(),
        spec: s.spec.clone(),
        target_sys_id: req.target.sys_id.clone(),
        target_host: req.target.host.clone(),
        approval,
    };
    let decision = evaluate_exchange(&s.policies, &access);
    if !decision.allowed {
        return Err(format!("spec {}: {}", s.spec, decision.reason));
    }
    let by = decision.evaluated.iter().find(|e| e.matched && e.result == PolicyResult::Track);
    Ok(by.map(|e| e.policy.clone()))
}

/// Whether a claimed clone job copies the snapshot (the run is still
/// Running); else it only clears what is staged and ends.
pub fn clone_copies(state: CloneState) -> bool {
    state == CloneState::Running
}

/// What a failed copy does to the clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloneFailure {
    /// Fail the clone for good with this error.
    GiveUp { error: String },
    /// Note the error on the run and fail the job: it is retried.
    Retry,
}

/// After a failed copy: the source refusing the clone (`source_refusal`,
/// its text) fails it for good; anything else is tried again.
pub fn clone_failure(source_refusal: Option<&str>) -> CloneFailure {
    match source_refusal {
        Some(reason) => CloneFailure::GiveUp { error: format!("the source refused: {reason}") },
        None => CloneFailure::Retry,
    }
}

/// Why a snapshot whose header names `from` is refused by a clone of
/// `expected` (None: it is the right source).
pub fn snapshot_source_refusal(from: &SysId, expected: &SysId) -> Option<String> {
    (from != expected).then(|| format!("the snapshot comes from {from}, not {expected}"))
}

/// The reason of a snapshot stream that ended before its end part (an
/// unreachable source: the clone is retried).
pub const SNAPSHOT_CUT_SHORT: &str = "the snapshot stream ended before its end part";

/// The details of `clone.complete`: what the swap merged in and what it leads to.
pub fn clone_complete_details(source: &SysId, catalog: &SnapshotCatalog, follow_up: Option<&FollowUp>) -> String {
    let planned = match follow_up.and_then(|f| f.plan.as_ref()) {
        Some(p) => format!("{} of {} specs", p.frequency().label(), p.specs.len()),
        None => "none".into(),
    };
    let automatic = follow_up.is_some_and(|f| f.automatic);
    format!(
        "from {source}: a snapshot of {} modules, {} specs, {} policies, {} properties merged in (clone.merge says how), records swapped in; configured exchange {planned}; automatic exchange {}",
        catalog.modules.len(),
        catalog.specs.len(),
        catalog.policies.len(),
        catalog.properties.len(),
        if automatic { "requested" } else { "off" }
    )
}

/// What the clone's AutoExchange job requests: the run's follow-up, or for
/// a run recorded before configured exchanges existed (which had this job
/// only for the automatic exchange), the automatic exchange of every spec.
pub fn follow_up_of(run: &CloneRun) -> FollowUp {
    run.follow_up.clone().unwrap_or(FollowUp { automatic: true, plan: None, specs: None, grant: None })
}

/// The id of the configured (One Time / Recurring) request after clone `id`.
pub fn configured_request_id(id: &CloneId) -> RequestId {
    RequestId::from_random(first_16(&format!("kmf configured exchange after clone {id}")))
}

/// The id of the AUTOMATIC request after clone `id`: the clone's own.
pub fn automatic_request_id(id: &CloneId) -> Result<RequestId, DomainError> {
    RequestId::parse(id.as_str())
}

/// The clone a schedule starts for its run due at `due`: the same id each
/// time that run is made.
pub fn scheduled_clone_id(schedule: &Name, due: UnixMillis) -> CloneId {
    CloneId::from_random(first_16(&format!("kmf scheduled clone {schedule} {}", due.0)))
}

fn first_16(text: &str) -> [u8; 16] {
    let digest = Sha256::digest(text.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// What a request after a clone needs, given the request of its id here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterClone {
    /// None yet: record it and open it on the source.
    Create,
    /// Pending: open it again with its transport key (the source answers a
    /// repeat with what it has).
    OpenAgain,
    /// Failed (ERROR_ON_*): retry it here as "system".
    Retry,
    /// Anything else: nothing to do.
    Leave,
}

/// The step for the request after a clone whose status here is `existing`.
pub fn after_clone(existing: Option<RequestStatus>) -> AfterClone {
    match existing {
        None => AfterClone::Create,
        Some(RequestStatus::Pending) => AfterClone::OpenAgain,
        Some(RequestStatus::ErrorOnLocalInstance | RequestStatus::ErrorOnRemoteInstance) => AfterClone::Retry,
        Some(_) => AfterClone::Leave,
    }
}

/// What a schedule's due run does, inside its transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DueRun {
    /// An earlier run of this same due time started its clone: count it as started.
    AlreadyStarted,
    /// Another clone (this one) is running: skip the run.
    Skip(String),
    /// Record the clone and its job.
    Start,
}

/// The due run's step: `clone_exists`: the clone of `scheduled_clone_id`
/// is recorded; `running`: a clone still running, if any.
pub fn due_run(clone_exists: bool, running: Option<String>) -> DueRun {
    if clone_exists {
        return DueRun::AlreadyStarted;
    }
    match running {
        Some(r) => DueRun::Skip(r),
        None => DueRun::Start,
    }
}

#[cfg(test)]
#[path = "clone_decide_tests.rs"]
mod tests;
