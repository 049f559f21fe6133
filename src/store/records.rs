//! Row encodings: store-local serde structs (JSON, with a `v` version field),
//! converted to and from domain types here, so the domain derives no wire
//! traits and storage does not follow the protobuf schema.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{StoreError, corrupt};
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::byok::ImportKey;
use crate::domain::exchange::{
    ALL_STATUSES, ExchangeRequest, ExchangeRole, Frequency, PeerRef, RequestStatus, SignedBlob, SpecLine,
    SpecLineStatus, Transition,
};
use crate::domain::ids::{Host, ImportToken, KeyId, Name, RequestId, SysId, UnixMillis};
use crate::domain::key::{
    KeyOrigin, KeyRecord, KeyState, LifecycleDefinition, LifecyclePolicy, PolicyScope, WrappedKey,
};
use crate::domain::spec::{Algorithm, Module, Purpose, Spec, SpecChoice};

const ROW_VERSION: u8 = 1;

pub fn encode<T: Serialize>(row: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(row).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn name(s: &str) -> Result<Name, StoreError> {
    Name::parse(s, "name").map_err(corrupt)
}

fn sys_id(s: &str) -> Result<SysId, StoreError> {
    SysId::parse(s).map_err(corrupt)
}

pub(super) mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

// === modules and specs ===

#[derive(Serialize, Deserialize)]
pub struct ModuleRow {
    v: u8,
    name: String,
    created_at: i64,
}

impl From<&Module> for ModuleRow {
    fn from(m: &Module) -> Self {
        ModuleRow { v: ROW_VERSION, name: m.name.to_string(), created_at: m.created_at.0 }
    }
}

impl TryFrom<ModuleRow> for Module {
    type Error = StoreError;
    fn try_from(r: ModuleRow) -> Result<Self, StoreError> {
        Ok(Module { name: name(&r.name)?, created_at: UnixMillis(r.created_at) })
    }
}

#[derive(Serialize, Deserialize)]
pub struct SpecRow {
    v: u8,
    name: String,
    module: String,
    purpose: String,
    algorithm: String,
    key_size_bits: u32,
    #[serde(default)]
    equality_preserving: bool,
    /// BYOK export allowed (absent in rows of earlier versions: false).
    #[serde(default)]
    exportable: bool,
    created_at: i64,
    #[serde(default)]
    expire_after: Option<i64>,
    #[serde(default)]
    destroy_after_idle: Option<i64>,
}

impl From<&Spec> for SpecRow {
    fn from(s: &Spec) -> Self {
        SpecRow {
            v: ROW_VERSION,
            name: s.name.to_string(),
            module: s.module.to_string(),
            purpose: s.purpose.as_str().into(),
            algorithm: s.algorithm.as_str().into(),
            key_size_bits: s.key_size_bits,
            equality_preserving: s.equality_preserving,
            exportable: s.exportable,
            created_at: s.created_at.0,
            expire_after: s.lifecycle.expire_after,
            destroy_after_idle: s.lifecycle.destroy_after_idle,
        }
    }
}

impl TryFrom<SpecRow> for Spec {
    type Error = StoreError;
    fn try_from(r: SpecRow) -> Result<Self, StoreError> {
        let purpose = Purpose::parse(&r.purpose).ok_or_else(|| corrupt(format!("purpose {}", r.purpose)))?;
        let algorithm = Algorithm::parse(&r.algorithm).ok_or_else(|| corrupt(format!("algorithm {}", r.algorithm)))?;
        let choice = SpecChoice {
            purpose,
            algorithm,
            key_size_bits: r.key_size_bits,
            equality_preserving: r.equality_preserving,
        };
        let mut spec =
            Spec::try_new(name(&r.name)?, name(&r.module)?, choice, UnixMillis(r.created_at)).map_err(corrupt)?;
        spec.lifecycle = LifecycleDefinition { expire_after: r.expire_after, destroy_after_idle: r.destroy_after_idle };
        spec.exportable = r.exportable;
        Ok(spec)
    }
}

// === keys ===

#[derive(Serialize, Deserialize)]
pub struct KeyRow {
    v: u8,
    key_id: String,
    state: String,
    request_id: Option<String>,
    generated_at: i64,
    activated_at: Option<i64>,
    deactivated_at: Option<i64>,
    imported_at: Option<i64>,
    expired_at: Option<i64>,
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    renewed_at: Option<i64>,
    #[serde(default)]
    suspended_at: Option<i64>,
    #[serde(default)]
    compromised_at: Option<i64>,
    #[serde(default)]
    revoked_at: Option<i64>,
    #[serde(default)]
    destroyed_at: Option<i64>,
    #[serde(default)]
    reason: String,
    /// "byok" for a key brought by an operator; absent otherwise (the
    /// origin is then Local, or KeyExchange when `request_id` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    /// Empty once the key is Destroyed.
    #[serde(with = "hex_bytes")]
    wrapped: Vec<u8>,
}

impl KeyRow {
    pub fn new(k: &KeyRecord, wrapped: &WrappedKey) -> Self {
        KeyRow {
            v: ROW_VERSION,
            key_id: k.id.to_string(),
            state: k.state.label().to_owned(),
            request_id: match &k.origin {
                KeyOrigin::Local | KeyOrigin::Byok => None,
                KeyOrigin::KeyExchange { request_id } => Some(request_id.to_string()),
            },
            origin: (k.origin == KeyOrigin::Byok).then(|| "byok".to_owned()),
            generated_at: k.generated_at.0,
            activated_at: k.activated_at.map(|t| t.0),
            deactivated_at: k.deactivated_at.map(|t| t.0),
            imported_at: k.imported_at.map(|t| t.0),
            expired_at: k.expired_at.map(|t| t.0),
            expires_at: k.expires_at.map(|t| t.0),
            renewed_at: k.renewed_at.map(|t| t.0),
            suspended_at: k.suspended_at.map(|t| t.0),
            compromised_at: k.compromised_at.map(|t| t.0),
            revoked_at: k.revoked_at.map(|t| t.0),
            destroyed_at: k.destroyed_at.map(|t| t.0),
            reason: k.reason.clone(),
            wrapped: wrapped.0.clone(),
        }
    }
}

impl TryFrom<KeyRow> for (KeyRecord, WrappedKey) {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        let state = KeyState::parse(&r.state).ok_or_else(|| corrupt(format!("key state {}", r.state)))?;
        let origin = match (r.origin.as_deref(), r.request_id) {
            (None, None) => KeyOrigin::Local,
            (Some("byok"), None) => KeyOrigin::Byok,
            (None, Some(id)) => KeyOrigin::KeyExchange { request_id: RequestId::parse(&id).map_err(corrupt)? },
            (Some(other), _) => return Err(corrupt(format!("key origin {other}"))),
        };
        let rec = KeyRecord {
            id: KeyId::parse(&r.key_id).map_err(corrupt)?,
            state,
            origin,
            generated_at: UnixMillis(r.generated_at),
            activated_at: r.activated_at.map(UnixMillis),
            deactivated_at: r.deactivated_at.map(UnixMillis),
            imported_at: r.imported_at.map(UnixMillis),
            expired_at: r.expired_at.map(UnixMillis),
            expires_at: r.expires_at.map(UnixMillis),
            renewed_at: r.renewed_at.map(UnixMillis),
            suspended_at: r.suspended_at.map(UnixMillis),
            compromised_at: r.compromised_at.map(UnixMillis),
            revoked_at: r.revoked_at.map(UnixMillis),
            destroyed_at: r.destroyed_at.map(UnixMillis),
            reason: r.reason,
        };
        Ok((rec, WrappedKey(r.wrapped)))
    }
}

