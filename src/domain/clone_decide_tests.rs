use super::*;
use crate::domain::clone_exchange::{ExchangePlan, UsedBy, approving_policy};
use crate::domain::exchange::{ExchangeRole, Frequency};
use crate::domain::fixtures::{name, request, sys, target};
use crate::domain::ids::Host;
use crate::domain::policy::{ApprovalType, PolicyType};

fn configuration(used: bool) -> CloneExchange {
    CloneExchange {
        target: target(),
        approval: ApprovalType::OneTime,
        specs: vec![name("pay")],
        rekey: false,
        policies: vec![],
        created_at: UnixMillis(0),
        created_by: "admin".into(),
        used: used.then(|| UsedBy { request: RequestId::from_random([3; 16]), at: UnixMillis(1) }),
    }
}

fn policies_for(spec: &str, approval: ApprovalType) -> SpecPolicies {
    let policy = approving_policy(&target(), approval, &name("m"), &name(spec), UnixMillis(0)).unwrap();
    SpecPolicies { spec: name(spec), module: name("m"), policies: vec![policy] }
}

#[test]
fn a_registered_target_or_an_unused_configuration_may_clone() {
    assert_eq!(clone_authorisation(true, None), Some(GrantBasis::Registered));
    assert_eq!(clone_authorisation(true, Some(&configuration(true))), Some(GrantBasis::Registered));
    assert_eq!(clone_authorisation(false, Some(&configuration(false))), Some(GrantBasis::Configuration));
    assert_eq!(clone_authorisation(false, Some(&configuration(true))), None, "a used One Time authorises nothing");
    assert_eq!(clone_authorisation(false, None), None);
}

#[test]
fn the_tracking_policies_of_every_spec_approve_a_configured_request() {
    let req = request(ExchangeRole::Source, Frequency::OneTimeClone, RequestStatus::Pending, &["pay", "hr"]);
    let both = [policies_for("pay", ApprovalType::OneTime), policies_for("hr", ApprovalType::OneTime)];
    let names = approving_policies(&req, &both).unwrap();
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], both[0].policies[0].name);
    assert_eq!(approving_policies(&req, &[]), Ok(vec![]), "nothing defined here: nothing to approve by");
    let wrong = [policies_for("pay", ApprovalType::OneTime), policies_for("hr", ApprovalType::Recurring)];
    let why = approving_policies(&req, &wrong).unwrap_err();
    assert!(why.starts_with("spec hr: "), "{why}");
    let mut off = policies_for("pay", ApprovalType::OneTime);
    off.policies[0].kind = PolicyType::ResourceExchange {
        target_sys_id: sys(2),
        target_host: Host::parse("elsewhere:1").unwrap(),
        approval: ApprovalType::OneTime,
    };
    assert!(approving_policies(&req, &[off]).is_err(), "a policy for another host does not approve");
}

#[test]
fn only_clone_frequencies_are_approved_by_policies() {
    for f in [Frequency::Adhoc, Frequency::Automatic] {
        let req = request(ExchangeRole::Source, f, RequestStatus::Pending, &["pay"]);
        let got = approving_policies(&req, &[policies_for("pay", ApprovalType::OneTime)]);
        assert_eq!(got, Err("not a clone frequency".into()), "{f:?}");
    }
    let recurring = request(ExchangeRole::Source, Frequency::RecurringClone, RequestStatus::Pending, &["pay"]);
    assert!(approving_policies(&recurring, &[policies_for("pay", ApprovalType::Recurring)]).is_ok());
}

#[test]
fn one_spec_is_approved_by_its_tracking_policy_or_refused() {
    let req = request(ExchangeRole::Source, Frequency::OneTimeClone, RequestStatus::Pending, &["pay"]);
    let s = policies_for("pay", ApprovalType::OneTime);
    assert_eq!(spec_approval(&req, ApprovalType::OneTime, &s), Ok(Some(s.policies[0].name.clone())));
    let refused = spec_approval(&req, ApprovalType::Recurring, &s).unwrap_err();
    assert!(refused.starts_with("spec pay: "), "{refused}");
    let none = SpecPolicies { spec: name("pay"), module: name("m"), policies: vec![] };
    assert!(spec_approval(&req, ApprovalType::OneTime, &none).is_err(), "no policy: the module default refuses");
}

