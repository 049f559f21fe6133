//! The signed formats that cross between instances: the key bundle (source →
//! target) and the receipt (target → source). Both have a canonical binary
//! encoding; the signature covers exactly those bytes.
//!
//! Bundle v2: `"KMFB" 02`, request id, source sys_id, target sys_id, issued
//! at, expires at, wrapping algorithm, RSA-wrapped transport AES key, spec
//! lines, the source's definition of each exported spec (name, purpose,
//! algorithm, size, equality preserving), entries (key id, state, dates,
//! RFC 5649-wrapped material).
//! Receipt v1: `"KMFR" 01`, request id, source, target, imported at, SHA-256
//! of the bundle, imported key ids.

use super::DomainError;
use super::codec::{Reader, Writer};
use super::exchange::{SpecLine, SpecLineStatus};
use super::ids::{KeyId, Name, RequestId, SysId, UnixMillis};
use super::key::KeyState;
use super::spec::{Algorithm, Purpose, SpecChoice};

const BUNDLE_MAGIC: &[u8; 4] = b"KMFB";
const RECEIPT_MAGIC: &[u8; 4] = b"KMFR";
const BUNDLE_VERSION: u8 = 2;
const RECEIPT_VERSION: u8 = 1;

/// How the transport AES key is wrapped for the target's one-time RSA key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WrappingAlgorithm {
    RsaAesKeyWrapSha256,
    RsaAesKeyWrapSha1,
}

impl WrappingAlgorithm {
    fn code(self) -> u8 {
        match self {
            WrappingAlgorithm::RsaAesKeyWrapSha256 => 1,
            WrappingAlgorithm::RsaAesKeyWrapSha1 => 2,
        }
    }

