//! Properties: typed system properties.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::auth::Permission;
use crate::node::audit::Access;
use crate::node::catalog::Catalog;
use crate::node::catalog::properties::PropertyView;
use crate::rpc::caller::authorize;
use crate::rpc::convert;
use crate::rpc::pb::{self, properties_server::Properties};

pub struct PropertiesService {
    pub access: Arc<Access>,
    pub catalog: Arc<Catalog>,
}

fn property(v: &PropertyView) -> pb::Property {
    pb::Property {
        name: v.name.clone(),
        value: v.value.clone(),
        r#type: v.kind.as_str().to_owned(),
        is_default: v.is_default,
        updated_at: v.stored.as_ref().map(|p| convert::ts(p.updated_at)),
        updated_by: v.stored.as_ref().map(|p| p.updated_by.clone()).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Properties for PropertiesService {
    async fn get_property(
        &self,
        req: Request<pb::GetPropertyRequest>,
    ) -> Result<Response<pb::GetPropertyResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let v = self.catalog.property(req.into_inner().name).await?;
        Ok(Response::new(pb::GetPropertyResponse { property: Some(property(&v)) }))
    }

    async fn set_property(
        &self,
        req: Request<pb::SetPropertyRequest>,
    ) -> Result<Response<pb::SetPropertyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let r = req.into_inner();
        let v = self.catalog.set_property(&auth.caller, r.name, r.value).await?;
        Ok(Response::new(pb::SetPropertyResponse { property: Some(property(&v)) }))
    }

    async fn list_properties(
        &self,
        req: Request<pb::ListPropertiesRequest>,
    ) -> Result<Response<pb::ListPropertiesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let list = self.catalog.properties().await?;
        Ok(Response::new(pb::ListPropertiesResponse { properties: list.iter().map(property).collect() }))
    }
}
