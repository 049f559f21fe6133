//! Module keys: lifecycle states and the transitions between them, origin,
//! metadata, and the zeroizing data-key buffer. Key material lives only in
//! `DataKey` (in memory, zeroized on drop) or `WrappedKey` (wrapped).

use std::fmt;

use zeroize::Zeroizing;

use super::DomainError;
use super::ids::{KeyId, Name, RequestId, SysId, UnixMillis};
pub use super::lifecycle::{LifecycleDefinition, LifecyclePolicy, PolicyScope, effective_cap};

/// Lifecycle states (kmf-domain.md §2), in lifecycle order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum KeyState {
    /// Made while another key of the spec was current; usable once activated.
    Generated,
    /// The current key of its spec: encrypts new data.
    Active,
    /// An Active key whose expiration was extended; still current.
    Renewed,
    /// Temporarily unusable; resume makes it Active again.
    Suspended,
    /// Retired by rotation: decrypts only.
    Deactivated,
    /// Known or suspected to be exposed: decrypts only.
    Compromised,
    /// Withdrawn with a reason: decrypts only.
    Revoked,
    /// Material erased by lifecycle policy: unusable.
    Destroyed,
    /// An imported key after its exchange completed: decrypts only.
    Expired,
}

pub const ALL_STATES: [KeyState; 9] = [
    KeyState::Generated,
    KeyState::Active,
    KeyState::Renewed,
    KeyState::Suspended,
    KeyState::Deactivated,
    KeyState::Compromised,
    KeyState::Revoked,
    KeyState::Destroyed,
    KeyState::Expired,
];

impl KeyState {
    /// New content: encrypt, sign, MAC, wrap.
    pub fn can_encrypt(self) -> bool {
        self.is_current()
    }

    /// Existing content: decrypt, verify, unwrap.
    pub fn can_decrypt(self) -> bool {
        matches!(
            self,
            KeyState::Active
                | KeyState::Renewed
                | KeyState::Deactivated
                | KeyState::Compromised
                | KeyState::Revoked
                | KeyState::Expired
        )
    }

    /// The one key of a spec that serves new data (Active or Renewed).
    pub fn is_current(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Renewed)
    }

    pub fn label(self) -> &'static str {
        match self {
            KeyState::Generated => "Generated",
            KeyState::Active => "Active",
            KeyState::Renewed => "Renewed",
            KeyState::Suspended => "Suspended",
            KeyState::Deactivated => "Deactivated",
            KeyState::Compromised => "Compromised",
            KeyState::Revoked => "Revoked",
            KeyState::Destroyed => "Destroyed",
            KeyState::Expired => "Expired",
        }
    }

    pub fn parse(label: &str) -> Option<Self> {
        ALL_STATES.into_iter().find(|s| s.label() == label)
    }
}

/// Where a key came from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KeyOrigin {
    /// Generated on this instance.
    Local,
    /// Imported by the exchange request named here.
    KeyExchange { request_id: RequestId },
    /// Brought by an operator (BYOK import): this instance's key, planned and
    /// aged as a generated one, its material made elsewhere.
    Byok,
}

impl KeyOrigin {
    /// Owned by this instance (generated or brought here): lifecycle actions,
    /// destruction and export apply.
    pub fn is_own(&self) -> bool {
        matches!(self, KeyOrigin::Local | KeyOrigin::Byok)
    }
}

/// A key's metadata. The wrapped material is stored beside it, never in it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyRecord {
    pub id: KeyId,
    pub state: KeyState,
    pub origin: KeyOrigin,
    pub generated_at: UnixMillis,
    pub activated_at: Option<UnixMillis>,
    pub deactivated_at: Option<UnixMillis>,
    pub imported_at: Option<UnixMillis>,
    pub expired_at: Option<UnixMillis>,
    /// The lifecycle expiration date (from the spec's lifecycle definition).
    pub expires_at: Option<UnixMillis>,
    pub renewed_at: Option<UnixMillis>,
    pub suspended_at: Option<UnixMillis>,
    pub compromised_at: Option<UnixMillis>,
    pub revoked_at: Option<UnixMillis>,
    pub destroyed_at: Option<UnixMillis>,
    /// Why it was revoked or marked compromised.
    pub reason: String,
}

