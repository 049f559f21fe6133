//! Instance.Diagnose: authorise (any operator role), run the diagnostics service's checks,
//! publish the result to the health service, convert the components.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::auth::Permission;
use crate::domain::health::{Component, HealthStatus};
use crate::node::audit::Access;
use crate::node::diagnostics::Diagnostics;
use crate::rpc::caller::authorize;
use crate::rpc::health::HealthPublisher;
use crate::rpc::{convert, pb};

pub async fn diagnose(
    access: &Access,
    diagnostics: &Arc<Diagnostics>,
    health: &HealthPublisher,
    req: Request<pb::DiagnoseRequest>,
) -> Result<Response<pb::DiagnoseResponse>, Status> {
    authorize(access, &req, Permission::Read).await?;
    let d = diagnostics.diagnose_and_record().await;
    health.publish(&d).await;
    Ok(Response::new(pb::DiagnoseResponse {
        status: status(d.root.status) as i32,
        components: d.root.children.iter().map(component).collect(),
        checked_at: Some(convert::ts(d.checked_at)),
    }))
}

fn status(s: HealthStatus) -> pb::ComponentStatus {
    match s {
        HealthStatus::Operational => pb::ComponentStatus::Operational,
        HealthStatus::Degraded => pb::ComponentStatus::Degraded,
        HealthStatus::Malfunction => pb::ComponentStatus::Malfunction,
        HealthStatus::Disabled => pb::ComponentStatus::Disabled,
    }
}

fn component(c: &Component) -> pb::Component {
    pb::Component {
        name: c.name.clone(),
        status: status(c.status) as i32,
        message: c.message.clone(),
        children: c.children.iter().map(component).collect(),
    }
}
