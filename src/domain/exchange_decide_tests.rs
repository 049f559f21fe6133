use super::*;
use crate::domain::exchange::Transition;
use crate::domain::fixtures::{last, name, request, sys};
use RequestStatus::*;

fn pending(frequency: Frequency) -> ExchangeRequest {
    request(ExchangeRole::Source, frequency, Pending, &["pay"])
}

#[test]
fn an_opening_must_come_from_its_target_to_this_source_with_a_sane_expiry() {
    let (caller, this, now) = (sys(2), sys(1), UnixMillis(1_000));
    let ok = opening_refusal(&caller, &caller, &this, &this, now.plus_millis(1), now);
    assert_eq!(ok, Ok(()));
    let forged = opening_refusal(&caller, &sys(3), &this, &this, now.plus_millis(1), now);
    let says = format!("request claims target {} but the certificate names {caller}", sys(3));
    assert_eq!(forged, Err(DomainError::PermissionDenied(says)));
    let elsewhere = opening_refusal(&caller, &caller, &sys(4), &this, now.plus_millis(1), now);
    let says = format!("request is addressed to {}, this instance is {this}", sys(4));
    assert_eq!(elsewhere, Err(DomainError::PermissionDenied(says)));
    let bad = Err(DomainError::invalid("expires_at", "must be in the future and at most 90 days away"));
    assert_eq!(opening_refusal(&caller, &caller, &this, &this, now, now), bad, "expiring now");
    let far = now.plus_millis(MAX_EXPIRY_MILLIS + 1);
    assert_eq!(opening_refusal(&caller, &caller, &this, &this, far, now), bad, "past 90 days");
    let edge = now.plus_millis(MAX_EXPIRY_MILLIS);
    assert_eq!(opening_refusal(&caller, &caller, &this, &this, edge, now), Ok(()), "90 days exactly");
}

#[test]
fn opening_lines_keep_the_order_and_count_the_keys_here() {
    let (lines, total) = opening_lines(vec![(name("a"), Some(3)), (name("gone"), None), (name("b"), Some(0))]);
    assert_eq!(total, 3);
    assert_eq!(lines.iter().map(|l| l.spec.as_str()).collect::<Vec<_>>(), ["a", "gone", "b"]);
    assert_eq!(lines[0], SpecLine::pending(name("a")));
    assert_eq!((lines[1].status, lines[1].reason.as_str()), (SpecLineStatus::NotOnSource, "spec not found on source"));
    assert_eq!(lines[2].status, SpecLineStatus::Pending, "a spec without keys still waits for approval");
}

#[test]
fn a_request_with_nothing_here_completes_at_once() {
    let mut req = pending(Frequency::Adhoc);
    assert_eq!(close_if_nothing_pending(&mut req, UnixMillis(5)), Ok(false));
    assert_eq!(req.status, Pending);
    req.lines = opening_lines(vec![(name("gone"), None)]).0;
    assert_eq!(close_if_nothing_pending(&mut req, UnixMillis(5)), Ok(true));
    assert_eq!(last(&req), (Completed, "system".into(), String::new()));
    assert_eq!(req.history.iter().filter(|t| t.status == Approved).count(), 1, "approved on the way");
}

#[test]
fn a_repeated_opening_is_the_same_target_and_transport_key() {
    let existing = pending(Frequency::Automatic);
    let mut again = existing.clone();
    again.status = Completed;
    assert!(is_repeat_opening(&existing, &again), "what the source did meanwhile does not matter");
    again.transport_public_key = vec![0];
    assert!(!is_repeat_opening(&existing, &again), "another key: another request under a taken id");
    let mut other = existing.clone();
    other.target.sys_id = sys(7);
    assert!(!is_repeat_opening(&existing, &other));
    other = existing.clone();
    other.target.host = crate::domain::ids::Host::parse("elsewhere:1").unwrap();
    assert!(!is_repeat_opening(&existing, &other), "the host is part of the target");
}

#[test]
fn a_repeat_opening_retries_only_a_delivery_the_target_refused() {
    let mut existing = pending(Frequency::Automatic);
    for (status, does) in [
        (ErrorOnRemoteInstance, RepeatOpening::RetryDelivery),
        (Pending, RepeatOpening::AsItStands),
        (Approved, RepeatOpening::AsItStands),
        (Completed, RepeatOpening::AsItStands),
        (Rejected, RepeatOpening::AsItStands),
        (Expired, RepeatOpening::AsItStands),
        (ErrorOnLocalInstance, RepeatOpening::AsItStands),
    ] {
        existing.status = status;
        assert_eq!(repeat_opening(&existing), does, "{}", status.label());
    }
}

