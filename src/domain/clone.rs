//! Clone: what a source serves to an authorised target. A snapshot is one
//! consistent view of the source's catalog (modules, specs, module access
//! policies, system properties) and its encrypted records — never keys —
//! sent as an ordered stream of parts: `Header`, `Catalog` parts, `Records`
//! parts, `End`. A stream without its `End` is incomplete and must not be
//! applied.

use super::DomainError;
use super::clone_exchange::{CloneExchange, ExchangePlan};
use super::exchange::Frequency;
use super::ids::{CloneId, Host, Name, SysId, UnixMillis};
use super::policy::AccessPolicy;
use super::property::Property;
use super::record::StoredRecord;
use super::spec::{Module, Spec};

/// Most records in one `Records` part (about 300 KB of 256-byte records).
pub const RECORDS_PER_PART: usize = 1000;
/// Most items of one kind in one `Catalog` part.
pub const CATALOG_ITEMS_PER_PART: usize = 500;

/// The property that turns the automatic exchange after a clone on or off.
pub const AUTO_KEY_EXCHANGE: &str = "glide_encryption.auto_key_exchange.enabled";

/// Whether a target that just swapped in `catalog` requests its specs from
/// the source: the cloned property says so (true when absent, its default)
/// and there are specs to request.
pub fn wants_automatic_exchange(catalog: &SnapshotCatalog) -> bool {
    let enabled = catalog.properties.iter().find(|p| p.name == AUTO_KEY_EXCHANGE).is_none_or(|p| p.value == "true");
    enabled && !catalog.specs.is_empty()
}

/// How long after its snapshot a clone grant approves (the default of the
/// `clone.grant_lifetime` setting): 1 h.
pub const GRANT_MILLIS: i64 = 3600 * 1000;

/// Longest grant id accepted from the wire (ids made here are 32 hex digits).
pub const MAX_GRANT_ID_LEN: usize = 64;

/// Checks a grant id from the wire: empty is none (a peer of an earlier
/// release); else at most 64 hex digits.
pub fn parse_grant_id(s: &str) -> Result<Option<String>, DomainError> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_GRANT_ID_LEN || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DomainError::invalid("clone_grant_id", "must be at most 64 hex digits"));
    }
    Ok(Some(s.to_ascii_lowercase()))
}

/// What authorised the target when its snapshot was served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GrantBasis {
    /// A registered clone target: the grant covers the snapshot's specs.
    Registered,
    /// Only a One Time / Recurring Clone configuration: the grant covers
    /// the configuration's specs only.
    Configuration,
}

/// Recorded by a source that served a complete clone, one per snapshot
/// (a newer snapshot replaces it): the id travels in the snapshot's end and
/// the target's requests after the clone echo it. Each kind of request
/// (AUTOMATIC, ONE_TIME_CLONE, RECURRING_CLONE) is approved by it at most
/// once, in the transaction of that approval.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CloneGrant {
    pub id: String,
    pub target: SysId,
    pub specs: Vec<Name>,
    pub basis: GrantBasis,
    pub granted_at: UnixMillis,
    pub expires_at: UnixMillis,
    /// The frequencies whose approval used it.
    pub used: Vec<Frequency>,
}

impl CloneGrant {
    /// The grant of a snapshot served at `now` to `target`, who was
    /// authorised by `basis`; `snapshot_specs` came with it, `configured`
    /// are the configuration's specs (None without a configuration).
    pub fn of_snapshot(
        id: String,
        target: SysId,
        basis: GrantBasis,
        snapshot_specs: Vec<Name>,
        configured: Option<&[Name]>,
        now: UnixMillis,
        lifetime_millis: i64,
    ) -> Self {
        let specs = match (basis, configured) {
            (GrantBasis::Registered, _) => snapshot_specs,
            (GrantBasis::Configuration, Some(c)) => snapshot_specs.into_iter().filter(|s| c.contains(s)).collect(),
            (GrantBasis::Configuration, None) => Vec::new(),
        };
        CloneGrant {
            id,
            target,
            specs,
            basis,
            granted_at: now,
            expires_at: now.plus_millis(lifetime_millis),
            used: Vec::new(),
        }
    }

    /// Whether the grant approves a request for `specs` at `now`: unexpired,
    /// and every spec came with the clone.
    pub fn covers<'a>(&self, mut specs: impl Iterator<Item = &'a Name>, now: UnixMillis) -> bool {
        now < self.expires_at && specs.all(|s| self.specs.contains(s))
    }
}

