//! Conversions between generated types and domain types. Unspecified enums
//! and missing fields become INVALID_ARGUMENT here, at the edge.

use prost_types::{Duration, Timestamp};

use super::pb;
use crate::domain::DomainError;
use crate::domain::audit::AuditEntry;
use crate::domain::bundle::WrappingAlgorithm;
use crate::domain::exchange::{ExchangeRequest, ExchangeRole, Frequency, RequestStatus, SpecLine, SpecLineStatus};
use crate::domain::ids::{Name, UnixMillis};
use crate::domain::key::{KeyAction, KeyOrigin, KeyRecord, KeyState, LifecyclePolicy, PolicyScope};
use crate::domain::spec::{ALL_ALGORITHMS, ALL_PURPOSES, Algorithm, Module, Purpose, Spec, SpecChoice};

pub fn ts(t: UnixMillis) -> Timestamp {
    Timestamp { seconds: t.0.div_euclid(1000), nanos: (t.0.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn opt_ts(t: Option<UnixMillis>) -> Option<Timestamp> {
    t.map(ts)
}

pub fn from_ts(t: &Timestamp) -> UnixMillis {
    UnixMillis(t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos) / 1_000_000))
}

pub fn duration_millis(d: &Duration) -> Result<i64, DomainError> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(DomainError::invalid("expires_in", "must be positive"));
    }
    Ok(d.seconds.saturating_mul(1000).saturating_add(i64::from(d.nanos) / 1_000_000))
}

pub fn name(text: &str, field: &'static str) -> Result<Name, DomainError> {
    Name::parse(text, field)
}

pub fn module(m: &Module) -> pb::Module {
    pb::Module { name: m.name.to_string(), created_at: Some(ts(m.created_at)) }
}

pub fn spec(s: &Spec) -> pb::Spec {
    pb::Spec {
        name: s.name.to_string(),
        module: s.module.to_string(),
        purpose: pb_purpose(s.purpose) as i32,
        algorithm: pb_algorithm(s.algorithm) as i32,
        equality_preserving: s.equality_preserving,
        scheme: s.scheme().label(),
        key_size_bits: s.key_size_bits,
        created_at: Some(ts(s.created_at)),
        expire_after: s.lifecycle.expire_after.map(duration),
        destroy_after_idle: s.lifecycle.destroy_after_idle.map(duration),
        exportable: s.exportable,
    }
}

fn pb_purpose(p: Purpose) -> pb::CryptoPurpose {
    match p {
        Purpose::SymmetricDataEncryption => pb::CryptoPurpose::SymmetricDataEncryption,
        Purpose::SymmetricKeyWrapping => pb::CryptoPurpose::SymmetricKeyWrapping,
        Purpose::SymmetricAuthenticity => pb::CryptoPurpose::SymmetricAuthenticity,
        Purpose::AsymmetricDataEncryption => pb::CryptoPurpose::AsymmetricDataEncryption,
        Purpose::AsymmetricKeyWrapping => pb::CryptoPurpose::AsymmetricKeyWrapping,
        Purpose::Signature => pb::CryptoPurpose::Signature,
    }
}

fn pb_algorithm(a: Algorithm) -> pb::Algorithm {
    match a {
        Algorithm::AesGcm => pb::Algorithm::AesGcm,
        Algorithm::AesCbc => pb::Algorithm::AesCbc,
        Algorithm::AesCtr => pb::Algorithm::AesCtr,
        Algorithm::Hmac => pb::Algorithm::Hmac,
        Algorithm::Rsa => pb::Algorithm::Rsa,
    }
}

/// The choices of a CreateSpec request (unset fields take the domain's
/// defaults); the domain then checks the combination.
pub fn spec_choice(r: &pb::CreateSpecRequest) -> Result<SpecChoice, DomainError> {
    let purpose = (r.purpose != 0).then(|| purpose_from(r.purpose)).transpose()?;
    let algorithm = (r.algorithm != 0).then(|| algorithm_from(r.algorithm)).transpose()?;
    let size = (r.key_size_bits != 0).then_some(r.key_size_bits);
    SpecChoice::with_defaults(purpose, algorithm, size, r.equality_preserving)
}

