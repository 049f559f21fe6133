//! One Time Clone and Recurring Clone ("clone exchanges"), configured on the
//! source and naming a target (kmf-domain.md §3.3, §3.5; DESIGN.md §4).
//! Creating one creates a Resource Exchange access policy per spec on the
//! source; those policies are what approve the target's request after a
//! clone. The configuration also authorises the target to clone, and the
//! snapshot served to it carries the plan (which specs to request, how
//! often, whether to rekey), so the target knows what to ask for.
//!
//! A source keeps at most one configuration per target. A One Time
//! configuration is used up by its first completed exchange: its policies are
//! deactivated in the same transaction, and later clones bring no plan.

use super::DomainError;
use super::exchange::{Frequency, PeerRef};
use super::ids::{Name, RequestId, SysId, UnixMillis};
use super::policy::{AccessPolicy, ApprovalType, PolicyResult, PolicyType};
use super::property::AUTO_KEY_EXCHANGE;

/// Hex characters of the target's sys_id in a policy name.
const TARGET_PREFIX: usize = 12;

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct UsedBy {
    pub request: RequestId,
    pub at: UnixMillis,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CloneExchange {
    pub target: PeerRef,
    pub approval: ApprovalType,
    pub specs: Vec<Name>,
    /// Re-encrypt the cloned records under the target's own keys after the import.
    pub rekey: bool,
    /// The Resource Exchange policies created with it: (module, policy name).
    pub policies: Vec<(Name, Name)>,
    pub created_at: UnixMillis,
    pub created_by: String,
    /// A One Time configuration after its first completed exchange.
    pub used: Option<UsedBy>,
}

/// What a clone tells its target to request afterwards.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExchangePlan {
    pub approval: ApprovalType,
    pub specs: Vec<Name>,
    pub rekey: bool,
}

impl ExchangePlan {
    pub fn frequency(&self) -> Frequency {
        frequency_of(self.approval)
    }
}

pub fn frequency_of(approval: ApprovalType) -> Frequency {
    match approval {
        ApprovalType::OneTime => Frequency::OneTimeClone,
        ApprovalType::Recurring => Frequency::RecurringClone,
    }
}

/// The approval type a request of `frequency` needs from a policy.
pub fn approval_for(frequency: Frequency) -> Option<ApprovalType> {
    match frequency {
        Frequency::OneTimeClone => Some(ApprovalType::OneTime),
        Frequency::RecurringClone => Some(ApprovalType::Recurring),
        Frequency::Adhoc | Frequency::Automatic => None,
    }
}

impl CloneExchange {
    /// The plan a clone carries to the target; none once a One Time
    /// configuration is used up.
    pub fn plan(&self) -> Option<ExchangePlan> {
        self.used.is_none().then(|| ExchangePlan {
            approval: self.approval,
            specs: self.specs.clone(),
            rekey: self.rekey,
        })
    }
}

/// The reference's rule: a Recurring Clone or a rekey needs the automatic
/// exchange off (`auto_enabled` is this instance's property, which a clone
/// copies to the target).
pub fn check_auto_exchange_guard(approval: ApprovalType, rekey: bool, auto_enabled: bool) -> Result<(), DomainError> {
    if !auto_enabled {
        return Ok(());
    }
    let what = match (approval, rekey) {
        (ApprovalType::Recurring, _) => "a Recurring Clone",
        (ApprovalType::OneTime, true) => "a clone exchange with rekey",
        (ApprovalType::OneTime, false) => return Ok(()),
    };
    Err(DomainError::FailedPrecondition(format!(
        "{what} needs the automatic exchange off: set {AUTO_KEY_EXCHANGE} to false first"
    )))
}

/// The policy a configuration for `target` creates for `spec`:
/// `clone-<first 12 hex of the target>-<spec>` (cut to 64 characters).
pub fn policy_name(target: &SysId, spec: &Name) -> Result<Name, DomainError> {
    let mut name = format!("clone-{}-{}", &target.as_str()[..TARGET_PREFIX], spec);
    name.truncate(64);
    Name::parse(&name, "policy name")
}