#[test]
fn overdue_means_open_and_at_or_past_expiry() {
    for s in [Pending, Approved] {
        let mut req = pending(Frequency::Adhoc);
        req.status = s;
        assert!(!is_overdue(&req, UnixMillis(999)));
        assert!(is_overdue(&req, UnixMillis(1000)), "{s:?}");
    }
    for s in [Completed, Rejected, Expired, ErrorOnLocalInstance, ErrorOnRemoteInstance] {
        let mut req = pending(Frequency::Adhoc);
        req.status = s;
        assert!(!is_overdue(&req, UnixMillis(5000)), "{s:?}");
    }
}

#[test]
fn expiry_on_the_source_clears_the_bundle_and_tells_the_target() {
    let mut req = pending(Frequency::Adhoc);
    let effects = expire(&mut req, UnixMillis(1000)).unwrap();
    assert_eq!(effects, ExpiryEffects { clear_bundle: true, notify_target: true });
    assert_eq!(last(&req), (Expired, "system".into(), String::new()));
    let mut t = request(ExchangeRole::Target, Frequency::Adhoc, Approved, &["pay"]);
    assert_eq!(expire(&mut t, UnixMillis(1000)), Ok(ExpiryEffects { clear_bundle: false, notify_target: false }));
    let mut early = pending(Frequency::Adhoc);
    assert!(expire(&mut early, UnixMillis(10)).is_err(), "not yet due");
    assert_eq!(early.status, Pending);
}

#[test]
fn only_the_source_decides_and_an_overdue_request_is_expired_first() {
    let req = pending(Frequency::Adhoc);
    assert_eq!(decide_gate(&req, UnixMillis(10)), Ok(DecideGate::Decide));
    assert_eq!(decide_gate(&req, UnixMillis(1000)), Ok(DecideGate::ExpireFirst));
    let mut done = req.clone();
    done.status = Completed;
    assert_eq!(decide_gate(&done, UnixMillis(1000)), Ok(DecideGate::Decide), "a closed request is refused later");
    let t = request(ExchangeRole::Target, Frequency::Adhoc, Pending, &["pay"]);
    let refused =
        DomainError::FailedPrecondition("this instance is the request's target; decide on it on the source".into());
    assert_eq!(decide_gate(&t, UnixMillis(10)), Err(refused));
    assert_eq!(expired_refusal().to_string(), "the request has expired and can no longer be approved");
}

#[test]
fn approve_and_reject_move_a_pending_request() {
    let mut req = pending(Frequency::Adhoc);
    assert_eq!(
        apply_decision(&mut req, &Decision::Approve, false, "operator:bob", UnixMillis(5)),
        Ok(DecisionEffects::Approved)
    );
    assert_eq!(last(&req), (Approved, "operator:bob".into(), String::new()));
    let mut req = pending(Frequency::Adhoc);
    let reject = Decision::Reject { reason: "not now".into() };
    let got = apply_decision(&mut req, &reject, true, "operator:bob", UnixMillis(5));
    assert_eq!(got, Ok(DecisionEffects::Rejected { audit: "reason: not now".into() }));
    assert_eq!(last(&req), (Rejected, "operator:bob".into(), "not now".into()));
}

#[test]
fn a_retry_resumes_where_the_bundle_allows() {
    for (has_bundle, resume) in [(true, Approved), (false, Pending)] {
        let mut req = pending(Frequency::Adhoc);
        req.status = ErrorOnRemoteInstance;
        let got = apply_decision(&mut req, &Decision::Retry, has_bundle, "operator:bob", UnixMillis(5));
        let audit = "from ERROR_ON_REMOTE_INSTANCE".to_owned();
        assert_eq!(got, Ok(DecisionEffects::Retried { deliver: has_bundle, audit }));
        assert_eq!(req.status, resume);
    }
}

