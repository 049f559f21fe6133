//! Exchange requests and their state machine. One record exists on each side
//! (source and target), linked by the request id.
//!
//! ```text
//! Pending --approve--> Approved --complete--> Completed
//! Pending --reject---> Rejected
//! Pending|Approved --expire (now >= expires_at)--> Expired
//! Pending|Approved --fail--> ErrorOnLocalInstance | ErrorOnRemoteInstance
//! ErrorOn* --retry (not expired)--> Approved (its bundle is kept) | Pending
//! Completed --expire rekey (target, rekey unfinished, now >= expires_at)--> Expired
//! ```
//! Every other (status, event) pair is refused with FAILED_PRECONDITION.

use super::DomainError;
use super::bundle::WrappingAlgorithm;
use super::ids::{Host, Name, RequestId, SysId, UnixMillis};

/// Default lifetime of a request: 7 days.
pub const DEFAULT_EXPIRY_MILLIS: i64 = 7 * 24 * 3600 * 1000;
/// Longest lifetime a request may ask for: 90 days.
pub const MAX_EXPIRY_MILLIS: i64 = 90 * 24 * 3600 * 1000;
/// Most specs one request may name.
pub const MAX_SPECS_PER_REQUEST: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum RequestStatus {
    Pending,
    Approved,
    Completed,
    Rejected,
    Expired,
    ErrorOnLocalInstance,
    ErrorOnRemoteInstance,
}

pub const ALL_STATUSES: [RequestStatus; 7] = [
    RequestStatus::Pending,
    RequestStatus::Approved,
    RequestStatus::Completed,
    RequestStatus::Rejected,
    RequestStatus::Expired,
    RequestStatus::ErrorOnLocalInstance,
    RequestStatus::ErrorOnRemoteInstance,
];

