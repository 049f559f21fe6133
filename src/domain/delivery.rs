//! The source's delivery and notice jobs, their pure half: whether there is
//! anything to send, whether the target's receipt is the one for this
//! request and bundle, and what the target's answer (or its silence) does
//! to the request and the job. The service sends, then writes what the
//! verdict says with one conditional write.

use super::DomainError;
use super::audit::{AuditEvent, Outcome};
use super::bundle::Receipt;
use super::exchange::{ExchangeRequest, ExchangeRole, Frequency, RequestEvent, RequestStatus, SignedBlob};
use super::ids::{SysId, UnixMillis};

/// What a peer did with one call: answered (with `T`), refused it, or gave
/// no answer (could not be dialled, or did not answer in time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAnswer<T> {
    Answered(T),
    /// The peer's refusal, as its text.
    Refused(String),
    Unreachable {
        host: String,
        reason: String,
    },
}

impl<T> PeerAnswer<T> {
    /// Whether the peer was reached (an answer or a refusal): its host's
    /// backoff then ends.
    pub fn reached(&self) -> bool {
        !matches!(self, PeerAnswer::Unreachable { .. })
    }
}

/// The reason recorded when a delivery gets no answer within its timeout.
pub fn delivery_timeout_reason(timeout_secs: u64) -> String {
    format!("no answer within {timeout_secs} s")
}

/// The reason recorded when a status notice gets no answer within its timeout.
pub const NOTICE_TIMEOUT_REASON: &str = "no answer";

/// Whether the delivery job has a bundle to send: the request is there,
/// still Approved, and its bundle is stored. Otherwise it was decided
/// otherwise since (completed, expired, failed) and the job just ends.
pub fn has_delivery(status: Option<RequestStatus>, has_bundle: bool) -> bool {
    has_bundle && status == Some(RequestStatus::Approved)
}

/// Checks the target's receipt: its signature (`signature_verifies`,
/// checked by the caller against the certificate the target opened the
/// request with) first, then that it decodes and names this request, this
/// source, the request's target and the digest of the bundle sent.
pub fn accept_receipt(
    req: &ExchangeRequest,
    source: &SysId,
    receipt: &SignedBlob,
    bundle_sha256: [u8; 32],
    signature_verifies: bool,
) -> Result<Receipt, DomainError> {
    if !signature_verifies {
        return Err(DomainError::PermissionDenied("receipt signature does not verify".into()));
    }
    let r = Receipt::decode(&receipt.bytes)?;
    if r.request_id != req.id
        || &r.source != source
        || r.target != req.target.sys_id
        || r.bundle_sha256 != bundle_sha256
    {
        return Err(DomainError::PermissionDenied("receipt does not match the request and bundle".into()));
    }
    Ok(r)
}

/// What the delivery's answer does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryVerdict {
    /// No answer: the request stays as it is; the job is retried after its
    /// backoff, and the other jobs for `host` wait until the same time.
    Retry { host: String, reason: String },
    /// The request is now ERROR_ON_REMOTE_INSTANCE (in the request passed
    /// in); its bundle stays, so a RETRY can deliver it again. `log` is the
    /// warning to log with `error`; `audit` the details of `exchange.fail`.
    Failed { log: &'static str, error: String, audit: String },
    /// The request is now REQUEST_COMPLETED with its receipt and imported
    /// count; the bundle is cleared; `use_up_one_time`: the One Time Clone
    /// configuration is used up in the same write (`one_time_use_audit`
    /// with `UseUpBy::Completion`). `audit`: the details of `exchange.complete`.
    Completed { imported: usize, audit: String, use_up_one_time: bool },
}

