use super::*;
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::exchange::{Frequency, Transition};
use crate::domain::fixtures::{last, name, request, sys};
use crate::domain::key::KeyState;
use crate::domain::spec::{Algorithm, Purpose};
use RequestStatus::*;

fn on_target(status: RequestStatus) -> ExchangeRequest {
    request(ExchangeRole::Target, Frequency::Adhoc, status, &["pay", "hr"])
}

fn key(spec: &str, v: u32) -> KeyId {
    KeyId { origin: sys(1), spec: name(spec), version: v }
}

fn entry(k: KeyId) -> BundleEntry {
    BundleEntry {
        key_id: k,
        state: KeyState::Active,
        generated_at: UnixMillis(1),
        activated_at: None,
        deactivated_at: None,
        wrapped: vec![1],
    }
}

fn bundle_for(req: &ExchangeRequest, entries: Vec<BundleEntry>) -> Bundle {
    Bundle {
        request_id: req.id.clone(),
        source: sys(1),
        target: sys(2),
        issued_at: UnixMillis(1),
        expires_at: UnixMillis(1000),
        wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256,
        wrapped_transport_key: vec![],
        lines: vec![SpecLine {
            spec: name("pay"),
            status: SpecLineStatus::Exchanged,
            key_count: 2,
            reason: String::new(),
        }],
        specs: vec![],
        entries,
    }
}

fn spec(n: &str, bits: u32) -> Spec {
    let choice =
        SpecChoice::with_defaults(Some(Purpose::SymmetricDataEncryption), Some(Algorithm::AesGcm), Some(bits), false)
            .unwrap();
    Spec::try_new(name(n), name("m"), choice, UnixMillis(0)).unwrap()
}

#[test]
fn a_retry_here_makes_a_failed_request_pending_again() {
    let mut req = on_target(ErrorOnRemoteInstance);
    assert_eq!(retry_here(&mut req, "operator:bob", UnixMillis(5)), Ok("from ERROR_ON_REMOTE_INSTANCE".into()));
    assert_eq!(last(&req), (Pending, "operator:bob".into(), String::new()));
    let mut done = on_target(Completed);
    let refused = retry_here(&mut done, "operator:bob", UnixMillis(5)).unwrap_err();
    assert!(refused.to_string().ends_with("; it cannot be retried"), "{refused}");
    let mut late = on_target(ErrorOnLocalInstance);
    assert!(retry_here(&mut late, "system", UnixMillis(1000)).is_err(), "expired");
}

#[test]
fn a_retry_keeps_its_transport_key_while_it_has_one() {
    let req = on_target(ErrorOnRemoteInstance);
    assert!(!needs_new_transport_key(&req, true));
    assert!(needs_new_transport_key(&req, false), "the handle is gone");
    let mut no_public = req.clone();
    no_public.transport_public_key.clear();
    assert!(needs_new_transport_key(&no_public, true), "the public key was never kept");
}

#[test]
fn the_source_view_fills_closed_lines_and_completes_an_empty_request() {
    let mut req = on_target(Pending);
    let gone = SpecLine {
        spec: name("hr"),
        status: SpecLineStatus::NotOnSource,
        key_count: 0,
        reason: "spec not found on source".into(),
    };
    let view = vec![SpecLine::pending(name("pay")), gone.clone()];
    take_source_view(&mut req, Pending, &view, 7, UnixMillis(5)).unwrap();
    assert_eq!((req.lines[0].clone(), req.lines[1].clone()), (SpecLine::pending(name("pay")), gone.clone()));
    assert_eq!((req.total_key_count, req.status), (7, Pending));
    take_source_view(&mut req, Completed, &[gone], 0, UnixMillis(5)).unwrap();
    assert_eq!(last(&req), (Completed, "system".into(), String::new()));
    let mut approved = on_target(Approved);
    take_source_view(&mut approved, Completed, &[], 0, UnixMillis(5)).unwrap();
    assert_eq!(approved.status, Approved, "only a pending request completes with the source's");
}

#[test]
fn a_failed_opening_fails_only_a_pending_request() {
    let mut req = on_target(Pending);
    let got = opening_failed(&mut req, "peer unreachable", UnixMillis(5));
    assert_eq!(got, Ok(Some("opening on the source failed: peer unreachable".into())));
    assert_eq!(last(&req), (ErrorOnRemoteInstance, "system".into(), "peer unreachable".into()));
    let mut done = on_target(Completed);
    assert_eq!(opening_failed(&mut done, "x", UnixMillis(5)), Ok(None));
    assert_eq!(done.status, Completed);
}