fn wrapping_label(w: WrappingAlgorithm) -> &'static str {
    match w {
        WrappingAlgorithm::RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
        WrappingAlgorithm::RsaAesKeyWrapSha1 => "RSA_AES_KEY_WRAP_SHA_1",
    }
}

fn wrapping_from(s: &str) -> Result<WrappingAlgorithm, StoreError> {
    match s {
        "RSA_AES_KEY_WRAP_SHA_256" => Ok(WrappingAlgorithm::RsaAesKeyWrapSha256),
        "RSA_AES_KEY_WRAP_SHA_1" => Ok(WrappingAlgorithm::RsaAesKeyWrapSha1),
        other => Err(corrupt(format!("wrapping {other}"))),
    }
}

// === requests ===

#[derive(Serialize, Deserialize)]
struct LineRow {
    spec: String,
    status: String,
    key_count: u32,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct TransitionRow {
    status: String,
    at: i64,
    actor: String,
    note: String,
}

#[derive(Serialize, Deserialize)]
pub struct RequestRow {
    v: u8,
    id: String,
    role: String,
    frequency: String,
    source_sys_id: String,
    source_host: String,
    target_sys_id: String,
    target_host: String,
    status: String,
    lines: Vec<LineRow>,
    total_key_count: u32,
    exported_key_count: u32,
    imported_key_count: u32,
    created_at: i64,
    updated_at: i64,
    expires_at: i64,
    history: Vec<TransitionRow>,
    #[serde(with = "hex_bytes")]
    peer_certificate: Vec<u8>,
    #[serde(with = "hex_bytes")]
    receipt: Vec<u8>,
    #[serde(with = "hex_bytes")]
    receipt_signature: Vec<u8>,
    #[serde(with = "hex_bytes")]
    transport_public_key: Vec<u8>,
    wrapping: String,
    /// Target side: rekey after the import (absent in rows of earlier versions).
    #[serde(default)]
    rekey: bool,
    /// A request after a clone: the clone grant it echoes (absent in rows of earlier versions).
    #[serde(default)]
    clone_grant: Option<String>,
    /// Bumped by every write; conditional writes compare it.
    #[serde(default)]
    pub version: u64,
}

impl RequestRow {
    pub fn created_at_millis(&self) -> i64 {
        self.created_at
    }
}

fn status(s: &str) -> Result<RequestStatus, StoreError> {
    ALL_STATUSES.into_iter().find(|x| x.label() == s).ok_or_else(|| corrupt(format!("status {s}")))
}

fn line_label(s: SpecLineStatus) -> &'static str {
    match s {
        SpecLineStatus::Pending => "PENDING",
        SpecLineStatus::Exchanged => "EXCHANGED",
        SpecLineStatus::NotOnSource => "NOT_ON_SOURCE",
        SpecLineStatus::Failed => "FAILED",
    }
}

