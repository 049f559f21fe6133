//! Bring your own key: import parameters (a one-time signer-made RSA-3072
//! key per import), the import of wrapped material as a key of a spec, and
//! the export of a key's material wrapped for a caller's RSA key. Every
//! change is one transaction with its audit entry; refusals are audited.

use std::sync::Arc;

use super::catalog::Catalog;
use super::context::Context;
use crate::clock::Clock;
use crate::domain::DomainError;
use crate::domain::audit::{AuditEvent, Outcome};
use crate::domain::auth::Caller;
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::byok::{ImportKey, import_ttl};
use crate::domain::ids::SysId;
use crate::domain::ids::{ImportToken, KeyId, Name, UnixMillis};
use crate::domain::key::{KeyRecord, export_refusal, plan_import};
use crate::domain::policy::Operation;
use crate::error::AppResult;
use crate::signer::Signer;
use crate::signer::async_signer::AsyncSigner;
use crate::signer::byok::{OpenError, check_imported, open_import, public_pem, recipient, wrap_for};
use crate::signer::primitives::random_bytes;
use crate::store::{AuditStore, ByokStore, CatalogStore, StoreError};

#[cfg(test)]
mod tests;

/// Expired import keys deleted per `GetImportParameters` (the rest by the next ones).
const SWEEP_LIMIT: usize = 100;

/// What `GetImportParameters` answers.
#[derive(Debug)]
pub struct ImportParameters {
    pub token: ImportToken,
    pub spec: Name,
    pub public_key_pem: String,
    pub public_key_der: Vec<u8>,
    pub expires_at: UnixMillis,
    pub wrapping: WrappingAlgorithm,
}

/// What `ExportKey` answers (no plaintext).
#[derive(Debug)]
pub struct ExportedKey {
    pub key_id: KeyId,
    pub spec: Name,
    pub wrapped: Vec<u8>,
    pub public_key_sha256: String,
}

fn event(at: UnixMillis, actor: &str, action: &str, subject: impl ToString, outcome: Outcome) -> AuditEvent {
    AuditEvent::new(at, actor, action, subject.to_string(), outcome)
}

/// BYOK: keys brought from outside (import) and keys handed out (export).
pub struct Byok {
    sys_id: SysId,
    imports: ByokStore,
    keys: CatalogStore,
    audit: AuditStore,
    signer: AsyncSigner,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
}

impl Byok {
    pub fn new(ctx: &Context, catalog: Arc<Catalog>) -> Self {
        Byok {
            sys_id: ctx.sys_id.clone(),
            imports: ByokStore::new(&ctx.store),
            keys: CatalogStore::new(&ctx.store),
            audit: AuditStore::new(&ctx.store),
            signer: ctx.async_signer(),
            clock: Arc::clone(&ctx.clock),
            catalog,
        }
    }

    fn now(&self) -> UnixMillis {
        self.clock.now()
    }
}

