//! Diagnostics: component statuses, the roll-up from children to a parent,
//! the certificate-validity rule, the choice of peers to dial, and which
//! statuses make the daemon NOT_SERVING. Pure: the checks themselves (signer,
//! store, peers) run in `node::diagnostics`.
//!
//! Roll-up (kmf-domain §5): all children Disabled → parent Disabled; Disabled
//! children are otherwise ignored; all remaining children Malfunction →
//! parent Malfunction; any remaining child Degraded or Malfunction → parent
//! Degraded; else Operational. A parent without children is Disabled.

use std::collections::HashMap;

use super::exchange::{ExchangeRequest, ExchangeRole};
use super::ids::{Host, SysId, UnixMillis};

/// How a component is doing (kmf-domain §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum HealthStatus {
    /// Working.
    Operational,
    /// Working, but delays or transient errors are likely.
    Degraded,
    /// A fatal error; partial outages are likely.
    Malfunction,
    /// Inactive, not checked.
    Disabled,
}

pub const ALL_HEALTH_STATUSES: [HealthStatus; 4] =
    [HealthStatus::Operational, HealthStatus::Degraded, HealthStatus::Malfunction, HealthStatus::Disabled];

impl HealthStatus {
    pub fn label(self) -> &'static str {
        match self {
            HealthStatus::Operational => "Operational",
            HealthStatus::Degraded => "Degraded",
            HealthStatus::Malfunction => "Malfunction",
            HealthStatus::Disabled => "Disabled",
        }
    }
}

/// One checked component; a parent's status is the roll-up of its children.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Component {
    pub name: String,
    pub status: HealthStatus,
    /// What was found, for people ("KEK wrap and unwrap succeeded").
    pub message: String,
    pub children: Vec<Component>,
}

impl Component {
    /// A component checked on its own.
    pub fn leaf(name: impl Into<String>, status: HealthStatus, message: impl Into<String>) -> Self {
        Component { name: name.into(), status, message: message.into(), children: Vec::new() }
    }

    /// A component whose status is the roll-up of `children`.
    pub fn parent(name: impl Into<String>, message: impl Into<String>, children: Vec<Component>) -> Self {
        let statuses: Vec<HealthStatus> = children.iter().map(|c| c.status).collect();
        Component { name: name.into(), status: roll_up(&statuses), message: message.into(), children }
    }
}

/// The parent's status from its children's (see the module docs).
pub fn roll_up(children: &[HealthStatus]) -> HealthStatus {
    use HealthStatus::*;
    let active: Vec<HealthStatus> = children.iter().copied().filter(|s| *s != Disabled).collect();
    if active.is_empty() {
        Disabled
    } else if active.iter().all(|s| *s == Malfunction) {
        Malfunction
    } else if active.iter().any(|s| matches!(s, Degraded | Malfunction)) {
        Degraded
    } else {
        Operational
    }
}

/// What the daemon reports over grpc.health.v1, for itself ("") and for
/// every kmf service alike.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ServingState {
    Serving,
    NotServing,
}

/// The components no call can do without: the KEK (`signer`) and the
/// database (`store`).
pub const ESSENTIAL_COMPONENTS: [&str; 2] = ["signer", "store"];

/// The essential components (see `ESSENTIAL_COMPONENTS`) among `components`
/// that are Malfunction, in order.
pub fn essential_failures(components: &[Component]) -> Vec<&str> {
    components
        .iter()
        .filter(|c| ESSENTIAL_COMPONENTS.contains(&c.name.as_str()) && c.status == HealthStatus::Malfunction)
        .map(|c| c.name.as_str())
        .collect()
}

/// NotServing while the signer or the store is Malfunction, else Serving.
/// Nothing else counts: a Degraded component, the certificate, or peers
/// being down (another daemon's outage must not take this one out of a load
/// balancer).
pub fn serving_state(components: &[Component]) -> ServingState {
    if essential_failures(components).is_empty() { ServingState::Serving } else { ServingState::NotServing }
}

const DAY_MILLIS: i64 = 24 * 3600 * 1000;
/// A certificate this close to its notAfter is Degraded: 30 days.
pub const CERTIFICATE_WARNING_MILLIS: i64 = 30 * DAY_MILLIS;

