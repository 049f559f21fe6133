//! The runner's and the sweeps' decisions, their pure half: what ends a
//! job's run (retried after its backoff on failure), when a sweep runs
//! next, which requests the expiry sweep takes, what the lifecycle sweep
//! writes with the keys it destroys, and the checks of a spec's lifecycle
//! and of a lifecycle policy.

use super::DomainError;
use super::audit::{AuditEvent, Outcome};
use super::exchange::ExchangeRequest;
use super::exchange_decide::is_overdue;
use super::ids::{Name, RequestId, UnixMillis};
use super::job::Job;
use super::key::KeyRecord;
use super::lifecycle::{LifecycleDefinition, LifecyclePolicy, PolicyScope, effective_cap};
use super::schedule::next_periodic;

/// What the runner does after a job's run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The run wrote its own end (finished, rescheduled, postponed).
    Settled,
    /// The run failed: record `error` and retry the job after the backoff
    /// of its next attempt (`attempt`, as logged).
    Retry { error: String, attempt: u32 },
}

/// The end of `job`'s run, given its outcome (an error as its text): every
/// failure is retried, whatever its kind.
pub fn run_end(job: &Job, outcome: Result<(), String>) -> RunEnd {
    match outcome {
        Ok(()) => RunEnd::Settled,
        Err(error) => RunEnd::Retry { error, attempt: job.attempts + 1 },
    }
}

/// When a sweep that just ran (`job`, due at its `next_due`) runs again:
/// every `every_millis` in rhythm, never in the past.
pub fn sweep_next_due(job: &Job, every_millis: i64, now: UnixMillis) -> UnixMillis {
    next_periodic(job.next_due, every_millis, now)
}

/// The requests of a page the expiry sweep expires: those overdue at
/// `now`. Each is read again and expired conditionally; one that changed
/// meanwhile, or can no longer expire, is left to the next sweep.
pub fn overdue_in(page: &[ExchangeRequest], now: UnixMillis) -> Vec<&RequestId> {
    page.iter().filter(|r| is_overdue(r, now)).map(|r| &r.id).collect()
}

/// The `key.destroy` entries written with the keys the lifecycle sweep
/// destroys (`due`, from `due_for_destruction`), dated `at`.
pub fn destruction_audit(due: &[KeyRecord], at: UnixMillis) -> Vec<AuditEvent> {
    due.iter()
        .map(|k| {
            AuditEvent::new(at, "system", "key.destroy", k.id.to_string(), Outcome::Success)
                .with_details("idle past destroy_after_idle; material erased")
        })
        .collect()
}

/// Checks a spec's new lifecycle (of a spec of `module`) against the cap
/// of the lifecycle policies in force.
pub fn check_lifecycle(
    lifecycle: &LifecycleDefinition,
    policies: &[LifecyclePolicy],
    module: &Name,
) -> Result<(), DomainError> {
    lifecycle.check_cap(effective_cap(policies, module))
}

/// Checks a lifecycle policy's own fields (whether its module exists is
/// read and checked before).
pub fn lifecycle_policy_refusal(policy: &LifecyclePolicy) -> Result<(), DomainError> {
    if policy.max_expire_after.is_some_and(|v| v <= 0) {
        return Err(DomainError::invalid("max_expire_after", "must be positive"));
    }
    Ok(())
}

