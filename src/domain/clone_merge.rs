//! Clone, target side: how a snapshot's catalog merges into the target's.
//! A clone adds what is missing and never widens what the target allows:
//!
//! - a module or spec the target already has stays as it is (its own access
//!   policies, its own `exportable` flag and lifecycle); the snapshot's
//!   version of it, and the snapshot's policies of such a module, are dropped;
//! - a module the target lacks comes with the snapshot's policies for it,
//!   except Resource Exchange policies (they would let the target release its
//!   own keys to a third instance without a person);
//! - a spec the target lacks is added, never exportable (only an admin of the
//!   target makes an exportable spec, when creating it);
//! - protected properties (`protected.*`, written by the system only) are
//!   neither copied nor erased; the other properties are the snapshot's;
//! - after a clone that brings records under other instances' keys, a
//!   finished rekey (`protected.script.values.kmf.rekeyed` = true) no longer
//!   holds: it becomes false (see [`rekeyed_after_clone`]).

use super::clone::SnapshotCatalog;
use super::ids::Name;
use super::policy::{AccessPolicy, PolicyType};
use super::property::{Property, is_protected};
use super::spec::{Module, Spec};

/// What the swap writes into the target's catalog.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct CatalogMerge {
    /// Modules the target lacked.
    pub add_modules: Vec<Module>,
    /// Specs the target lacked (not exportable).
    pub add_specs: Vec<Spec>,
    /// The snapshot's policies of the modules the target lacked.
    pub add_policies: Vec<AccessPolicy>,
    /// The snapshot's properties, protected ones left out (written as they are).
    pub set_properties: Vec<Property>,
    /// The target's unprotected properties the snapshot does not hold (deleted).
    pub erase_properties: Vec<String>,
    /// Modules and specs of the snapshot the target already had (kept as they are).
    pub kept_modules: usize,
    pub kept_specs: usize,
    /// The snapshot's policies left out (of a module the target had, or Resource Exchange).
    pub dropped_policies: usize,
    /// Protected properties of the snapshot left out.
    pub dropped_properties: usize,
}

impl CatalogMerge {
    /// For the audit log: what the merge did.
    pub fn describe(&self) -> String {
        format!(
            "added {} modules, {} specs (not exportable), {} policies; kept the target's own {} modules and {} specs with their policies and exportable flags; left out {} policies and {} protected properties; {} properties set, {} erased",
            self.add_modules.len(),
            self.add_specs.len(),
            self.add_policies.len(),
            self.kept_modules,
            self.kept_specs,
            self.dropped_policies,
            self.dropped_properties,
            self.set_properties.len(),
            self.erase_properties.len(),
        )
    }
}

/// Merges `snapshot` into the target's `current` catalog (both read in the
/// swap's transaction). A name repeated in the snapshot counts once (the first).
pub fn merge_catalog(current: &SnapshotCatalog, snapshot: &SnapshotCatalog) -> CatalogMerge {
    let mut merge = CatalogMerge::default();
    // A module is the target's when it holds it or any policy of it.
    let mut governed: Vec<&Name> = current.modules.iter().map(|m| &m.name).collect();
    governed.extend(current.policies.iter().map(|p| &p.module));
    let mut seen: Vec<&Name> = Vec::new();
    for m in &snapshot.modules {
        if seen.contains(&&m.name) {
            continue;
        }
        seen.push(&m.name);
        if governed.contains(&&m.name) {
            merge.kept_modules += 1;
        } else {
            merge.add_modules.push(m.clone());
        }
    }
    let mut seen: Vec<&Name> = Vec::new();
    for s in &snapshot.specs {
        if seen.contains(&&s.name) {
            continue;
        }
        seen.push(&s.name);
        if current.specs.iter().any(|c| c.name == s.name) {
            merge.kept_specs += 1;
        } else {
            merge.add_specs.push(Spec { exportable: false, ..s.clone() });
        }
    }
    let mut seen: Vec<(&Name, &Name)> = Vec::new();
    for p in &snapshot.policies {
        let exchange = matches!(p.kind, PolicyType::ResourceExchange { .. });
        if exchange || governed.contains(&&p.module) || seen.contains(&(&p.module, &p.name)) {
            merge.dropped_policies += 1;
            continue;
        }
        seen.push((&p.module, &p.name));
        merge.add_policies.push(p.clone());
    }
    let mut seen: Vec<&str> = Vec::new();
    for p in &snapshot.properties {
        if is_protected(&p.name) {
            merge.dropped_properties += 1;
        } else if !seen.contains(&p.name.as_str()) {
            seen.push(&p.name);
            merge.set_properties.push(p.clone());
        }
    }
    merge.erase_properties = current
        .properties
        .iter()
        .filter(|p| !is_protected(&p.name) && !seen.contains(&p.name.as_str()))
        .map(|p| p.name.clone())
        .collect();
    merge
}

