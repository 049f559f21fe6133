//! The Crypto service's sign/verify, MAC/verify, wrap/unwrap and public-key
//! calls (the trait impl in crypto.rs delegates here).

use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::crypto::CryptoService;
use crate::domain::auth::Permission;
use crate::rpc::caller::authorize;
use crate::rpc::convert;
use crate::rpc::pb;

type Reply<T> = Result<Response<T>, Status>;

impl CryptoService {
    pub(super) async fn do_sign(&self, req: Request<pb::SignRequest>) -> Reply<pb::SignResponse> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let spec = convert::name(&r.spec, "spec")?;
        let (signature, key_id) = self.crypto.sign(&auth.caller, spec, r.message).await?;
        let raw_signature = signature[crate::domain::ciphertext::header_len(&key_id)..].to_vec();
        Ok(Response::new(pb::SignResponse { signature, key_id: key_id.to_string(), raw_signature }))
    }

    pub(super) async fn do_verify(&self, req: Request<pb::VerifyRequest>) -> Reply<pb::VerifyResponse> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let (valid, key_id) = self.crypto.verify(&auth.caller, r.signature, r.message).await?;
        Ok(Response::new(pb::VerifyResponse { valid, key_id: key_id.to_string() }))
    }

    pub(super) async fn do_mac(&self, req: Request<pb::MacRequest>) -> Reply<pb::MacResponse> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let spec = convert::name(&r.spec, "spec")?;
        let (mac, key_id) = self.crypto.mac(&auth.caller, spec, r.message).await?;
        Ok(Response::new(pb::MacResponse { mac, key_id: key_id.to_string() }))
    }

    pub(super) async fn do_verify_mac(&self, req: Request<pb::VerifyMacRequest>) -> Reply<pb::VerifyMacResponse> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let (valid, key_id) = self.crypto.verify_mac(&auth.caller, r.mac, r.message).await?;
        Ok(Response::new(pb::VerifyMacResponse { valid, key_id: key_id.to_string() }))
    }

    pub(super) async fn do_wrap(&self, req: Request<pb::WrapRequest>) -> Reply<pb::WrapResponse> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let spec = convert::name(&r.spec, "spec")?;
        let material = Zeroizing::new(r.key_material);
        let (wrapped_key, key_id) = self.crypto.wrap(&auth.caller, spec, material, r.associated_data).await?;
        Ok(Response::new(pb::WrapResponse { wrapped_key, key_id: key_id.to_string() }))
    }

    pub(super) async fn do_unwrap(&self, req: Request<pb::UnwrapRequest>) -> Reply<pb::UnwrapResponse> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let (material, key_id) = self.crypto.unwrap(&auth.caller, r.wrapped_key, r.associated_data).await?;
        Ok(Response::new(pb::UnwrapResponse { key_material: material.to_vec(), key_id: key_id.to_string() }))
    }

    pub(super) async fn do_get_public_key(
        &self,
        req: Request<pb::GetPublicKeyRequest>,
    ) -> Reply<pb::GetPublicKeyResponse> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let spec = convert::name(&req.get_ref().spec, "spec")?;
        let k = self.crypto.public_key(&auth.caller, spec).await?;
        Ok(Response::new(pb::GetPublicKeyResponse {
            public_key_der: k.der,
            public_key_pem: k.pem,
            key_id: k.key_id.to_string(),
            scheme: k.scheme,
        }))
    }
}
