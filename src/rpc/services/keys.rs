//! Instance and KeyManagement services.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::DomainError;
use crate::domain::auth::Permission;
use crate::domain::ids::{ImportToken, KeyId};
use crate::domain::key::{KeyAction, LifecycleDefinition};
use crate::node::InstanceInfo;
use crate::node::audit::Access;
use crate::node::byok::Byok;
use crate::node::catalog::{Catalog, DefaultAccess};
use crate::node::diagnostics::Diagnostics;
use crate::rpc::caller::authorize;
use crate::rpc::convert;
use crate::rpc::health::HealthPublisher;
use crate::rpc::pb::{self, instance_server::Instance, key_management_server::KeyManagement};

pub struct InstanceService {
    pub access: Arc<Access>,
    pub info: InstanceInfo,
    pub diagnostics: Arc<Diagnostics>,
    /// Every `Diagnose` is published to the health service too.
    pub health: Arc<HealthPublisher>,
}
pub struct KeyManagementService {
    pub access: Arc<Access>,
    pub catalog: Arc<Catalog>,
    pub byok: Arc<Byok>,
}

#[tonic::async_trait]
impl Instance for InstanceService {
    async fn info(&self, req: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let info = self.info.clone();
        Ok(Response::new(pb::InfoResponse {
            sys_id: info.sys_id.to_string(),
            host: info.host.to_string(),
            version: info.version.to_owned(),
            signer_kind: info.signer_kind.to_owned(),
        }))
    }

    async fn diagnose(&self, req: Request<pb::DiagnoseRequest>) -> Result<Response<pb::DiagnoseResponse>, Status> {
        super::diagnostics::diagnose(&self.access, &self.diagnostics, &self.health, req).await
    }
}

