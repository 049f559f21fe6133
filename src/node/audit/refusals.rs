//! Audited access refusals, coalesced (`domain::refusals`): the first
//! refusal of a kind is written to the audit log and logged at once; its
//! repeats inside the window are answered on the async worker without a
//! write and summed into one `policy.denied.repeated` entry when the window
//! closes (flushed by `Audit::flush_closed_refusals`, by the next refusal of the kind,
//! and at shutdown). Calls refused for who is calling (a missing role, a
//! certificate without an identity; on gRPC, the peer service or the metrics
//! listener) are coalesced the same way: `call.refused` at once, then one
//! `call.refused.repeated` with the count.

use super::Audit;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, MAX_DETAILS_CHARS, Outcome, bounded};
use crate::domain::auth::Caller;
use crate::domain::ids::Name;
use crate::domain::policy::Operation;
use crate::domain::refusals::{CallRefusal, Noted, Refusal, Repeats};
use crate::error::{AppError, AppResult};

fn denied(r: &Refusal) -> AppError {
    DomainError::PermissionDenied(format!("{} on {}: {}", r.operation.as_str(), r.spec, r.reason)).into()
}

fn first_event(r: &Refusal, at: crate::domain::ids::UnixMillis) -> AuditEvent {
    AuditEvent::new(at, r.actor.clone(), "policy.denied", r.spec.to_string(), Outcome::Refused).with_details(format!(
        "{}: {}",
        r.operation.as_str(),
        r.reason
    ))
}

fn repeats_event(r: &Repeats) -> AuditEvent {
    let details = format!(
        "{}: {} more refusals of the same call from {} to {}: {}",
        r.refusal.operation.as_str(),
        r.count,
        crate::clock::rfc3339(r.first),
        crate::clock::rfc3339(r.last),
        r.refusal.reason
    );
    AuditEvent::new(
        r.last,
        r.refusal.actor.clone(),
        "policy.denied.repeated",
        r.refusal.spec.to_string(),
        Outcome::Refused,
    )
    .with_details(details)
}

fn call_repeats_event(r: &Repeats<CallRefusal>) -> AuditEvent {
    let details = format!(
        "{} more refusals of the same call from {} to {}: {}",
        r.count,
        crate::clock::rfc3339(r.first),
        crate::clock::rfc3339(r.last),
        r.refusal.reason
    );
    AuditEvent::new(r.last, r.refusal.actor.clone(), "call.refused.repeated", r.refusal.scope.clone(), Outcome::Refused)
        .with_details(details)
}

impl Audit {
    fn call_refusal_windows(&self) -> std::sync::MutexGuard<'_, crate::domain::refusals::RefusalWindows<CallRefusal>> {
        self.call_refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Audits a refused call: `subject` (bounded) is what the first entry
    /// names; `scope` what its repeats are counted by (the method; for the
    /// metrics listener the listener, whatever the path). A repeat inside an
    /// open window is counted without a write.
    pub async fn audit_call_refusal(&self, actor: String, scope: String, subject: String, reason: String) {
        let refusal = CallRefusal::new(&actor, bounded(scope, crate::domain::audit::MAX_SUBJECT_CHARS), {
            bounded(reason, MAX_DETAILS_CHARS)
        });
        if self.call_refusal_windows().count_repeat(&refusal, self.now()) {
            return;
        }
        let now = self.now();
        let (noted, closed) = self.call_refusal_windows().note(refusal.clone(), now);
        let mut events: Vec<AuditEvent> = closed.iter().map(call_repeats_event).collect();
        if noted == Noted::First {
            events.push(
                AuditEvent::new(now, actor, "call.refused", subject, Outcome::Refused).with_details(refusal.reason),
            );
        }
        self.audit_refusals(events).await;
    }

    fn refusal_windows(&self) -> std::sync::MutexGuard<'_, crate::domain::refusals::RefusalWindows> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses the call with PERMISSION_DENIED, auditing it (see the module
    /// docs): a repeat inside an open window is answered without a write.
    pub async fn refused(&self, caller: &Caller, spec: &Name, operation: Operation, reason: String) -> AppResult<()> {
        let (refusal, events) = self.note_refusal(caller, spec, operation, reason);
        self.audit_refusals(events).await;
        Err(denied(&refusal))
    }

    /// Notes a refusal in its window: the entries to write (the counts of
    /// windows it closed, and the refusal itself when it is the first).
    fn note_refusal(
        &self,
        caller: &Caller,
        spec: &Name,
        operation: Operation,
        reason: String,
    ) -> (Refusal, Vec<AuditEvent>) {
        let refusal = Refusal { actor: caller.actor(), spec: spec.clone(), operation, reason };
        let now = self.now();
        let (noted, closed) = self.refusal_windows().note(refusal.clone(), now);
        let mut events: Vec<AuditEvent> = closed.iter().map(repeats_event).collect();
        if noted == Noted::First {
            events.push(first_event(&refusal, now));
            tracing::warn!(
                caller = %refusal.actor,
                %spec,
                operation = operation.as_str(),
                reason = %refusal.reason,
                "access denied by policy (repeats within the next few seconds are counted, not logged)"
            );
        }
        (refusal, events)
    }

    /// Whether a refusal window has closed and `flush_refusals` has work.
    pub fn refusals_to_flush(&self) -> bool {
        let now = self.now();
        self.refusal_windows().any_closed(now) || self.call_refusal_windows().any_closed(now)
    }

    /// Writes the repeat counts of the windows that have closed (`all`: of
    /// every window, at shutdown).
    pub async fn flush_refusals(&self, all: bool) {
        let now = self.now();
        let (closed, calls) = match all {
            true => (self.refusal_windows().close_all(), self.call_refusal_windows().close_all()),
            false => (self.refusal_windows().close_expired(now), self.call_refusal_windows().close_expired(now)),
        };
        let mut events: Vec<AuditEvent> = closed.iter().map(repeats_event).collect();
        events.extend(calls.iter().map(call_repeats_event));
        self.audit_refusals(events).await;
    }

    /// Writes `events` (none: no write, no hop) and logs the repeat counts.
    async fn audit_refusals(&self, events: Vec<AuditEvent>) {
        if events.is_empty() {
            return;
        }
        let n = events.len();
        // The repeats are logged after the write, as ever; they are kept
        // only when there is one to log.
        let repeats: Vec<AuditEvent> = events.iter().filter(|e| is_repeat(e)).cloned().collect();
        if let Err(e) = self.audit_store.append_audit(events).await {
            tracing::error!(error = %e, entries = n, "could not audit refusals");
        }
        log_repeats(&repeats);
    }
}

fn is_repeat(e: &AuditEvent) -> bool {
    e.action.ends_with(".repeated")
}

fn log_repeats(events: &[AuditEvent]) {
    for e in events.iter().filter(|e| is_repeat(e)) {
        tracing::warn!(caller = %e.actor, subject = %e.subject, details = %e.details, "refused repeatedly");
    }
}
