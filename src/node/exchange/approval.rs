//! Approval without a person, source side: a request after a clone is
//! approved at once when the grant of that clone still allows it (an
//! AUTOMATIC request, with this source's automatic-exchange property on) or
//! the Resource Exchange policies of its specs approve it (One Time /
//! Recurring Clone; kmf-domain.md §3.5: "the auto-created source MAP
//! approves at clone time"). The approving transaction checks it all again.

use super::Exchange;
use super::source::Decision;
use crate::domain::DomainError;
use crate::domain::clone_decide::{self, SpecPolicies};
use crate::domain::clone_exchange::approval_for;
use crate::domain::delivery::{self, UseUpBy};
use crate::domain::exchange::{ExchangeRequest, Frequency};
use crate::domain::exchange_decide::{self as decide, ApproverStep};
use crate::domain::ids::Name;
use crate::domain::policy::AccessPolicy;
use crate::error::{AppError, AppResult};
use crate::store::{StoreError, SystemApproval, UseUp};

/// What an approval without a person checks again and uses up in its
/// transaction: the clone grant, and a One Time configuration.
#[derive(Clone, Copy)]
pub(super) struct SystemCheck<'a> {
    pub approval: &'a SystemApproval,
    pub use_up: Option<&'a UseUp>,
}

impl Exchange {
    /// Approves `req` when the grant of the clone it follows still allows
    /// it (no person involved); else returns `req`, left for a person. The
    /// approving transaction checks the grant, the source's own
    /// automatic-exchange property and the target's authorisation again and
    /// uses the grant up (and a One Time configuration with it).
    pub(super) async fn approve_by_grant(&self, req: ExchangeRequest) -> AppResult<ExchangeRequest> {
        let Some((actor, approval)) = self.approver(&req).await? else { return Ok(req) };
        let use_up = (req.frequency == Frequency::OneTimeClone).then(|| self.one_time_use_up(&req));
        let system = SystemCheck { approval: &approval, use_up: use_up.as_ref() };
        match self.decide_as(&req.id, &Decision::Approve, &actor, Some(system)).await {
            Ok(approved) => {
                self.signals.wake();
                tracing::info!(request_id = %req.id, target = %req.target.sys_id, frequency = req.frequency.label(), by = %actor, "request approved without a person");
                Ok(approved)
            }
            Err(AppError::Store(StoreError::GrantRefused(why))) => {
                tracing::info!(request_id = %req.id, frequency = req.frequency.label(), %why, "request left pending for a person");
                Ok(self.request_or_not_found(&req.id).await?.value)
            }
            Err(e) => Err(e),
        }
    }

    /// The use of a One Time configuration by the approval of `req`.
    fn one_time_use_up(&self, req: &ExchangeRequest) -> UseUp {
        let now = self.now();
        UseUp {
            target: req.target.sys_id.clone(),
            request: req.id.clone(),
            at: now,
            audit: delivery::one_time_use_audit(req, UseUpBy::Approval, now),
        }
    }

    /// Who approves `req` at once, if anyone, and what the approving
    /// transaction checks again: it must be pending, after a clone, name the
    /// grant of that clone (unexpired, unused for its frequency, covering its
    /// specs), from a target still authorised to clone; an AUTOMATIC request
    /// needs this source's own automatic-exchange property true and is
    /// approved by the grant, a One Time / Recurring Clone request by the
    /// Resource Exchange policies of its specs. Adhoc requests wait for a person.
    async fn approver(&self, req: &ExchangeRequest) -> AppResult<Option<(String, SystemApproval)>> {
        if !decide::wants_system_approval(req) {
            return Ok(None);
        }
        let approval = SystemApproval {
            target: req.target.sys_id.clone(),
            frequency: req.frequency,
            presented: req.clone_grant.clone(),
            specs: req.pending_specs().cloned().collect(),
            at: self.now(),
        };
        let left = |why: String| {
            tracing::info!(request_id = %req.id, frequency = req.frequency.label(), %why, "request left pending for a person");
            None
        };
        let refusal = self.clones.system_approval_refusal(approval.clone()).await?;
        match decide::approver_after_grant(req, refusal) {
            ApproverStep::ApproveAs(actor) => Ok(Some((actor, approval))),
            ApproverStep::LeaveForPerson(why) => Ok(left(why)),
            ApproverStep::CheckPolicies => match decide::approver_by_policies(self.approving_policies(req).await?) {
                Ok(actor) => Ok(Some((actor, approval))),
                Err(why) => Ok(left(why)),
            },
        }
    }

    /// The Resource Exchange policies that approve every pending spec of a
    /// One Time / Recurring Clone request, or None when one spec is not
    /// approved (the request then waits for a person), with why.
    async fn approving_policies(&self, req: &ExchangeRequest) -> AppResult<Result<Vec<Name>, String>> {
        let Some(approval) = approval_for(req.frequency) else { return Ok(Err("not a clone frequency".into())) };
        let mut names = Vec::new();
        for spec_name in req.pending_specs() {
            let Some(spec) = self.keys.spec(spec_name.clone()).await? else { continue };
            let s = SpecPolicies {
                spec: spec_name.clone(),
                policies: self.module_policies(&spec.module).await?,
                module: spec.module,
            };
            match clone_decide::spec_approval(req, approval, &s) {
                Ok(by) => names.extend(by),
                Err(why) => return Ok(Err(why)),
            }
        }
        Ok(Ok(names))
    }

    /// The access policies of `module` (none when the module is not here),
    /// through the catalog.
    async fn module_policies(&self, module: &Name) -> AppResult<Vec<AccessPolicy>> {
        match self.catalog.policies(Some(module.clone())).await {
            Err(AppError::Domain(DomainError::NotFound { .. })) => Ok(Vec::new()),
            other => other,
        }
    }
}