/// The status of a certificate valid from `not_before` to `not_after` at
/// `now`: Malfunction when not yet valid or expired, Degraded within 30 days
/// of expiry, else Operational. The message counts whole days (and hours
/// under a day).
pub fn certificate_health(not_before: UnixMillis, not_after: UnixMillis, now: UnixMillis) -> (HealthStatus, String) {
    if now < not_before {
        (HealthStatus::Malfunction, format!("not yet valid (valid in {})", span(not_before.0 - now.0)))
    } else if now >= not_after {
        (HealthStatus::Malfunction, format!("expired {} ago", span(now.0 - not_after.0)))
    } else if not_after.0 - now.0 <= CERTIFICATE_WARNING_MILLIS {
        (HealthStatus::Degraded, format!("expires in {}; renew it", span(not_after.0 - now.0)))
    } else {
        (HealthStatus::Operational, format!("valid for {}", span(not_after.0 - now.0)))
    }
}

/// Whole days, or hours under a day.
fn span(millis: i64) -> String {
    if millis >= DAY_MILLIS {
        format!("{} days", millis / DAY_MILLIS)
    } else {
        format!("{} hours", millis / (3600 * 1000))
    }
}

/// What a diagnosis knows of the CRL in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlFacts {
    pub number: u64,
    pub revoked: usize,
    pub next_update: Option<UnixMillis>,
    /// `tls.crl_enforce_next_update`: past its nextUpdate, every certificate is refused.
    pub enforced: bool,
}

/// The status of the CRL in use at `now`: none configured, Disabled; past
/// its nextUpdate, Degraded (rustls still uses it) or, when enforced,
/// Malfunction (every handshake and call is refused until a fresh one is
/// loaded); else Operational.
pub fn crl_health(crl: Option<&CrlFacts>, now: UnixMillis) -> (HealthStatus, String) {
    let Some(crl) = crl else {
        return (HealthStatus::Disabled, "no CRL configured (tls.crl)".into());
    };
    let head = format!("CRL number {} ({} revoked)", crl.number, crl.revoked);
    match crl.next_update {
        None => (HealthStatus::Operational, format!("{head}, without a nextUpdate")),
        Some(next) if now >= next && crl.enforced => (
            HealthStatus::Malfunction,
            format!(
                "{head} is past its nextUpdate by {}: every certificate is refused (tls.crl_enforce_next_update); issue a fresh CRL (kmfctl pki crl)",
                span(now.0 - next.0)
            ),
        ),
        Some(next) if now >= next => (
            HealthStatus::Degraded,
            format!(
                "{head} is past its nextUpdate by {} and still used; issue a fresh CRL (kmfctl pki crl)",
                span(now.0 - next.0)
            ),
        ),
        Some(next) => (HealthStatus::Operational, format!("{head}, nextUpdate in {}", span(next.0 - now.0))),
    }
}

/// Peers dialled by a diagnosis: those of requests updated in the last 30 days.
pub const PEER_WINDOW_MILLIS: i64 = 30 * DAY_MILLIS;
/// At most this many peers are dialled.
pub const MAX_PEERS: usize = 16;