#[test]
fn a_notice_closes_the_request_once_and_only_from_its_source() {
    let mut req = on_target(Pending);
    let got = take_notice(&mut req, &sys(1), Rejected, "no", UnixMillis(5));
    assert_eq!(got, Ok(NoticeEffect::Closed { action: "exchange.reject" }));
    assert_eq!(last(&req), (Rejected, format!("instance:{}", sys(1)), "no".into()));
    assert_eq!(take_notice(&mut req, &sys(1), Rejected, "again", UnixMillis(6)), Ok(NoticeEffect::Unchanged));
    assert_eq!(req.history.len(), 2, "a repeated notice changes nothing");
    let denied = Err(DomainError::PermissionDenied("sender is not the request's source".into()));
    assert_eq!(take_notice(&mut on_target(Pending), &sys(3), Rejected, "", UnixMillis(5)), denied);
    let mut source_side = request(ExchangeRole::Source, Frequency::Adhoc, Pending, &["pay"]);
    assert_eq!(take_notice(&mut source_side, &sys(1), Rejected, "", UnixMillis(5)), denied);
    let bad = take_notice(&mut on_target(Pending), &sys(1), Completed, "", UnixMillis(5));
    assert_eq!(bad, Err(DomainError::invalid("status", "REQUEST_COMPLETED cannot be notified")));
}

#[test]
fn an_expiry_notice_is_taken_at_the_sources_word() {
    let mut req = on_target(Approved);
    assert_eq!(
        take_notice(&mut req, &sys(1), Expired, "", UnixMillis(5)),
        Ok(NoticeEffect::Closed { action: "exchange.expire" })
    );
    assert_eq!(req.history.last().map(|t| (t.status, t.at)), Some((Expired, UnixMillis(1000))), "at the expiry");
    let mut later = on_target(Pending);
    take_notice(&mut later, &sys(1), Expired, "", UnixMillis(2000)).unwrap();
    assert_eq!(later.updated_at, UnixMillis(2000));
    let mut rejected = on_target(Rejected);
    assert!(take_notice(&mut rejected, &sys(1), Expired, "", UnixMillis(5)).is_err(), "closed otherwise");
}

#[test]
fn a_bundle_is_accepted_once_for_a_pending_request_from_its_source() {
    let mut req = on_target(Pending);
    let b = bundle_for(&req, vec![entry(key("pay", 1))]);
    assert_eq!(accept_bundle(&mut req, &b, &sys(2), &sys(1), UnixMillis(5)), Ok(()));
    let denied = Err(DomainError::PermissionDenied("bundle sender is not the request's source".into()));
    assert_eq!(accept_bundle(&mut req, &b, &sys(2), &sys(3), UnixMillis(5)), denied);
    let misaddressed = accept_bundle(&mut req, &b, &sys(4), &sys(1), UnixMillis(5));
    assert_eq!(misaddressed, Err(DomainError::PermissionDenied("bundle is addressed to another instance".into())));
    let mut source_side = request(ExchangeRole::Source, Frequency::Adhoc, Pending, &["pay"]);
    let wrong_side = accept_bundle(&mut source_side, &b, &sys(2), &sys(1), UnixMillis(5));
    assert_eq!(wrong_side, Err(DomainError::FailedPrecondition("request is not a target-side request here".into())));
    let mut done = on_target(Completed);
    done.history =
        vec![Transition { status: Completed, at: UnixMillis(3), actor: "system".into(), note: String::new() }];
    let again = accept_bundle(&mut done, &b, &sys(2), &sys(1), UnixMillis(5)).unwrap_err();
    let says = "request is REQUEST_COMPLETED (by system at 3); a bundle is accepted once, for a pending request";
    assert_eq!(again, DomainError::FailedPrecondition(says.into()));
}

#[test]
fn a_redelivery_retries_an_import_that_failed_here() {
    let mut req = on_target(ErrorOnLocalInstance);
    let b = bundle_for(&req, vec![]);
    assert_eq!(accept_bundle(&mut req, &b, &sys(2), &sys(1), UnixMillis(5)), Ok(()));
    assert_eq!(last(&req), (Pending, format!("instance:{}", sys(1)), String::new()));
    let mut remote = on_target(ErrorOnRemoteInstance);
    assert!(accept_bundle(&mut remote, &b, &sys(2), &sys(1), UnixMillis(5)).is_err(), "an operator retries that");
}

