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
use crate::domain::ids::{Host, KeyId, Name, RequestId, SysId, UnixMillis};
use crate::domain::key::{DataKey, KeyRecord, WrappedKey};
use crate::domain::spec::MaterialShape;
use crate::error::{AppError, AppResult};
use crate::node::context::reread_and_retry;
use crate::node::ports::OpenRequest;
use crate::signer::async_signer::off_the_workers;
use crate::signer::material::check_material;
use crate::signer::primitives::{kwp_unwrap, random_bytes, sha256, verify_sha256_with_cert};
use crate::signer::{CryptoError, Signer, TransportKey};
use crate::store::{RequestEffects, RowKind, StoreError, Versioned};

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
    pub async fn insert_target_request(&self, p: PlannedRequest) -> AppResult<(ExchangeRequest, Vec<u8>)> {
        for s in &p.specs {
            self.catalog.spec_or_not_found(s).await?;
        }
        let transport = self.signer.create_transport_key().await?;
        let (req, audit) = self.target_request(p, &transport);
        self.requests
            .insert_request(req.clone(), Some(transport.handle), RequestEffects::default(), vec![audit])
            .await?;
        Ok((req, transport.public_der))
    }

    /// The pending request `p` plans, with `transport` as its transport
    /// key, and its `exchange.create` audit entry.
    fn target_request(&self, p: PlannedRequest, transport: &TransportKey) -> (ExchangeRequest, AuditEvent) {
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
        (req, audit)
    }

    /// Creates an Adhoc request here (the target) and opens it on the source.
    pub async fn create_request(&self, caller: &Caller, new: NewRequest) -> AppResult<ExchangeRequest> {
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
        let (req, public_key) = self.insert_target_request(planned).await?;
        tracing::info!(request_id = %req.id, source = %req.source.sys_id, "exchange request created");
        self.open_on_source(req, public_key).await
    }

    /// Retries, on the target, a request whose opening on the source failed
    /// (ERROR_ON_*): PENDING again and opened again with the transport key it
    /// already has, so the source, which may have recorded (or even approved)
    /// the first opening before its answer was lost, sees the same request and
    /// a bundle it wrapped for that key still opens here. Only a request whose
    /// transport key is gone gets a new one.
    pub async fn retry_on_target(&self, actor: String, id: RequestId) -> AppResult<ExchangeRequest> {
        let Versioned { value: mut req, version } = self.request_or_not_found(&id).await?;
        let now = self.now();
        let details = import::retry_here(&mut req, &actor, now)?;
        let has_handle = self.requests.transport_handle(req.id.clone()).await?.is_some();
        let transport = if import::needs_new_transport_key(&req, has_handle) {
            Some(self.signer.create_transport_key().await?)
        } else {
            None
        };
        if let Some(t) = &transport {
            req.wrapping = t.wrapping;
            req.transport_public_key = t.public_der.clone();
        }
        let audit = request_audit(&req, "exchange.retry", Outcome::Success, details);
        let effects = RequestEffects { transport_handle: transport.map(|t| t.handle), ..Default::default() };
        self.requests.update_request(version, req.clone(), effects, vec![audit]).await?;
        let public_key = req.transport_public_key.clone();
        tracing::info!(request_id = %req.id, "exchange request retried; opening it on the source again");
        self.open_on_source(req, public_key).await
    }

    /// Opens a pending request on its source and records the source's view.
    pub async fn open_on_source(&self, req: ExchangeRequest, public_key: Vec<u8>) -> AppResult<ExchangeRequest> {
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
        let id = req.id;
        let Versioned { value: mut req, version } = self.request_or_not_found(&id).await?;
        let now = self.now();
        match answer {
            Ok(view) => {
                // Completed at once when there is nothing to exchange: every spec is missing on the source.
                import::take_source_view(&mut req, view.status, &view.lines, view.total_key_count, now)?;
                // A bundle may have arrived meanwhile; then its import wrote the lines.
                match self.requests.update_request(version, req.clone(), RequestEffects::default(), Vec::new()).await {
                    Ok(_) => Ok(req),
                    Err(StoreError::Stale { .. }) => Ok(self.request_or_not_found(&id).await?.value),
                    Err(e) => Err(e.into()),
                }
            }
            Err(err) => {
                if let Some(details) = import::opening_failed(&mut req, &err.to_string(), now)? {
                    let audit = request_audit(&req, "exchange.fail", Outcome::Failed, details);
                    self.requests.update_request(version, req, RequestEffects::default(), vec![audit]).await?;
                }
                tracing::warn!(request_id = %id, error = %err, "opening the request on the source failed");
                Err(AppError::Peer(err))
            }
        }
    }

    /// Verifies and imports a bundle from the source; returns the signed
    /// receipt. An identical redelivery gets the receipt already given.
    pub async fn receive_bundle(
        &self,
        caller: SysId,
        caller_cert: Vec<u8>,
        bundle: SignedBlob,
    ) -> AppResult<SignedBlob> {
        // The signature, the digest and the decoding of the whole bundle, off the workers.
        let checked = off_the_workers(move || Ok(CheckedBundle::of(&caller_cert, &bundle))).await?;
        let result = self.import_once(&caller, &checked).await;
        if let Err(e) = &result {
            let subject =
                checked.bundle.as_ref().map_or_else(|_| "undecodable bundle".to_owned(), |b| b.request_id.to_string());
            let audit = AuditEvent::new(
                self.now(),
                format!("instance:{caller}"),
                "exchange.bundle_refused",
                subject,
                Outcome::Refused,
            )
            .with_details(e.to_string());
            if let Err(store_err) = self.audit_store.append_audit(vec![audit]).await {
                tracing::error!(error = %store_err, "could not audit a refused bundle");
            }
            tracing::warn!(sender = %caller, error = %e, "bundle refused");
        }
        result
    }

    /// The receipt already given for this exact bundle, if it came from `caller`.
    async fn stored_receipt(&self, caller: &SysId, digest: [u8; 32]) -> AppResult<Option<SignedBlob>> {
        let Some((request_id, receipt)) = self.requests.receipt_for(digest).await? else { return Ok(None) };
        let req = self.request_or_not_found(&request_id).await?.value;
        if &req.source.sys_id != caller {
            return Err(DomainError::PermissionDenied("bundle sender is not the request's source".into()).into());
        }
        Ok(Some(receipt))
    }

    /// Imports the bundle once: a request that changed under the import is
    /// read again (and its receipt found, if another delivery committed
    /// first), at most `REREAD_ATTEMPTS` times, then ABORTED.
    async fn import_once(&self, caller: &SysId, checked: &CheckedBundle) -> AppResult<SignedBlob> {
        if !checked.verifies {
            return Err(DomainError::PermissionDenied(
                "bundle signature does not verify against the sender's certificate".into(),
            )
            .into());
        }
        let digest = checked.digest;
        let what = checked
            .bundle
            .as_ref()
            .map_or_else(|_| "the bundle's request".to_owned(), |b| format!("request {}", b.request_id));
        reread_and_retry(what, || async {
            if let Some(receipt) = self.stored_receipt(caller, digest).await? {
                tracing::info!(sender = %caller, "bundle delivered again; answering with the receipt already given");
                return Ok(receipt);
            }
            match self.import_bundle(caller, checked).await {
                // Another delivery of it committed first, or keys arrived
                // meanwhile: read again (and find its receipt).
                Err(e) if e.is_stale() => Err(e),
                // A concurrent import of the same bundle may have used up
                // the transport key; its receipt is the answer.
                Err(e) => match self.stored_receipt(caller, digest).await? {
                    Some(receipt) => Ok(receipt),
                    None => Err(e),
                },
                Ok(receipt) => Ok(receipt),
            }
        })
        .await
    }

    async fn import_bundle(&self, caller: &SysId, checked: &CheckedBundle) -> AppResult<SignedBlob> {
        let bundle = match &checked.bundle {
            Ok(bundle) => Arc::clone(bundle),
            Err(e) => return Err(e.clone().into()),
        };
        let digest = checked.digest;
        let Versioned { value: mut req, version } = self
            .requests
            .request(bundle.request_id.clone())
            .await?
            .ok_or_else(|| DomainError::not_found("request", &bundle.request_id))?;
        let now = self.now();
        // A request whose import failed here before (say the KEK refused to
        // wrap) is pending again: the source's redelivery is the retry.
        import::accept_bundle(&mut req, &bundle, &self.sys_id, caller, now)?;
        let handle = self.requests.transport_handle(req.id.clone()).await?.ok_or_else(|| {
            DomainError::FailedPrecondition("the request's transport key is gone; bundle refused".into())
        })?;
        // Keys import only into a spec defined here as on the source.
        let mut shapes = HashMap::new();
        for line in &req.lines {
            if let Some(spec) = self.keys.spec(line.spec.clone()).await? {
                shapes.insert(line.spec.clone(), import::import_shape(&spec, &bundle.specs));
            }
        }
        // Keys a previous exchange brought are counted, never stored twice,
        // and never replaced: an entry for a key held here must carry its material.
        let present = self.requests.existing_keys(bundle.entries.iter().map(|e| e.key_id.clone()).collect()).await?;
        let held = if present.is_empty() { Vec::new() } else { self.requests.wrapped_keys(present.clone()).await? };
        // The transport key, the comparisons, the unwraps and the wraps under the KEK: one hop.
        let batch = ImportBatch {
            bundle: Arc::clone(&bundle),
            handle: handle.clone(),
            shapes,
            present: present.clone(),
            held,
            request: req.id.clone(),
            now,
        };
        let (keys, failed) = match self.signer.with_backend(move |kek| Ok(batch.open(kek))).await? {
            Opened::Keys { keys, failed } => (keys, failed),
            Opened::NotForThisKey => {
                return Err(DomainError::PermissionDenied(
                    "bundle is not wrapped for this request's transport key".into(),
                )
                .into());
            }
            Opened::HeldKeyGone(id) => return Err(StoreError::Stale { kind: RowKind::Key, id: id.to_string() }.into()),
            Opened::DiffersFromHeld(id) => return Err(import::differs_from_held(&id).into()),
            Opened::LocalFailure(reason) => return Err(self.fail_import_locally(req, version, reason, now).await),
        };

        // Lines: the source's outcome, then what failed or was already here.
        let facts = ImportFacts {
            this: &self.sys_id,
            caller,
            present: &present,
            failed: &failed,
            imported: keys.iter().map(|(k, _)| k.id.clone()).collect(),
            digest,
        };
        let ImportOutcome { audit, receipt } = import::finish_import(&mut req, &bundle, facts, now)?;
        let audit = request_audit(&req, "exchange.import", Outcome::Success, audit);
        let bytes = receipt.encode();
        let signature = self.instance_key.sign(bytes.clone()).await?;
        let receipt = SignedBlob { bytes, signature };
        // Both sides keep the receipt with the request (GetRequest shows it).
        req.receipt = Some(receipt.clone());
        let (id, rekey, imported) = (req.id.clone(), req.rekey, keys.len());
        self.requests.complete_import(version, req, keys, (digest, receipt.clone()), vec![audit]).await?;
        if rekey {
            // Its rekey job was scheduled with the import: start it now.
            self.signals.wake();
        }
        if let Err(e) = self.signer.destroy_transport_key(handle).await {
            tracing::warn!(request_id = %id, error = %e, "destroying the transport key failed");
        }
        tracing::info!(
            request_id = %id,
            imported,
            already_present = present.len(),
            failed = failed.len(),
            "keys imported"
        );
        Ok(receipt)
    }

    /// Records ERROR_ON_LOCAL_INSTANCE with `reason` (nothing was imported;
    /// the transport key is kept, so the source's redelivery retries), and
    /// returns the error the source is answered with.
    async fn fail_import_locally(
        &self,
        mut req: ExchangeRequest,
        version: u64,
        reason: String,
        now: UnixMillis,
    ) -> AppError {
        tracing::error!(request_id = %req.id, %reason, "import failed on this instance");
        let answer = match import::fail_import_here(&mut req, &reason, now) {
            Ok(answer) => answer,
            Err(e) => return e.into(),
        };
        let audit = request_audit(&req, "exchange.fail", Outcome::Failed, reason);
        match self.requests.update_request(version, req, RequestEffects::default(), vec![audit]).await {
            // A Stale write (the request changed meanwhile) makes the caller read it again.
            Err(e) => e.into(),
            Ok(_) => answer.into(),
        }
    }

    /// The source rejected or expired the request. A request that keeps
    /// changing under every read is ABORTED (the source notifies again).
    pub async fn receive_status(
        &self,
        caller: SysId,
        request_id: RequestId,
        status: RequestStatus,
        reason: String,
    ) -> AppResult<()> {
        reread_and_retry(format!("request {request_id}"), || async {
            let Versioned { value: mut req, version } = self.request_or_not_found(&request_id).await?;
            let now = self.now();
            // The source's clock decided expiry; ours does not refuse it.
            let action = match import::take_notice(&mut req, &caller, status, &reason, now)? {
                NoticeEffect::Unchanged => return Ok(()), // A repeated notice changes nothing.
                NoticeEffect::Closed { action } => action,
            };
            let audit = request_audit(&req, action, Outcome::Success, "reported by the source");
            self.requests.update_request(version, req, RequestEffects::default(), vec![audit]).await?;
            tracing::info!(request_id = %request_id, status = status.label(), "source reported the request closed");
            Ok(())
        })
        .await
    }
}