/// The distinct peer hosts of the requests updated within `window_millis`
/// before `now`, the most recently seen first, at most `max`. Each host comes
/// with the sys_id of its most recent request (the certificate it must show).
pub fn recent_peers(
    requests: &[ExchangeRequest],
    now: UnixMillis,
    window_millis: i64,
    max: usize,
) -> Vec<(Host, SysId)> {
    let since = UnixMillis(now.0.saturating_sub(window_millis));
    let mut latest: HashMap<&Host, (UnixMillis, &SysId)> = HashMap::new();
    for r in requests.iter().filter(|r| r.updated_at >= since) {
        let peer = match r.role {
            ExchangeRole::Source => &r.target,
            ExchangeRole::Target => &r.source,
        };
        let seen = latest.entry(&peer.host).or_insert((r.updated_at, &peer.sys_id));
        if r.updated_at > seen.0 {
            *seen = (r.updated_at, &peer.sys_id);
        }
    }
    let mut peers: Vec<(UnixMillis, &Host, &SysId)> = latest.into_iter().map(|(h, (at, id))| (at, h, id)).collect();
    peers.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.to_string().cmp(&b.1.to_string())));
    peers.into_iter().take(max).map(|(_, h, id)| (h.clone(), id.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::HealthStatus::*;
    use super::*;

    #[test]
    fn roll_up_table() {
        let table: &[(&[HealthStatus], HealthStatus)] = &[
            (&[], Disabled),
            (&[Disabled], Disabled),
            (&[Disabled, Disabled], Disabled),
            (&[Operational], Operational),
            (&[Operational, Operational], Operational),
            (&[Operational, Disabled], Operational),
            (&[Degraded], Degraded),
            (&[Operational, Degraded], Degraded),
            (&[Degraded, Degraded], Degraded),
            (&[Operational, Malfunction], Degraded),
            (&[Degraded, Malfunction], Degraded),
            (&[Malfunction], Malfunction),
            (&[Malfunction, Malfunction], Malfunction),
            (&[Malfunction, Disabled], Malfunction),
            (&[Disabled, Malfunction, Disabled], Malfunction),
            (&[Operational, Disabled, Malfunction], Degraded),
            (&[Degraded, Disabled], Degraded),
        ];
        for (children, want) in table {
            assert_eq!(roll_up(children), *want, "{children:?}");
        }
    }

    #[test]
    fn parent_rolls_up_its_children() {
        let p = Component::parent(
            "peers",
            "",
            vec![Component::leaf("a", Operational, ""), Component::leaf("b", Malfunction, "refused")],
        );
        assert_eq!(p.status, Degraded);
        assert_eq!(Component::parent("peers", "none", vec![]).status, Disabled);
    }

    #[test]
    fn serving_follows_signer_and_store_only() {
        let diagnosis = |signer, store, certificate, peers| {
            vec![
                Component::leaf("signer", signer, ""),
                Component::leaf("store", store, ""),
                Component::leaf("certificate", certificate, ""),
                Component::parent("peers", "", vec![Component::leaf("a:1", peers, "")]),
            ]
        };
        use ServingState::*;
        let table = [
            ((Operational, Operational, Operational, Operational), Serving, vec![]),
            ((Malfunction, Operational, Operational, Operational), NotServing, vec!["signer"]),
            ((Operational, Malfunction, Operational, Operational), NotServing, vec!["store"]),
            ((Malfunction, Malfunction, Operational, Operational), NotServing, vec!["signer", "store"]),
            ((Degraded, Degraded, Operational, Operational), Serving, vec![]),
            ((Disabled, Operational, Operational, Operational), Serving, vec![]),
            ((Operational, Operational, Malfunction, Operational), Serving, vec![]),
            ((Operational, Operational, Operational, Malfunction), Serving, vec![]),
            ((Operational, Operational, Malfunction, Malfunction), Serving, vec![]),
            ((Malfunction, Operational, Malfunction, Malfunction), NotServing, vec!["signer"]),
        ];
        for ((signer, store, certificate, peers), want, failed) in table {
            let components = diagnosis(signer, store, certificate, peers);
            let case = (signer, store, certificate, peers);
            assert_eq!(serving_state(&components), want, "{case:?}");
            assert_eq!(essential_failures(&components), failed, "{case:?}");
        }
        assert_eq!(serving_state(&[]), Serving, "no diagnosis, nothing known broken");
    }

    #[test]
    fn certificate_rule() {
        let d = |n: i64| n * DAY_MILLIS;
        let (nb, na) = (UnixMillis(d(100)), UnixMillis(d(200)));
        let table = [
            (d(99), Malfunction, "not yet valid (valid in 1 days)"),
            (d(100), Operational, "valid for 100 days"),
            (d(169), Operational, "valid for 31 days"),
            (d(170), Degraded, "expires in 30 days; renew it"),
            (d(186), Degraded, "expires in 14 days; renew it"),
            (d(200) - 3600 * 1000 * 5, Degraded, "expires in 5 hours; renew it"),
            (d(200), Malfunction, "expired 0 hours ago"),
            (d(203), Malfunction, "expired 3 days ago"),
        ];
        for (now, status, message) in table {
            assert_eq!(certificate_health(nb, na, UnixMillis(now)), (status, message.to_owned()), "now {now}");
        }
    }

    #[test]
    fn crl_rule() {
        const DAY: i64 = DAY_MILLIS;
        let now = UnixMillis(100 * DAY);
        let crl = |next: Option<i64>, enforced| CrlFacts {
            number: 3,
            revoked: 2,
            next_update: next.map(|d| UnixMillis(100 * DAY + d * DAY)),
            enforced,
        };
        let table = [
            (None, false, Operational, "CRL number 3 (2 revoked), without a nextUpdate"),
            (Some(5), false, Operational, "CRL number 3 (2 revoked), nextUpdate in 5 days"),
            (Some(5), true, Operational, "CRL number 3 (2 revoked), nextUpdate in 5 days"),
            (
                Some(-2),
                false,
                Degraded,
                "CRL number 3 (2 revoked) is past its nextUpdate by 2 days and still used; issue a fresh CRL (kmfctl pki crl)",
            ),
            (
                Some(0),
                true,
                Malfunction,
                "CRL number 3 (2 revoked) is past its nextUpdate by 0 hours: every certificate is refused (tls.crl_enforce_next_update); issue a fresh CRL (kmfctl pki crl)",
            ),
        ];
        for (next, enforced, status, message) in table {
            assert_eq!(
                crl_health(Some(&crl(next, enforced)), now),
                (status, message.to_owned()),
                "{next:?} {enforced}"
            );
        }
        assert_eq!(crl_health(None, now).0, Disabled);
    }

    fn request(role: ExchangeRole, peer: &str, sys: u8, updated: i64) -> ExchangeRequest {
        use super::super::exchange::{Frequency, PeerRef, RequestStatus};
        let me = PeerRef { sys_id: SysId::from_random([0; 16]), host: Host::parse("me:1").unwrap() };
        let other = PeerRef { sys_id: SysId::from_random([sys; 16]), host: Host::parse(peer).unwrap() };
        let (source, target) = match role {
            ExchangeRole::Source => (me, other),
            ExchangeRole::Target => (other, me),
        };
        ExchangeRequest {
            id: super::super::ids::RequestId::parse(&format!("{:032x}", updated)).unwrap(),
            role,
            frequency: Frequency::Adhoc,
            source,
            target,
            status: RequestStatus::Completed,
            lines: vec![],
            total_key_count: 0,
            exported_key_count: 0,
            imported_key_count: 0,
            created_at: UnixMillis(updated),
            updated_at: UnixMillis(updated),
            expires_at: UnixMillis(updated + 1),
            history: vec![],
            peer_certificate: vec![],
            receipt: None,
            transport_public_key: vec![],
            wrapping: super::super::bundle::WrappingAlgorithm::RsaAesKeyWrapSha256,
            rekey: false,
            clone_grant: None,
        }
    }

    #[test]
    fn peers_are_distinct_recent_and_capped() {
        let now = UnixMillis(PEER_WINDOW_MILLIS * 2);
        let old = now.0 - PEER_WINDOW_MILLIS - 1;
        let requests = vec![
            request(ExchangeRole::Target, "a:1", 1, now.0 - 10),
            request(ExchangeRole::Source, "b:1", 2, now.0 - 5),
            // The same host again, later, now naming another instance.
            request(ExchangeRole::Target, "a:1", 3, now.0 - 1),
            // Too old.
            request(ExchangeRole::Target, "c:1", 4, old),
        ];
        let got = recent_peers(&requests, now, PEER_WINDOW_MILLIS, MAX_PEERS);
        let want = vec![
            (Host::parse("a:1").unwrap(), SysId::from_random([3; 16])),
            (Host::parse("b:1").unwrap(), SysId::from_random([2; 16])),
        ];
        assert_eq!(got, want);
        assert_eq!(recent_peers(&requests, now, PEER_WINDOW_MILLIS, 1), want[..1].to_vec());
        assert!(recent_peers(&[], now, PEER_WINDOW_MILLIS, MAX_PEERS).is_empty());
    }
}
