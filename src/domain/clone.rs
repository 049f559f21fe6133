//! Clone: what a source serves to an authorised target. A snapshot is one
//! consistent view of the source's catalog (modules, specs, module access
//! policies, system properties) and its encrypted records — never keys —
//! sent as an ordered stream of parts: `Header`, `Catalog` parts, `Records`
//! parts, `End`. A stream without its `End` is incomplete and must not be
//! applied.

use super::DomainError;
use super::clone_exchange::ExchangePlan;
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

/// How long a clone grant lets its target's automatic request be approved.
pub const GRANT_MILLIS: i64 = 7 * 24 * 3600 * 1000;

/// Recorded by a source that served a complete clone: the target's
/// AUTOMATIC request for these specs is approved without a person.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CloneGrant {
    pub target: SysId,
    pub specs: Vec<super::ids::Name>,
    pub granted_at: UnixMillis,
    pub expires_at: UnixMillis,
}

impl CloneGrant {
    /// Whether the grant approves a request for `specs` at `now`: unexpired,
    /// and every spec came with the clone.
    pub fn covers<'a>(&self, mut specs: impl Iterator<Item = &'a super::ids::Name>, now: UnixMillis) -> bool {
        now < self.expires_at && specs.all(|s| self.specs.contains(s))
    }
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
}

impl FollowUp {
    /// What a target that swapped in `catalog` (with the header's `plan`) requests.
    pub fn after(catalog: &SnapshotCatalog, plan: Option<ExchangePlan>) -> Option<FollowUp> {
        let automatic = wants_automatic_exchange(catalog);
        let specs = Some(catalog.specs.iter().map(|s| s.name.clone()).collect());
        (automatic || plan.is_some()).then_some(FollowUp { automatic, plan, specs })
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
    End { records: u64 },
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
            (SnapshotPart::End { records }, Some(h)) => {
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

    #[test]
    fn a_grant_covers_only_its_specs_until_it_expires() {
        let name = |s: &str| Name::parse(s, "spec").unwrap();
        let grant = CloneGrant {
            target: SysId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            specs: vec![name("a"), name("b")],
            granted_at: UnixMillis(0),
            expires_at: UnixMillis(100),
        };
        assert!(grant.covers([name("a"), name("b")].iter(), UnixMillis(99)));
        assert!(grant.covers([name("b")].iter(), UnixMillis(0)));
        assert!(!grant.covers([name("a"), name("c")].iter(), UnixMillis(1)), "c did not come with the clone");
        assert!(!grant.covers([name("a")].iter(), UnixMillis(100)), "expired");
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
        o.accept(&SnapshotPart::End { records: 3 }).unwrap();
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
            short.accept(&SnapshotPart::End { records: 2 }),
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
