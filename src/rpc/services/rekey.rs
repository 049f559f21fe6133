//! Rekeys: the progress of each rekey run and the rekey debt (read only).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::auth::Permission;
use crate::domain::ids::RequestId;
use crate::node::audit::Access;
use crate::node::rekey::Rekey;
use crate::rpc::caller::authorize;
use crate::rpc::convert_rekey::{key_debt, rekey};
use crate::rpc::pb::{self, rekeys_server::Rekeys};

pub struct RekeysService {
    pub access: Arc<Access>,
    pub rekey: Arc<Rekey>,
}

#[tonic::async_trait]
impl Rekeys for RekeysService {
    async fn get_rekey(&self, req: Request<pb::GetRekeyRequest>) -> Result<Response<pb::GetRekeyResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let id = RequestId::parse(&req.into_inner().request_id)?;
        let run = self.rekey.rekey_run(id).await?;
        let debt = self.rekey.debt_of_run(run.clone()).await?;
        Ok(Response::new(pb::GetRekeyResponse { rekey: Some(rekey(&run, &debt, self.rekey.now())) }))
    }

    async fn list_rekeys(
        &self,
        req: Request<pb::ListRekeysRequest>,
    ) -> Result<Response<pb::ListRekeysResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let now = self.rekey.now();
        let mut out = Vec::new();
        for run in self.rekey.rekey_runs().await? {
            let debt = self.rekey.debt_of_run(run.clone()).await?;
            out.push(rekey(&run, &debt, now));
        }
        Ok(Response::new(pb::ListRekeysResponse { rekeys: out }))
    }

    async fn list_rekey_debt(
        &self,
        req: Request<pb::ListRekeyDebtRequest>,
    ) -> Result<Response<pb::ListRekeyDebtResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let debts = self.rekey.rekey_debt().await?;
        let total_records = debts.iter().map(|d| d.records).sum();
        Ok(Response::new(pb::ListRekeyDebtResponse { debts: debts.iter().map(key_debt).collect(), total_records }))
    }
}
