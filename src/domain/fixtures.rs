//! Values the unit tests of the decision modules share (tests only).

use super::bundle::WrappingAlgorithm;
use super::exchange::{ExchangeRequest, ExchangeRole, Frequency, PeerRef, RequestStatus, SpecLine, Transition};
use super::ids::{Host, Name, RequestId, SysId, UnixMillis};

pub fn sys(n: u8) -> SysId {
    SysId::from_random([n; 16])
}

pub fn name(s: &str) -> Name {
    Name::parse(s, "spec").unwrap()
}

/// The source (sys 1 at source:7443) of every test request.
pub fn source() -> PeerRef {
    PeerRef { sys_id: sys(1), host: Host::parse("source:7443").unwrap() }
}

/// The target (sys 2 at target:7443) of every test request.
pub fn target() -> PeerRef {
    PeerRef { sys_id: sys(2), host: Host::parse("target:7443").unwrap() }
}

/// A request in `status` with one pending line per spec, expiring at 1000.
pub fn request(role: ExchangeRole, frequency: Frequency, status: RequestStatus, specs: &[&str]) -> ExchangeRequest {
    ExchangeRequest {
        id: RequestId::from_random([9; 16]),
        role,
        frequency,
        source: source(),
        target: target(),
        status,
        lines: specs.iter().map(|s| SpecLine::pending(name(s))).collect(),
        total_key_count: 0,
        exported_key_count: 0,
        imported_key_count: 0,
        created_at: UnixMillis(0),
        updated_at: UnixMillis(0),
        expires_at: UnixMillis(1000),
        history: vec![Transition { status, at: UnixMillis(0), actor: "alice".into(), note: "created".into() }],
        peer_certificate: vec![1, 2, 3],
        receipt: None,
        transport_public_key: vec![4, 5, 6],
        wrapping: WrappingAlgorithm::RsaAesKeyWrapSha256,
        rekey: false,
        clone_grant: None,
    }
}

/// The last entry of the request's history: (status, actor, note).
pub fn last(req: &ExchangeRequest) -> (RequestStatus, String, String) {
    let t = req.history.last().unwrap();
    (t.status, t.actor.clone(), t.note.clone())
}