impl KeyRecord {
    /// A key imported by `request_id`: Expired (decrypt only) from `now`,
    /// keeping its origin identity and its dates on the source.
    pub fn imported(
        id: KeyId,
        request_id: RequestId,
        generated_at: UnixMillis,
        activated_at: Option<UnixMillis>,
        deactivated_at: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Self {
        KeyRecord {
            activated_at,
            deactivated_at,
            imported_at: Some(now),
            expired_at: Some(now),
            ..KeyRecord::fresh(id, KeyState::Expired, KeyOrigin::KeyExchange { request_id }, generated_at)
        }
    }

    /// A record with only identity, state, origin and generation date set.
    fn fresh(id: KeyId, state: KeyState, origin: KeyOrigin, generated_at: UnixMillis) -> Self {
        KeyRecord {
            id,
            state,
            origin,
            generated_at,
            activated_at: None,
            deactivated_at: None,
            imported_at: None,
            expired_at: None,
            expires_at: None,
            renewed_at: None,
            suspended_at: None,
            compromised_at: None,
            revoked_at: None,
            destroyed_at: None,
            reason: String::new(),
        }
    }

    fn new_local(id: KeyId, state: KeyState, now: UnixMillis, lifecycle: &LifecycleDefinition) -> Self {
        let active = state == KeyState::Active;
        KeyRecord {
            activated_at: active.then_some(now),
            expires_at: if active { lifecycle.expiry_from(now) } else { None },
            ..KeyRecord::fresh(id, state, KeyOrigin::Local, now)
        }
    }
}

/// An operator's lifecycle action on one key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KeyAction {
    Activate,
    Renew,
    Suspend,
    Resume,
    Revoke { reason: String },
    MarkCompromised { reason: String },
}

impl KeyAction {
    pub fn name(&self) -> &'static str {
        match self {
            KeyAction::Activate => "activate",
            KeyAction::Renew => "renew",
            KeyAction::Suspend => "suspend",
            KeyAction::Resume => "resume",
            KeyAction::Revoke { .. } => "revoke",
            KeyAction::MarkCompromised { .. } => "mark compromised",
        }
    }
}

/// The transition table: the state an action leads to from `from`, if allowed.
pub fn next_state(from: KeyState, action: &KeyAction) -> Option<KeyState> {
    use KeyState::*;
    match (from, action) {
        (Generated, KeyAction::Activate) => Some(Active),
        (Active | Renewed, KeyAction::Renew) => Some(Renewed),
        (Active | Renewed, KeyAction::Suspend) => Some(Suspended),
        (Suspended, KeyAction::Resume) => Some(Active),
        (Active | Renewed | Suspended, KeyAction::Revoke { .. }) => Some(Revoked),
        (Active | Renewed | Suspended, KeyAction::MarkCompromised { .. }) => Some(Compromised),
        _ => None,
    }
}

/// Plaintext key material, zeroized on drop, never printed.
pub struct DataKey(Zeroizing<Vec<u8>>);

impl DataKey {
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        DataKey(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey([redacted; {} bytes])", self.0.len())
    }
}

/// Key material wrapped under a KEK (RFC 5649). Safe to store.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey(pub Vec<u8>);

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// What a key operation changes: keys updated in place, and a new key (whose
/// material the caller generates).
#[derive(Debug, PartialEq, Eq, Default)]
pub struct KeyChange {
    pub updated: Vec<KeyRecord>,
    pub new_key: Option<KeyRecord>,
}

fn current(existing: &[KeyRecord]) -> Option<&KeyRecord> {
    existing.iter().find(|k| k.state.is_current())
}

fn next_local(own: &SysId, spec: &Name, existing: &[KeyRecord]) -> KeyId {
    let version = existing.iter().filter(|k| &k.id.origin == own).map(|k| k.id.version).max().unwrap_or(0) + 1;
    KeyId { origin: own.clone(), spec: spec.clone(), version }
}