/// A delivered bundle as checked before anything is read: whether its
/// signature verifies against the sender's certificate, its SHA-256 and
/// the bundle it decodes to.
struct CheckedBundle {
    verifies: bool,
    digest: [u8; 32],
    bundle: Result<Arc<Bundle>, DomainError>,
}

impl CheckedBundle {
    fn of(sender_cert: &[u8], signed: &SignedBlob) -> Self {
        CheckedBundle {
            verifies: verify_sha256_with_cert(sender_cert, &signed.bytes, &signed.signature).is_ok(),
            digest: sha256(&signed.bytes),
            bundle: Bundle::decode(&signed.bytes).map(Arc::new),
        }
    }
}

/// What an import hands the KEK backend in one hop: the bundle, the
/// request's transport key handle, the key material each requested spec
/// holds here (`import_shape`), the keys of the bundle already held here
/// (`present`) and their wrapped material as read (`held`, None: gone
/// since it was found).
struct ImportBatch {
    bundle: Arc<Bundle>,
    handle: Vec<u8>,
    shapes: HashMap<Name, Result<MaterialShape, String>>,
    present: Vec<KeyId>,
    held: Vec<Option<WrappedKey>>,
    request: RequestId,
    now: UnixMillis,
}

/// How the KEK backend's part of an import ended.
enum Opened {
    /// The new keys wrapped under the KEK, and the entries not imported
    /// (their spec and why), in the bundle's order.
    Keys { keys: Vec<(KeyRecord, WrappedKey)>, failed: Vec<(String, String)> },
    /// The bundle's transport key does not open with the request's.
    NotForThisKey,
    /// A key found held here is gone (the import reads again).
    HeldKeyGone(KeyId),
    /// An entry carries other material than the key of its id held here.
    DiffersFromHeld(KeyId),
    /// This instance's KEK failed (why): nothing is imported.
    LocalFailure(String),
}

