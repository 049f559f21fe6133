//! Durable jobs: every effect outside the call that causes it (delivering a
//! bundle, notifying a status, the sweeps) is a row in the jobs table, run
//! by whichever runner holds its lease. A runner that dies leaves a lease
//! that runs out; the job is then claimed again. Every job's effect is
//! idempotent, so running it twice is harmless. This module is the pure
//! part: identity, due time, lease and retry rules.

use super::DomainError;
use super::ids::{RequestId, UnixMillis};
use super::schedule::RetryPolicy;

/// What a job does. Labels are stored; never rename them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKind {
    /// Source: deliver the request's signed bundle to its target.
    Deliver,
    /// Source: tell the target the request was rejected or expired.
    Notify,
    /// Expire overdue Pending/Approved requests (recurring).
    ExpirySweep,
    /// Expire and destroy keys by their lifecycle (recurring).
    LifecycleSweep,
    /// Target: copy a snapshot from the source, swap it in, clean up.
    Clone,
    /// Target, after a clone: request the clone's specs from its source (AUTOMATIC).
    AutoExchange,
    /// Target: start the clone a schedule (the subject) says is due (recurring).
    CloneSchedule,
    /// Target: re-encrypt the records under a request's imported keys (the
    /// subject) with this instance's own keys; retried daily until done or expired.
    Rekey,
}

impl JobKind {
    pub const ALL: [JobKind; 8] = [
        JobKind::Deliver,
        JobKind::Notify,
        JobKind::ExpirySweep,
        JobKind::LifecycleSweep,
        JobKind::Clone,
        JobKind::AutoExchange,
        JobKind::CloneSchedule,
        JobKind::Rekey,
    ];

    pub fn label(self) -> &'static str {
        match self {
            JobKind::Deliver => "deliver",
            JobKind::Notify => "notify",
            JobKind::ExpirySweep => "expiry_sweep",
            JobKind::LifecycleSweep => "lifecycle_sweep",
            JobKind::Clone => "clone",
            JobKind::AutoExchange => "auto_exchange",
            JobKind::CloneSchedule => "clone_schedule",
            JobKind::Rekey => "rekey",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.label() == s)
    }

    /// Recurring jobs are rescheduled after each run instead of removed.
    pub fn is_recurring(self) -> bool {
        matches!(self, JobKind::ExpirySweep | JobKind::LifecycleSweep | JobKind::CloneSchedule)
    }
}

/// A job's identity: its kind and subject. One job per (kind, subject), so
/// asking twice for the same effect schedules it once.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId {
    pub kind: JobKind,
    pub subject: String,
}

impl JobId {
    pub fn new(kind: JobKind, subject: impl Into<String>) -> Self {
        JobId { kind, subject: subject.into() }
    }

    pub fn for_request(kind: JobKind, id: &RequestId) -> Self {
        JobId::new(kind, id.as_str())
    }

    /// The single instance of a recurring job.
    pub fn singleton(kind: JobKind) -> Self {
        JobId::new(kind, "")
    }

    pub fn request_id(&self) -> Option<RequestId> {
        RequestId::parse(&self.subject).ok()
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.subject.is_empty() {
            f.write_str(self.kind.label())
        } else {
            write!(f, "{}/{}", self.kind.label(), self.subject)
        }
    }
}

/// Who runs a job until when. `claim` counts the claims of this job, so a
/// runner whose lease ran out and was taken over cannot finish the job
/// over its successor (fencing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub claim: u64,
    pub expires_at: UnixMillis,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    /// Failed runs since the last success.
    pub attempts: u32,
    /// Claims ever made (fencing token of the next lease).
    pub claims: u64,
    pub next_due: UnixMillis,
    pub last_error: Option<String>,
    pub lease: Option<Lease>,
    pub created_at: UnixMillis,
}

impl Job {
    pub fn new(id: JobId, due: UnixMillis, now: UnixMillis) -> Self {
        Job { id, attempts: 0, claims: 0, next_due: due, last_error: None, lease: None, created_at: now }
    }

    /// When a runner may claim it: its due time, or when its lease runs out.
    pub fn due_at(&self) -> UnixMillis {
        match &self.lease {
            Some(l) => l.expires_at.max(self.next_due),
            None => self.next_due,
        }
    }