/// The Track policy that approves `target`'s requests for `spec` (of `module`).
pub fn approving_policy(
    target: &PeerRef,
    approval: ApprovalType,
    module: &Name,
    spec: &Name,
    now: UnixMillis,
) -> Result<AccessPolicy, DomainError> {
    Ok(AccessPolicy {
        name: policy_name(&target.sys_id, spec)?,
        module: module.clone(),
        kind: PolicyType::ResourceExchange {
            target_sys_id: target.sys_id.clone(),
            target_host: target.host.clone(),
            approval,
        },
        result: PolicyResult::Track,
        spec: Some(spec.clone()),
        operations: Vec::new(),
        active: true,
        created_at: now,
    })
}

/// Checks the specs of a new configuration: at least one, no repeats.
pub fn validate_specs(specs: &[Name]) -> Result<(), DomainError> {
    if specs.is_empty() {
        return Err(DomainError::invalid("spec_names", "name at least one spec"));
    }
    let mut sorted: Vec<&Name> = specs.iter().collect();
    sorted.sort();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(DomainError::invalid("spec_names", format!("spec {} is named twice", w[0])));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::domain::ids::Host;

    fn target() -> PeerRef {
        PeerRef {
            sys_id: SysId::parse("0123456789abcdef0123456789abcdef").unwrap(),
            host: Host::parse("dev:7443").unwrap(),
        }
    }

    #[test]
    fn the_guard_refuses_recurring_and_rekey_while_the_automatic_exchange_is_on() {
        for (approval, rekey, auto, ok) in [
            (ApprovalType::OneTime, false, true, true),
            (ApprovalType::OneTime, true, true, false),
            (ApprovalType::Recurring, false, true, false),
            (ApprovalType::Recurring, true, true, false),
            (ApprovalType::Recurring, true, false, true),
            (ApprovalType::OneTime, true, false, true),
        ] {
            let r = check_auto_exchange_guard(approval, rekey, auto);
            assert_eq!(r.is_ok(), ok, "{approval:?} rekey={rekey} auto={auto}: {r:?}");
            if let Err(e) = r {
                assert!(matches!(e, DomainError::FailedPrecondition(_)), "{e:?}");
                assert!(e.to_string().contains("set glide_encryption.auto_key_exchange.enabled to false"), "{e}");
            }
        }
    }

    #[test]
    fn a_used_one_time_configuration_plans_nothing() {
        let spec = Name::parse("s", "spec").unwrap();
        let mut cfg = CloneExchange {
            target: target(),
            approval: ApprovalType::OneTime,
            specs: vec![spec],
            rekey: false,
            policies: Vec::new(),
            created_at: UnixMillis(0),
            created_by: "alice".into(),
            used: None,
        };
        assert_eq!(cfg.plan().unwrap().frequency(), Frequency::OneTimeClone);
        cfg.used = Some(UsedBy { request: RequestId::from_random([1; 16]), at: UnixMillis(5) });
        assert!(cfg.plan().is_none());
    }

    #[test]
    fn policy_names_are_valid_and_name_the_target() {
        let long = Name::parse(&"x".repeat(64), "spec").unwrap();
        let name = policy_name(&target().sys_id, &long).unwrap();
        assert_eq!(name.as_str().len(), 64);
        assert!(name.as_str().starts_with("clone-0123456789ab-x"));
        let p = approving_policy(&target(), ApprovalType::Recurring, &long, &long, UnixMillis(0)).unwrap();
        assert!(p.validate().is_ok());
        assert_eq!(p.result, PolicyResult::Track);
    }

    #[test]
    fn specs_must_be_named_once_each() {
        let n = |s: &str| Name::parse(s, "spec").unwrap();
        assert_eq!(validate_specs(&[]), Err(DomainError::invalid("spec_names", "name at least one spec")));
        assert_eq!(
            validate_specs(&[n("a"), n("b"), n("a")]),
            Err(DomainError::invalid("spec_names", "spec a is named twice"))
        );
        assert!(validate_specs(&[n("a"), n("b")]).is_ok());
    }
}