/// Settles a delivery on the target's answer: the receipt (with the outcome
/// of `accept_receipt`), a refusal, or no answer. Moves `req` (unchanged on
/// `Retry`); an error is a request that cannot move (the job fails).
pub fn settle_delivery(
    req: &mut ExchangeRequest,
    answer: PeerAnswer<(SignedBlob, Result<Receipt, DomainError>)>,
    now: UnixMillis,
) -> Result<DeliveryVerdict, DomainError> {
    match answer {
        PeerAnswer::Unreachable { host, reason } => Ok(DeliveryVerdict::Retry { host, reason }),
        PeerAnswer::Refused(why) => {
            req.apply(RequestEvent::FailRemote { reason: why.clone() }, "system", now)?;
            let audit = format!("target refused the bundle: {why}");
            Ok(DeliveryVerdict::Failed { log: "target refused the bundle", error: why, audit })
        }
        PeerAnswer::Answered((blob, Ok(receipt))) => {
            let imported = receipt.imported.len();
            req.imported_key_count = imported as u32;
            req.receipt = Some(blob);
            req.apply(RequestEvent::Complete, &format!("instance:{}", req.target.sys_id), now)?;
            Ok(DeliveryVerdict::Completed {
                imported,
                audit: format!("signed receipt: {imported} key(s) imported"),
                use_up_one_time: req.frequency == Frequency::OneTimeClone,
            })
        }
        PeerAnswer::Answered((_, Err(e))) => {
            let error = e.to_string();
            req.apply(RequestEvent::FailRemote { reason: error.clone() }, "system", now)?;
            Ok(DeliveryVerdict::Failed { log: "receipt refused", audit: format!("receipt refused: {error}"), error })
        }
    }
}

/// What uses up a One Time Clone configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseUpBy {
    /// The approval of its request without a person.
    Approval,
    /// The completion of its request.
    Completion,
}

/// The `clone_exchange.used` entry written with the use of a One Time
/// Clone configuration by `req`.
pub fn one_time_use_audit(req: &ExchangeRequest, by: UseUpBy, now: UnixMillis) -> AuditEvent {
    let how = match by {
        UseUpBy::Approval => format!("One Time Clone used by the approval of request {}", req.id),
        UseUpBy::Completion => format!("One Time Clone used by request {}", req.id),
    };
    AuditEvent::new(now, "system", "clone_exchange.used", req.target.sys_id.as_str(), Outcome::Success)
        .with_details(format!("{how}; its policies are inactive"))
}

/// The notice the source owes the target about `req`: its closing status
/// and the reason sent with it. None (the job just ends) unless this is
/// the source's record and the request was rejected or expired.
pub fn notice_for(req: &ExchangeRequest) -> Option<(RequestStatus, String)> {
    if req.role != ExchangeRole::Source {
        return None;
    }
    match req.status {
        RequestStatus::Expired => Some((req.status, "expired on the source".to_owned())),
        RequestStatus::Rejected => Some((req.status, req.history.last().map(|t| t.note.clone()).unwrap_or_default())),
        _ => None,
    }
}

/// What the notice's answer does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeVerdict {
    /// No answer: retry the job after its backoff; the host's other jobs wait too.
    Retry { reason: String },
    /// Answered or refused: the job ends (`refused`: the refusal to log).
    Done { refused: Option<String> },
}