/// What a source knows, inside the approving transaction, when a request
/// after a clone asks to be approved without a person.
#[derive(Debug)]
pub struct SystemApprovalFacts<'a> {
    pub frequency: Frequency,
    /// The grant id the request echoed (None: a peer of an earlier release).
    pub presented: Option<&'a str>,
    pub specs: &'a [Name],
    pub now: UnixMillis,
    /// The source's own `glide_encryption.auto_key_exchange.enabled`.
    pub source_auto_enabled: bool,
    /// The target is a registered clone target.
    pub registered: bool,
    /// The target's configuration, if any.
    pub configuration: Option<&'a CloneExchange>,
    pub grant: Option<&'a CloneGrant>,
}

/// Why a request after a clone may not be approved without a person, or
/// Ok: the automatic exchange needs the source's own property true; every
/// kind needs the target still authorised (registered, or a configuration
/// not used up; a One Time / Recurring request needs a configuration of its
/// kind, unused), the grant of its clone (the id it echoed), unexpired,
/// covering its specs, not yet used for its kind.
pub fn system_approval_refusal(f: &SystemApprovalFacts<'_>) -> Result<(), String> {
    let config_open = f.configuration.filter(|c| c.used.is_none());
    match f.frequency {
        Frequency::Adhoc => return Err("an Adhoc request needs a person".into()),
        Frequency::Automatic if !f.source_auto_enabled => {
            return Err(format!("{AUTO_KEY_EXCHANGE} is not true on this source"));
        }
        Frequency::Automatic => {}
        Frequency::OneTimeClone | Frequency::RecurringClone => {
            let Some(cfg) = config_open else {
                return Err("no unused One Time / Recurring Clone configuration for this target".into());
            };
            if super::clone_exchange::frequency_of(cfg.approval) != f.frequency {
                return Err(format!("the configuration for this target is not {}", f.frequency.label()));
            }
        }
    }
    if !f.registered && config_open.is_none() {
        return Err("the target is no longer authorised to clone this instance".into());
    }
    let Some(presented) = f.presented else {
        return Err("the request names no clone grant (a peer of an earlier release)".into());
    };
    let Some(grant) = f.grant.filter(|g| g.id == presented) else {
        return Err(
            "no clone grant with the id the request names (a later clone replaced it, or it was removed)".into()
        );
    };
    if f.now >= grant.expires_at {
        return Err("the clone grant has expired".into());
    }
    if grant.used.contains(&f.frequency) {
        return Err(format!("the clone grant already approved a {} request", f.frequency.label()));
    }
    if let Some(s) = f.specs.iter().find(|s| !grant.specs.contains(s)) {
        return Err(format!("spec {s} did not come with the clone's grant"));
    }
    Ok(())
}

/// A target the source may serve clones to (registered on the source).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CloneTarget {
    pub sys_id: SysId,
    pub host: Host,
    pub added_at: UnixMillis,
    pub added_by: String,
}

/// Where a clone (on the target) stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CloneState {
    /// Copying into the staging area; the previous data is untouched.
    Running,
    /// Swapped in: the target's catalog and records are the source's.
    Completed,
    /// Given up (refused by the source, or a snapshot that cannot be
    /// applied); the previous data is untouched.
    Failed,
}

impl CloneState {
    pub fn label(self) -> &'static str {
        match self {
            CloneState::Running => "running",
            CloneState::Completed => "completed",
            CloneState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [CloneState::Running, CloneState::Completed, CloneState::Failed].into_iter().find(|c| c.label() == s)
    }
}

/// A clone run on the target.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CloneRun {
    pub id: CloneId,
    pub source: SysId,
    pub source_host: Host,
    pub state: CloneState,
    /// Records in the snapshot being copied (0 until its header arrives).
    pub records_total: u64,
    pub records_copied: u64,
    pub started_at: UnixMillis,
    /// When the current copy began (a retried clone starts over).
    pub copy_started_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    /// Why the last attempt failed (kept while it is retried).
    pub error: Option<String>,
    /// What the target requests after the swap (set by the swap).
    pub follow_up: Option<FollowUp>,
}

/// The exchanges a completed clone leads to on the target.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct FollowUp {
    /// The cloned automatic-exchange property was on: request the specs the
    /// plan does not cover as AUTOMATIC.
    pub automatic: bool,
    /// The source's One Time / Recurring Clone configuration for this target.
    pub plan: Option<ExchangePlan>,
    /// The specs that came with the clone (None in runs recorded before it
    /// was kept: every spec of the target). The target's own specs are never
    /// asked of the source.
    pub specs: Option<Vec<Name>>,
    /// The clone grant the snapshot's end named; the requests echo it.
    pub grant: Option<String>,
}