#[test]
fn keys_import_only_into_a_spec_described_as_it_is_here() {
    let ours = spec("pay", 256);
    assert_eq!(import_shape(&ours, &[(name("pay"), ours.choice())]), Ok(MaterialShape::Secret { len: 32 }));
    assert_eq!(
        import_shape(&ours, &[(name("hr"), ours.choice())]),
        Err("the source did not describe this spec".into())
    );
    let theirs = spec("pay", 128).choice();
    let differs = import_shape(&ours, &[(name("pay"), theirs)]).unwrap_err();
    assert_eq!(
        differs,
        format!("spec differs: the source's is {}, this instance's is {}", theirs.describe(), ours.choice().describe())
    );
    let mut shapes = HashMap::new();
    shapes.insert(name("pay"), Ok(MaterialShape::Secret { len: 32 }));
    shapes.insert(name("hr"), Err("spec differs".to_owned()));
    assert_eq!(entry_shape(&shapes, &entry(key("pay", 1))), Ok(MaterialShape::Secret { len: 32 }));
    assert_eq!(entry_shape(&shapes, &entry(key("hr", 1))), Err("spec differs".into()));
    assert_eq!(
        entry_shape(&shapes, &entry(key("ops", 1))),
        Err("spec was not requested or is not on this instance".into())
    );
}

#[test]
fn entries_already_held_are_set_apart_in_order() {
    let entries = vec![entry(key("pay", 1)), entry(key("pay", 2)), entry(key("pay", 3))];
    let (held, new) = split_entries(&entries, &[key("pay", 2)]);
    assert_eq!(held.iter().map(|e| e.key_id.version).collect::<Vec<_>>(), [2]);
    assert_eq!(new.iter().map(|e| e.key_id.version).collect::<Vec<_>>(), [1, 3]);
    assert!(differs_from_held(&key("pay", 2)).to_string().contains("an import never replaces a key"));
}

#[test]
fn an_import_ends_with_its_lines_counts_and_receipt() {
    let mut req = on_target(Pending);
    let b = bundle_for(&req, vec![entry(key("pay", 1)), entry(key("pay", 2)), entry(key("hr", 1))]);
    let facts = ImportFacts {
        this: &sys(2),
        caller: &sys(1),
        present: &[key("pay", 2)],
        failed: &[("hr".into(), "key does not unwrap".into())],
        imported: vec![key("pay", 1)],
        digest: [5; 32],
    };
    let out = finish_import(&mut req, &b, facts, UnixMillis(6)).unwrap();
    assert_eq!(req.lines[0].status, SpecLineStatus::Exchanged, "the source's outcome");
    assert_eq!(req.lines[0].reason, "1 key(s) already present, not imported twice");
    assert_eq!(
        (req.lines[1].status, req.lines[1].reason.as_str()),
        (SpecLineStatus::Failed, "1 key(s) not imported: key does not unwrap")
    );
    assert_eq!((req.total_key_count, req.exported_key_count, req.imported_key_count), (2, 3, 1));
    assert_eq!(last(&req), (Completed, "system".into(), String::new()));
    assert_eq!(req.history[req.history.len() - 2].actor, format!("instance:{}", sys(1)), "approved by the source");
    assert_eq!(out.audit, format!("1 key(s) from {}: {}", sys(1), key("pay", 1)));
    let r = out.receipt;
    assert_eq!((r.request_id, r.source, r.target, r.imported_at), (req.id.clone(), sys(1), sys(2), UnixMillis(6)));
    assert_eq!((r.bundle_sha256, r.imported), ([5; 32], vec![key("pay", 1)]));
}

#[test]
fn a_local_failure_is_recorded_and_answered() {
    let mut req = on_target(Pending);
    let answer = fail_import_here(&mut req, "KEK refused", UnixMillis(5)).unwrap();
    assert_eq!(answer.to_string(), "the target could not import the keys: KEK refused");
    assert_eq!(last(&req), (ErrorOnLocalInstance, "system".into(), "KEK refused".into()));
    assert!(fail_import_here(&mut on_target(Completed), "x", UnixMillis(5)).is_err());
}