/// Settles a status notice on the target's answer.
pub fn settle_notice(answer: PeerAnswer<()>) -> NoticeVerdict {
    match answer {
        PeerAnswer::Unreachable { reason, .. } => NoticeVerdict::Retry { reason },
        PeerAnswer::Answered(()) => NoticeVerdict::Done { refused: None },
        PeerAnswer::Refused(why) => NoticeVerdict::Done { refused: Some(why) },
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{last, request, sys};
    use super::super::ids::KeyId;
    use super::*;
    use RequestStatus::*;

    fn approved() -> ExchangeRequest {
        request(ExchangeRole::Source, Frequency::Adhoc, Approved, &["pay"])
    }

    fn receipt_of(req: &ExchangeRequest, digest: [u8; 32], imported: usize) -> Receipt {
        let key = KeyId::parse(&format!("{}:pay:v1", sys(1))).unwrap();
        Receipt {
            request_id: req.id.clone(),
            source: req.source.sys_id.clone(),
            target: req.target.sys_id.clone(),
            imported_at: UnixMillis(5),
            bundle_sha256: digest,
            imported: vec![key; imported],
        }
    }

    fn blob(r: &Receipt) -> SignedBlob {
        SignedBlob { bytes: r.encode(), signature: vec![7] }
    }

    #[test]
    fn only_an_approved_request_with_its_bundle_is_delivered() {
        assert!(has_delivery(Some(Approved), true));
        assert!(!has_delivery(Some(Approved), false), "the bundle is gone");
        for s in [Pending, Completed, Rejected, Expired, ErrorOnLocalInstance, ErrorOnRemoteInstance] {
            assert!(!has_delivery(Some(s), true), "{s:?}");
        }
        assert!(!has_delivery(None, true), "the request is gone");
    }

    #[test]
    fn a_receipt_is_accepted_only_signed_and_for_this_request_and_bundle() {
        let req = approved();
        let good = receipt_of(&req, [3; 32], 1);
        assert_eq!(accept_receipt(&req, &sys(1), &blob(&good), [3; 32], true), Ok(good.clone()));
        let unsigned = accept_receipt(&req, &sys(1), &blob(&good), [3; 32], false);
        assert_eq!(unsigned, Err(DomainError::PermissionDenied("receipt signature does not verify".into())));
        let mismatch = Err(DomainError::PermissionDenied("receipt does not match the request and bundle".into()));
        assert_eq!(accept_receipt(&req, &sys(1), &blob(&good), [4; 32], true), mismatch, "another bundle");
        assert_eq!(accept_receipt(&req, &sys(5), &blob(&good), [3; 32], true), mismatch, "another source");
        let mut other = good.clone();
        other.target = sys(6);
        assert_eq!(accept_receipt(&req, &sys(1), &blob(&other), [3; 32], true), mismatch, "another target");
        other = good;
        other.request_id = super::super::ids::RequestId::from_random([8; 16]);
        assert_eq!(accept_receipt(&req, &sys(1), &blob(&other), [3; 32], true), mismatch, "another request");
        let garbage = SignedBlob { bytes: vec![1, 2], signature: vec![] };
        assert!(matches!(accept_receipt(&req, &sys(1), &garbage, [3; 32], true), Err(DomainError::Malformed { .. })));
    }

    #[test]
    fn no_answer_retries_and_leaves_the_request() {
        let mut req = approved();
        let before = req.clone();
        let answer = PeerAnswer::Unreachable { host: "target:7443".into(), reason: "refused".into() };
        assert!(!answer.reached());
        let verdict = settle_delivery(&mut req, answer, UnixMillis(10)).unwrap();
        assert_eq!(verdict, DeliveryVerdict::Retry { host: "target:7443".into(), reason: "refused".into() });
        assert_eq!(req, before);
    }

    #[test]
    fn a_refusal_fails_the_request_on_the_remote_instance() {
        let mut req = approved();
        let answer = PeerAnswer::Refused("permission denied: no".into());
        assert!(answer.reached());
        let verdict = settle_delivery(&mut req, answer, UnixMillis(10)).unwrap();
        assert_eq!(
            verdict,
            DeliveryVerdict::Failed {
                log: "target refused the bundle",
                error: "permission denied: no".into(),
                audit: "target refused the bundle: permission denied: no".into()
            }
        );
        assert_eq!(last(&req), (ErrorOnRemoteInstance, "system".into(), "permission denied: no".into()));
    }

    #[test]
    fn a_good_receipt_completes_and_uses_up_only_a_one_time_clone() {
        for (frequency, use_up) in
            [(Frequency::Adhoc, false), (Frequency::OneTimeClone, true), (Frequency::RecurringClone, false)]
        {
            let mut req = request(ExchangeRole::Source, frequency, Approved, &["pay"]);
            let r = receipt_of(&req, [3; 32], 2);
            let verdict = settle_delivery(&mut req, PeerAnswer::Answered((blob(&r), Ok(r.clone()))), UnixMillis(10));
            let audit = "signed receipt: 2 key(s) imported".to_owned();
            assert_eq!(verdict, Ok(DeliveryVerdict::Completed { imported: 2, audit, use_up_one_time: use_up }));
            assert_eq!((req.imported_key_count, req.receipt.clone()), (2, Some(blob(&r))));
            assert_eq!(last(&req), (Completed, format!("instance:{}", sys(2)), String::new()));
        }
    }

    #[test]
    fn a_refused_receipt_fails_the_request_and_keeps_no_receipt() {
        let mut req = approved();
        let r = receipt_of(&req, [3; 32], 1);
        let bad = DomainError::PermissionDenied("receipt signature does not verify".into());
        let verdict = settle_delivery(&mut req, PeerAnswer::Answered((blob(&r), Err(bad.clone()))), UnixMillis(10));
        let error = bad.to_string();
        assert_eq!(
            verdict,
            Ok(DeliveryVerdict::Failed {
                log: "receipt refused",
                audit: format!("receipt refused: {error}"),
                error: error.clone()
            })
        );
        assert_eq!((req.status, req.receipt.clone(), req.imported_key_count), (ErrorOnRemoteInstance, None, 0));
        assert_eq!(last(&req).2, error);
    }

    #[test]
    fn an_answer_for_a_request_that_moved_on_is_an_error() {
        let mut req = request(ExchangeRole::Source, Frequency::Adhoc, Expired, &["pay"]);
        let r = receipt_of(&req, [3; 32], 1);
        let got = settle_delivery(&mut req, PeerAnswer::Answered((blob(&r), Ok(r.clone()))), UnixMillis(10));
        assert!(matches!(got, Err(DomainError::FailedPrecondition(_))), "{got:?}");
        let got = settle_delivery(&mut req, PeerAnswer::Refused("no".into()), UnixMillis(10));
        assert!(matches!(got, Err(DomainError::FailedPrecondition(_))), "{got:?}");
    }

    #[test]
    fn the_one_time_use_says_what_used_it() {
        let req = request(ExchangeRole::Source, Frequency::OneTimeClone, Approved, &["pay"]);
        let a = one_time_use_audit(&req, UseUpBy::Approval, UnixMillis(4));
        assert_eq!((a.at, a.actor.as_str(), a.action.as_str()), (UnixMillis(4), "system", "clone_exchange.used"));
        assert_eq!(a.subject, sys(2).to_string());
        assert_eq!(
            a.details,
            format!("One Time Clone used by the approval of request {}; its policies are inactive", req.id)
        );
        let c = one_time_use_audit(&req, UseUpBy::Completion, UnixMillis(4));
        assert_eq!(c.details, format!("One Time Clone used by request {}; its policies are inactive", req.id));
    }

    #[test]
    fn notices_go_for_rejected_and_expired_source_records_only() {
        let mut req = request(ExchangeRole::Source, Frequency::Adhoc, Expired, &["pay"]);
        assert_eq!(notice_for(&req), Some((Expired, "expired on the source".into())));
        req.status = Rejected;
        req.history.last_mut().unwrap().note = "not today".into();
        assert_eq!(notice_for(&req), Some((Rejected, "not today".into())));
        req.history.clear();
        assert_eq!(notice_for(&req), Some((Rejected, String::new())), "no history: an empty reason");
        for s in [Pending, Approved, Completed, ErrorOnLocalInstance, ErrorOnRemoteInstance] {
            req.status = s;
            assert_eq!(notice_for(&req), None, "{s:?}");
        }
        let target = request(ExchangeRole::Target, Frequency::Adhoc, Rejected, &["pay"]);
        assert_eq!(notice_for(&target), None);
    }

    #[test]
    fn a_notice_is_retried_only_without_an_answer() {
        let none = PeerAnswer::Unreachable { host: "t:1".into(), reason: NOTICE_TIMEOUT_REASON.into() };
        assert_eq!(settle_notice(none), NoticeVerdict::Retry { reason: "no answer".into() });
        assert_eq!(settle_notice(PeerAnswer::Answered(())), NoticeVerdict::Done { refused: None });
        assert_eq!(settle_notice(PeerAnswer::Refused("x".into())), NoticeVerdict::Done { refused: Some("x".into()) });
        assert_eq!(delivery_timeout_reason(30), "no answer within 30 s");
    }
}