#[test]
fn a_clone_job_copies_while_running_and_gives_up_on_a_refusal_only() {
    assert!(clone_copies(CloneState::Running));
    for s in [CloneState::Completed, CloneState::Failed] {
        assert!(!clone_copies(s), "{s:?}");
    }
    assert_eq!(
        clone_failure(Some("not authorised")),
        CloneFailure::GiveUp { error: "the source refused: not authorised".into() }
    );
    assert_eq!(clone_failure(None), CloneFailure::Retry);
}

#[test]
fn a_snapshot_must_come_from_the_source_cloned() {
    assert_eq!(snapshot_source_refusal(&sys(1), &sys(1)), None);
    assert_eq!(
        snapshot_source_refusal(&sys(3), &sys(1)),
        Some(format!("the snapshot comes from {}, not {}", sys(3), sys(1)))
    );
}

#[test]
fn the_completion_says_what_the_clone_leads_to() {
    let catalog = SnapshotCatalog::default();
    let none = clone_complete_details(&sys(1), &catalog, None);
    assert!(none.starts_with(&format!("from {}: a snapshot of 0 modules, 0 specs, 0 policies, 0 properties", sys(1))));
    assert!(none.ends_with("configured exchange none; automatic exchange off"), "{none}");
    let plan = ExchangePlan { approval: ApprovalType::Recurring, specs: vec![name("a"), name("b")], rekey: false };
    let f = FollowUp { automatic: true, plan: Some(plan), specs: None, grant: None };
    let both = clone_complete_details(&sys(1), &catalog, Some(&f));
    assert!(both.ends_with("configured exchange RECURRING_CLONE of 2 specs; automatic exchange requested"), "{both}");
}

#[test]
fn an_old_run_without_a_follow_up_asks_for_the_automatic_exchange() {
    let mut run = CloneRun::started(CloneId::from_random([1; 16]), sys(1), Host::parse("s:1").unwrap(), UnixMillis(0));
    assert_eq!(follow_up_of(&run), FollowUp { automatic: true, plan: None, specs: None, grant: None });
    let kept = FollowUp { automatic: false, plan: None, specs: Some(vec![]), grant: Some("g".into()) };
    run.follow_up = Some(kept.clone());
    assert_eq!(follow_up_of(&run), kept);
}

#[test]
fn ids_after_a_clone_are_derived_and_stable() {
    let clone = CloneId::from_random([0x11; 16]);
    assert_eq!(configured_request_id(&clone).as_str(), "b3810b94c1dd20d7c5a97afcc0063114");
    assert_eq!(automatic_request_id(&clone).unwrap().as_str(), clone.as_str());
    let due = UnixMillis(1_796_428_800_000);
    assert_eq!(scheduled_clone_id(&name("nightly"), due).as_str(), "6477977a6c03bb1156f95fbc3c65966c");
    assert_ne!(scheduled_clone_id(&name("nightly"), due.plus_millis(1)), scheduled_clone_id(&name("nightly"), due));
}

#[test]
fn a_request_after_a_clone_is_made_once_reopened_or_retried() {
    use RequestStatus::*;
    assert_eq!(after_clone(None), AfterClone::Create);
    assert_eq!(after_clone(Some(Pending)), AfterClone::OpenAgain);
    assert_eq!(after_clone(Some(ErrorOnLocalInstance)), AfterClone::Retry);
    assert_eq!(after_clone(Some(ErrorOnRemoteInstance)), AfterClone::Retry);
    for s in [Approved, Completed, Rejected, Expired] {
        assert_eq!(after_clone(Some(s)), AfterClone::Leave, "{s:?}");
    }
}

#[test]
fn a_due_run_starts_once_and_skips_behind_a_running_clone() {
    assert_eq!(due_run(true, Some("c1".into())), DueRun::AlreadyStarted, "its own clone counts, running or not");
    assert_eq!(due_run(false, Some("c1".into())), DueRun::Skip("c1".into()));
    assert_eq!(due_run(false, None), DueRun::Start);
}