    fn from_code(code: u8) -> Result<Self, DomainError> {
        match code {
            1 => Ok(WrappingAlgorithm::RsaAesKeyWrapSha256),
            2 => Ok(WrappingAlgorithm::RsaAesKeyWrapSha1),
            _ => Err(DomainError::malformed("bundle", "unknown wrapping algorithm")),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BundleEntry {
    pub key_id: KeyId,
    pub state: KeyState,
    pub generated_at: UnixMillis,
    pub activated_at: Option<UnixMillis>,
    pub deactivated_at: Option<UnixMillis>,
    /// The key wrapped (RFC 5649) under the transport AES key.
    pub wrapped: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Bundle {
    pub request_id: RequestId,
    pub source: SysId,
    pub target: SysId,
    pub issued_at: UnixMillis,
    pub expires_at: UnixMillis,
    pub wrapping: WrappingAlgorithm,
    /// The transport AES-256 key, RSA-OAEP-wrapped for the target.
    pub wrapped_transport_key: Vec<u8>,
    /// The source's per-spec outcome (EXCHANGED, NOT_ON_SOURCE, FAILED).
    pub lines: Vec<SpecLine>,
    /// How the source defines each spec it exports keys of; the target
    /// imports only into a spec defined the same way.
    pub specs: Vec<(Name, SpecChoice)>,
    pub entries: Vec<BundleEntry>,
}

/// Wire codes of purposes and algorithms (never renumbered).
const PURPOSE_CODES: [(Purpose, u8); 6] = [
    (Purpose::SymmetricDataEncryption, 1),
    (Purpose::SymmetricKeyWrapping, 2),
    (Purpose::SymmetricAuthenticity, 3),
    (Purpose::AsymmetricDataEncryption, 4),
    (Purpose::AsymmetricKeyWrapping, 5),
    (Purpose::Signature, 6),
];
const ALGORITHM_CODES: [(Algorithm, u8); 5] =
    [(Algorithm::AesGcm, 1), (Algorithm::AesCbc, 2), (Algorithm::AesCtr, 3), (Algorithm::Hmac, 4), (Algorithm::Rsa, 5)];

fn code_of<T: PartialEq + Copy>(table: &[(T, u8)], v: T) -> u8 {
    table.iter().find(|(k, _)| *k == v).map_or(0, |(_, c)| *c)
}

fn from_code<T: Copy>(table: &[(T, u8)], code: u8, what: &'static str) -> Result<T, DomainError> {
    table.iter().find(|(_, c)| *c == code).map(|(k, _)| *k).ok_or_else(|| DomainError::malformed("bundle", what))
}

/// Wire codes of key states in the bundle format (never renumbered).
const STATE_CODES: [(KeyState, u8); 9] = [
    (KeyState::Generated, 1),
    (KeyState::Active, 2),
    (KeyState::Deactivated, 3),
    (KeyState::Expired, 4),
    (KeyState::Renewed, 5),
    (KeyState::Suspended, 6),
    (KeyState::Compromised, 7),
    (KeyState::Revoked, 8),
    (KeyState::Destroyed, 9),
];

fn state_code(s: KeyState) -> u8 {
    STATE_CODES.iter().find(|(k, _)| *k == s).map_or(0, |(_, c)| *c)
}

fn state_from(code: u8) -> Result<KeyState, DomainError> {
    STATE_CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(k, _)| *k)
        .ok_or_else(|| DomainError::malformed("bundle", "unknown key state"))
}

fn line_code(s: SpecLineStatus) -> u8 {
    match s {
        SpecLineStatus::Pending => 1,
        SpecLineStatus::Exchanged => 2,
        SpecLineStatus::NotOnSource => 3,
        SpecLineStatus::Failed => 4,
    }
}

fn line_from(code: u8) -> Result<SpecLineStatus, DomainError> {
    Ok(match code {
        1 => SpecLineStatus::Pending,
        2 => SpecLineStatus::Exchanged,
        3 => SpecLineStatus::NotOnSource,
        4 => SpecLineStatus::Failed,
        _ => return Err(DomainError::malformed("bundle", "unknown line status")),
    })
}

fn sys_id(r: &mut Reader<'_>, what: &'static str) -> Result<SysId, DomainError> {
    SysId::parse(r.str()?).map_err(|_| DomainError::malformed(what, "bad sys_id"))
}

fn key_id(r: &mut Reader<'_>, what: &'static str) -> Result<KeyId, DomainError> {
    KeyId::parse(r.str()?).map_err(|_| DomainError::malformed(what, "bad key id"))
}

impl Bundle {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(BUNDLE_MAGIC, BUNDLE_VERSION);
        w.str(self.request_id.as_str())
            .str(self.source.as_str())
            .str(self.target.as_str())
            .i64(self.issued_at.0)
            .i64(self.expires_at.0)
            .u8(self.wrapping.code())
            .bytes(&self.wrapped_transport_key)
            .u32(self.lines.len() as u32);
        for l in &self.lines {
            w.str(l.spec.as_str()).u8(line_code(l.status)).u32(l.key_count).str(&l.reason);
        }
        w.u32(self.specs.len() as u32);
        for (name, c) in &self.specs {
            w.str(name.as_str())
                .u8(code_of(&PURPOSE_CODES, c.purpose))
                .u8(code_of(&ALGORITHM_CODES, c.algorithm))
                .u32(c.key_size_bits)
                .u8(u8::from(c.equality_preserving));
        }
        w.u32(self.entries.len() as u32);
        for e in &self.entries {
            w.str(&e.key_id.to_string())
                .u8(state_code(e.state))
                .i64(e.generated_at.0)
                .opt_i64(e.activated_at.map(|t| t.0))
                .opt_i64(e.deactivated_at.map(|t| t.0))
                .bytes(&e.wrapped);
        }
        w.finish()
    }

    pub fn decode(input: &[u8]) -> Result<Self, DomainError> {
        const W: &str = "bundle";
        let mut r = Reader::new(input, BUNDLE_MAGIC, BUNDLE_VERSION, W)?;
        let request_id = RequestId::parse(r.str()?).map_err(|_| DomainError::malformed(W, "bad request id"))?;
        let source = sys_id(&mut r, W)?;
        let target = sys_id(&mut r, W)?;
        let issued_at = UnixMillis(r.i64()?);
        let expires_at = UnixMillis(r.i64()?);
        let wrapping = WrappingAlgorithm::from_code(r.u8()?)?;
        let wrapped_transport_key = r.bytes()?.to_vec();
        let n = r.count(13)?;
        let mut lines = Vec::with_capacity(n);
        for _ in 0..n {
            let spec = Name::parse(r.str()?, "spec").map_err(|_| DomainError::malformed(W, "bad spec name"))?;
            let status = line_from(r.u8()?)?;
            let key_count = r.u32()?;
            let reason = r.str()?.to_owned();
            lines.push(SpecLine { spec, status, key_count, reason });
        }
        let n = r.count(8)?;
        let mut specs = Vec::with_capacity(n);
        for _ in 0..n {
            let name = Name::parse(r.str()?, "spec").map_err(|_| DomainError::malformed(W, "bad spec name"))?;
            let purpose = from_code(&PURPOSE_CODES, r.u8()?, "unknown purpose")?;
            let algorithm = from_code(&ALGORITHM_CODES, r.u8()?, "unknown algorithm")?;
            let key_size_bits = r.u32()?;
            let equality_preserving = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DomainError::malformed(W, "bad equality-preserving flag")),
            };
            specs.push((name, SpecChoice { purpose, algorithm, key_size_bits, equality_preserving }));
        }
        let n = r.count(20)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(BundleEntry {
                key_id: key_id(&mut r, W)?,
                state: state_from(r.u8()?)?,
                generated_at: UnixMillis(r.i64()?),
                activated_at: r.opt_i64()?.map(UnixMillis),
                deactivated_at: r.opt_i64()?.map(UnixMillis),
                wrapped: r.bytes()?.to_vec(),
            });
        }
        r.finish()?;
        Ok(Bundle {
            request_id,
            source,
            target,
            issued_at,
            expires_at,
            wrapping,
            wrapped_transport_key,
            lines,
            specs,
            entries,
        })
    }

    /// Checks that this bundle is meant for `own` instance, for `request_id`,
    /// from `source`, and not expired, and that every entry's key id names
    /// `source` as its origin (a source sends only the keys it originated:
    /// another instance's key id would plant a key under its identity).
    pub fn check_addressed(
        &self,
        own: &SysId,
        source: &SysId,
        request_id: &RequestId,
        now: UnixMillis,
    ) -> Result<(), DomainError> {
        if &self.target != own {
            return Err(DomainError::PermissionDenied("bundle is addressed to another instance".into()));
        }
        if &self.source != source || &self.request_id != request_id {
            return Err(DomainError::PermissionDenied("bundle does not match the request it claims".into()));
        }
        if now >= self.expires_at {
            return Err(DomainError::FailedPrecondition("bundle has expired".into()));
        }
        if let Some(e) = self.entries.iter().find(|e| &e.key_id.origin != source) {
            return Err(DomainError::PermissionDenied(format!(
                "bundle entry {} names origin {}, not the bundle's source {source}; \
                 a source sends only keys it originated; nothing imported",
                e.key_id, e.key_id.origin
            )));
        }
        Ok(())
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Receipt {
    pub request_id: RequestId,
    pub source: SysId,
    pub target: SysId,
    pub imported_at: UnixMillis,
    pub bundle_sha256: [u8; 32],
    pub imported: Vec<KeyId>,
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(RECEIPT_MAGIC, RECEIPT_VERSION);
        w.str(self.request_id.as_str())
            .str(self.source.as_str())
            .str(self.target.as_str())
            .i64(self.imported_at.0)
            .raw(&self.bundle_sha256)
            .u32(self.imported.len() as u32);
        for k in &self.imported {
            w.str(&k.to_string());
        }
        w.finish()
    }

    pub fn decode(input: &[u8]) -> Result<Self, DomainError> {
        const W: &str = "receipt";
        let mut r = Reader::new(input, RECEIPT_MAGIC, RECEIPT_VERSION, W)?;
        let request_id = RequestId::parse(r.str()?).map_err(|_| DomainError::malformed(W, "bad request id"))?;
        let source = sys_id(&mut r, W)?;
        let target = sys_id(&mut r, W)?;
        let imported_at = UnixMillis(r.i64()?);
        let mut bundle_sha256 = [0u8; 32];
        bundle_sha256.copy_from_slice(r.take(32)?);
        let n = r.count(4)?;
        let mut imported = Vec::with_capacity(n);
        for _ in 0..n {
            imported.push(key_id(&mut r, W)?);
        }
        r.finish()?;
        Ok(Receipt { request_id, source, target, imported_at, bundle_sha256, imported })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        let source = SysId::from_random([1; 16]);
        Bundle {
            request_id: RequestId::from_random([9; 16]),
            source: source.clone(),
            target: SysId::from_random([2; 16]),
            issued_at: UnixMillis(1000),
            expires_at: UnixMillis(2000),
            wrapping: WrappingAlgorithm::RsaAesKeyWrapSha1,
            wrapped_transport_key: vec![5; 384],
            lines: vec![
                SpecLine {
                    spec: Name::parse("a", "s").unwrap(),
                    status: SpecLineStatus::Exchanged,
                    key_count: 1,
                    reason: String::new(),
                },
                SpecLine {
                    spec: Name::parse("b", "s").unwrap(),
                    status: SpecLineStatus::NotOnSource,
                    key_count: 0,
                    reason: "spec not found on source".into(),
                },
            ],
            specs: vec![(
                Name::parse("a", "s").unwrap(),
                SpecChoice {
                    purpose: Purpose::SymmetricDataEncryption,
                    algorithm: Algorithm::AesCbc,
                    key_size_bits: 192,
                    equality_preserving: true,
                },
            )],
            entries: vec![BundleEntry {
                key_id: KeyId { origin: source, spec: Name::parse("a", "s").unwrap(), version: 2 },
                state: KeyState::Deactivated,
                generated_at: UnixMillis(1),
                activated_at: Some(UnixMillis(2)),
                deactivated_at: None,
                wrapped: vec![7; 40],
            }],
        }
    }

    #[test]
    fn bundle_round_trips() {
        let b = sample();
        assert_eq!(Bundle::decode(&b.encode()), Ok(b));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            let refused = Bundle::decode(&bytes[..cut]);
            assert!(
                matches!(refused, Err(DomainError::Malformed { what: "bundle", .. })),
                "prefix of {cut}: {refused:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Bundle::decode(&longer), Err(DomainError::malformed("bundle", "trailing bytes")));
        let mut wrong_magic = bytes;
        wrong_magic[0] = b'X';
        assert_eq!(Bundle::decode(&wrong_magic), Err(DomainError::malformed("bundle", "wrong magic")));
    }

    #[test]
    fn addressing_checks() {
        let b = sample();
        let (own, src, id) = (b.target.clone(), b.source.clone(), b.request_id.clone());
        assert!(b.check_addressed(&own, &src, &id, UnixMillis(1500)).is_ok());
        assert!(matches!(b.check_addressed(&src, &src, &id, UnixMillis(1500)), Err(DomainError::PermissionDenied(_))));
        assert!(matches!(b.check_addressed(&own, &own, &id, UnixMillis(1500)), Err(DomainError::PermissionDenied(_))));
        let other = RequestId::from_random([3; 16]);
        let mismatch = DomainError::PermissionDenied("bundle does not match the request it claims".into());
        assert_eq!(b.check_addressed(&own, &src, &other, UnixMillis(1500)), Err(mismatch));
        assert!(matches!(
            b.check_addressed(&own, &src, &id, UnixMillis(2000)),
            Err(DomainError::FailedPrecondition(_))
        ));
    }

    #[test]
    fn an_entry_of_another_origin_is_refused() {
        let mut b = sample();
        let (own, src, id) = (b.target.clone(), b.source.clone(), b.request_id.clone());
        for origin in [SysId::from_random([7; 16]), own.clone()] {
            let mut planted = b.entries[0].clone();
            planted.key_id.origin = origin.clone();
            b.entries.push(planted);
            let refused = b.check_addressed(&own, &src, &id, UnixMillis(1500));
            let Err(DomainError::PermissionDenied(why)) = refused else { panic!("accepted: {refused:?}") };
            assert!(why.contains(&format!("{origin}:a:v2")) && why.contains("not the bundle's source"), "{why}");
            b.entries.pop();
        }
        assert!(b.check_addressed(&own, &src, &id, UnixMillis(1500)).is_ok());
    }

    #[test]
    fn receipt_round_trips() {
        let b = sample();
        let r = Receipt {
            request_id: b.request_id,
            source: b.source,
            target: b.target,
            imported_at: UnixMillis(1500),
            bundle_sha256: [4; 32],
            imported: b.entries.into_iter().map(|e| e.key_id).collect(),
        };
        let bytes = r.encode();
        assert_eq!(Receipt::decode(&bytes), Ok(r));
        let short = Receipt::decode(&bytes[..bytes.len() - 1]);
        assert!(matches!(short, Err(DomainError::Malformed { what: "receipt", .. })), "{short:?}");
    }
}
