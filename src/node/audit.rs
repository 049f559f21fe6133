//! Reading and checking the audit log, and auditing refused calls.

use std::sync::Arc;

use super::Node;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEntry, BrokenLink, ChainVerifier};
use crate::error::AppResult;

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

impl Node {
    /// Records a refused call (the caller's identity, the method, the
    /// reason), coalesced with its repeats (`node::refusals`).
    pub async fn audit_refusal(self: &Arc<Self>, actor: String, method: String, reason: String) {
        self.audit_call_refusal(actor, method.clone(), method, reason).await;
    }

    /// Matching entries after `filter.after_seq`; also returns where to continue (0 at the end).
    pub async fn audit_entries(self: &Arc<Self>, filter: AuditFilter) -> AppResult<(Vec<AuditEntry>, u64)> {
        self.blocking(move |node| {
            let mut out = Vec::new();
            let mut after = filter.after_seq;
            loop {
                let page = node.store.audit_rows(after, PAGE)?;
                let Some((last, _)) = page.last() else { return Ok((out, 0)) };
                after = *last;
                for (seq, bytes) in page {
                    let e = AuditEntry::decode(&bytes).map_err(|err| {
                        DomainError::FailedPrecondition(format!(
                            "audit entry {seq} is damaged ({err}); run audit verify"
                        ))
                    })?;
                    if filter.matches(&e) {
                        out.push(e);
                        if out.len() >= filter.limit {
                            return Ok((out, after));
                        }
                    }
                }
            }
        })
        .await
    }

    /// Verifies the whole chain: how many entries, or the first broken link.
    pub async fn verify_audit(self: &Arc<Self>) -> AppResult<Result<u64, BrokenLink>> {
        self.blocking(|node| {
            let mut verifier = ChainVerifier::default();
            loop {
                let page = node.store.audit_rows(verifier.verified(), PAGE)?;
                if page.is_empty() {
                    return Ok(Ok(verifier.verified()));
                }
                for (seq, bytes) in &page {
                    let checked = match AuditEntry::decode(bytes) {
                        Ok(e) if e.seq == *seq => verifier.push(&e),
                        Ok(_) => Err(BrokenLink { seq: *seq, reason: "stored under the wrong sequence number".into() }),
                        Err(err) => Err(BrokenLink { seq: *seq, reason: format!("does not decode: {err}") }),
                    };
                    if let Err(broken) = checked {
                        return Ok(Err(broken));
                    }
                }
            }
        })
        .await
    }
}