#[test]
fn a_retry_without_a_bundle_reopens_the_lines_an_export_closed() {
    let exported = |spec: &str, status, key_count, reason: &str| SpecLine {
        spec: name(spec),
        status,
        key_count,
        reason: reason.into(),
    };
    for has_bundle in [false, true] {
        let mut req = pending(Frequency::Adhoc);
        req.status = ErrorOnLocalInstance;
        req.lines = vec![
            exported("pay", SpecLineStatus::Exchanged, 2, ""),
            exported("hr", SpecLineStatus::Failed, 0, "1 of 1 key(s) could not be unwrapped on the source"),
            exported("gone", SpecLineStatus::NotOnSource, 0, "not on source"),
        ];
        apply_decision(&mut req, &Decision::Retry, has_bundle, "operator:bob", UnixMillis(5)).unwrap();
        let got: Vec<_> = req.lines.iter().map(|l| (l.status, l.key_count, l.reason.is_empty())).collect();
        let want = if has_bundle {
            vec![
                (SpecLineStatus::Exchanged, 2, true),
                (SpecLineStatus::Failed, 0, false),
                (SpecLineStatus::NotOnSource, 0, false),
            ]
        } else {
            vec![
                (SpecLineStatus::Pending, 0, true),
                (SpecLineStatus::Pending, 0, true),
                (SpecLineStatus::NotOnSource, 0, false),
            ]
        };
        assert_eq!(got, want, "has_bundle {has_bundle}");
    }
}

#[test]
fn a_refused_decision_names_the_request_as_found() {
    let mut req = pending(Frequency::Adhoc);
    req.status = Rejected;
    req.history.push(Transition { status: Rejected, at: UnixMillis(3), actor: "bob".into(), note: String::new() });
    let before = req.clone();
    for (d, verb) in [(Decision::Approve, "approved"), (Decision::Retry, "retried")] {
        let got = apply_decision(&mut req, &d, true, "alice", UnixMillis(5)).unwrap_err();
        let says = format!("request {} is REQUEST_REJECTED (rejected by bob at 3); it cannot be {verb}", req.id);
        assert_eq!(got, DomainError::FailedPrecondition(says));
        assert_eq!(req, before, "a refused decision changes nothing");
    }
    let mut err = pending(Frequency::Adhoc);
    err.status = ErrorOnLocalInstance;
    let got = apply_decision(&mut err, &Decision::Reject { reason: "x".into() }, false, "alice", UnixMillis(5));
    assert!(got.unwrap_err().to_string().ends_with("it cannot be rejected"));
    let other = DomainError::invalid("x", "y");
    assert_eq!(decision_refusal(&before, other.clone(), "approved"), other, "other errors pass through");
    assert!(keeps_changing(&before).to_string().contains("keeps changing; it is REQUEST_REJECTED"));
}

#[test]
fn only_a_pending_request_after_a_clone_is_approved_without_a_person() {
    assert!(!wants_system_approval(&pending(Frequency::Adhoc)));
    for f in [Frequency::Automatic, Frequency::OneTimeClone, Frequency::RecurringClone] {
        let mut req = pending(f);
        assert!(wants_system_approval(&req), "{f:?}");
        req.status = Approved;
        assert!(!wants_system_approval(&req), "{f:?} approved already");
    }
}

#[test]
fn the_grant_approves_automatic_requests_and_policies_the_configured_ones() {
    let mut auto = pending(Frequency::Automatic);
    auto.clone_grant = Some("ab12".into());
    assert_eq!(approver_after_grant(&auto, Ok(())), ApproverStep::ApproveAs("system (clone grant ab12)".into()));
    auto.clone_grant = None;
    assert_eq!(approver_after_grant(&auto, Ok(())), ApproverStep::ApproveAs("system (clone grant )".into()));
    let refused = approver_after_grant(&auto, Err("the clone grant has expired".into()));
    assert_eq!(refused, ApproverStep::LeaveForPerson("the clone grant has expired".into()));
    for f in [Frequency::OneTimeClone, Frequency::RecurringClone] {
        assert_eq!(approver_after_grant(&pending(f), Ok(())), ApproverStep::CheckPolicies);
        assert!(matches!(approver_after_grant(&pending(f), Err("no".into())), ApproverStep::LeaveForPerson(_)));
    }
    let by = approver_by_policies(Ok(vec![name("p1"), name("p2")]));
    assert_eq!(by, Ok("system (policy p1, p2)".into()));
    assert_eq!(approver_by_policies(Ok(vec![])), Ok("system (policy )".into()), "specs without a tracking policy");
    let none = approver_by_policies(Err("spec pay: denied".into()));
    assert_eq!(none, Err("spec pay: denied".into()));
}
