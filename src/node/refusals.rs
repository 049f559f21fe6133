//! Audited access refusals, coalesced (`domain::refusals`): the first
//! refusal of a kind is written to the audit log and logged at once; its
//! repeats inside the window are answered on the async worker without a
//! write and summed into one `policy.denied.repeated` entry when the window
//! closes (flushed by the job runner's loop, by the next refusal of the kind,
//! and at shutdown).

use super::Node;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::ids::Name;
use crate::domain::policy::Operation;
use crate::domain::refusals::{Noted, Refusal, Repeats};
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

impl Node {
    fn refusal_windows(&self) -> std::sync::MutexGuard<'_, crate::domain::refusals::RefusalWindows> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses the call with PERMISSION_DENIED, auditing it (see the module
    /// docs); `inline`: `WouldBlock` when that needs a write.
    pub(super) fn refused(
        &self,
        caller: &Caller,
        spec: &Name,
        operation: Operation,
        reason: String,
        inline: bool,
    ) -> AppResult<()> {
        let refusal = Refusal { actor: caller.actor(), spec: spec.clone(), operation, reason };
        let now = self.now();
        if inline {
            return match self.refusal_windows().count_repeat(&refusal, now) {
                true => Err(denied(&refusal)),
                false => Err(AppError::WouldBlock),
            };
        }
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
        self.audit_refusals(&events);
        Err(denied(&refusal))
    }

    /// Whether a refusal window has closed and `flush_refusals` has work.
    pub fn refusals_to_flush(&self) -> bool {
        self.refusal_windows().any_closed(self.now())
    }

    /// Writes the repeat counts of the windows that have closed (`all`: of
    /// every window, at shutdown).
    pub async fn flush_refusals(self: &std::sync::Arc<Self>, all: bool) {
        let _ = self
            .blocking(move |node| {
                node.write_closed_refusals(all);
                Ok(())
            })
            .await;
    }

    fn write_closed_refusals(&self, all: bool) {
        let closed = match all {
            true => self.refusal_windows().close_all(),
            false => self.refusal_windows().close_expired(self.now()),
        };
        let events: Vec<AuditEvent> = closed.iter().map(repeats_event).collect();
        self.audit_refusals(&events);
    }

    fn audit_refusals(&self, events: &[AuditEvent]) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.store.append_audit(events) {
            tracing::error!(error = %e, entries = events.len(), "could not audit policy denials");
        }
        for e in events.iter().filter(|e| e.action == "policy.denied.repeated") {
            tracing::warn!(caller = %e.actor, spec = %e.subject, details = %e.details, "access denied repeatedly");
        }
    }
}