pub fn purpose_from(v: i32) -> Result<Purpose, DomainError> {
    ALL_PURPOSES.into_iter().find(|p| pb_purpose(*p) as i32 == v).ok_or_else(|| {
        let names: Vec<&str> = ALL_PURPOSES.iter().map(|p| pb_purpose(*p).as_str_name()).collect();
        DomainError::invalid("purpose", format!("unknown purpose {v}; one of {}", names.join(", ")))
    })
}

pub fn algorithm_from(v: i32) -> Result<Algorithm, DomainError> {
    ALL_ALGORITHMS.into_iter().find(|a| pb_algorithm(*a) as i32 == v).ok_or_else(|| {
        let names: Vec<&str> = ALL_ALGORITHMS.iter().map(|a| pb_algorithm(*a).as_str_name()).collect();
        DomainError::invalid("algorithm", format!("unknown algorithm {v}; one of {}", names.join(", ")))
    })
}

fn key_state(s: KeyState) -> pb::KeyState {
    match s {
        KeyState::Generated => pb::KeyState::Generated,
        KeyState::Active => pb::KeyState::Active,
        KeyState::Renewed => pb::KeyState::Renewed,
        KeyState::Suspended => pb::KeyState::Suspended,
        KeyState::Deactivated => pb::KeyState::Deactivated,
        KeyState::Compromised => pb::KeyState::Compromised,
        KeyState::Revoked => pb::KeyState::Revoked,
        KeyState::Destroyed => pb::KeyState::Destroyed,
        KeyState::Expired => pb::KeyState::Expired,
    }
}

pub fn key_action(v: i32, reason: String) -> Result<KeyAction, DomainError> {
    Ok(match pb::KeyAction::try_from(v) {
        Ok(pb::KeyAction::Activate) => KeyAction::Activate,
        Ok(pb::KeyAction::Renew) => KeyAction::Renew,
        Ok(pb::KeyAction::Suspend) => KeyAction::Suspend,
        Ok(pb::KeyAction::Resume) => KeyAction::Resume,
        Ok(pb::KeyAction::Revoke) => KeyAction::Revoke { reason },
        Ok(pb::KeyAction::MarkCompromised) => KeyAction::MarkCompromised { reason },
        _ => {
            return Err(DomainError::invalid(
                "action",
                "set ACTIVATE, RENEW, SUSPEND, RESUME, REVOKE or MARK_COMPROMISED",
            ));
        }
    })
}