impl FollowUp {
    /// What a target that swapped in `catalog` (with the header's `plan` and
    /// the end's `grant`) requests.
    pub fn after(catalog: &SnapshotCatalog, plan: Option<ExchangePlan>, grant: Option<String>) -> Option<FollowUp> {
        let automatic = wants_automatic_exchange(catalog);
        let specs = Some(catalog.specs.iter().map(|s| s.name.clone()).collect());
        (automatic || plan.is_some()).then_some(FollowUp { automatic, plan, specs, grant })
    }

    /// The specs of `catalog` to request as AUTOMATIC: all but the plan's.
    pub fn automatic_specs(&self, all: impl Iterator<Item = Name>) -> Vec<Name> {
        if !self.automatic {
            return Vec::new();
        }
        let planned = self.plan.as_ref().map_or(&[][..], |p| &p.specs[..]);
        let cloned = |s: &Name| self.specs.as_ref().is_none_or(|c| c.contains(s));
        all.filter(|s| !planned.contains(s) && cloned(s)).collect()
    }
}

impl CloneRun {
    /// A clone of `source` that starts at `now`.
    pub fn started(id: CloneId, source: SysId, source_host: Host, now: UnixMillis) -> Self {
        CloneRun {
            id,
            source,
            source_host,
            state: CloneState::Running,
            records_total: 0,
            records_copied: 0,
            started_at: now,
            copy_started_at: now,
            updated_at: now,
            finished_at: None,
            error: None,
            follow_up: None,
        }
    }

    /// Records copied per second in the current copy.
    pub fn rate(&self) -> f64 {
        let millis = (self.updated_at.0 - self.copy_started_at.0).max(1) as f64;
        self.records_copied as f64 * 1000.0 / millis
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnapshotHeader {
    pub source: SysId,
    pub taken_at: UnixMillis,
    /// Records the snapshot holds (the `End` part repeats the count sent).
    pub records: u64,
    /// The source's One Time / Recurring Clone configuration for this target.
    pub exchange: Option<ExchangePlan>,
}

/// Part of the catalog; the catalog is the union of these parts.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct SnapshotCatalog {
    pub modules: Vec<Module>,
    pub specs: Vec<Spec>,
    pub policies: Vec<AccessPolicy>,
    pub properties: Vec<Property>,
}

impl SnapshotCatalog {
    /// Adds another part of the same catalog.
    pub fn extend(&mut self, part: SnapshotCatalog) {
        self.modules.extend(part.modules);
        self.specs.extend(part.specs);
        self.policies.extend(part.policies);
        self.properties.extend(part.properties);
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty() && self.specs.is_empty() && self.policies.is_empty() && self.properties.is_empty()
    }

