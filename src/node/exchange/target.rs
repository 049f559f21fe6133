//! The target side of an exchange: create the request, open it on the
//! source, then verify and import the bundle the source delivers — exactly
//! once: the import is a conditional write on the pending request, and the
//! signed receipt is kept under the bundle's digest, so an identical
//! redelivery (the source lost our answer) gets the same receipt back.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Exchange, request_audit};
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::bundle::{Bundle, BundleEntry};
use crate::domain::exchange::{
    ExchangeRequest, ExchangeRole, Frequency, PeerRef, RequestStatus, SignedBlob, SpecLine, validate_expiry,
    validate_spec_names,
};
use crate::domain::exchange_import::{self as import, ImportFacts, ImportOutcome, NoticeEffect};
use crate::domain::ids::{Host, Name, RequestId, SysId, UnixMillis};
use crate::domain::key::{DataKey, KeyRecord};
use crate::domain::spec::MaterialShape;
use crate::error::{AppError, AppResult};
use crate::node::context::Blocking;
use crate::node::ports::OpenRequest;
use crate::signer::material::check_material;
use crate::signer::primitives::{kwp_unwrap, random_bytes, sha256, verify_sha256_with_cert};
use crate::store::{RequestEffects, StoreError, Versioned};

/// How often an import re-reads a request that changed under it.
const IMPORT_ATTEMPTS: usize = 3;

/// What an operator asks for in `CreateRequest`.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub source_sys_id: String,
    pub source_host: String,
    pub spec_names: Vec<String>,
    pub expires_in_millis: Option<i64>,
}

/// A target request about to be recorded.
pub struct PlannedRequest {
    pub id: RequestId,
    pub frequency: Frequency,
    pub source: PeerRef,
    pub specs: Vec<Name>,
    pub lifetime: i64,
    pub actor: String,
    /// Rekey after the import (a clone exchange configured with rekey).
    pub rekey: bool,
    /// The clone grant a request after a clone echoes.
    pub clone_grant: Option<String>,
}

impl Exchange {
    /// Records a new pending request here (the target) with its one-time
    /// transport key; returns it and the transport public key to send.
    pub async fn insert_target_request(self: &Arc<Self>, p: PlannedRequest) -> AppResult<(ExchangeRequest, Vec<u8>)> {
        self.blocking(move |this| this.insert_target_request_blocking(p)).await
    }

    /// Transitional: the sync form of `insert_target_request`.
    pub fn insert_target_request_blocking(&self, p: PlannedRequest) -> AppResult<(ExchangeRequest, Vec<u8>)> {
        for s in &p.specs {
            self.catalog.spec_or_not_found_blocking(s)?;
        }
        let transport = self.signer.create_transport_key()?;
        let now = self.now();
        let req = ExchangeRequest {
            id: p.id,
            role: ExchangeRole::Target,
            frequency: p.frequency,
            source: p.source,
            target: PeerRef { sys_id: self.sys_id.clone(), host: self.host.clone() },
            status: RequestStatus::Pending,
            lines: p.specs.into_iter().map(SpecLine::pending).collect(),
            total_key_count: 0,
            exported_key_count: 0,
            imported_key_count: 0,
            created_at: now,
            updated_at: now,
            expires_at: now.plus_millis(p.lifetime),
            history: vec![crate::domain::exchange::Transition {
                status: RequestStatus::Pending,
                at: now,
                actor: p.actor,
                note: "created".into(),
            }],
            peer_certificate: Vec::new(),
            receipt: None,
            // Kept (it is public) so that opening the request again sends the same key.
            transport_public_key: transport.public_der.clone(),
            wrapping: transport.wrapping,
            rekey: p.rekey,
            clone_grant: p.clone_grant,
        };
        let specs: Vec<String> = req.lines.iter().map(|l| l.spec.to_string()).collect();
        let audit = request_audit(
            &req,
            "exchange.create",
            Outcome::Success,
            format!("source {} at {}; specs {}", req.source.sys_id, req.source.host, specs.join(",")),
        );
        self.store.insert_request(&req, Some(&transport.handle), RequestEffects::default(), &[audit])?;
        Ok((req, transport.public_der))
    }