impl Byok {
    /// A new import key for `spec`, valid `ttl_ms` (None: 24 h). The signer
    /// keys of expired import keys are destroyed first, then their rows
    /// deleted in the transaction that stores the new one.
    pub async fn import_parameters(
        &self,
        caller: &Caller,
        spec: Name,
        ttl_ms: Option<i64>,
    ) -> AppResult<ImportParameters> {
        let ttl = import_ttl(ttl_ms)?;
        let actor = caller.actor();
        let spec = self.catalog.spec_or_not_found(&spec).await?;
        let now = self.now();
        // Expired rows can no longer be used: their signer keys are destroyed
        // first, and only the rows whose key is gone are deleted (the others
        // are tried again by the next sweep). One hop for the sweep and the new
        // key; the PEM is answered only once the import key is stored.
        let mut expired = self.imports.expired_import_keys(now, SWEEP_LIMIT).await?;
        let (expired, transport, pem) = self
            .signer
            .with_backend(move |signer| {
                expired.retain(|e| destroy_import_key(signer, e));
                let transport = signer.create_transport_key()?;
                let pem = public_pem(&transport.public_der);
                Ok((expired, transport, pem))
            })
            .await?;
        let import = ImportKey {
            token: ImportToken::from_random(random_bytes::<16>()),
            spec: spec.name.clone(),
            created_at: now,
            expires_at: now.plus_millis(ttl),
            handle: transport.handle,
            wrapping: transport.wrapping,
            used: None,
        };
        let mut audit =
            vec![event(now, &actor, "key.import_parameters", &import.token, Outcome::Success).with_details(format!(
                "spec {}, expires {}, {:?}",
                spec.name,
                crate::clock::rfc3339(import.expires_at),
                import.wrapping
            ))];
        for e in &expired {
            let what = if e.used.is_some() { "used, expired" } else { "expired unused" };
            audit.push(
                event(now, "system", "key.import_parameters.delete", &e.token, Outcome::Success)
                    .with_details(format!("spec {}: {what}", e.spec)),
            );
        }
        let tokens: Vec<ImportToken> = expired.iter().map(|e| e.token.clone()).collect();
        if let Err(e) = self.imports.insert_import_key(import.clone(), tokens, audit).await {
            self.destroy_import_key(import).await;
            return Err(e.into());
        }
        tracing::info!(import_token = %import.token, spec = %spec.name, swept = expired.len(), "import parameters made");
        Ok(ImportParameters {
            public_key_pem: pem?,
            public_key_der: transport.public_der,
            token: import.token,
            spec: spec.name,
            expires_at: import.expires_at,
            wrapping: import.wrapping,
        })
    }

    /// Destroys the signer's key behind an import key (idempotent), off the
    /// workers; true when it is gone.
    async fn destroy_import_key(&self, import: ImportKey) -> bool {
        let token = import.token.clone();
        match self.signer.with_backend(move |signer| Ok(destroy_import_key(signer, &import))).await {
            Ok(gone) => gone,
            Err(e) => {
                tracing::warn!(import_token = %token, error = %e, "could not destroy an import key's signer key");
                false
            }
        }
    }

    /// Imports `wrapped` (RSA-OAEP(K) || KWP_K(material)) as a new key of
    /// `spec`, planned as a generated key. A malformed blob stores nothing
    /// and leaves the import key usable.
    pub async fn import_key(
        &self,
        caller: &Caller,
        token: ImportToken,
        spec: Name,
        wrapped: Vec<u8>,
    ) -> AppResult<KeyRecord> {
        let actor = caller.actor();
        let import = self
            .imports
            .import_key(token.clone())
            .await?
            .ok_or_else(|| DomainError::not_found("import token", &token))?;
        let now = self.now();
        import.check_use(&spec, now)?;
        let spec = self.catalog.spec_or_not_found(&spec).await?;
        // Opening the blob, checking the material and wrapping it under the
        // KEK: one hop; the material never leaves it.
        let (handle, wrapping, shape) = (import.handle.clone(), import.wrapping, spec.material());
        let wrapped_key = self
            .signer
            .with_backend(move |signer| {
                let material = match open_import(signer, &handle, wrapping, &wrapped) {
                    Ok(m) => m,
                    Err(OpenError::Malformed(why)) => return Ok(Err(why.to_owned())),
                    Err(OpenError::Signer(e)) => return Err(e),
                };
                if let Err(why) = check_imported(shape, &material) {
                    return Ok(Err(why));
                }
                let wrapped_key = signer.wrap(&material)?;
                drop(material);
                Ok(Ok(wrapped_key))
            })
            .await?
            .map_err(|why| DomainError::invalid("wrapped_key", why))?;
        let plan = {
            let (sys_id, spec, actor, token) = (self.sys_id.clone(), spec.clone(), actor.clone(), token.clone());
            move |existing: &[KeyRecord]| {
                let new = plan_import(&sys_id, &spec.name, existing, &spec.lifecycle, now);
                let audit = event(now, &actor, "key.import", &new.id, Outcome::Success).with_details(format!(
                    "state {}; import token {}; spec {}",
                    new.state.label(),
                    token,
                    spec.name
                ));
                (new, vec![audit])
            }
        };
        let new = match self.imports.use_import_key(token.clone(), now, spec.name.clone(), wrapped_key, plan).await {
            Ok(new) => new,
            Err(StoreError::Stale { .. }) => {
                return Err(DomainError::FailedPrecondition(format!("import token {token} was already used")).into());
            }
            Err(StoreError::Missing { .. }) => {
                return Err(DomainError::FailedPrecondition(format!("import token {token} expired")).into());
            }
            Err(e) => return Err(e.into()),
        };
        // The used row kept the handle: erased once the signer's key is gone,
        // else the expiry sweep destroys it again.
        let handle = import.handle.clone();
        if self.destroy_import_key(import).await {
            self.imports.erase_import_handle(token, handle).await?;
        }
        tracing::info!(key_id = %new.id, state = new.state.label(), "key imported (BYOK)");
        Ok(new)
    }

