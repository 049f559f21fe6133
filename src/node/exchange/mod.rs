//! The exchange service: both sides of a key exchange. The source side
//! (`source.rs`) records a request a target opens, approves, rejects or
//! retries it, builds and signs the bundle and runs the delivery, notice and
//! expiry jobs; `approval.rs` decides whether a request after a clone is
//! approved without a person. The target side (`target.rs`) creates the
//! request, opens it on the source and imports the bundle exactly once.
//! `proof.rs` is the receipt that proves an import.

mod approval;
mod proof;
mod source;
mod target;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_decisions;
#[cfg(test)]
mod tests_delivery;
#[cfg(test)]
mod tests_open;

use std::sync::Arc;

use super::catalog::Catalog;
use super::context::{Context, JobSettings, JobSignals, millis};
use super::jobs::{JobFuture, JobHandler, JobRun};
use super::ports::PeerLink;
use crate::clock::Clock;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::exchange::ExchangeRequest;
use crate::domain::ids::{Host, RequestId, SysId, UnixMillis};
use crate::domain::job::{Job, JobId, JobKind};
use crate::domain::sweeps;
use crate::error::AppResult;
use crate::signer::async_signer::{AsyncInstanceKey, AsyncSigner};
use crate::store::{AuditStore, CatalogStore, CloneStore, RequestStore};
pub use proof::RequestProof;
pub use source::Decision;
pub use target::{NewRequest, PlannedRequest};

pub struct Exchange {
    sys_id: SysId,
    host: Host,
    requests: RequestStore,
    /// Specs and keys (read to export, to import, to open a request).
    keys: CatalogStore,
    /// Clone targets and grants (who approves a request after a clone).
    clones: CloneStore,
    audit_store: AuditStore,
    signer: AsyncSigner,
    instance_key: AsyncInstanceKey,
    peers: Arc<dyn PeerLink>,
    clock: Arc<dyn Clock>,
    signals: Arc<JobSignals>,
    settings: JobSettings,
    catalog: Arc<Catalog>,
    /// The instance's certificate (DER) at start, whose key signs receipts
    /// until a restart (`proof.rs`); empty when not given.
    certificate_der: Vec<u8>,
}

impl Exchange {
    pub fn new(ctx: &Context, catalog: Arc<Catalog>, certificate_der: Vec<u8>) -> Self {
        Exchange {
            sys_id: ctx.sys_id.clone(),
            host: ctx.host.clone(),
            requests: RequestStore::new(&ctx.store),
            keys: CatalogStore::new(&ctx.store),
            clones: CloneStore::new(&ctx.store),
            audit_store: AuditStore::new(&ctx.store),
            signer: ctx.async_signer(),
            instance_key: ctx.async_instance_key(),
            peers: Arc::clone(&ctx.peers),
            clock: Arc::clone(&ctx.clock),
            signals: Arc::clone(&ctx.signals),
            settings: ctx.settings.clone(),
            catalog,
            certificate_der,
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }

    /// A page of requests in creation order, and the token of the next page.
    pub async fn requests_page(
        &self,
        page_token: Option<String>,
        page_size: usize,
    ) -> AppResult<(Vec<ExchangeRequest>, Option<String>)> {
        let after = match page_token.filter(|t| !t.is_empty()) {
            None => None,
            Some(t) => Some(
                crate::store::RequestCursor::parse(&t)
                    .ok_or_else(|| crate::domain::DomainError::invalid("page_token", "not a token this server gave"))?,
            ),
        };
        let (page, next) = self.requests.requests_page(after, page_size).await?;
        Ok((page, next.map(|c| c.token())))
    }

    pub async fn request(&self, id: RequestId) -> AppResult<ExchangeRequest> {
        Ok(self.request_or_not_found(&id).await?.value)
    }
}

/// The audit event for a request that just changed; the actor is the one in
/// its latest history line.
fn request_audit(req: &ExchangeRequest, action: &str, outcome: Outcome, details: impl AsRef<str>) -> AuditEvent {
    let actor = req.history.last().map_or_else(|| "system".to_owned(), |t| t.actor.clone());
    let details = format!("status {}; {}", req.status.label(), details.as_ref());
    AuditEvent::new(req.updated_at, actor, action, req.id.to_string(), outcome).with_details(details)
}

/// Deliveries, status notices and the expiry sweep.
impl JobHandler for Exchange {
    fn kinds(&self) -> &'static [JobKind] {
        &[JobKind::Deliver, JobKind::Notify, JobKind::ExpirySweep]
    }

    fn startup_jobs(&self, now: UnixMillis) -> Vec<Job> {
        vec![Job::new(JobId::singleton(JobKind::ExpirySweep), now, now)]
    }

    fn run(self: Arc<Self>, run: JobRun) -> JobFuture {
        Box::pin(async move {
            match run.job.id.kind {
                JobKind::Deliver => self.run_delivery(&run).await,
                JobKind::Notify => self.run_notice(&run).await,
                _ => {
                    self.sweep_expired_now().await?;
                    let next = sweeps::sweep_next_due(&run.job, millis(self.settings.sweep_every), self.now());
                    Ok(super::jobs::JobOutcome::RunAgainAt(next))
                }
            }
        })
    }
}