    /// Creates an Adhoc request here (the target) and opens it on the source.
    pub async fn create_request(self: &Arc<Self>, caller: &Caller, new: NewRequest) -> AppResult<ExchangeRequest> {
        let source_sys_id = SysId::parse(&new.source_sys_id)?;
        let source_host = Host::parse_dialable(&new.source_host, "source_host")?;
        let specs = validate_spec_names(&new.spec_names)?;
        let lifetime = validate_expiry(new.expires_in_millis)?;
        if source_sys_id == self.sys_id {
            return Err(DomainError::invalid("source_sys_id", "is this instance's own sys_id").into());
        }
        let planned = PlannedRequest {
            id: RequestId::from_random(random_bytes()),
            frequency: Frequency::Adhoc,
            source: PeerRef { sys_id: source_sys_id, host: source_host },
            specs,
            lifetime,
            actor: caller.actor(),
            rekey: false,
            clone_grant: None,
        };
        let (req, public_key) = self.blocking(move |this| this.insert_target_request_blocking(planned)).await?;
        tracing::info!(request_id = %req.id, source = %req.source.sys_id, "exchange request created");
        self.open_on_source(req, public_key).await
    }

    /// Retries, on the target, a request whose opening on the source failed
    /// (ERROR_ON_*): PENDING again and opened again with the transport key it
    /// already has, so the source, which may have recorded (or even approved)
    /// the first opening before its answer was lost, sees the same request and
    /// a bundle it wrapped for that key still opens here. Only a request whose
    /// transport key is gone gets a new one.
    pub async fn retry_on_target(self: &Arc<Self>, actor: String, id: RequestId) -> AppResult<ExchangeRequest> {
        let (req, public_key) = self
            .blocking(move |this| {
                let Versioned { value: mut req, version } = this.request_or_not_found(&id)?;
                let now = this.now();
                let details = import::retry_here(&mut req, &actor, now)?;
                let has_handle = this.store.transport_handle(&req.id)?.is_some();
                let transport = if import::needs_new_transport_key(&req, has_handle) {
                    Some(this.signer.create_transport_key()?)
                } else {
                    None
                };
                if let Some(t) = &transport {
                    req.wrapping = t.wrapping;
                    req.transport_public_key = t.public_der.clone();
                }
                let audit = request_audit(&req, "exchange.retry", Outcome::Success, details);
                let effects = RequestEffects {
                    transport_handle: transport.as_ref().map(|t| &t.handle[..]),
                    ..Default::default()
                };
                this.store.update_request(version, &req, effects, &[audit])?;
                let public_key = req.transport_public_key.clone();
                Ok((req, public_key))
            })
            .await?;
        tracing::info!(request_id = %req.id, "exchange request retried; opening it on the source again");
        self.open_on_source(req, public_key).await
    }

    /// Opens a pending request on its source and records the source's view.
    pub async fn open_on_source(
        self: &Arc<Self>,
        req: ExchangeRequest,
        public_key: Vec<u8>,
    ) -> AppResult<ExchangeRequest> {
        let open = OpenRequest {
            request_id: req.id.clone(),
            target_sys_id: self.sys_id.clone(),
            target_host: self.host.clone(),
            source_sys_id: req.source.sys_id.clone(),
            spec_names: req.lines.iter().map(|l| l.spec.clone()).collect(),
            expires_at: req.expires_at,
            transport_public_key: public_key,
            wrapping: req.wrapping,
            frequency: req.frequency,
            clone_grant: req.clone_grant.clone(),
        };
        let answer = self.peers.open_request(&req.source.host, &req.source.sys_id, open).await;
        let id = req.id.clone();
        self.blocking(move |this| {
            let Versioned { value: mut req, version } = this.request_or_not_found(&id)?;
            let now = this.now();
            match answer {
                Ok(view) => {
                    // Completed at once when there is nothing to exchange: every spec is missing on the source.
                    import::take_source_view(&mut req, view.status, &view.lines, view.total_key_count, now)?;
                    // A bundle may have arrived meanwhile; then its import wrote the lines.
                    match this.store.update_request(version, &req, RequestEffects::default(), &[]) {
                        Ok(_) => Ok(req),
                        Err(StoreError::Stale { .. }) => Ok(this.request_or_not_found(&id)?.value),
                        Err(e) => Err(e.into()),
                    }
                }
                Err(err) => {
                    if let Some(details) = import::opening_failed(&mut req, &err.to_string(), now)? {
                        let audit = request_audit(&req, "exchange.fail", Outcome::Failed, details);
                        this.store.update_request(version, &req, RequestEffects::default(), &[audit])?;
                    }
                    tracing::warn!(request_id = %req.id, error = %err, "opening the request on the source failed");
                    Err(AppError::Peer(err))
                }
            }
        })
        .await
    }