/// Plans `generate`: the new key is Active when the spec has no current key,
/// Generated otherwise (at most one current key per spec).
pub fn plan_generate(
    own: &SysId,
    spec: &Name,
    existing: &[KeyRecord],
    lifecycle: &LifecycleDefinition,
    now: UnixMillis,
) -> KeyChange {
    let state = if current(existing).is_some() { KeyState::Generated } else { KeyState::Active };
    let new_key = KeyRecord::new_local(next_local(own, spec, existing), state, now, lifecycle);
    KeyChange { updated: Vec::new(), new_key: Some(new_key) }
}

/// Plans a BYOK import: the key `plan_generate` would make (Active when the
/// spec has no current key, Generated otherwise; the next local version),
/// with origin `Byok` and `imported_at` set. The caller supplies the material.
pub fn plan_import(
    own: &SysId,
    spec: &Name,
    existing: &[KeyRecord],
    lifecycle: &LifecycleDefinition,
    now: UnixMillis,
) -> KeyRecord {
    let state = if current(existing).is_some() { KeyState::Generated } else { KeyState::Active };
    let mut key = KeyRecord::new_local(next_local(own, spec, existing), state, now, lifecycle);
    key.origin = KeyOrigin::Byok;
    key.imported_at = Some(now);
    key
}

/// Why `key` may not be exported (None: it may). Destroyed keys have no
/// material; Compromised and Suspended keys are not to be spread; a key
/// imported by a key exchange belongs to its origin instance.
pub fn export_refusal(key: &KeyRecord) -> Option<String> {
    if !key.origin.is_own() {
        return Some(format!("key {} was imported by a key exchange; only its origin instance may export it", key.id));
    }
    match key.state {
        KeyState::Destroyed | KeyState::Compromised | KeyState::Suspended => {
            Some(format!("key {} is {} and cannot be exported", key.id, key.state.label()))
        }
        _ => None,
    }
}

/// Plans `rotate`: the current key becomes Deactivated, a new key is Active
/// at the next local version.
pub fn plan_rotate(
    own: &SysId,
    spec: &Name,
    existing: &[KeyRecord],
    lifecycle: &LifecycleDefinition,
    now: UnixMillis,
) -> Result<KeyChange, DomainError> {
    let active = current(existing).ok_or_else(|| {
        DomainError::FailedPrecondition(format!("spec {spec} has no Active key to rotate; generate one first"))
    })?;
    let mut old = active.clone();
    old.state = KeyState::Deactivated;
    old.deactivated_at = Some(now);
    let new_key = KeyRecord::new_local(next_local(own, spec, existing), KeyState::Active, now, lifecycle);
    Ok(KeyChange { updated: vec![old], new_key: Some(new_key) })
}