/// The value `protected.script.values.kmf.rekeyed` takes after a clone
/// whose records include `foreign_records` under keys of other instances,
/// when it was `current`: a finished rekey (true) becomes false, since the
/// records depend on imported keys again; otherwise it stays (None).
pub fn rekeyed_after_clone(current: Option<&str>, foreign_records: u64) -> Option<&'static str> {
    (current == Some("true") && foreign_records > 0).then_some("false")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::domain::ids::{Host, SysId, UnixMillis};
    use crate::domain::policy::{ApprovalType, PolicyResult};
    use crate::domain::spec::{Algorithm, Purpose, SpecChoice};

    fn n(s: &str) -> Name {
        Name::parse(s, "name").unwrap()
    }

    fn module(name: &str) -> Module {
        Module { name: n(name), created_at: UnixMillis(1) }
    }

    fn spec(name: &str, module: &str, exportable: bool) -> Spec {
        let choice = SpecChoice {
            purpose: Purpose::SymmetricDataEncryption,
            algorithm: Algorithm::AesGcm,
            key_size_bits: 256,
            equality_preserving: false,
        };
        let mut s = Spec::try_new(n(name), n(module), choice, UnixMillis(1)).unwrap();
        s.exportable = exportable;
        s
    }

    fn policy(module: &str, name: &str, kind: PolicyType, result: PolicyResult) -> AccessPolicy {
        AccessPolicy {
            name: n(name),
            module: n(module),
            kind,
            result,
            spec: None,
            operations: Vec::new(),
            active: true,
            created_at: UnixMillis(1),
        }
    }

    fn property(name: &str, value: &str) -> Property {
        Property { name: name.into(), value: value.into(), updated_at: UnixMillis(1), updated_by: "x".into() }
    }

    const REKEYED: &str = crate::domain::property::REKEYED;

    #[test]
    fn what_the_target_has_stays_its_own_and_what_it_lacks_is_added() {
        let current = SnapshotCatalog {
            modules: vec![module("hr")],
            specs: vec![spec("pay", "hr", false)],
            policies: vec![policy("hr", "no", PolicyType::System, PolicyResult::StrictReject)],
            properties: vec![property(REKEYED, "true"), property("mine.only", "x")],
        };
        let exchange = PolicyType::ResourceExchange {
            target_sys_id: SysId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            target_host: Host::parse("127.0.0.1:1").unwrap(),
            approval: ApprovalType::Recurring,
        };
        let snapshot = SnapshotCatalog {
            modules: vec![module("hr"), module("ops"), module("ops")],
            specs: vec![spec("pay", "hr", true), spec("log", "ops", true), spec("log", "ops", true)],
            policies: vec![
                policy("hr", "all", PolicyType::System, PolicyResult::Track),
                policy("ops", "all", PolicyType::System, PolicyResult::Track),
                policy("ops", "all", PolicyType::System, PolicyResult::Track),
                policy("ops", "away", exchange, PolicyResult::Track),
            ],
            properties: vec![
                property(REKEYED, "false"),
                property("protected.other", "y"),
                property("glide_encryption.auto_key_exchange.enabled", "false"),
            ],
        };
        let m = merge_catalog(&current, &snapshot);
        assert_eq!(m.add_modules, vec![module("ops")], "hr is the target's; ops once");
        assert_eq!(m.add_specs, vec![spec("log", "ops", false)], "an added spec is never exportable");
        assert_eq!(m.add_policies, vec![policy("ops", "all", PolicyType::System, PolicyResult::Track)]);
        assert_eq!((m.kept_modules, m.kept_specs), (1, 1));
        assert_eq!(m.dropped_policies, 3, "hr's (the target keeps its own), a repeat, the Resource Exchange one");
        assert_eq!(m.set_properties, vec![property("glide_encryption.auto_key_exchange.enabled", "false")]);
        assert_eq!(m.dropped_properties, 2, "protected properties are never copied");
        assert_eq!(m.erase_properties, vec!["mine.only".to_owned()], "protected ones are never erased");
        assert!(m.describe().contains("added 1 modules, 1 specs"), "{}", m.describe());
    }

    #[test]
    fn a_module_known_only_by_its_policies_is_the_targets() {
        let current = SnapshotCatalog {
            policies: vec![policy("hr", "no", PolicyType::System, PolicyResult::Reject)],
            ..Default::default()
        };
        let snapshot = SnapshotCatalog {
            modules: vec![module("hr")],
            policies: vec![policy("hr", "no", PolicyType::System, PolicyResult::Track)],
            ..Default::default()
        };
        let m = merge_catalog(&current, &snapshot);
        assert!(m.add_modules.is_empty() && m.add_policies.is_empty(), "{m:?}");
    }

    #[test]
    fn the_automatic_exchange_asks_only_for_the_specs_that_came_with_the_clone() {
        use crate::domain::clone::FollowUp;
        let snapshot = SnapshotCatalog { specs: vec![spec("pay", "hr", false)], ..Default::default() };
        let follow = FollowUp::after(&snapshot, None, None).unwrap();
        assert_eq!(
            follow.automatic_specs([n("mine"), n("pay")].into_iter()),
            vec![n("pay")],
            "mine is the target's own"
        );
        let before = FollowUp { specs: None, ..follow };
        assert_eq!(before.automatic_specs([n("mine"), n("pay")].into_iter()), vec![n("mine"), n("pay")], "an old run");
    }

    #[test]
    fn a_finished_rekey_is_undone_only_by_records_under_other_keys() {
        assert_eq!(rekeyed_after_clone(Some("true"), 1), Some("false"));
        assert_eq!(rekeyed_after_clone(Some("true"), 0), None, "records under the target's own keys only");
        assert_eq!(rekeyed_after_clone(Some("false"), 5), None, "already false");
        assert_eq!(rekeyed_after_clone(None, 5), None, "never rekeyed: stays absent");
    }
}