fn line_status(s: &str) -> Result<SpecLineStatus, StoreError> {
    [SpecLineStatus::Pending, SpecLineStatus::Exchanged, SpecLineStatus::NotOnSource, SpecLineStatus::Failed]
        .into_iter()
        .find(|x| line_label(*x) == s)
        .ok_or_else(|| corrupt(format!("line status {s}")))
}

impl From<&ExchangeRequest> for RequestRow {
    fn from(r: &ExchangeRequest) -> Self {
        let (receipt, receipt_signature) = match &r.receipt {
            Some(b) => (b.bytes.clone(), b.signature.clone()),
            None => (Vec::new(), Vec::new()),
        };
        RequestRow {
            v: ROW_VERSION,
            id: r.id.to_string(),
            role: match r.role {
                ExchangeRole::Source => "source".into(),
                ExchangeRole::Target => "target".into(),
            },
            frequency: match r.frequency {
                Frequency::Adhoc => "adhoc".into(),
                Frequency::Automatic => "automatic".into(),
                Frequency::OneTimeClone => "one_time_clone".into(),
                Frequency::RecurringClone => "recurring_clone".into(),
            },
            source_sys_id: r.source.sys_id.to_string(),
            source_host: r.source.host.to_string(),
            target_sys_id: r.target.sys_id.to_string(),
            target_host: r.target.host.to_string(),
            status: r.status.label().into(),
            lines: r
                .lines
                .iter()
                .map(|l| LineRow {
                    spec: l.spec.to_string(),
                    status: line_label(l.status).into(),
                    key_count: l.key_count,
                    reason: l.reason.clone(),
                })
                .collect(),
            total_key_count: r.total_key_count,
            exported_key_count: r.exported_key_count,
            imported_key_count: r.imported_key_count,
            created_at: r.created_at.0,
            updated_at: r.updated_at.0,
            expires_at: r.expires_at.0,
            history: r
                .history
                .iter()
                .map(|t| TransitionRow {
                    status: t.status.label().into(),
                    at: t.at.0,
                    actor: t.actor.clone(),
                    note: t.note.clone(),
                })
                .collect(),
            peer_certificate: r.peer_certificate.clone(),
            receipt,
            receipt_signature,
            transport_public_key: r.transport_public_key.clone(),
            wrapping: wrapping_label(r.wrapping).into(),
            rekey: r.rekey,
            clone_grant: r.clone_grant.clone(),
            version: 0,
        }
    }
}

