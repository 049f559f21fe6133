//! Clones (operator side: clone targets) and CloneSource (peer side: the
//! snapshot stream a registered clone target pulls).

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::peer::instance;
use crate::domain::auth::Permission;
use crate::domain::clone::GrantBasis;
use crate::domain::ids::{CloneId, Host, Name, SysId};
use crate::node::audit::Access;
use crate::node::clone::{Clones as CloneUseCases, NewCloneSchedule};
use crate::rpc::caller::authorize;
use crate::rpc::convert_clone::{cadence_from, clone_info, clone_schedule, clone_target, snapshot_part};
use crate::rpc::pb::{self, clone_source_server::CloneSource, clones_server::Clones};

pub struct ClonesService {
    pub access: Arc<Access>,
    pub clone: Arc<CloneUseCases>,
}

pub struct CloneSourceService {
    pub access: Arc<Access>,
    pub clone: Arc<CloneUseCases>,
}

#[tonic::async_trait]
impl Clones for ClonesService {
    async fn add_clone_target(
        &self,
        req: Request<pb::AddCloneTargetRequest>,
    ) -> Result<Response<pb::AddCloneTargetResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let r = req.into_inner();
        let (sys_id, host) = (SysId::parse(&r.sys_id)?, Host::parse_dialable(&r.host, "host")?);
        let target = self.clone.add_clone_target(&auth.caller, sys_id, host).await?;
        Ok(Response::new(pb::AddCloneTargetResponse { target: Some(clone_target(&target, GrantBasis::Registered)) }))
    }

    async fn list_clone_targets(
        &self,
        req: Request<pb::ListCloneTargetsRequest>,
    ) -> Result<Response<pb::ListCloneTargetsResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let targets = self.clone.clone_targets().await?;
        Ok(Response::new(pb::ListCloneTargetsResponse {
            targets: targets.iter().map(|(t, b)| clone_target(t, *b)).collect(),
        }))
    }

    async fn remove_clone_target(
        &self,
        req: Request<pb::RemoveCloneTargetRequest>,
    ) -> Result<Response<pb::RemoveCloneTargetResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let sys_id = SysId::parse(&req.into_inner().sys_id)?;
        self.clone.remove_clone_target(&auth.caller, sys_id).await?;
        Ok(Response::new(pb::RemoveCloneTargetResponse {}))
    }

    async fn start_clone(
        &self,
        req: Request<pb::StartCloneRequest>,
    ) -> Result<Response<pb::StartCloneResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let r = req.into_inner();
        let (source, host) = (SysId::parse(&r.source_sys_id)?, Host::parse_dialable(&r.source_host, "source_host")?);
        let run = self.clone.start_clone(&auth.caller, source, host).await?;
        Ok(Response::new(pb::StartCloneResponse { clone: Some(clone_info(&run)) }))
    }

    async fn get_clone(&self, req: Request<pb::GetCloneRequest>) -> Result<Response<pb::GetCloneResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let run = self.clone.clone_run(CloneId::parse(&req.into_inner().clone_id)?).await?;
        Ok(Response::new(pb::GetCloneResponse { clone: Some(clone_info(&run)) }))
    }

    async fn list_clones(
        &self,
        req: Request<pb::ListClonesRequest>,
    ) -> Result<Response<pb::ListClonesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let runs = self.clone.clone_runs().await?;
        Ok(Response::new(pb::ListClonesResponse { clones: runs.iter().map(clone_info).collect() }))
    }

    async fn create_clone_schedule(
        &self,
        req: Request<pb::CreateCloneScheduleRequest>,
    ) -> Result<Response<pb::CreateCloneScheduleResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let r = req.into_inner();
        let new = NewCloneSchedule {
            name: Name::parse(&r.name, "name")?,
            source: SysId::parse(&r.source_sys_id)?,
            source_host: Host::parse_dialable(&r.source_host, "source_host")?,
            cadence: cadence_from(&r.every, &r.cron)?,
        };
        let schedule = self.clone.create_clone_schedule(&auth.caller, new).await?;
        Ok(Response::new(pb::CreateCloneScheduleResponse { schedule: Some(clone_schedule(&schedule)) }))
    }

    async fn list_clone_schedules(
        &self,
        req: Request<pb::ListCloneSchedulesRequest>,
    ) -> Result<Response<pb::ListCloneSchedulesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let schedules = self.clone.clone_schedules().await?;
        Ok(Response::new(pb::ListCloneSchedulesResponse { schedules: schedules.iter().map(clone_schedule).collect() }))
    }

    async fn delete_clone_schedule(
        &self,
        req: Request<pb::DeleteCloneScheduleRequest>,
    ) -> Result<Response<pb::DeleteCloneScheduleResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageExchanges).await?;
        let name = Name::parse(&req.into_inner().name, "name")?;
        let schedule = self.clone.delete_clone_schedule(&auth.caller, name).await?;
        Ok(Response::new(pb::DeleteCloneScheduleResponse { schedule: Some(clone_schedule(&schedule)) }))
    }
}

type PartStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotPart, Status>> + Send>>;

#[tonic::async_trait]
impl CloneSource for CloneSourceService {
    type StreamSnapshotStream = PartStream;

    async fn stream_snapshot(
        &self,
        req: Request<pb::StreamSnapshotRequest>,
    ) -> Result<Response<Self::StreamSnapshotStream>, Status> {
        let (caller, _) = instance(&self.access, &req).await?;
        let parts = self.clone.serve_snapshot(caller).await?;
        let stream = ReceiverStream::new(parts).map(|p| p.map(|p| snapshot_part(&p)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}
