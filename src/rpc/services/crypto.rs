//! Crypto: encrypt, decrypt, rewrap (single and batch) and encrypted records;
//! sign/verify, MAC/verify, wrap/unwrap live in crypto_signing.rs.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::DomainError;
use crate::domain::auth::Permission;
use crate::domain::record::{RecordAddress, StoredRecord};
use crate::error::AppError;
use crate::node::audit::Access;
use crate::node::crypto::{Crypto as CryptoUseCases, NewRecord, OpenItem, SealItem};
use crate::rpc::caller::authorize;
use crate::rpc::convert;
use crate::rpc::pb::{self, crypto_server::Crypto};

pub struct CryptoService {
    pub access: Arc<Access>,
    pub crypto: Arc<CryptoUseCases>,
}

fn item_error(e: AppError) -> pb::ItemError {
    let s = Status::from(e);
    pb::ItemError { code: s.code() as i32, message: s.message().to_owned() }
}

fn address(a: &Option<pb::RecordAddress>) -> Result<RecordAddress, DomainError> {
    let a = a.as_ref().ok_or_else(|| DomainError::invalid("address", "missing"))?;
    RecordAddress::parse(&a.table, &a.field, &a.record_id)
}

/// An optional filter: empty is none.
fn optional_name(text: &str, field: &'static str) -> Result<Option<crate::domain::ids::Name>, DomainError> {
    if text.is_empty() { Ok(None) } else { convert::name(text, field).map(Some) }
}

fn record_info(r: &StoredRecord) -> pb::RecordInfo {
    pb::RecordInfo {
        address: Some(pb::RecordAddress {
            table: r.address.table.to_string(),
            field: r.address.field.to_string(),
            record_id: r.address.record_id.clone(),
        }),
        key_id: r.key_id.to_string(),
        updated_at: Some(convert::ts(r.updated_at)),
    }
}

/// Batch items to open (decrypt or rewrap): (ciphertext, associated data).
fn open_items(items: impl Iterator<Item = (Vec<u8>, Vec<u8>)>) -> Vec<OpenItem> {
    items.map(|(ciphertext, aad)| OpenItem { ciphertext, aad }).collect()
}

/// Page tokens are the hex of "table\nfield\nrecord_id" of the last record.
fn token(a: &RecordAddress) -> String {
    hex::encode(format!("{}\n{}\n{}", a.table, a.field, a.record_id))
}

