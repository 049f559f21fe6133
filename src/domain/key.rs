//! Module keys: lifecycle state, origin, metadata, and the zeroizing data-key
//! buffer. Key material lives only in `DataKey` (in memory, zeroized on drop)
//! or in `WrappedKey` (wrapped under a KEK or a transport key).

use std::fmt;

use zeroize::Zeroizing;

use super::DomainError;
use super::ids::{KeyId, Name, RequestId, SysId, UnixMillis};

/// Lifecycle states, in lifecycle order. (Issue 3 adds the rest of the
/// reference's states.)
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub enum KeyState {
    /// Generated while another key of the spec was Active; not usable yet.
    Generated,
    /// The one key of a spec that encrypts new data.
    Active,
    /// Retired by rotation: decrypts only.
    Deactivated,
    /// An imported key after its exchange completed: decrypts only.
    Expired,
}

impl KeyState {
    pub fn can_encrypt(self) -> bool {
        matches!(self, KeyState::Active)
    }

    pub fn can_decrypt(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Deactivated | KeyState::Expired)
    }

    pub fn label(self) -> &'static str {
        match self {
            KeyState::Generated => "Generated",
            KeyState::Active => "Active",
            KeyState::Deactivated => "Deactivated",
            KeyState::Expired => "Expired",
        }
    }
}

/// Where a key came from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum KeyOrigin {
    /// Generated on this instance.
    Local,
    /// Imported by the exchange request named here.
    KeyExchange { request_id: RequestId },
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

/// What generating or rotating a key changes: the new key, and the previously
/// Active key if it is deactivated.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyChange {
    pub new_key: KeyRecord,
    pub deactivated: Option<KeyRecord>,
}

/// Plans `generate`: the first usable key becomes Active; with an Active key
/// already present the new key is Generated (at most one Active per spec).
pub fn plan_generate(own: &SysId, spec: &Name, existing: &[KeyRecord], now: UnixMillis) -> KeyChange {
    let has_active = existing.iter().any(|k| k.state == KeyState::Active);
    let state = if has_active { KeyState::Generated } else { KeyState::Active };
    KeyChange { new_key: new_local_key(own, spec, existing, state, now), deactivated: None }
}

/// Plans `rotate`: the Active key becomes Deactivated, a new key is Active at
/// the next version.
pub fn plan_rotate(
    own: &SysId,
    spec: &Name,
    existing: &[KeyRecord],
    now: UnixMillis,
) -> Result<KeyChange, DomainError> {
    let active = existing.iter().find(|k| k.state == KeyState::Active).ok_or_else(|| {
        DomainError::FailedPrecondition(format!("spec {spec} has no Active key to rotate; generate one first"))
    })?;
    let mut old = active.clone();
    old.state = KeyState::Deactivated;
    old.deactivated_at = Some(now);
    let new_key = new_local_key(own, spec, existing, KeyState::Active, now);
    Ok(KeyChange { new_key, deactivated: Some(old) })
}

fn new_local_key(own: &SysId, spec: &Name, existing: &[KeyRecord], state: KeyState, now: UnixMillis) -> KeyRecord {
    let version = existing.iter().filter(|k| &k.id.origin == own).map(|k| k.id.version).max().unwrap_or(0) + 1;
    KeyRecord {
        id: KeyId { origin: own.clone(), spec: spec.clone(), version },
        state,
        origin: KeyOrigin::Local,
        generated_at: now,
        activated_at: (state == KeyState::Active).then_some(now),
        deactivated_at: None,
        imported_at: None,
        expired_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Name {
        Name::parse("pay", "spec").unwrap()
    }

    #[test]
    fn state_permissions_table() {
        let table = [
            (KeyState::Generated, false, false),
            (KeyState::Active, true, true),
            (KeyState::Deactivated, false, true),
            (KeyState::Expired, false, true),
        ];
        for (state, enc, dec) in table {
            assert_eq!((state.can_encrypt(), state.can_decrypt()), (enc, dec), "{state:?}");
        }
    }

    #[test]
    fn first_key_is_active_at_version_one_then_generated() {
        let me = SysId::from_random([1; 16]);
        let first = plan_generate(&me, &spec(), &[], UnixMillis(10));
        assert_eq!((first.new_key.state, first.new_key.id.version), (KeyState::Active, 1));
        assert_eq!(first.new_key.activated_at, Some(UnixMillis(10)));
        let second = plan_generate(&me, &spec(), &[first.new_key], UnixMillis(20));
        assert_eq!((second.new_key.state, second.new_key.id.version), (KeyState::Generated, 2));
    }

    #[test]
    fn rotate_deactivates_and_bumps_version_ignoring_imported_versions() {
        let me = SysId::from_random([1; 16]);
        let other = SysId::from_random([2; 16]);
        let k1 = plan_generate(&me, &spec(), &[], UnixMillis(1)).new_key;
        let mut imported = k1.clone();
        imported.id.origin = other;
        imported.id.version = 40;
        imported.state = KeyState::Expired;
        let change = plan_rotate(&me, &spec(), &[k1, imported], UnixMillis(5)).unwrap();
        let old = change.deactivated.unwrap();
        assert_eq!((old.state, old.deactivated_at), (KeyState::Deactivated, Some(UnixMillis(5))));
        assert_eq!((change.new_key.state, change.new_key.id.version), (KeyState::Active, 2));
    }

    #[test]
    fn rotate_without_active_key_is_refused() {
        let me = SysId::from_random([1; 16]);
        assert!(matches!(plan_rotate(&me, &spec(), &[], UnixMillis(1)), Err(DomainError::FailedPrecondition(_))));
    }

    #[test]
    fn debug_output_hides_material() {
        let key = DataKey::new(Zeroizing::new(vec![0xAB; 32]));
        let text = format!("{key:?}");
        assert!(!text.contains("ab") && !text.contains("171"), "{text}");
    }
}