    /// Verifies and imports a bundle from the source; returns the signed
    /// receipt. An identical redelivery gets the receipt already given.
    pub async fn receive_bundle(
        self: &Arc<Self>,
        caller: SysId,
        caller_cert: Vec<u8>,
        bundle: SignedBlob,
    ) -> AppResult<SignedBlob> {
        self.blocking(move |this| {
            let result = this.import_once(&caller, &caller_cert, &bundle);
            if let Err(e) = &result {
                let subject = Bundle::decode(&bundle.bytes)
                    .map_or_else(|_| "undecodable bundle".to_owned(), |b| b.request_id.to_string());
                let audit = AuditEvent::new(
                    this.now(),
                    format!("instance:{caller}"),
                    "exchange.bundle_refused",
                    subject,
                    Outcome::Refused,
                )
                .with_details(e.to_string());
                if let Err(store_err) = this.store.append_audit(&[audit]) {
                    tracing::error!(error = %store_err, "could not audit a refused bundle");
                }
                tracing::warn!(sender = %caller, error = %e, "bundle refused");
            }
            result
        })
        .await
    }

    /// The receipt already given for this exact bundle, if it came from `caller`.
    fn stored_receipt(&self, caller: &SysId, digest: &[u8; 32]) -> AppResult<Option<SignedBlob>> {
        let Some((request_id, receipt)) = self.store.receipt_for(digest)? else { return Ok(None) };
        let req = self.request_or_not_found(&request_id)?.value;
        if &req.source.sys_id != caller {
            return Err(DomainError::PermissionDenied("bundle sender is not the request's source".into()).into());
        }
        Ok(Some(receipt))
    }

    fn import_once(&self, caller: &SysId, caller_cert: &[u8], signed: &SignedBlob) -> AppResult<SignedBlob> {
        verify_sha256_with_cert(caller_cert, &signed.bytes, &signed.signature).map_err(|_| {
            DomainError::PermissionDenied("bundle signature does not verify against the sender's certificate".into())
        })?;
        let digest = sha256(&signed.bytes);
        for _ in 0..IMPORT_ATTEMPTS {
            if let Some(receipt) = self.stored_receipt(caller, &digest)? {
                tracing::info!(sender = %caller, "bundle delivered again; answering with the receipt already given");
                return Ok(receipt);
            }
            match self.import_bundle(caller, signed, &digest) {
                // Another delivery of it committed first, or keys arrived
                // meanwhile: read again (and find its receipt).
                Err(AppError::Store(StoreError::Stale { .. })) => continue,
                // A concurrent import of the same bundle may have used up
                // the transport key; its receipt is the answer.
                Err(e) => {
                    return match self.stored_receipt(caller, &digest)? {
                        Some(receipt) => Ok(receipt),
                        None => Err(e),
                    };
                }
                Ok(receipt) => return Ok(receipt),
            }
        }
        Err(DomainError::FailedPrecondition("the request keeps changing during the import; deliver again".into())
            .into())
    }