    /// Splits the catalog into parts of at most `CATALOG_ITEMS_PER_PART`
    /// items of each kind (at least one part, possibly empty).
    pub fn into_parts(mut self) -> Vec<SnapshotCatalog> {
        fn first<T>(v: &mut Vec<T>) -> Vec<T> {
            v.drain(..v.len().min(CATALOG_ITEMS_PER_PART)).collect()
        }
        let mut parts = Vec::new();
        loop {
            parts.push(SnapshotCatalog {
                modules: first(&mut self.modules),
                specs: first(&mut self.specs),
                policies: first(&mut self.policies),
                properties: first(&mut self.properties),
            });
            if self.is_empty() {
                return parts;
            }
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum SnapshotPart {
    Header(SnapshotHeader),
    Catalog(SnapshotCatalog),
    Records(Vec<StoredRecord>),
    /// The end; `grant` names the clone grant the source recorded (None from
    /// a source of an earlier release).
    End {
        records: u64,
        grant: Option<String>,
    },
}

/// Checks the order of a stream's parts as they arrive: one `Header` first,
/// `Catalog` parts before any `Records`, one `End` last whose count matches
/// the header and the records received.
#[derive(Debug, Default)]
pub struct SnapshotOrder {
    header: Option<SnapshotHeader>,
    records_seen: u64,
    in_records: bool,
    ended: bool,
}

impl SnapshotOrder {
    pub fn accept(&mut self, part: &SnapshotPart) -> Result<(), DomainError> {
        let bad = |why: &str| Err(DomainError::malformed("snapshot stream", why));
        if self.ended {
            return bad("a part after the end");
        }
        match (part, &self.header) {
            (SnapshotPart::Header(h), None) => self.header = Some(h.clone()),
            (SnapshotPart::Header(_), Some(_)) => return bad("a second header"),
            (_, None) => return bad("a part before the header"),
            (SnapshotPart::Catalog(_), Some(_)) if self.in_records => return bad("catalog after records"),
            (SnapshotPart::Catalog(_), Some(_)) => {}
            (SnapshotPart::Records(r), Some(h)) => {
                self.in_records = true;
                self.records_seen += r.len() as u64;
                if self.records_seen > h.records {
                    return bad("more records than the header announced");
                }
            }
            (SnapshotPart::End { records, .. }, Some(h)) => {
                if *records != h.records || self.records_seen != h.records {
                    return bad("the record count differs from the header's");
                }
                self.ended = true;
            }
        }
        Ok(())
    }

    /// The header, once received.
    pub fn header(&self) -> Option<&SnapshotHeader> {
        self.header.as_ref()
    }

    pub fn is_complete(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::domain::ids::Name;

    fn header(records: u64) -> SnapshotPart {
        SnapshotPart::Header(SnapshotHeader {
            source: SysId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            taken_at: UnixMillis(1),
            records,
            exchange: None,
        })
    }

    fn records(n: usize) -> SnapshotPart {
        let rec = StoredRecord {
            address: crate::domain::record::RecordAddress::parse("t", "f", "r").unwrap(),
            ciphertext: vec![1],
            key_id: crate::domain::ids::KeyId::parse("0123456789abcdef0123456789abcdef:s:v1").unwrap(),
            updated_at: UnixMillis(1),
        };
        SnapshotPart::Records(vec![rec; n])
    }

    fn sys() -> SysId {
        SysId::parse("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn grant(basis: GrantBasis, configured: Option<&[Name]>) -> CloneGrant {
        let name = |s: &str| Name::parse(s, "spec").unwrap();
        CloneGrant::of_snapshot("ab".into(), sys(), basis, vec![name("a"), name("b")], configured, UnixMillis(0), 100)
    }

    #[test]
    fn a_grant_covers_only_its_specs_until_it_expires() {
        let name = |s: &str| Name::parse(s, "spec").unwrap();
        let grant = grant(GrantBasis::Registered, None);
        assert!(grant.covers([name("a"), name("b")].iter(), UnixMillis(99)));
        assert!(grant.covers([name("b")].iter(), UnixMillis(0)));
        assert!(!grant.covers([name("a"), name("c")].iter(), UnixMillis(1)), "c did not come with the clone");
        assert!(!grant.covers([name("a")].iter(), UnixMillis(100)), "expired");
        // Authorised by a configuration alone: only the configuration's specs.
        let only_b = [name("b")];
        assert_eq!(grant_specs(GrantBasis::Configuration, Some(&only_b)), ["b"]);
        assert_eq!(grant_specs(GrantBasis::Configuration, None), Vec::<String>::new());
        assert_eq!(grant_specs(GrantBasis::Registered, Some(&only_b)), ["a", "b"]);
    }

    fn grant_specs(basis: GrantBasis, configured: Option<&[Name]>) -> Vec<String> {
        grant(basis, configured).specs.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_system_approval_needs_the_source_property_an_authorised_target_and_an_unused_grant() {
        use crate::domain::clone_exchange::UsedBy;
        use crate::domain::ids::RequestId;
        use crate::domain::policy::ApprovalType;
        let name = |s: &str| Name::parse(s, "spec").unwrap();
        let specs = [name("a")];
        let g = grant(GrantBasis::Registered, None);
        let one_time = CloneExchange {
            target: crate::domain::exchange::PeerRef { sys_id: sys(), host: Host::parse("t:1").unwrap() },
            approval: ApprovalType::OneTime,
            specs: vec![name("a")],
            rekey: false,
            policies: Vec::new(),
            created_at: UnixMillis(0),
            created_by: "alice".into(),
            used: None,
        };
        let base = || SystemApprovalFacts {
            frequency: Frequency::Automatic,
            presented: Some("ab"),
            specs: &specs,
            now: UnixMillis(10),
            source_auto_enabled: true,
            registered: true,
            configuration: None,
            grant: Some(&g),
        };
        assert_eq!(system_approval_refusal(&base()), Ok(()));
        let why = |f: SystemApprovalFacts<'_>| system_approval_refusal(&f).unwrap_err();
        assert!(why(SystemApprovalFacts { source_auto_enabled: false, ..base() }).contains("not true on this source"));
        assert!(why(SystemApprovalFacts { registered: false, ..base() }).contains("no longer authorised"));
        assert!(why(SystemApprovalFacts { presented: None, ..base() }).contains("earlier release"));
        assert!(why(SystemApprovalFacts { presented: Some("cd"), ..base() }).contains("no clone grant"));
        assert!(why(SystemApprovalFacts { grant: None, ..base() }).contains("no clone grant"));
        assert!(why(SystemApprovalFacts { now: UnixMillis(100), ..base() }).contains("expired"));
        let c = [name("c")];
        assert!(why(SystemApprovalFacts { specs: &c, ..base() }).contains("spec c"));
        let mut used = g.clone();
        used.used.push(Frequency::Automatic);
        assert!(why(SystemApprovalFacts { grant: Some(&used), ..base() }).contains("already approved"));
        assert!(why(SystemApprovalFacts { frequency: Frequency::Adhoc, ..base() }).contains("person"));
        // A One Time request: its configuration, unused, authorises (even unregistered);
        // once used it authorises nothing, and the grant's AUTOMATIC use does not count.
        let ot = || SystemApprovalFacts {
            frequency: Frequency::OneTimeClone,
            registered: false,
            configuration: Some(&one_time),
            grant: Some(&used),
            source_auto_enabled: false,
            ..base()
        };
        assert_eq!(system_approval_refusal(&ot()), Ok(()));
        let mut spent = one_time.clone();
        spent.used = Some(UsedBy { request: RequestId::from_random([1; 16]), at: UnixMillis(5) });
        assert!(why(SystemApprovalFacts { configuration: Some(&spent), ..ot() }).contains("no unused"));
        assert!(
            why(SystemApprovalFacts { frequency: Frequency::RecurringClone, ..ot() }).contains("not RECURRING_CLONE")
        );
        assert!(
            why(SystemApprovalFacts {
                frequency: Frequency::Automatic,
                source_auto_enabled: true,
                configuration: Some(&spent),
                ..ot()
            })
            .contains("no longer authorised")
        );
    }

    #[test]
    fn grant_ids_from_the_wire_are_hex_and_bounded() {
        assert_eq!(parse_grant_id(""), Ok(None));
        assert_eq!(parse_grant_id("ABcd"), Ok(Some("abcd".into())));
        assert!(parse_grant_id("xyz").is_err());
        assert!(parse_grant_id(&"a".repeat(65)).is_err());
    }

    fn refused(why: &str) -> Result<(), DomainError> {
        Err(DomainError::malformed("snapshot stream", why))
    }

    #[test]
    fn a_well_formed_stream_is_complete() {
        let mut o = SnapshotOrder::default();
        for p in [header(3), SnapshotPart::Catalog(SnapshotCatalog::default()), records(2), records(1)] {
            o.accept(&p).unwrap();
            assert!(!o.is_complete());
        }
        o.accept(&SnapshotPart::End { records: 3, grant: None }).unwrap();
        assert!(o.is_complete());
        assert_eq!(o.accept(&records(0)), refused("a part after the end"));
    }

    #[test]
    fn disorder_and_wrong_counts_are_refused() {
        assert_eq!(SnapshotOrder::default().accept(&records(1)), refused("a part before the header"));
        let mut o = SnapshotOrder::default();
        o.accept(&header(1)).unwrap();
        assert_eq!(o.accept(&header(1)), refused("a second header"));
        o.accept(&records(1)).unwrap();
        assert_eq!(o.accept(&SnapshotPart::Catalog(SnapshotCatalog::default())), refused("catalog after records"));
        assert_eq!(o.accept(&records(1)), refused("more records than the header announced"));
        let mut short = SnapshotOrder::default();
        short.accept(&header(2)).unwrap();
        short.accept(&records(1)).unwrap();
        assert_eq!(
            short.accept(&SnapshotPart::End { records: 2, grant: None }),
            refused("the record count differs from the header's")
        );
    }

    #[test]
    fn the_catalog_is_split_into_bounded_parts() {
        let module =
            |i: usize| Module { name: Name::parse(&format!("m{i}"), "module").unwrap(), created_at: UnixMillis(0) };
        let cat = SnapshotCatalog { modules: (0..1_201).map(module).collect(), ..Default::default() };
        let parts = cat.clone().into_parts();
        assert_eq!(parts.iter().map(|p| p.modules.len()).collect::<Vec<_>>(), vec![500, 500, 201]);
        let joined: Vec<Module> = parts.into_iter().flat_map(|p| p.modules).collect();
        assert_eq!(joined, cat.modules);
        assert_eq!(SnapshotCatalog::default().into_parts().len(), 1, "an empty catalog is one empty part");
    }
}