/// The audit subject of a lifecycle policy: "instance" or "module:<name>".
pub fn lifecycle_policy_subject(scope: &PolicyScope) -> String {
    match scope {
        PolicyScope::Instance => "instance".to_owned(),
        PolicyScope::Module(m) => format!("module:{m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::exchange::{ExchangeRole, Frequency, RequestStatus};
    use super::super::fixtures::{name, request, sys};
    use super::super::job::{JobId, JobKind};
    use super::super::key::plan_generate;
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn every_failed_run_is_retried_with_its_next_attempt() {
        let mut job = Job::new(JobId::new(JobKind::Deliver, "r"), UnixMillis(0), UnixMillis(0));
        assert_eq!(run_end(&job, Ok(())), RunEnd::Settled);
        job.attempts = 2;
        assert_eq!(run_end(&job, Err("peer down".into())), RunEnd::Retry { error: "peer down".into(), attempt: 3 });
    }

    #[test]
    fn a_sweep_keeps_its_rhythm() {
        let job = Job::new(JobId::singleton(JobKind::ExpirySweep), UnixMillis(1_000), UnixMillis(0));
        assert_eq!(sweep_next_due(&job, 500, UnixMillis(1_200)), UnixMillis(1_500));
        assert_eq!(sweep_next_due(&job, 500, UnixMillis(9_000)), UnixMillis(9_500), "after a stop: once, from now");
    }

    #[test]
    fn the_expiry_sweep_takes_open_overdue_requests_only() {
        let mut page = Vec::new();
        for (i, status) in
            [RequestStatus::Pending, RequestStatus::Approved, RequestStatus::Completed].into_iter().enumerate()
        {
            let mut r = request(ExchangeRole::Source, Frequency::Adhoc, status, &["pay"]);
            r.id = RequestId::from_random([i as u8; 16]);
            page.push(r);
        }
        page[1].expires_at = UnixMillis(2_000);
        let ids = |now| overdue_in(&page, UnixMillis(now)).into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(ids(999), Vec::<RequestId>::new());
        assert_eq!(ids(1_000), vec![page[0].id.clone()]);
        assert_eq!(ids(2_000), vec![page[0].id.clone(), page[1].id.clone()], "never the completed one");
    }

    #[test]
    fn destroyed_keys_are_audited_one_entry_each() {
        let change = plan_generate(&sys(1), &name("pay"), &[], &LifecycleDefinition::default(), UnixMillis(3));
        let key = change.new_key.unwrap();
        let audit = destruction_audit(&[key.clone(), key.clone()], UnixMillis(9));
        assert_eq!(audit.len(), 2);
        let a = &audit[0];
        assert_eq!((a.at, a.actor.as_str(), a.action.as_str()), (UnixMillis(9), "system", "key.destroy"));
        assert_eq!(
            (a.subject.clone(), a.details.as_str()),
            (key.id.to_string(), "idle past destroy_after_idle; material erased")
        );
        assert!(destruction_audit(&[], UnixMillis(9)).is_empty());
    }

    #[test]
    fn a_lifecycle_stays_within_the_cap_in_force() {
        let m = name("m");
        let instance =
            LifecyclePolicy { scope: PolicyScope::Instance, active: true, max_expire_after: Some(365 * DAY) };
        let exception =
            LifecyclePolicy { scope: PolicyScope::Module(m.clone()), active: true, max_expire_after: Some(730 * DAY) };
        let lc = LifecycleDefinition { expire_after: Some(400 * DAY), destroy_after_idle: None };
        assert!(matches!(
            check_lifecycle(&lc, std::slice::from_ref(&instance), &m),
            Err(DomainError::FailedPrecondition(_))
        ));
        assert_eq!(check_lifecycle(&lc, &[instance, exception], &m), Ok(()), "the module's exception allows it");
        assert_eq!(check_lifecycle(&lc, &[], &m), Ok(()));
    }

    #[test]
    fn a_lifecycle_policy_needs_a_positive_cap_and_names_its_scope() {
        let mut p = LifecyclePolicy { scope: PolicyScope::Instance, active: true, max_expire_after: None };
        assert_eq!(lifecycle_policy_refusal(&p), Ok(()));
        p.max_expire_after = Some(0);
        assert_eq!(lifecycle_policy_refusal(&p), Err(DomainError::invalid("max_expire_after", "must be positive")));
        p.max_expire_after = Some(1);
        assert_eq!(lifecycle_policy_refusal(&p), Ok(()));
        assert_eq!(lifecycle_policy_subject(&PolicyScope::Instance), "instance");
        assert_eq!(lifecycle_policy_subject(&PolicyScope::Module(name("pay"))), "module:pay");
    }
}