    fn import_bundle(&self, caller: &SysId, signed: &SignedBlob, digest: &[u8; 32]) -> AppResult<SignedBlob> {
        let bundle = Bundle::decode(&signed.bytes)?;
        let Versioned { value: mut req, version } = self
            .store
            .request(&bundle.request_id)?
            .ok_or_else(|| DomainError::not_found("request", &bundle.request_id))?;
        let now = self.now();
        // A request whose import failed here before (say the KEK refused to
        // wrap) is pending again: the source's redelivery is the retry.
        import::accept_bundle(&mut req, &bundle, &self.sys_id, caller, now)?;
        let handle = self.store.transport_handle(&req.id)?.ok_or_else(|| {
            DomainError::FailedPrecondition("the request's transport key is gone; bundle refused".into())
        })?;
        let aes =
            self.signer.open_transport_key(&handle, bundle.wrapping, &bundle.wrapped_transport_key).map_err(|_| {
                DomainError::PermissionDenied("bundle is not wrapped for this request's transport key".into())
            })?;

        let mut keys = Vec::with_capacity(bundle.entries.len());
        let mut failed: Vec<(String, String)> = Vec::new();
        // Keys import only into a spec defined here as on the source.
        let mut specs = HashMap::new();
        for line in &req.lines {
            if let Some(spec) = self.store.spec(&line.spec)? {
                specs.insert(line.spec.clone(), import::import_shape(&spec, &bundle.specs));
            }
        }
        // Keys a previous exchange brought are counted, never stored twice,
        // and never replaced: an entry for a key held here must carry its material.
        let present = self.store.existing_keys(bundle.entries.iter().map(|e| &e.key_id))?;
        let (held, new) = import::split_entries(&bundle.entries, &present);
        for entry in held {
            match self.holds_same_material(&aes, entry) {
                Ok(true) => {}
                Ok(false) => return Err(import::differs_from_held(&entry.key_id).into()),
                Err(AppError::Crypto(e)) => {
                    let reason =
                        format!("this instance's KEK could not unwrap key {} to compare it: {e}", entry.key_id);
                    return Err(self.fail_import_locally(req, version, reason, now));
                }
                Err(e) => return Err(e),
            }
        }
        for entry in new {
            if let Some(dek) = self.open_entry(&specs, &aes, entry, &mut failed) {
                match self.signer.wrap(&dek) {
                    Ok(wrapped) => keys.push((
                        KeyRecord::imported(
                            entry.key_id.clone(),
                            req.id.clone(),
                            entry.generated_at,
                            entry.activated_at,
                            entry.deactivated_at,
                            now,
                        ),
                        wrapped,
                    )),
                    // This instance's fault, not the bundle's: nothing is imported.
                    Err(e) => {
                        let reason = format!("this instance's KEK could not wrap key {}: {e}", entry.key_id);
                        return Err(self.fail_import_locally(req, version, reason, now));
                    }
                }
            }
        }

        // Lines: the source's outcome, then what failed or was already here.
        let facts = ImportFacts {
            this: &self.sys_id,
            caller,
            present: &present,
            failed: &failed,
            imported: keys.iter().map(|(k, _)| k.id.clone()).collect(),
            digest: *digest,
        };
        let ImportOutcome { audit, receipt } = import::finish_import(&mut req, &bundle, facts, now)?;
        let audit = request_audit(&req, "exchange.import", Outcome::Success, audit);
        let bytes = receipt.encode();
        let signature = self.instance_key.sign(&bytes)?;
        let receipt = SignedBlob { bytes, signature };
        // Both sides keep the receipt with the request (GetRequest shows it).
        req.receipt = Some(receipt.clone());
        self.store.complete_import(version, &req, &keys, (digest, &receipt), &[audit])?;
        if req.rekey {
            // Its rekey job was scheduled with the import: start it now.
            self.signals.wake();
        }
        if let Err(e) = self.signer.destroy_transport_key(&handle) {
            tracing::warn!(request_id = %req.id, error = %e, "destroying the transport key failed");
        }
        tracing::info!(
            request_id = %req.id,
            imported = keys.len(),
            already_present = present.len(),
            failed = failed.len(),
            "keys imported"
        );
        Ok(receipt)
    }

