//! Audit: list entries and verify the chain.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::auth::Permission;
use crate::node::audit::AuditFilter;
use crate::node::audit::{Access, Audit as AuditLog};
use crate::rpc::caller::authorize;
use crate::rpc::convert;
use crate::rpc::pb::{self, audit_server::Audit};

pub struct AuditService {
    pub access: Arc<Access>,
    pub audit: Arc<AuditLog>,
}

/// Most entries one ListAuditEntries call returns.
const MAX_LIMIT: u32 = 10_000;

#[tonic::async_trait]
impl Audit for AuditService {
    async fn list_audit_entries(
        &self,
        req: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<Response<pb::ListAuditEntriesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let r = req.into_inner();
        let limit = match r.limit {
            0 => 100,
            n => n.min(MAX_LIMIT),
        } as usize;
        let filter = AuditFilter {
            after_seq: r.after_seq,
            limit,
            action_prefix: r.action_prefix,
            actor: r.actor,
            subject: r.subject,
        };
        let (entries, next) = self.audit.audit_entries(filter).await?;
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries: entries.iter().map(convert::audit_entry).collect(),
            next_after_seq: next,
        }))
    }

    async fn verify_audit_chain(
        &self,
        req: Request<pb::VerifyAuditChainRequest>,
    ) -> Result<Response<pb::VerifyAuditChainResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let answer = match self.audit.verify_audit().await? {
            Ok(n) => pb::VerifyAuditChainResponse {
                intact: true,
                entries_verified: n,
                broken_at_seq: 0,
                reason: String::new(),
            },
            Err(b) => pb::VerifyAuditChainResponse {
                intact: false,
                entries_verified: b.seq.saturating_sub(1),
                broken_at_seq: b.seq,
                reason: b.reason,
            },
        };
        Ok(Response::new(answer))
    }
}