impl ImportBatch {
    fn open(self, kek: &dyn Signer) -> Opened {
        let Ok(aes) = kek.open_transport_key(&self.handle, self.bundle.wrapping, &self.bundle.wrapped_transport_key)
        else {
            return Opened::NotForThisKey;
        };
        let (held, new) = import::split_entries(&self.bundle.entries, &self.present);
        let material: HashMap<&KeyId, &Option<WrappedKey>> = self.present.iter().zip(&self.held).collect();
        for entry in held {
            let Some(Some(wrapped)) = material.get(&entry.key_id) else {
                return Opened::HeldKeyGone(entry.key_id.clone());
            };
            match holds_same_material(kek, &aes, entry, wrapped) {
                Ok(true) => {}
                Ok(false) => return Opened::DiffersFromHeld(entry.key_id.clone()),
                Err(e) => {
                    return Opened::LocalFailure(format!(
                        "this instance's KEK could not unwrap key {} to compare it: {e}",
                        entry.key_id
                    ));
                }
            }
        }
        let (mut keys, mut failed) = (Vec::with_capacity(new.len()), Vec::new());
        for entry in new {
            let Some(dek) = open_entry(&self.shapes, &aes, entry, &mut failed) else { continue };
            match kek.wrap(&dek) {
                Ok(wrapped) => {
                    let (generated, activated, deactivated) =
                        (entry.generated_at, entry.activated_at, entry.deactivated_at);
                    let id = entry.key_id.clone();
                    let record =
                        KeyRecord::imported(id, self.request.clone(), generated, activated, deactivated, self.now);
                    keys.push((record, wrapped));
                }
                // This instance's fault, not the bundle's: nothing is imported.
                Err(e) => {
                    return Opened::LocalFailure(format!(
                        "this instance's KEK could not wrap key {}: {e}",
                        entry.key_id
                    ));
                }
            }
        }
        Opened::Keys { keys, failed }
    }
}

/// Whether `entry` carries the same material as `held`, the key of its id
/// held here: both are unwrapped in memory only and compared by SHA-256
/// (neither is logged); an entry that does not unwrap is not the same.
fn holds_same_material(
    kek: &dyn Signer,
    aes: &DataKey,
    entry: &BundleEntry,
    held: &WrappedKey,
) -> Result<bool, CryptoError> {
    let held = kek.unwrap(held)?;
    let Ok(theirs) = kwp_unwrap(aes.expose(), &entry.wrapped).map(DataKey::new) else { return Ok(false) };
    Ok(sha256(theirs.expose()) == sha256(held.expose()))
}

/// Unwraps one bundle entry and checks it against this instance's spec
/// (`shapes`: the key material each requested spec present here holds,
/// or why its keys cannot be imported); None, with the reason in
/// `failed`, when the bundle's key cannot be imported here.
fn open_entry(
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