fn from_token(t: &str) -> Result<RecordAddress, DomainError> {
    let bad = || DomainError::invalid("page_token", "not a token from a previous page");
    let text = String::from_utf8(hex::decode(t).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(tb), Some(f), Some(r)) => RecordAddress::parse(tb, f, r).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

#[tonic::async_trait]
impl Crypto for CryptoService {
    async fn sign(&self, req: Request<pb::SignRequest>) -> Result<Response<pb::SignResponse>, Status> {
        self.do_sign(req).await
    }

    async fn verify(&self, req: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        self.do_verify(req).await
    }

    async fn mac(&self, req: Request<pb::MacRequest>) -> Result<Response<pb::MacResponse>, Status> {
        self.do_mac(req).await
    }

    async fn verify_mac(&self, req: Request<pb::VerifyMacRequest>) -> Result<Response<pb::VerifyMacResponse>, Status> {
        self.do_verify_mac(req).await
    }

    async fn wrap(&self, req: Request<pb::WrapRequest>) -> Result<Response<pb::WrapResponse>, Status> {
        self.do_wrap(req).await
    }

    async fn unwrap(&self, req: Request<pb::UnwrapRequest>) -> Result<Response<pb::UnwrapResponse>, Status> {
        self.do_unwrap(req).await
    }

    async fn get_public_key(
        &self,
        req: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        self.do_get_public_key(req).await
    }

    async fn encrypt(&self, req: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let spec = convert::name(&r.spec, "spec")?;
        let (ciphertext, key_id) = self.crypto.encrypt(&auth.caller, spec, r.plaintext, r.associated_data).await?;
        Ok(Response::new(pb::EncryptResponse { ciphertext, key_id: key_id.to_string() }))
    }

    async fn decrypt(&self, req: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let (plaintext, key_id) = self.crypto.decrypt(&auth.caller, r.ciphertext, r.associated_data).await?;
        Ok(Response::new(pb::DecryptResponse { plaintext, key_id: key_id.to_string() }))
    }

    async fn rewrap(&self, req: Request<pb::RewrapRequest>) -> Result<Response<pb::RewrapResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let w = self.crypto.rewrap(&auth.caller, r.ciphertext, r.associated_data).await?;
        Ok(Response::new(pb::RewrapResponse {
            ciphertext: w.ciphertext,
            key_id: w.key_id.to_string(),
            previous_key_id: w.previous_key_id.to_string(),
        }))
    }

    async fn encrypt_batch(
        &self,
        req: Request<pb::EncryptBatchRequest>,
    ) -> Result<Response<pb::EncryptBatchResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let mut items = Vec::new();
        for (i, it) in req.into_inner().items.into_iter().enumerate() {
            let spec =
                convert::name(&it.spec, "spec").map_err(|e| DomainError::invalid("items", format!("item {i}: {e}")))?;
            items.push(SealItem { spec, plaintext: it.plaintext, aad: it.associated_data });
        }
        let results = self.crypto.encrypt_batch(&auth.caller, items).await?;
        // Most items share a key: format each key id once.
        let mut last: Option<(crate::domain::ids::KeyId, String)> = None;
        let results = results
            .into_iter()
            .map(|r| match r {
                Ok((ciphertext, key_id)) => {
                    let text = match &last {
                        Some((k, t)) if *k == key_id => t.clone(),
                        _ => {
                            let t = key_id.to_string();
                            last = Some((key_id, t.clone()));
                            t
                        }
                    };
                    pb::EncryptResult { ciphertext, key_id: text, error: None }
                }
                Err(e) => pb::EncryptResult { error: Some(item_error(e)), ..Default::default() },
            })
            .collect();
        Ok(Response::new(pb::EncryptBatchResponse { results }))
    }

    async fn decrypt_batch(
        &self,
        req: Request<pb::DecryptBatchRequest>,
    ) -> Result<Response<pb::DecryptBatchResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let items = open_items(req.into_inner().items.into_iter().map(|i| (i.ciphertext, i.associated_data)));
        let results = self.crypto.decrypt_batch(&auth.caller, items).await?;
        let results = results
            .into_iter()
            .map(|r| match r {
                Ok((plaintext, key_id)) => pb::DecryptResult { plaintext, key_id: key_id.to_string(), error: None },
                Err(e) => pb::DecryptResult { error: Some(item_error(e)), ..Default::default() },
            })
            .collect();
        Ok(Response::new(pb::DecryptBatchResponse { results }))
    }

    async fn rewrap_batch(
        &self,
        req: Request<pb::RewrapBatchRequest>,
    ) -> Result<Response<pb::RewrapBatchResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let items = open_items(req.into_inner().items.into_iter().map(|i| (i.ciphertext, i.associated_data)));
        let results = self.crypto.rewrap_batch(&auth.caller, items).await?;
        let results = results
            .into_iter()
            .map(|r| match r {
                Ok(w) => pb::RewrapResult {
                    ciphertext: w.ciphertext,
                    key_id: w.key_id.to_string(),
                    previous_key_id: w.previous_key_id.to_string(),
                    error: None,
                },
                Err(e) => pb::RewrapResult { error: Some(item_error(e)), ..Default::default() },
            })
            .collect();
        Ok(Response::new(pb::RewrapBatchResponse { results }))
    }

    async fn put_record(&self, req: Request<pb::PutRecordRequest>) -> Result<Response<pb::PutRecordResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.into_inner();
        let (a, spec) = (address(&r.address)?, convert::name(&r.spec, "spec")?);
        let rec = self.crypto.put_record(&auth.caller, a, spec, r.plaintext).await?;
        Ok(Response::new(pb::PutRecordResponse { record: Some(record_info(&rec)) }))
    }

    async fn get_record(&self, req: Request<pb::GetRecordRequest>) -> Result<Response<pb::GetRecordResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let a = address(&req.get_ref().address)?;
        let (rec, plaintext) = self.crypto.get_record(&auth.caller, a).await?;
        Ok(Response::new(pb::GetRecordResponse { record: Some(record_info(&rec)), plaintext }))
    }

    async fn list_records(
        &self,
        req: Request<pb::ListRecordsRequest>,
    ) -> Result<Response<pb::ListRecordsResponse>, Status> {
        authorize(&self.access, &req, Permission::Read).await?;
        let r = req.into_inner();
        let (table, field) = (optional_name(&r.table, "table")?, optional_name(&r.field, "field")?);
        let after = if r.page_token.is_empty() { None } else { Some(from_token(&r.page_token)?) };
        let size = if r.page_size == 0 { 100 } else { r.page_size as usize };
        let list = self.crypto.list_records(table, field, after, size).await?;
        let next = if list.len() >= size.min(crate::node::crypto::MAX_RECORD_PAGE) {
            list.last().map(|r| token(&r.address)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListRecordsResponse {
            records: list.iter().map(record_info).collect(),
            next_page_token: next,
        }))
    }

    async fn put_records(
        &self,
        req: Request<pb::PutRecordsRequest>,
    ) -> Result<Response<pb::PutRecordsResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let records = req
            .into_inner()
            .records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let at = |e: DomainError| AppError::from(e).at(format!("records[{i}]"));
                Ok(NewRecord {
                    address: address(&r.address).map_err(at)?,
                    spec: convert::name(&r.spec, "spec").map_err(at)?,
                    plaintext: r.plaintext,
                })
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        let stored = self.crypto.put_records(&auth.caller, records).await?;
        Ok(Response::new(pb::PutRecordsResponse { records: stored.iter().map(record_info).collect() }))
    }

    async fn digest_records(
        &self,
        req: Request<pb::DigestRecordsRequest>,
    ) -> Result<Response<pb::DigestRecordsResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        let r = req.get_ref();
        let (table, field) = (optional_name(&r.table, "table")?, optional_name(&r.field, "field")?);
        let digest = self.crypto.digest_records(&auth.caller, table, field).await?;
        Ok(Response::new(pb::DigestRecordsResponse { records: digest.records, sha256: digest.sha256.to_vec() }))
    }

    async fn delete_record(
        &self,
        req: Request<pb::DeleteRecordRequest>,
    ) -> Result<Response<pb::DeleteRecordResponse>, Status> {
        let auth = authorize(&self.access, &req, Permission::UseKeys).await?;
        self.crypto.delete_record(&auth.caller, address(&req.get_ref().address)?).await?;
        Ok(Response::new(pb::DeleteRecordResponse {}))
    }
}