    /// Whether `entry` carries the same material as the key of its id held
    /// here: both are unwrapped in memory only and compared by SHA-256
    /// (neither is logged); an entry that does not unwrap is not the same.
    /// A key gone since it was found is `Stale` (the import reads again).
    fn holds_same_material(&self, aes: &DataKey, entry: &BundleEntry) -> AppResult<bool> {
        let Some((_, wrapped)) = self.store.key(&entry.key_id)? else {
            return Err(StoreError::Stale { what: "key", id: entry.key_id.to_string() }.into());
        };
        let held = self.signer.unwrap(&wrapped)?;
        let Ok(theirs) = kwp_unwrap(aes.expose(), &entry.wrapped).map(DataKey::new) else { return Ok(false) };
        Ok(sha256(theirs.expose()) == sha256(held.expose()))
    }

    /// Unwraps one bundle entry and checks it against this instance's spec
    /// (`shapes`: the key material each requested spec present here holds,
    /// or why its keys cannot be imported); None, with the reason in
    /// `failed`, when the bundle's key cannot be imported here.
    fn open_entry(
        &self,
        shapes: &HashMap<Name, Result<MaterialShape, String>>,
        aes: &DataKey,
        entry: &BundleEntry,
        failed: &mut Vec<(String, String)>,
    ) -> Option<DataKey> {
        let opened = (|| {
            let want = import::entry_shape(shapes, entry)?;
            let dek = kwp_unwrap(aes.expose(), &entry.wrapped).map_err(|_| "key does not unwrap".to_owned())?;
            let dek = DataKey::new(dek);
            check_material(want, &dek)?;
            Ok::<_, String>(dek)
        })();
        opened.map_err(|reason| failed.push((entry.key_id.spec.to_string(), reason))).ok()
    }

    /// Records ERROR_ON_LOCAL_INSTANCE with `reason` (nothing was imported;
    /// the transport key is kept, so the source's redelivery retries), and
    /// returns the error the source is answered with.
    fn fail_import_locally(&self, mut req: ExchangeRequest, version: u64, reason: String, now: UnixMillis) -> AppError {
        tracing::error!(request_id = %req.id, %reason, "import failed on this instance");
        let recorded = import::fail_import_here(&mut req, &reason, now).map_err(AppError::from).and_then(|answer| {
            let audit = request_audit(&req, "exchange.fail", Outcome::Failed, reason.clone());
            self.store.update_request(version, &req, RequestEffects::default(), &[audit])?;
            Ok(answer)
        });
        match recorded {
            // A Stale write (the request changed meanwhile) makes the caller read it again.
            Err(e) => e,
            Ok(answer) => answer.into(),
        }
    }

    /// The source rejected or expired the request.
    pub async fn receive_status(
        self: &Arc<Self>,
        caller: SysId,
        request_id: RequestId,
        status: RequestStatus,
        reason: String,
    ) -> AppResult<()> {
        self.blocking(move |this| {
            for _ in 0..IMPORT_ATTEMPTS {
                let Versioned { value: mut req, version } = this.request_or_not_found(&request_id)?;
                let now = this.now();
                // The source's clock decided expiry; ours does not refuse it.
                let action = match import::take_notice(&mut req, &caller, status, &reason, now)? {
                    NoticeEffect::Unchanged => return Ok(()), // A repeated notice changes nothing.
                    NoticeEffect::Closed { action } => action,
                };
                let audit = request_audit(&req, action, Outcome::Success, "reported by the source");
                match this.store.update_request(version, &req, RequestEffects::default(), &[audit]) {
                    Err(StoreError::Stale { .. }) => continue,
                    other => other?,
                };
                tracing::info!(request_id = %req.id, status = status.label(), "source reported the request closed");
                return Ok(());
            }
            Err(DomainError::FailedPrecondition("the request keeps changing; notify again".into()).into())
        })
        .await
    }
}