/// Plans a lifecycle action on `target`. Revoking or marking compromised the
/// current key also plans a new Active key, so the spec keeps serving.
pub fn plan_action(
    own: &SysId,
    existing: &[KeyRecord],
    target: &KeyId,
    action: &KeyAction,
    lifecycle: &LifecycleDefinition,
    now: UnixMillis,
) -> Result<KeyChange, DomainError> {
    let key = existing.iter().find(|k| &k.id == target).ok_or_else(|| DomainError::not_found("key", target))?;
    if !key.origin.is_own() {
        return Err(DomainError::FailedPrecondition(format!(
            "key {target} was imported by a key exchange; lifecycle actions apply to local keys only"
        )));
    }
    let next = next_state(key.state, action).ok_or_else(|| {
        DomainError::FailedPrecondition(format!("cannot {} a key in state {}", action.name(), key.state.label()))
    })?;
    let other_current = existing.iter().any(|k| k.state.is_current() && &k.id != target);
    let mut k = key.clone();
    k.state = next;
    match action {
        KeyAction::Activate | KeyAction::Resume if other_current => {
            return Err(DomainError::FailedPrecondition(format!(
                "cannot {} {target}: spec {} already has an Active key",
                action.name(),
                target.spec
            )));
        }
        KeyAction::Activate => {
            k.activated_at = Some(now);
            k.expires_at = lifecycle.expiry_from(now);
        }
        KeyAction::Resume => k.suspended_at = None,
        KeyAction::Renew => {
            let (Some(expires), Some(activated)) = (key.expires_at, key.activated_at) else {
                return Err(DomainError::FailedPrecondition(format!(
                    "key {target} has no expiration date; set expire_after in the spec's lifecycle definition"
                )));
            };
            k.expires_at = Some(now.plus_millis(expires.0 - activated.0));
            k.renewed_at = Some(now);
        }
        KeyAction::Suspend => k.suspended_at = Some(now),
        KeyAction::Revoke { reason } | KeyAction::MarkCompromised { reason } => {
            if matches!(action, KeyAction::Revoke { .. }) && reason.trim().is_empty() {
                return Err(DomainError::invalid("reason", "revoking a key needs a reason"));
            }
            k.reason = reason.clone();
            if next == KeyState::Revoked {
                k.revoked_at = Some(now);
            } else {
                k.compromised_at = Some(now);
            }
        }
    }
    let replace = matches!(action, KeyAction::Revoke { .. } | KeyAction::MarkCompromised { .. }) && !other_current;
    let new_key = replace
        .then(|| KeyRecord::new_local(next_local(own, &target.spec, existing), KeyState::Active, now, lifecycle));
    Ok(KeyChange { updated: vec![k], new_key })
}