    pub fn is_claimable(&self, now: UnixMillis) -> bool {
        self.due_at() <= now
    }

    /// Takes the lease for `owner` until `now + lease_millis`.
    pub fn claim(&mut self, owner: &str, now: UnixMillis, lease_millis: i64) -> Result<Lease, DomainError> {
        if !self.is_claimable(now) {
            return Err(DomainError::FailedPrecondition(match &self.lease {
                Some(l) if l.expires_at > now => {
                    format!("job {} is leased by {} until {}", self.id, l.owner, l.expires_at.0)
                }
                _ => format!("job {} is not due until {}", self.id, self.next_due.0),
            }));
        }
        self.claims += 1;
        let lease =
            Lease { owner: owner.to_owned(), claim: self.claims, expires_at: now.plus_millis(lease_millis.max(1)) };
        self.lease = Some(lease.clone());
        Ok(lease)
    }

    /// True while `lease` is this job's current lease (not taken over).
    pub fn is_held_by(&self, lease: &Lease) -> bool {
        self.lease.as_ref().is_some_and(|l| l.owner == lease.owner && l.claim == lease.claim)
    }

    /// The run failed: count it, remember why, and schedule a retry.
    pub fn fail(&mut self, error: impl Into<String>, now: UnixMillis, policy: RetryPolicy, jitter: u64) {
        self.attempts = self.attempts.saturating_add(1);
        self.last_error = Some(error.into());
        self.next_due = policy.next_due(now, self.attempts, jitter);
        self.lease = None;
    }

    /// A recurring job ran: run it again at `at`.
    pub fn reschedule(&mut self, at: UnixMillis) {
        self.attempts = 0;
        self.last_error = None;
        self.next_due = at;
        self.lease = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job::new(JobId::new(JobKind::Deliver, "r1"), UnixMillis(100), UnixMillis(0))
    }

    #[test]
    fn claim_only_when_due_and_unleased() {
        let mut j = job();
        let early = j.claim("a", UnixMillis(99), 1000);
        assert!(
            matches!(&early, Err(DomainError::FailedPrecondition(m)) if m.ends_with("is not due until 100")),
            "{early:?}"
        );
        let lease = j.claim("a", UnixMillis(100), 1000).unwrap();
        assert_eq!((lease.claim, lease.expires_at), (1, UnixMillis(1100)));
        assert_eq!(j.due_at(), UnixMillis(1100));
        let err = j.claim("b", UnixMillis(500), 1000).unwrap_err();
        assert!(err.to_string().contains("leased by a"), "{err}");
        // The lease runs out: another runner takes it, and the first can no longer finish.
        let taken = j.claim("b", UnixMillis(1100), 1000).unwrap();
        assert_eq!(taken.claim, 2);
        assert!(!j.is_held_by(&lease));
        assert!(j.is_held_by(&taken));
    }

    #[test]
    fn failure_backs_off_and_releases() {
        let mut j = job();
        j.claim("a", UnixMillis(100), 1000).unwrap();
        j.fail("target unreachable", UnixMillis(200), RetryPolicy { base_millis: 1000, cap_millis: 8000 }, 0);
        assert_eq!((j.attempts, j.next_due, j.lease.is_none()), (1, UnixMillis(700), true));
        assert_eq!(j.last_error.as_deref(), Some("target unreachable"));
        j.fail("again", UnixMillis(700), RetryPolicy { base_millis: 1000, cap_millis: 8000 }, 0);
        assert_eq!(j.next_due, UnixMillis(1700));
        j.reschedule(UnixMillis(5000));
        assert_eq!((j.attempts, j.last_error.clone(), j.next_due), (0, None, UnixMillis(5000)));
    }

    #[test]
    fn ids_and_kinds() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::parse(k.label()), Some(k));
            assert_eq!(JobId::singleton(k).kind, k);
        }
        assert_eq!(JobId::singleton(JobKind::ExpirySweep).to_string(), "expiry_sweep");
        let id = RequestId::from_random([7; 16]);
        let j = JobId::for_request(JobKind::Notify, &id);
        assert_eq!(j.request_id(), Some(id.clone()));
        assert_eq!(j.to_string(), format!("notify/{id}"));
        assert!(JobKind::ExpirySweep.is_recurring() && !JobKind::Deliver.is_recurring());
    }
}