#[tonic::async_trait]
impl KeyManagement for KeyManagementService {
    async fn create_module(
        &self,
        req: Request<pb::CreateModuleRequest>,
    ) -> Result<Response<pb::CreateModuleResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let name = convert::name(&req.get_ref().name, "name")?;
        let access = match pb::DefaultAccess::try_from(req.get_ref().default_access) {
            Ok(pb::DefaultAccess::Reject) => DefaultAccess::Reject,
            Ok(pb::DefaultAccess::Track) => DefaultAccess::Track,
            _ => return Err(DomainError::invalid("default_access", "set REJECT or TRACK").into()),
        };
        let module = self.catalog.create_module(&auth.caller, name, access).await?;
        Ok(Response::new(pb::CreateModuleResponse { module: Some(convert::module(&module)) }))
    }

    async fn list_modules(
        &self,
        req: Request<pb::ListModulesRequest>,
    ) -> Result<Response<pb::ListModulesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let modules = self.catalog.modules().await?;
        Ok(Response::new(pb::ListModulesResponse { modules: modules.iter().map(convert::module).collect() }))
    }

    async fn create_spec(
        &self,
        req: Request<pb::CreateSpecRequest>,
    ) -> Result<Response<pb::CreateSpecResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let r = req.get_ref();
        let module = convert::name(&r.module, "module")?;
        let name = convert::name(&r.name, "name")?;
        let choice = convert::spec_choice(r)?;
        let spec = self.catalog.create_spec(&auth.caller, module, name, choice, r.exportable).await?;
        Ok(Response::new(pb::CreateSpecResponse { spec: Some(convert::spec(&spec)) }))
    }

    async fn list_specs(&self, req: Request<pb::ListSpecsRequest>) -> Result<Response<pb::ListSpecsResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let module = &req.get_ref().module;
        let module = if module.is_empty() { None } else { Some(convert::name(module, "module")?) };
        let specs = self.catalog.specs(module).await?;
        Ok(Response::new(pb::ListSpecsResponse { specs: specs.iter().map(convert::spec).collect() }))
    }

    async fn generate_key(
        &self,
        req: Request<pb::GenerateKeyRequest>,
    ) -> Result<Response<pb::GenerateKeyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let spec = convert::name(&req.get_ref().spec, "spec")?;
        let key = self.catalog.generate_key(&auth.caller, spec).await?;
        Ok(Response::new(pb::GenerateKeyResponse { key: Some(convert::key(&key)) }))
    }

    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::RotateKeys).await?;
        let spec = convert::name(&req.get_ref().spec, "spec")?;
        let (old, new) = self.catalog.rotate_key(&auth.caller, spec).await?;
        Ok(Response::new(pb::RotateKeyResponse {
            deactivated: Some(convert::key(&old)),
            active: Some(convert::key(&new)),
        }))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let spec = convert::name(&req.get_ref().spec, "spec")?;
        let keys = self.catalog.keys(spec).await?;
        Ok(Response::new(pb::ListKeysResponse { keys: keys.iter().map(convert::key).collect() }))
    }

    async fn change_key_state(
        &self,
        req: Request<pb::ChangeKeyStateRequest>,
    ) -> Result<Response<pb::ChangeKeyStateResponse>, Status> {
        let action = convert::key_action(req.get_ref().action, req.get_ref().reason.clone())?;
        // Renew and revoke are operator work; the rest is management.
        let permission = match action {
            KeyAction::Renew | KeyAction::Revoke { .. } => Permission::RotateKeys,
            _ => Permission::ManageKeys,
        };
        let auth = authorize(&self.access, &req, permission).await?;
        let key = KeyId::parse(&req.get_ref().key_id)?;
        let keys = self.catalog.change_key_state(&auth.caller, key, action).await?;
        Ok(Response::new(pb::ChangeKeyStateResponse { keys: keys.iter().map(convert::key).collect() }))
    }

    async fn set_spec_lifecycle(
        &self,
        req: Request<pb::SetSpecLifecycleRequest>,
    ) -> Result<Response<pb::SetSpecLifecycleResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let r = req.get_ref();
        let spec = convert::name(&r.spec, "spec")?;
        let lifecycle = LifecycleDefinition {
            expire_after: convert::opt_duration(&r.expire_after, "expire_after")?,
            destroy_after_idle: convert::opt_duration(&r.destroy_after_idle, "destroy_after_idle")?,
        };
        let spec = self.catalog.set_spec_lifecycle(&auth.caller, spec, lifecycle).await?;
        Ok(Response::new(pb::SetSpecLifecycleResponse { spec: Some(convert::spec(&spec)) }))
    }

    async fn set_lifecycle_policy(
        &self,
        req: Request<pb::SetLifecyclePolicyRequest>,
    ) -> Result<Response<pb::SetLifecyclePolicyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let policy = req.get_ref().policy.as_ref().ok_or_else(|| DomainError::invalid("policy", "missing"))?;
        let policy = convert::lifecycle_policy_from(policy)?;
        let saved = self.catalog.set_lifecycle_policy(&auth.caller, policy).await?;
        Ok(Response::new(pb::SetLifecyclePolicyResponse { policy: Some(convert::lifecycle_policy(&saved)) }))
    }

    async fn get_import_parameters(
        &self,
        req: Request<pb::GetImportParametersRequest>,
    ) -> Result<Response<pb::GetImportParametersResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let r = req.get_ref();
        let spec = convert::name(&r.spec, "spec")?;
        let ttl = r.expires_in.as_ref().map(convert::duration_millis).transpose()?;
        let p = self.byok.import_parameters(&auth.caller, spec, ttl).await?;
        Ok(Response::new(pb::GetImportParametersResponse {
            import_token: p.token.to_string(),
            spec: p.spec.to_string(),
            public_key_pem: p.public_key_pem,
            public_key_der: p.public_key_der,
            expires_at: Some(convert::ts(p.expires_at)),
            wrapping_algorithm: convert::wrapping(p.wrapping) as i32,
        }))
    }

    async fn import_key(&self, req: Request<pb::ImportKeyRequest>) -> Result<Response<pb::ImportKeyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ManageKeys).await?;
        let r = req.into_inner();
        let token = ImportToken::parse(&r.import_token)?;
        let spec = convert::name(&r.spec, "spec")?;
        let key = self.byok.import_key(&auth.caller, token, spec, r.wrapped_key).await?;
        Ok(Response::new(pb::ImportKeyResponse { key: Some(convert::key(&key)) }))
    }

    async fn export_key(&self, req: Request<pb::ExportKeyRequest>) -> Result<Response<pb::ExportKeyResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::ExportKeys).await?;
        let r = req.into_inner();
        let key = KeyId::parse(&r.key_id)?;
        let out = self.byok.export_key(&auth.caller, key, r.public_key_pem).await?;
        Ok(Response::new(pb::ExportKeyResponse {
            key_id: out.key_id.to_string(),
            spec: out.spec.to_string(),
            wrapped_key: out.wrapped,
            wrapping_algorithm: pb::WrappingAlgorithm::RsaAesKeyWrapSha256 as i32,
            public_key_sha256: out.public_key_sha256,
        }))
    }

    async fn list_lifecycle_policies(
        &self,
        req: Request<pb::ListLifecyclePoliciesRequest>,
    ) -> Result<Response<pb::ListLifecyclePoliciesResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let policies = self.catalog.lifecycle_policies().await?;
        Ok(Response::new(pb::ListLifecyclePoliciesResponse {
            policies: policies.iter().map(convert::lifecycle_policy).collect(),
        }))
    }
}