impl TryFrom<RequestRow> for ExchangeRequest {
    type Error = StoreError;
    fn try_from(r: RequestRow) -> Result<Self, StoreError> {
        let host = |h: &str| Host::parse(h).map_err(corrupt);
        Ok(ExchangeRequest {
            id: RequestId::parse(&r.id).map_err(corrupt)?,
            role: match r.role.as_str() {
                "source" => ExchangeRole::Source,
                "target" => ExchangeRole::Target,
                other => return Err(corrupt(format!("role {other}"))),
            },
            frequency: match r.frequency.as_str() {
                "adhoc" => Frequency::Adhoc,
                "automatic" => Frequency::Automatic,
                "one_time_clone" => Frequency::OneTimeClone,
                "recurring_clone" => Frequency::RecurringClone,
                other => return Err(corrupt(format!("frequency {other}"))),
            },
            source: PeerRef { sys_id: sys_id(&r.source_sys_id)?, host: host(&r.source_host)? },
            target: PeerRef { sys_id: sys_id(&r.target_sys_id)?, host: host(&r.target_host)? },
            status: status(&r.status)?,
            lines: r
                .lines
                .into_iter()
                .map(|l| {
                    Ok(SpecLine {
                        spec: name(&l.spec)?,
                        status: line_status(&l.status)?,
                        key_count: l.key_count,
                        reason: l.reason,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
            total_key_count: r.total_key_count,
            exported_key_count: r.exported_key_count,
            imported_key_count: r.imported_key_count,
            created_at: UnixMillis(r.created_at),
            updated_at: UnixMillis(r.updated_at),
            expires_at: UnixMillis(r.expires_at),
            history: r
                .history
                .into_iter()
                .map(|t| {
                    Ok(Transition { status: status(&t.status)?, at: UnixMillis(t.at), actor: t.actor, note: t.note })
                })
                .collect::<Result<_, StoreError>>()?,
            peer_certificate: r.peer_certificate,
            receipt: (!r.receipt.is_empty()).then_some(SignedBlob { bytes: r.receipt, signature: r.receipt_signature }),
            transport_public_key: r.transport_public_key,
            wrapping: wrapping_from(&r.wrapping)?,
            rekey: r.rekey,
            clone_grant: r.clone_grant,
        })
    }
}

// === BYOK import keys ===

#[derive(Serialize, Deserialize)]
pub struct ImportKeyRow {
    v: u8,
    token: String,
    spec: String,
    created_at: i64,
    expires_at: i64,
    /// The signer's handle (KEK-wrapped private key or token label).
    #[serde(with = "hex_bytes")]
    handle: Vec<u8>,
    wrapping: String,
    #[serde(default)]
    used_at: Option<i64>,
    #[serde(default)]
    used_by: Option<String>,
}

impl From<&ImportKey> for ImportKeyRow {
    fn from(k: &ImportKey) -> Self {
        ImportKeyRow {
            v: ROW_VERSION,
            token: k.token.to_string(),
            spec: k.spec.to_string(),
            created_at: k.created_at.0,
            expires_at: k.expires_at.0,
            handle: k.handle.clone(),
            wrapping: wrapping_label(k.wrapping).into(),
            used_at: k.used.as_ref().map(|(at, _)| at.0),
            used_by: k.used.as_ref().map(|(_, id)| id.to_string()),
        }
    }
}

impl TryFrom<ImportKeyRow> for ImportKey {
    type Error = StoreError;
    fn try_from(r: ImportKeyRow) -> Result<Self, StoreError> {
        Ok(ImportKey {
            token: ImportToken::parse(&r.token).map_err(corrupt)?,
            spec: name(&r.spec)?,
            created_at: UnixMillis(r.created_at),
            expires_at: UnixMillis(r.expires_at),
            handle: r.handle,
            wrapping: wrapping_from(&r.wrapping)?,
            used: match (r.used_at, r.used_by) {
                (Some(at), Some(id)) => Some((UnixMillis(at), KeyId::parse(&id).map_err(corrupt)?)),
                (None, None) => None,
                _ => return Err(corrupt("import key: used_at without used_by")),
            },
        })
    }
}

// === lifecycle policies ===

#[derive(Serialize, Deserialize)]
pub struct LifecyclePolicyRow {
    v: u8,
    scope: String,
    active: bool,
    max_expire_after: Option<i64>,
}

pub fn scope_key(scope: &PolicyScope) -> String {
    match scope {
        PolicyScope::Instance => "instance".into(),
        PolicyScope::Module(m) => format!("module:{m}"),
    }
}

impl From<&LifecyclePolicy> for LifecyclePolicyRow {
    fn from(p: &LifecyclePolicy) -> Self {
        LifecyclePolicyRow {
            v: ROW_VERSION,
            scope: scope_key(&p.scope),
            active: p.active,
            max_expire_after: p.max_expire_after,
        }
    }
}

impl TryFrom<LifecyclePolicyRow> for LifecyclePolicy {
    type Error = StoreError;
    fn try_from(r: LifecyclePolicyRow) -> Result<Self, StoreError> {
        let scope = match r.scope.strip_prefix("module:") {
            Some(m) => PolicyScope::Module(name(m)?),
            None if r.scope == "instance" => PolicyScope::Instance,
            None => return Err(corrupt(format!("policy scope {}", r.scope))),
        };
        Ok(LifecyclePolicy { scope, active: r.active, max_expire_after: r.max_expire_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_before_byok_read_as_not_exportable_and_local() {
        let spec = br#"{"v":1,"name":"s","module":"m","purpose":"symmetric_data_encryption","algorithm":"aes_gcm","key_size_bits":256,"created_at":1}"#;
        let spec: Spec = decode::<SpecRow>(spec).unwrap().try_into().unwrap();
        assert!(!spec.exportable);
        let mut exportable = spec.clone();
        exportable.exportable = true;
        let again: Spec = decode::<SpecRow>(&encode(&SpecRow::from(&exportable))).unwrap().try_into().unwrap();
        assert!(again.exportable);

        let key = format!(
            r#"{{"v":1,"key_id":"{}:s:v1","state":"Active","request_id":null,"generated_at":1,"activated_at":1,"deactivated_at":null,"imported_at":null,"expired_at":null,"wrapped":"00"}}"#,
            "a".repeat(32)
        );
        let (rec, _) = <(KeyRecord, WrappedKey)>::try_from(decode::<KeyRow>(key.as_bytes()).unwrap()).unwrap();
        assert_eq!(rec.origin, KeyOrigin::Local);
        let byok = KeyRecord { origin: KeyOrigin::Byok, ..rec };
        let row = encode(&KeyRow::new(&byok, &WrappedKey(vec![0])));
        assert!(String::from_utf8_lossy(&row).contains(r#""origin":"byok""#));
        let (back, _) = <(KeyRecord, WrappedKey)>::try_from(decode::<KeyRow>(&row).unwrap()).unwrap();
        assert_eq!(back.origin, KeyOrigin::Byok);
    }
}
