//! The audit service: reading and checking the audit log, and auditing
//! refused calls and access refusals, coalesced (`refusals.rs`). `access.rs`
//! is who is calling: the caller a certificate names and whether the TLS
//! configuration in use refuses it.

mod access;
mod refusals;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEntry, BrokenLink, ChainVerifier};
use crate::domain::refusals::{CallRefusal, RefusalWindows};
use crate::error::AppResult;
use crate::signer::async_signer::off_the_workers;
use crate::store::AuditStore;
pub use access::Access;

/// Filters for listing entries.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub after_seq: u64,
    pub limit: usize,
    pub action_prefix: String,
    pub actor: String,
    pub subject: String,
}

impl AuditFilter {
    fn matches(&self, e: &AuditEntry) -> bool {
        e.event.action.starts_with(&self.action_prefix)
            && (self.actor.is_empty() || e.event.actor == self.actor)
            && (self.subject.is_empty() || e.event.subject == self.subject)
    }
}

/// Entries read per store call while scanning.
const PAGE: usize = 1000;

pub struct Audit {
    audit_store: AuditStore,
    clock: Arc<dyn Clock>,
    /// Open windows of coalesced access refusals.
    refusals: Mutex<RefusalWindows>,
    /// Open windows of coalesced refused calls (role, certificate).
    call_refusals: Mutex<RefusalWindows<CallRefusal>>,
}

/// How often closed refusal windows are written when nothing else writes them.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Audit {
    pub fn new(ctx: &Context) -> Self {
        Audit {
            audit_store: AuditStore::new(&ctx.store),
            clock: Arc::clone(&ctx.clock),
            refusals: Mutex::default(),
            call_refusals: Mutex::default(),
        }
    }

    fn now(&self) -> crate::domain::ids::UnixMillis {
        self.clock.now()
    }

    /// Writes the repeat counts of closed refusal windows every
    /// `min(FLUSH_EVERY, every)` until `cancel`.
    pub async fn flush_closed_refusals(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        let every = every.clamp(Duration::from_millis(1), FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                // A timer, not a wait on a condition: a window closes by the clock
                // alone, so this polls at most once a second whether one did.
                _ = tokio::time::sleep(every) => {}
            }
            if self.refusals_to_flush() {
                self.flush_refusals(false).await;
            }
        }
    }

    /// Records a refused call (the caller's identity, the method, the
    /// reason), coalesced with its repeats (`refusals.rs`).
    pub async fn audit_refusal(&self, actor: String, method: String, reason: String) {
        self.audit_call_refusal(actor, method.clone(), method, reason).await;
    }

    /// Matching entries after `filter.after_seq`; also returns where to continue (the
    /// sequence number of the last entry returned, 0 at the end).
    pub async fn audit_entries(&self, filter: AuditFilter) -> AppResult<(Vec<AuditEntry>, u64)> {
        let mut out = Vec::new();
        let mut after = filter.after_seq;
        loop {
            let page = self.audit_store.audit_rows(after, PAGE).await?;
            let Some((last, _)) = page.last() else { return Ok((out, 0)) };
            after = *last;
            for (seq, bytes) in page {
                let e = AuditEntry::decode(&bytes).map_err(|err| {
                    DomainError::FailedPrecondition(format!("audit entry {seq} is damaged ({err}); run audit verify"))
                })?;
                if filter.matches(&e) {
                    out.push(e);
                    if out.len() >= filter.limit {
                        // Continue after the last entry returned, not after the page scanned.
                        return Ok((out, seq));
                    }
                }
            }
        }
    }

    /// Verifies the whole chain: how many entries, or the first broken link.
    /// Each page is read, then its hashes checked off the workers.
    pub async fn verify_audit(&self) -> AppResult<Result<u64, BrokenLink>> {
        let mut verifier = ChainVerifier::default();
        loop {
            let page = self.audit_store.audit_rows(verifier.verified(), PAGE).await?;
            if page.is_empty() {
                return Ok(Ok(verifier.verified()));
            }
            let broken;
            (verifier, broken) = off_the_workers(move || Ok(verify_page(verifier, &page))).await?;
            if let Some(broken) = broken {
                return Ok(Err(broken));
            }
        }
    }
}

/// Pushes a page of raw rows through `verifier`: the verifier after it, and
/// the first broken link if there is one.
fn verify_page(mut verifier: ChainVerifier, page: &[(u64, Vec<u8>)]) -> (ChainVerifier, Option<BrokenLink>) {
    for (seq, bytes) in page {
        let checked = match AuditEntry::decode(bytes) {
            Ok(e) if e.seq == *seq => verifier.push(&e),
            Ok(_) => Err(BrokenLink { seq: *seq, reason: "stored under the wrong sequence number".into() }),
            Err(err) => Err(BrokenLink { seq: *seq, reason: format!("does not decode: {err}") }),
        };
        if let Err(broken) = checked {
            return (verifier, Some(broken));
        }
    }
    (verifier, None)
}