pub fn duration(millis: i64) -> Duration {
    Duration { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

/// An optional positive duration field, in milliseconds.
pub fn opt_duration(d: &Option<Duration>, field: &'static str) -> Result<Option<i64>, DomainError> {
    match d {
        None => Ok(None),
        Some(d) => {
            let ms = duration_millis(d).map_err(|_| DomainError::invalid(field, "must be positive"))?;
            if ms <= 0 {
                return Err(DomainError::invalid(field, "must be positive"));
            }
            Ok(Some(ms))
        }
    }
}

pub fn lifecycle_policy(p: &LifecyclePolicy) -> pb::LifecyclePolicy {
    pb::LifecyclePolicy {
        module: match &p.scope {
            PolicyScope::Instance => String::new(),
            PolicyScope::Module(m) => m.to_string(),
        },
        active: p.active,
        max_expire_after: p.max_expire_after.map(duration),
    }
}

pub fn lifecycle_policy_from(p: &pb::LifecyclePolicy) -> Result<LifecyclePolicy, DomainError> {
    let scope =
        if p.module.is_empty() { PolicyScope::Instance } else { PolicyScope::Module(name(&p.module, "module")?) };
    Ok(LifecyclePolicy {
        scope,
        active: p.active,
        max_expire_after: opt_duration(&p.max_expire_after, "max_expire_after")?,
    })
}

pub fn audit_entry(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        at: Some(ts(e.event.at)),
        actor: e.event.actor.clone(),
        action: e.event.action.clone(),
        subject: e.event.subject.clone(),
        outcome: e.event.outcome.as_str().to_owned(),
        details: e.event.details.clone(),
        prev_hash: hex::encode(e.prev_hash),
        hash: hex::encode(e.hash),
    }
}

pub fn key(k: &KeyRecord) -> pb::Key {
    let (origin, request_id) = match &k.origin {
        KeyOrigin::Local => (pb::KeyOrigin::Local, String::new()),
        KeyOrigin::Byok => (pb::KeyOrigin::Byok, String::new()),
        KeyOrigin::KeyExchange { request_id } => (pb::KeyOrigin::KeyExchange, request_id.to_string()),
    };
    pb::Key {
        key_id: k.id.to_string(),
        origin_sys_id: k.id.origin.to_string(),
        spec: k.id.spec.to_string(),
        version: k.id.version,
        state: key_state(k.state) as i32,
        origin: origin as i32,
        generated_at: Some(ts(k.generated_at)),
        activated_at: opt_ts(k.activated_at),
        deactivated_at: opt_ts(k.deactivated_at),
        imported_at: opt_ts(k.imported_at),
        expired_at: opt_ts(k.expired_at),
        request_id,
        expires_at: opt_ts(k.expires_at),
        renewed_at: opt_ts(k.renewed_at),
        suspended_at: opt_ts(k.suspended_at),
        compromised_at: opt_ts(k.compromised_at),
        revoked_at: opt_ts(k.revoked_at),
        destroyed_at: opt_ts(k.destroyed_at),
        reason: k.reason.clone(),
    }
}

pub fn status(s: RequestStatus) -> pb::RequestStatus {
    match s {
        RequestStatus::Pending => pb::RequestStatus::RequestPending,
        RequestStatus::Approved => pb::RequestStatus::RequestApproved,
        RequestStatus::Completed => pb::RequestStatus::RequestCompleted,
        RequestStatus::Rejected => pb::RequestStatus::RequestRejected,
        RequestStatus::Expired => pb::RequestStatus::RequestExpired,
        RequestStatus::ErrorOnLocalInstance => pb::RequestStatus::ErrorOnLocalInstance,
        RequestStatus::ErrorOnRemoteInstance => pb::RequestStatus::ErrorOnRemoteInstance,
    }
}

/// `None` for UNSPECIFIED (used as "no filter").
pub fn status_from(v: i32) -> Result<Option<RequestStatus>, DomainError> {
    Ok(Some(match pb::RequestStatus::try_from(v) {
        Ok(pb::RequestStatus::Unspecified) => return Ok(None),
        Ok(pb::RequestStatus::RequestPending) => RequestStatus::Pending,
        Ok(pb::RequestStatus::RequestApproved) => RequestStatus::Approved,
        Ok(pb::RequestStatus::RequestCompleted) => RequestStatus::Completed,
        Ok(pb::RequestStatus::RequestRejected) => RequestStatus::Rejected,
        Ok(pb::RequestStatus::RequestExpired) => RequestStatus::Expired,
        Ok(pb::RequestStatus::ErrorOnLocalInstance) => RequestStatus::ErrorOnLocalInstance,
        Ok(pb::RequestStatus::ErrorOnRemoteInstance) => RequestStatus::ErrorOnRemoteInstance,
        Err(_) => return Err(DomainError::invalid("status", format!("unknown value {v}"))),
    }))
}

fn line_status(s: SpecLineStatus) -> pb::SpecLineStatus {
    match s {
        SpecLineStatus::Pending => pb::SpecLineStatus::SpecLinePending,
        SpecLineStatus::Exchanged => pb::SpecLineStatus::Exchanged,
        SpecLineStatus::NotOnSource => pb::SpecLineStatus::NotOnSource,
        SpecLineStatus::Failed => pb::SpecLineStatus::Failed,
    }
}

pub fn line(l: &SpecLine) -> pb::SpecLine {
    pb::SpecLine {
        spec: l.spec.to_string(),
        status: line_status(l.status) as i32,
        key_count: l.key_count,
        reason: l.reason.clone(),
    }
}

pub fn line_from(l: &pb::SpecLine) -> Result<SpecLine, DomainError> {
    let status = match pb::SpecLineStatus::try_from(l.status) {
        Ok(pb::SpecLineStatus::SpecLinePending) => SpecLineStatus::Pending,
        Ok(pb::SpecLineStatus::Exchanged) => SpecLineStatus::Exchanged,
        Ok(pb::SpecLineStatus::NotOnSource) => SpecLineStatus::NotOnSource,
        Ok(pb::SpecLineStatus::Failed) => SpecLineStatus::Failed,
        _ => return Err(DomainError::invalid("lines.status", "unspecified")),
    };
    Ok(SpecLine { spec: name(&l.spec, "lines.spec")?, status, key_count: l.key_count, reason: l.reason.clone() })
}

pub fn request(r: &ExchangeRequest) -> pb::ExchangeRequest {
    pb::ExchangeRequest {
        request_id: r.id.to_string(),
        role: match r.role {
            ExchangeRole::Source => pb::ExchangeRole::Source,
            ExchangeRole::Target => pb::ExchangeRole::Target,
        } as i32,
        frequency: frequency(r.frequency) as i32,
        source_sys_id: r.source.sys_id.to_string(),
        source_host: r.source.host.to_string(),
        target_sys_id: r.target.sys_id.to_string(),
        target_host: r.target.host.to_string(),
        status: status(r.status) as i32,
        lines: r.lines.iter().map(line).collect(),
        total_key_count: r.total_key_count,
        exported_key_count: r.exported_key_count,
        imported_key_count: r.imported_key_count,
        created_at: Some(ts(r.created_at)),
        updated_at: Some(ts(r.updated_at)),
        expires_at: Some(ts(r.expires_at)),
        history: r
            .history
            .iter()
            .map(|t| pb::Transition {
                status: status(t.status) as i32,
                at: Some(ts(t.at)),
                actor: t.actor.clone(),
                note: t.note.clone(),
            })
            .collect(),
        rekey_after_import: r.rekey,
    }
}

pub fn wrapping(w: WrappingAlgorithm) -> pb::WrappingAlgorithm {
    match w {
        WrappingAlgorithm::RsaAesKeyWrapSha256 => pb::WrappingAlgorithm::RsaAesKeyWrapSha256,
        WrappingAlgorithm::RsaAesKeyWrapSha1 => pb::WrappingAlgorithm::RsaAesKeyWrapSha1,
    }
}

pub fn wrapping_from(v: i32) -> Result<WrappingAlgorithm, DomainError> {
    match pb::WrappingAlgorithm::try_from(v) {
        Ok(pb::WrappingAlgorithm::RsaAesKeyWrapSha256) => Ok(WrappingAlgorithm::RsaAesKeyWrapSha256),
        Ok(pb::WrappingAlgorithm::RsaAesKeyWrapSha1) => Ok(WrappingAlgorithm::RsaAesKeyWrapSha1),
        _ => Err(DomainError::invalid("wrapping_algorithm", "unspecified or unknown")),
    }
}

pub fn frequency(f: Frequency) -> pb::Frequency {
    match f {
        Frequency::Adhoc => pb::Frequency::Adhoc,
        Frequency::Automatic => pb::Frequency::Automatic,
        Frequency::OneTimeClone => pb::Frequency::OneTimeClone,
        Frequency::RecurringClone => pb::Frequency::RecurringClone,
    }
}

/// A request's frequency; FREQUENCY_UNSPECIFIED is refused, as the proto says
/// of every *_UNSPECIFIED.
pub fn frequency_from(v: i32) -> Result<Frequency, DomainError> {
    match pb::Frequency::try_from(v) {
        Ok(pb::Frequency::Unspecified) => {
            Err(DomainError::invalid("frequency", "FREQUENCY_UNSPECIFIED: set ADHOC for a request made by hand"))
        }
        Ok(pb::Frequency::Adhoc) => Ok(Frequency::Adhoc),
        Ok(pb::Frequency::Automatic) => Ok(Frequency::Automatic),
        Ok(pb::Frequency::OneTimeClone) => Ok(Frequency::OneTimeClone),
        Ok(pb::Frequency::RecurringClone) => Ok(Frequency::RecurringClone),
        Err(_) => Err(DomainError::invalid("frequency", "unknown value")),
    }
}