/// Deactivated local keys idle for longer than the definition allows.
pub fn due_for_destruction(existing: &[KeyRecord], lifecycle: &LifecycleDefinition, now: UnixMillis) -> Vec<KeyRecord> {
    let Some(idle) = lifecycle.destroy_after_idle else { return Vec::new() };
    existing
        .iter()
        .filter(|k| k.state == KeyState::Deactivated && k.origin.is_own())
        .filter(|k| k.deactivated_at.is_some_and(|d| now >= d.plus_millis(idle)))
        .map(|k| {
            let mut d = k.clone();
            d.state = KeyState::Destroyed;
            d.destroyed_at = Some(now);
            d
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::KeyState::*;
    use super::*;

    fn spec() -> Name {
        Name::parse("pay", "spec").unwrap()
    }

    fn me() -> SysId {
        SysId::from_random([1; 16])
    }

    const DAY: i64 = 86_400_000;

    #[test]
    fn state_permissions_table() {
        // (state, encrypt, decrypt)
        let table = [
            (Generated, false, false),
            (Active, true, true),
            (Renewed, true, true),
            (Suspended, false, false),
            (Deactivated, false, true),
            (Compromised, false, true),
            (Revoked, false, true),
            (Destroyed, false, false),
            (Expired, false, true),
        ];
        assert_eq!(table.len(), ALL_STATES.len());
        for (state, enc, dec) in table {
            assert_eq!((state.can_encrypt(), state.can_decrypt()), (enc, dec), "{state:?}");
            assert_eq!(KeyState::parse(state.label()), Some(state));
        }
    }

    #[test]
    fn transition_table() {
        let actions = [
            KeyAction::Activate,
            KeyAction::Renew,
            KeyAction::Suspend,
            KeyAction::Resume,
            KeyAction::Revoke { reason: "r".into() },
            KeyAction::MarkCompromised { reason: String::new() },
        ];
        // Allowed (from, action index, to); everything else is refused.
        let allowed = [
            (Generated, 0, Active),
            (Active, 1, Renewed),
            (Renewed, 1, Renewed),
            (Active, 2, Suspended),
            (Renewed, 2, Suspended),
            (Suspended, 3, Active),
            (Active, 4, Revoked),
            (Renewed, 4, Revoked),
            (Suspended, 4, Revoked),
            (Active, 5, Compromised),
            (Renewed, 5, Compromised),
            (Suspended, 5, Compromised),
        ];
        for from in ALL_STATES {
            for (i, action) in actions.iter().enumerate() {
                let want = allowed.iter().find(|(f, a, _)| *f == from && *a == i).map(|(_, _, to)| *to);
                assert_eq!(next_state(from, action), want, "{from:?} {}", action.name());
            }
        }
    }

    fn active_key(lc: &LifecycleDefinition) -> KeyRecord {
        plan_generate(&me(), &spec(), &[], lc, UnixMillis(10)).new_key.unwrap()
    }

    #[test]
    fn first_key_is_active_then_generated() {
        let lc = LifecycleDefinition { expire_after: Some(30 * DAY), destroy_after_idle: None };
        let first = active_key(&lc);
        assert_eq!((first.state, first.id.version, first.expires_at), (Active, 1, Some(UnixMillis(10 + 30 * DAY))));
        let second = plan_generate(&me(), &spec(), &[first], &lc, UnixMillis(20)).new_key.unwrap();
        assert_eq!((second.state, second.id.version, second.expires_at), (Generated, 2, None));
    }

    #[test]
    fn rotate_ignores_imported_versions() {
        let lc = LifecycleDefinition::default();
        let k1 = active_key(&lc);
        let mut imported = k1.clone();
        imported.id.origin = SysId::from_random([2; 16]);
        imported.id.version = 40;
        imported.state = Expired;
        imported.origin = KeyOrigin::KeyExchange { request_id: RequestId::from_random([3; 16]) };
        let change = plan_rotate(&me(), &spec(), &[k1, imported], &lc, UnixMillis(5)).unwrap();
        assert_eq!(change.updated[0].state, Deactivated);
        let new = change.new_key.unwrap();
        assert_eq!((new.state, new.id.version), (Active, 2));
        let none = plan_rotate(&me(), &spec(), &[], &lc, UnixMillis(1)).err();
        assert!(
            matches!(&none, Some(DomainError::FailedPrecondition(m)) if m.contains("has no Active key to rotate")),
            "{none:?}"
        );
    }

    #[test]
    fn renew_sets_today_plus_the_original_span() {
        let lc = LifecycleDefinition { expire_after: Some(10 * DAY), destroy_after_idle: None };
        let k = active_key(&lc);
        let now = UnixMillis(5 * DAY);
        let change = plan_action(&me(), std::slice::from_ref(&k), &k.id, &KeyAction::Renew, &lc, now).unwrap();
        let renewed = &change.updated[0];
        assert_eq!((renewed.state, renewed.expires_at), (Renewed, Some(UnixMillis(15 * DAY))));
        let no_expiry = active_key(&LifecycleDefinition::default());
        let err = plan_action(&me(), std::slice::from_ref(&no_expiry), &no_expiry.id, &KeyAction::Renew, &lc, now);
        assert!(matches!(err, Err(DomainError::FailedPrecondition(_))));
    }

    #[test]
    fn resume_only_without_another_current_key_and_revoke_replaces() {
        let lc = LifecycleDefinition::default();
        let k1 = active_key(&lc);
        let suspended = plan_action(&me(), std::slice::from_ref(&k1), &k1.id, &KeyAction::Suspend, &lc, UnixMillis(20))
            .unwrap()
            .updated
            .remove(0);
        assert_eq!(suspended.state, Suspended);
        let k2 = plan_generate(&me(), &spec(), std::slice::from_ref(&suspended), &lc, UnixMillis(30)).new_key.unwrap();
        assert_eq!(k2.state, Active, "no current key while k1 is suspended");
        let keys = vec![suspended.clone(), k2];
        let resumed = plan_action(&me(), &keys, &suspended.id, &KeyAction::Resume, &lc, UnixMillis(40)).err();
        assert!(
            matches!(&resumed, Some(DomainError::FailedPrecondition(m)) if m.contains("already has an Active key")),
            "{resumed:?}"
        );

        let revoke_no_reason = KeyAction::Revoke { reason: " ".into() };
        assert!(matches!(
            plan_action(&me(), &keys, &keys[1].id, &revoke_no_reason, &lc, UnixMillis(50)),
            Err(DomainError::InvalidArgument { .. })
        ));
        let change =
            plan_action(&me(), &keys, &keys[1].id, &KeyAction::Revoke { reason: "leak".into() }, &lc, UnixMillis(50))
                .unwrap();
        assert_eq!((change.updated[0].state, change.updated[0].reason.as_str()), (Revoked, "leak"));
        let new = change.new_key.expect("revoking the current key makes a new Active key");
        assert_eq!((new.state, new.id.version), (Active, 3));
        // Revoking a suspended key while another is Active makes no new key.
        let change =
            plan_action(&me(), &keys, &suspended.id, &KeyAction::Revoke { reason: "old".into() }, &lc, UnixMillis(60))
                .unwrap();
        assert!(change.new_key.is_none());
    }

    #[test]
    fn destruction_after_idle_period_only() {
        let lc = LifecycleDefinition { expire_after: None, destroy_after_idle: Some(DAY) };
        let mut k = active_key(&lc);
        k.state = Deactivated;
        k.deactivated_at = Some(UnixMillis(100));
        assert!(due_for_destruction(std::slice::from_ref(&k), &lc, UnixMillis(100 + DAY - 1)).is_empty());
        let d = due_for_destruction(std::slice::from_ref(&k), &lc, UnixMillis(100 + DAY));
        assert_eq!((d[0].state, d[0].destroyed_at), (Destroyed, Some(UnixMillis(100 + DAY))));
        assert!(due_for_destruction(&[k], &LifecycleDefinition::default(), UnixMillis(i64::MAX)).is_empty());
    }

    #[test]
    fn import_plans_like_generate_with_byok_origin() {
        let lc = LifecycleDefinition { expire_after: Some(DAY), destroy_after_idle: Some(DAY) };
        let first = plan_import(&me(), &spec(), &[], &lc, UnixMillis(7));
        assert_eq!((first.state, first.id.version, first.origin.clone()), (Active, 1, KeyOrigin::Byok));
        assert_eq!((first.imported_at, first.expires_at), (Some(UnixMillis(7)), Some(UnixMillis(7 + DAY))));
        let second = plan_import(&me(), &spec(), std::slice::from_ref(&first), &lc, UnixMillis(8));
        assert_eq!((second.state, second.id.version), (Generated, 2));
        // Its lifecycle is a local key's: rotate, act on, destroy.
        let rotated = plan_rotate(&me(), &spec(), std::slice::from_ref(&first), &lc, UnixMillis(9)).unwrap();
        assert_eq!(rotated.updated[0].state, Deactivated);
        assert_eq!(due_for_destruction(&rotated.updated, &lc, UnixMillis(9 + DAY)).len(), 1);
        let suspend =
            plan_action(&me(), std::slice::from_ref(&first), &first.id, &KeyAction::Suspend, &lc, UnixMillis(9));
        assert_eq!(suspend.unwrap().updated[0].state, Suspended);
    }

    #[test]
    fn export_gate_by_state_and_origin() {
        let lc = LifecycleDefinition::default();
        let mut k = active_key(&lc);
        for (state, allowed) in [
            (Generated, true),
            (Active, true),
            (Renewed, true),
            (Suspended, false),
            (Deactivated, true),
            (Compromised, false),
            (Revoked, true),
            (Destroyed, false),
            (Expired, true),
        ] {
            k.state = state;
            assert_eq!(export_refusal(&k).is_none(), allowed, "{state:?}");
        }
        k.state = Active;
        k.origin = KeyOrigin::KeyExchange { request_id: RequestId::from_random([3; 16]) };
        assert!(export_refusal(&k).unwrap().contains("origin instance"));
    }

    #[test]
    fn debug_output_hides_material() {
        let key = DataKey::new(Zeroizing::new(vec![0xAB; 32]));
        let text = format!("{key:?}");
        assert!(!text.contains("ab") && !text.contains("171"), "{text}");
    }
}