impl RequestStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, RequestStatus::Pending | RequestStatus::Approved)
    }

    /// Nothing can happen to the request any more (an ERROR_ON_* status can
    /// still be retried).
    pub fn is_final(self) -> bool {
        matches!(self, RequestStatus::Completed | RequestStatus::Rejected | RequestStatus::Expired)
    }

    pub fn label(self) -> &'static str {
        match self {
            RequestStatus::Pending => "REQUEST_PENDING",
            RequestStatus::Approved => "REQUEST_APPROVED",
            RequestStatus::Completed => "REQUEST_COMPLETED",
            RequestStatus::Rejected => "REQUEST_REJECTED",
            RequestStatus::Expired => "REQUEST_EXPIRED",
            RequestStatus::ErrorOnLocalInstance => "ERROR_ON_LOCAL_INSTANCE",
            RequestStatus::ErrorOnRemoteInstance => "ERROR_ON_REMOTE_INSTANCE",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExchangeRole {
    Source,
    Target,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Frequency {
    /// Created by an operator on the target; approved by hand on the source.
    Adhoc,
    /// Created by the target after a clone (when
    /// `glide_encryption.auto_key_exchange.enabled` is true); the source
    /// approves it at once when it served that clone (a clone grant).
    Automatic,
    /// Requested by the target after a clone, for the specs of the source's
    /// One Time Clone configuration; its Resource Exchange policy approves.
    OneTimeClone,
    /// The same for a Recurring Clone configuration: approved on every clone.
    RecurringClone,
}

impl Frequency {
    pub fn label(self) -> &'static str {
        match self {
            Frequency::Adhoc => "ADHOC",
            Frequency::Automatic => "AUTOMATIC",
            Frequency::OneTimeClone => "ONE_TIME_CLONE",
            Frequency::RecurringClone => "RECURRING_CLONE",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SpecLineStatus {
    Pending,
    Exchanged,
    NotOnSource,
    Failed,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SpecLine {
    pub spec: Name,
    pub status: SpecLineStatus,
    pub key_count: u32,
    pub reason: String,
}

impl SpecLine {
    pub fn pending(spec: Name) -> Self {
        SpecLine { spec, status: SpecLineStatus::Pending, key_count: 0, reason: String::new() }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transition {
    pub status: RequestStatus,
    pub at: UnixMillis,
    pub actor: String,
    pub note: String,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PeerRef {
    pub sys_id: SysId,
    pub host: Host,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExchangeRequest {
    pub id: RequestId,
    pub role: ExchangeRole,
    pub frequency: Frequency,
    pub source: PeerRef,
    pub target: PeerRef,
    pub status: RequestStatus,
    pub lines: Vec<SpecLine>,
    pub total_key_count: u32,
    pub exported_key_count: u32,
    pub imported_key_count: u32,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub history: Vec<Transition>,
    /// Source side: the target's certificate (DER) seen when it opened the
    /// request; receipts are verified against it.
    pub peer_certificate: Vec<u8>,
    /// Source side: the target's signed receipt, kept as proof of delivery.
    pub receipt: Option<SignedBlob>,
    /// Source side: the target's one-time transport public key (SPKI DER)
    /// and the wrapping it can unwrap. Empty on the target side.
    pub transport_public_key: Vec<u8>,
    pub wrapping: WrappingAlgorithm,
    /// Target side: after the import, re-encrypt the records under the
    /// imported keys with this instance's own (a clone exchange configured
    /// with rekey on the source).
    pub rekey: bool,
    /// A request after a clone: the clone grant its snapshot's end named
    /// (sent in `OpenRequest`; None for other requests and older peers).
    pub clone_grant: Option<String>,
}

/// Bytes and the signature over them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedBlob {
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What happens to a request.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RequestEvent {
    Approve,
    Reject {
        reason: String,
    },
    Expire,
    Complete,
    FailLocal {
        reason: String,
    },
    FailRemote {
        reason: String,
    },
    /// An operator retries a failed request: back to `resume_at`, which is
    /// Approved when the signed bundle is still there to deliver, else Pending.
    Retry {
        resume_at: RequestStatus,
    },
    /// Target: the rekey that follows the import did not complete before the
    /// request's expiry.
    ExpireRekey,
}

impl RequestEvent {
    fn name(&self) -> &'static str {
        match self {
            RequestEvent::Approve => "approve",
            RequestEvent::Reject { .. } => "reject",
            RequestEvent::Expire => "expire",
            RequestEvent::Complete => "complete",
            RequestEvent::FailLocal { .. } => "fail (local)",
            RequestEvent::FailRemote { .. } => "fail (remote)",
            RequestEvent::Retry { .. } => "retry",
            RequestEvent::ExpireRekey => "expire the rekey of",
        }
    }
}

/// The pure transition function: the next status, or why not.
pub fn next_status(
    from: RequestStatus,
    event: &RequestEvent,
    expires_at: UnixMillis,
    now: UnixMillis,
) -> Result<RequestStatus, DomainError> {
    use RequestStatus::*;
    let expired = now >= expires_at;
    let next = match (from, event) {
        (Pending, RequestEvent::Approve) if expired => {
            return Err(DomainError::FailedPrecondition(
                "the request has expired and can no longer be approved".into(),
            ));
        }
        (Pending, RequestEvent::Approve) => Approved,
        (Pending, RequestEvent::Reject { .. }) => Rejected,
        (Pending | Approved, RequestEvent::Expire) if expired => Expired,
        (Approved, RequestEvent::Complete) => Completed,
        (Completed, RequestEvent::ExpireRekey) if expired => Expired,
        (Pending | Approved, RequestEvent::FailLocal { .. }) => ErrorOnLocalInstance,
        (Pending | Approved, RequestEvent::FailRemote { .. }) => ErrorOnRemoteInstance,
        (ErrorOnLocalInstance | ErrorOnRemoteInstance, RequestEvent::Retry { .. }) if expired => {
            return Err(DomainError::FailedPrecondition("the request has expired and can no longer be retried".into()));
        }
        (
            ErrorOnLocalInstance | ErrorOnRemoteInstance,
            RequestEvent::Retry { resume_at: to @ (Pending | Approved) },
        ) => *to,
        (from, event) => {
            return Err(DomainError::FailedPrecondition(format!(
                "cannot {} a request in status {}",
                event.name(),
                from.label()
            )));
        }
    };
    Ok(next)
}

impl ExchangeRequest {
    /// Applies `event`, recording the transition in the history.
    pub fn apply(&mut self, event: RequestEvent, actor: &str, now: UnixMillis) -> Result<(), DomainError> {
        let next = next_status(self.status, &event, self.expires_at, now)?;
        let note = match &event {
            RequestEvent::Reject { reason }
            | RequestEvent::FailLocal { reason }
            | RequestEvent::FailRemote { reason } => reason.clone(),
            _ => String::new(),
        };
        self.status = next;
        self.updated_at = now;
        self.history.push(Transition { status: next, at: now, actor: actor.to_owned(), note });
        Ok(())
    }

    /// The status and the decision behind it, for refusals:
    /// "REQUEST_COMPLETED (approved by operator:alice at 1700000000000)".
    pub fn status_summary(&self) -> String {
        let decision = self.history.iter().rev().find_map(|t| match t.status {
            RequestStatus::Approved => Some(("approved", t)),
            RequestStatus::Rejected => Some(("rejected", t)),
            RequestStatus::Expired => Some(("expired", t)),
            _ => None,
        });
        match (decision, self.history.last()) {
            (Some((verb, t)), _) => format!("{} ({verb} by {} at {})", self.status.label(), t.actor, t.at.0),
            (None, Some(t)) => format!("{} (by {} at {})", self.status.label(), t.actor, t.at.0),
            (None, None) => self.status.label().to_owned(),
        }
    }

    /// The peer this record talks to.
    pub fn peer(&self) -> &PeerRef {
        match self.role {
            ExchangeRole::Source => &self.target,
            ExchangeRole::Target => &self.source,
        }
    }

    /// Specs this request still waits on (lines not closed).
    pub fn pending_specs(&self) -> impl Iterator<Item = &Name> {
        self.lines.iter().filter(|l| l.status == SpecLineStatus::Pending).map(|l| &l.spec)
    }
}

/// The source's line for a spec whose keys went into a bundle: `exported`
/// keys sent, `failed` of its own that did not unwrap, and `foreign`: the
/// keys held here that other instances originated (count by origin), which
/// only their origin exports (prod → dev → test: test asks prod for prod's
/// keys). A spec with nothing of its own but such keys is NOT_ON_SOURCE: its
/// keys are not this source's to give.
pub fn export_line(spec: Name, exported: u32, failed: u32, foreign: &[(SysId, u32)]) -> SpecLine {
    let mut reasons = Vec::new();
    let status = if failed > 0 {
        reasons.push(format!("{failed} of {} key(s) could not be unwrapped on the source", exported + failed));
        SpecLineStatus::Failed
    } else if exported == 0 && !foreign.is_empty() {
        SpecLineStatus::NotOnSource
    } else {
        SpecLineStatus::Exchanged
    };
    reasons.extend(foreign.iter().map(|(origin, n)| format!("{n} key(s) imported from {origin}; ask its origin")));
    SpecLine { spec, status, key_count: exported, reason: reasons.join("; ") }
}

/// Whether a source may dial `host`, sent by a target in its request: a host
/// registered here for the target's sys_id (`registered`: name and port),
/// or one whose name is a DNS name or IP address of the target's verified
/// certificate (`cert_names`; any port). Anything else would let a peer make
/// the source dial an address of its choosing.
pub fn dialable_target_host(host: &Host, registered: &[Host], cert_names: &[String]) -> bool {
    let same = |name: &str| match (name.parse::<std::net::IpAddr>(), host.name().parse::<std::net::IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        (Err(_), Err(_)) => name.eq_ignore_ascii_case(host.name()),
        _ => false,
    };
    registered.contains(host) || cert_names.iter().any(|n| same(n))
}

/// Validates what an operator asks for when creating a request.
pub fn validate_expiry(expires_in_millis: Option<i64>) -> Result<i64, DomainError> {
    match expires_in_millis {
        None => Ok(DEFAULT_EXPIRY_MILLIS),
        Some(ms) if ms <= 0 => Err(DomainError::invalid("expires_in", "must be positive")),
        Some(ms) if ms > MAX_EXPIRY_MILLIS => Err(DomainError::invalid("expires_in", "must be at most 90 days")),
        Some(ms) => Ok(ms),
    }
}

/// Validates the spec list: non-empty, bounded, no duplicates.
pub fn validate_spec_names(names: &[String]) -> Result<Vec<Name>, DomainError> {
    if names.is_empty() {
        return Err(DomainError::invalid("spec_names", "name at least one spec"));
    }
    if names.len() > MAX_SPECS_PER_REQUEST {
        return Err(DomainError::invalid("spec_names", format!("at most {MAX_SPECS_PER_REQUEST} specs per request")));
    }
    let mut out: Vec<Name> = Vec::with_capacity(names.len());
    for n in names {
        let name = Name::parse(n, "spec_names")?;
        if out.contains(&name) {
            return Err(DomainError::invalid("spec_names", format!("{name} is named twice")));
        }
        out.push(name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::RequestStatus::*;
    use super::*;

    #[test]
    fn export_lines_name_the_keys_left_to_their_origin() {
        let spec = Name::parse("pay", "spec").unwrap();
        let (p, q) = (SysId::from_random([1; 16]), SysId::from_random([2; 16]));
        let line = export_line(spec.clone(), 2, 0, &[]);
        assert_eq!((line.status, line.key_count, line.reason.as_str()), (SpecLineStatus::Exchanged, 2, ""));
        let line = export_line(spec.clone(), 1, 0, &[(p.clone(), 3)]);
        assert_eq!((line.status, line.key_count), (SpecLineStatus::Exchanged, 1));
        assert_eq!(line.reason, format!("3 key(s) imported from {p}; ask its origin"));
        let line = export_line(spec.clone(), 0, 0, &[(p.clone(), 1), (q.clone(), 2)]);
        assert_eq!((line.status, line.key_count), (SpecLineStatus::NotOnSource, 0));
        assert_eq!(
            line.reason,
            format!("1 key(s) imported from {p}; ask its origin; 2 key(s) imported from {q}; ask its origin")
        );
        let line = export_line(spec.clone(), 1, 1, &[(p.clone(), 1)]);
        assert_eq!((line.status, line.key_count), (SpecLineStatus::Failed, 1));
        assert!(line.reason.starts_with("1 of 2 key(s) could not be unwrapped on the source; 1 key(s) imported"));
        assert_eq!(export_line(spec, 0, 0, &[]).status, SpecLineStatus::Exchanged, "an empty spec, as before");
    }

    #[test]
    fn a_target_host_must_be_registered_or_named_by_the_certificate() {
        let host = |t: &str| Host::parse(t).unwrap();
        let names = vec!["kmf-test.example".to_owned(), "10.0.0.5".to_owned(), "::1".to_owned()];
        let registered = vec![host("10.9.9.9:7443")];
        for ok in ["kmf-test.example:8443", "KMF-TEST.example:1", "10.0.0.5:7443", "[::1]:7443", "10.9.9.9:7443"] {
            assert!(dialable_target_host(&host(ok), &registered, &names), "{ok}");
        }
        for no in
            ["evil.example:8443", "test.example:8443", "kmf-test.example.evil:1", "10.0.0.6:7443", "10.9.9.9:7444"]
        {
            assert!(!dialable_target_host(&host(no), &registered, &names), "{no}");
        }
        assert!(!dialable_target_host(&host("127.0.0.1:1"), &[], &[]), "nothing named, nothing dialled");
    }

    fn ev(name: &str) -> RequestEvent {
        match name {
            "approve" => RequestEvent::Approve,
            "reject" => RequestEvent::Reject { reason: "no".into() },
            "expire" => RequestEvent::Expire,
            "complete" => RequestEvent::Complete,
            "fail_local" => RequestEvent::FailLocal { reason: "x".into() },
            "fail_remote" => RequestEvent::FailRemote { reason: "x".into() },
            "retry" => RequestEvent::Retry { resume_at: Approved },
            "expire_rekey" => RequestEvent::ExpireRekey,
            _ => unreachable!(),
        }
    }

    /// The whole table: (from, event, expired?, expected next or None for refused).
    #[test]
    fn transition_table() {
        let all = [Pending, Approved, Completed, Rejected, Expired, ErrorOnLocalInstance, ErrorOnRemoteInstance];
        let events = ["approve", "reject", "expire", "complete", "fail_local", "fail_remote", "retry", "expire_rekey"];
        for from in all {
            for e in events {
                for expired in [false, true] {
                    let want = match (from, e, expired) {
                        (Pending, "approve", false) => Some(Approved),
                        (Pending, "reject", _) => Some(Rejected),
                        (Pending | Approved, "expire", true) => Some(Expired),
                        (Approved, "complete", _) => Some(Completed),
                        (Pending | Approved, "fail_local", _) => Some(ErrorOnLocalInstance),
                        (Pending | Approved, "fail_remote", _) => Some(ErrorOnRemoteInstance),
                        (ErrorOnLocalInstance | ErrorOnRemoteInstance, "retry", false) => Some(Approved),
                        (Completed, "expire_rekey", true) => Some(Expired),
                        _ => None,
                    };
                    let now = if expired { UnixMillis(100) } else { UnixMillis(10) };
                    let got = next_status(from, &ev(e), UnixMillis(100), now).ok();
                    assert_eq!(got, want, "{from:?} + {e} (expired: {expired})");
                }
            }
        }
    }

    #[test]
    fn retry_resumes_only_at_pending_or_approved() {
        let at = |to| {
            next_status(ErrorOnRemoteInstance, &RequestEvent::Retry { resume_at: to }, UnixMillis(100), UnixMillis(1))
        };
        assert_eq!(at(Pending), Ok(Pending));
        assert_eq!(at(Approved), Ok(Approved));
        let refused =
            DomainError::FailedPrecondition("cannot retry a request in status ERROR_ON_REMOTE_INSTANCE".into());
        assert_eq!(at(Completed), Err(refused));
        let expired = next_status(
            ErrorOnLocalInstance,
            &RequestEvent::Retry { resume_at: Pending },
            UnixMillis(1),
            UnixMillis(5),
        );
        let refused = DomainError::FailedPrecondition("the request has expired and can no longer be retried".into());
        assert_eq!(expired, Err(refused));
    }

    #[test]
    fn refusal_names_the_status() {
        let err = next_status(Completed, &RequestEvent::Approve, UnixMillis(100), UnixMillis(1)).unwrap_err();
        assert!(err.to_string().contains("REQUEST_COMPLETED"), "{err}");
    }

    #[test]
    fn apply_records_history() {
        let host = Host::parse("a:1").unwrap();
        let peer = PeerRef { sys_id: SysId::from_random([1; 16]), host };
        let mut r = ExchangeRequest {
            id: RequestId::from_random([2; 16]),
            role: ExchangeRole::Source,
            frequency: Frequency::Adhoc,
            source: peer.clone(),
            target: peer,
            status: Pending,
            lines: vec![],
            total_key_count: 0,
            exported_key_count: 0,
            imported_key_count: 0,
            created_at: UnixMillis(0),
            updated_at: UnixMillis(0),
            expires_at: UnixMillis(100),
            history: vec![],
            peer_certificate: vec![],
            receipt: None,
            transport_public_key: vec![],
            wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256,
            rekey: false,
            clone_grant: None,
        };
        r.apply(RequestEvent::Reject { reason: "not now".into() }, "alice", UnixMillis(5)).unwrap();
        assert_eq!(r.status, Rejected);
        assert_eq!(r.history.last().map(|t| (t.actor.as_str(), t.note.as_str())), Some(("alice", "not now")));
        let refused = DomainError::FailedPrecondition("cannot approve a request in status REQUEST_REJECTED".into());
        assert_eq!(r.apply(RequestEvent::Approve, "alice", UnixMillis(6)), Err(refused));
        assert_eq!(r.history.len(), 1, "a refused event changes nothing");
        assert_eq!(r.status_summary(), "REQUEST_REJECTED (rejected by alice at 5)");
        r.status = Approved;
        r.history = vec![Transition { status: Approved, at: UnixMillis(7), actor: "bob".into(), note: String::new() }];
        r.apply(RequestEvent::Complete, "instance:t", UnixMillis(8)).unwrap();
        assert_eq!(r.status_summary(), "REQUEST_COMPLETED (approved by bob at 7)");
    }

    #[test]
    fn expiry_and_spec_validation() {
        assert_eq!(validate_expiry(None), Ok(DEFAULT_EXPIRY_MILLIS));
        assert_eq!(validate_expiry(Some(0)), Err(DomainError::invalid("expires_in", "must be positive")));
        assert_eq!(
            validate_expiry(Some(MAX_EXPIRY_MILLIS + 1)),
            Err(DomainError::invalid("expires_in", "must be at most 90 days"))
        );
        let names = |n: &[&str]| validate_spec_names(&n.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(names(&[]), Err(DomainError::invalid("spec_names", "name at least one spec")));
        assert_eq!(names(&["a", "a"]), Err(DomainError::invalid("spec_names", "a is named twice")));
        let bad_name = DomainError::invalid("spec_names", "expected 1 to 64 characters of A-Z a-z 0-9 _ . -");
        assert_eq!(names(&["bad name"]), Err(bad_name));
        assert_eq!(validate_spec_names(&["a".into(), "b".into()]).map(|v| v.len()), Ok(2));
    }
}