    /// Wraps `key`'s material for the RSA public key in `public_key_pem`.
    /// The caller's role (admin) is checked by the RPC layer; here the spec
    /// must be exportable, the key's state allow it and the module's access
    /// policies grant `export`. Refusals and the export are audited.
    pub async fn export_key(&self, caller: &Caller, key: KeyId, public_key_pem: String) -> AppResult<ExportedKey> {
        let actor = caller.actor();
        let (rec, wrapped) = self.keys.key(key.clone()).await?.ok_or_else(|| DomainError::not_found("key", &key))?;
        let spec = self.catalog.spec_or_not_found(&key.spec).await?;
        let refusal = if spec.exportable {
            export_refusal(&rec)
        } else {
            Some(format!("spec {} is not exportable (set at its creation)", spec.name))
        };
        if let Some(why) = refusal {
            self.audit_export_refusal(&actor, &key, &why).await;
            return Err(DomainError::FailedPrecondition(why).into());
        }
        self.catalog.check_access(caller, &spec, Operation::Export).await?;
        // Reading the caller's key, unwrapping the material and wrapping it
        // for them: one hop; the material never leaves it.
        let (blob, bits, spki_sha256) = self
            .signer
            .with_backend(move |signer| {
                let to = match recipient(&public_key_pem) {
                    Ok(to) => to,
                    Err(why) => return Ok(Err(why)),
                };
                let material = signer.unwrap(&wrapped)?;
                let blob = wrap_for(&to, &material)?;
                drop(material);
                Ok(Ok((blob, to.bits, to.spki_sha256)))
            })
            .await?
            .map_err(|why| DomainError::invalid("public_key_pem", why))?;
        let fingerprint = hex::encode(spki_sha256);
        let audit = event(self.now(), &actor, "key.export", &key, Outcome::Success).with_details(format!(
            "spec {}, state {}, to RSA-{bits} public key sha256 {fingerprint}",
            spec.name,
            rec.state.label(),
        ));
        self.audit.append_audit(vec![audit]).await?;
        tracing::info!(key_id = %key, public_key_sha256 = %fingerprint, "key exported");
        Ok(ExportedKey { key_id: key, spec: spec.name, wrapped: blob, public_key_sha256: fingerprint })
    }

    async fn audit_export_refusal(&self, actor: &str, key: &KeyId, why: &str) {
        tracing::warn!(caller = %actor, key_id = %key, reason = %why, "export refused");
        let e = event(self.now(), actor, "key.export", key, Outcome::Refused).with_details(why);
        if let Err(err) = self.audit.append_audit(vec![e]).await {
            tracing::error!(error = %err, "could not audit a refused export");
        }
    }
}

/// Destroys the signer's key behind an import key (idempotent; blocking, on
/// the blocking pool); true when it is gone. A failure is logged: the row is
/// used or deleted already.
fn destroy_import_key(signer: &dyn Signer, import: &ImportKey) -> bool {
    if import.handle.is_empty() {
        return true;
    }
    match signer.destroy_transport_key(&import.handle) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(import_token = %import.token, error = %e, "could not destroy an import key's signer key");
            false
        }
    }
}
