//! Bring your own key: import parameters (a one-time signer-made RSA-3072
//! key per import), the import of wrapped material as a key of a spec, and
//! the export of a key's material wrapped for a caller's RSA key. Every
//! change is one transaction with its audit entry; refusals are audited.

use std::sync::Arc;

use super::catalog::Catalog;
use super::context::{Blocking, Context};
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
use crate::signer::byok::{OpenError, check_imported, open_import, public_pem, recipient, wrap_for};
use crate::signer::primitives::random_bytes;
use crate::store::Store;
use crate::store::StoreError;

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
    store: Arc<Store>,
    signer: Arc<dyn Signer>,
    clock: Arc<dyn Clock>,
    catalog: Arc<Catalog>,
}

impl Byok {
    pub fn new(ctx: &Context, catalog: Arc<Catalog>) -> Self {
        Byok {
            sys_id: ctx.sys_id.clone(),
            store: Arc::clone(&ctx.store),
            signer: Arc::clone(&ctx.signer),
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
        self: &Arc<Self>,
        caller: &Caller,
        spec: Name,
        ttl_ms: Option<i64>,
    ) -> AppResult<ImportParameters> {
        let ttl = import_ttl(ttl_ms)?;
        let actor = caller.actor();
        self.blocking(move |this| {
            let spec = this.catalog.spec_or_not_found_blocking(&spec)?;
            let now = this.now();
            // Expired rows can no longer be used: their signer keys are destroyed
            // first, and only the rows whose key is gone are deleted (the others
            // are tried again by the next sweep).
            let mut expired = this.store.expired_import_keys(now, SWEEP_LIMIT)?;
            expired.retain(|e| this.destroy_import_key(e));
            let transport = this.signer.create_transport_key()?;
            let import = ImportKey {
                token: ImportToken::from_random(random_bytes::<16>()),
                spec: spec.name.clone(),
                created_at: now,
                expires_at: now.plus_millis(ttl),
                handle: transport.handle,
                wrapping: transport.wrapping,
                used: None,
            };
            let mut audit = vec![
                event(now, &actor, "key.import_parameters", &import.token, Outcome::Success).with_details(format!(
                    "spec {}, expires {}, {:?}",
                    spec.name,
                    crate::clock::rfc3339(import.expires_at),
                    import.wrapping
                )),
            ];
            for e in &expired {
                let what = if e.used.is_some() { "used, expired" } else { "expired unused" };
                audit.push(
                    event(now, "system", "key.import_parameters.delete", &e.token, Outcome::Success)
                        .with_details(format!("spec {}: {what}", e.spec)),
                );
            }
            let tokens: Vec<ImportToken> = expired.iter().map(|e| e.token.clone()).collect();
            if let Err(e) = this.store.insert_import_key(&import, &tokens, &audit) {
                this.destroy_import_key(&import);
                return Err(e.into());
            }
            tracing::info!(import_token = %import.token, spec = %spec.name, swept = expired.len(), "import parameters made");
            Ok(ImportParameters {
                public_key_pem: public_pem(&transport.public_der)?,
                public_key_der: transport.public_der,
                token: import.token,
                spec: spec.name,
                expires_at: import.expires_at,
                wrapping: import.wrapping,
            })
        })
        .await
    }

    /// Destroys the signer's key behind an import key (idempotent); true when
    /// it is gone. A failure is logged: the row is used or deleted already.
    fn destroy_import_key(&self, import: &ImportKey) -> bool {
        if import.handle.is_empty() {
            return true;
        }
        match self.signer.destroy_transport_key(&import.handle) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(import_token = %import.token, error = %e, "could not destroy an import key's signer key");
                false
            }
        }
    }

    /// Imports `wrapped` (RSA-OAEP(K) || KWP_K(material)) as a new key of
    /// `spec`, planned as a generated key. A malformed blob stores nothing
    /// and leaves the import key usable.
    pub async fn import_key(
        self: &Arc<Self>,
        caller: &Caller,
        token: ImportToken,
        spec: Name,
        wrapped: Vec<u8>,
    ) -> AppResult<KeyRecord> {
        let actor = caller.actor();
        self.blocking(move |this| {
            let import =
                this.store.import_key(&token)?.ok_or_else(|| DomainError::not_found("import token", &token))?;
            let now = this.now();
            import.check_use(&spec, now)?;
            let spec = this.catalog.spec_or_not_found_blocking(&spec)?;
            let material = match open_import(this.signer.as_ref(), &import.handle, import.wrapping, &wrapped) {
                Ok(m) => m,
                Err(OpenError::Malformed(why)) => return Err(DomainError::invalid("wrapped_key", why).into()),
                Err(OpenError::Signer(e)) => return Err(e.into()),
            };
            check_imported(spec.material(), &material).map_err(|why| DomainError::invalid("wrapped_key", why))?;
            let wrapped_key = this.signer.wrap(&material)?;
            drop(material);
            let plan = |existing: &[KeyRecord]| {
                let new = plan_import(&this.sys_id, &spec.name, existing, &spec.lifecycle, now);
                let audit = event(now, &actor, "key.import", &new.id, Outcome::Success).with_details(format!(
                    "state {}; import token {}; spec {}",
                    new.state.label(),
                    token,
                    spec.name
                ));
                (new, vec![audit])
            };
            let new = match this.store.use_import_key(&token, now, &spec.name, &wrapped_key, plan) {
                Ok(new) => new,
                Err(StoreError::Stale { .. }) => {
                    return Err(
                        DomainError::FailedPrecondition(format!("import token {token} was already used")).into()
                    );
                }
                Err(StoreError::Missing { .. }) => {
                    return Err(DomainError::FailedPrecondition(format!("import token {token} expired")).into());
                }
                Err(e) => return Err(e.into()),
            };
            // The used row kept the handle: erased once the signer's key is gone,
            // else the expiry sweep destroys it again.
            if this.destroy_import_key(&import) {
                this.store.erase_import_handle(&token, &import.handle)?;
            }
            tracing::info!(key_id = %new.id, state = new.state.label(), "key imported (BYOK)");
            Ok(new)
        })
        .await
    }

    /// Wraps `key`'s material for the RSA public key in `public_key_pem`.
    /// The caller's role (admin) is checked by the RPC layer; here the spec
    /// must be exportable, the key's state allow it and the module's access
    /// policies grant `export`. Refusals and the export are audited.
    pub async fn export_key(
        self: &Arc<Self>,
        caller: &Caller,
        key: KeyId,
        public_key_pem: String,
    ) -> AppResult<ExportedKey> {
        let caller = caller.clone();
        self.blocking(move |this| {
            let actor = caller.actor();
            let (rec, wrapped) = this.store.key(&key)?.ok_or_else(|| DomainError::not_found("key", &key))?;
            let spec = this.catalog.spec_or_not_found_blocking(&key.spec)?;
            let refusal = if spec.exportable {
                export_refusal(&rec)
            } else {
                Some(format!("spec {} is not exportable (set at its creation)", spec.name))
            };
            if let Some(why) = refusal {
                this.audit_export_refusal(&actor, &key, &why);
                return Err(DomainError::FailedPrecondition(why).into());
            }
            this.catalog.check_access_blocking(&caller, &spec, Operation::Export, false)?;
            let to = recipient(&public_key_pem).map_err(|why| DomainError::invalid("public_key_pem", why))?;
            let fingerprint = hex::encode(to.spki_sha256);
            let material = this.signer.unwrap(&wrapped)?;
            let blob = wrap_for(&to, &material)?;
            drop(material);
            let audit = event(this.now(), &actor, "key.export", &key, Outcome::Success).with_details(format!(
                "spec {}, state {}, to RSA-{} public key sha256 {fingerprint}",
                spec.name,
                rec.state.label(),
                to.bits
            ));
            this.store.append_audit(&[audit])?;
            tracing::info!(key_id = %key, public_key_sha256 = %fingerprint, "key exported");
            Ok(ExportedKey { key_id: key, spec: spec.name, wrapped: blob, public_key_sha256: fingerprint })
        })
        .await
    }

    fn audit_export_refusal(&self, actor: &str, key: &KeyId, why: &str) {
        tracing::warn!(caller = %actor, key_id = %key, reason = %why, "export refused");
        let e = event(self.now(), actor, "key.export", key, Outcome::Refused).with_details(why);
        if let Err(err) = self.store.append_audit(&[e]) {
            tracing::error!(error = %err, "could not audit a refused export");
        }
    }
}
