//! Key lifecycle definitions (per spec) and the lifecycle policies that cap
//! them: the instance policy and per-module exceptions.

use super::DomainError;
use super::ids::{Name, UnixMillis};

/// Relative durations that a spec's keys follow (the reference's key
/// lifecycle definition rows), in milliseconds.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct LifecycleDefinition {
    /// Expiration = activation + this.
    pub expire_after: Option<i64>,
    /// A Deactivated key is destroyed after this long.
    pub destroy_after_idle: Option<i64>,
}

impl LifecycleDefinition {
    pub fn expiry_from(&self, activated: UnixMillis) -> Option<UnixMillis> {
        self.expire_after.map(|d| activated.plus_millis(d))
    }

    /// Checks the definition against the cap of the instance policy or the
    /// module's exception (`cap`, milliseconds).
    pub fn check_cap(&self, cap: Option<i64>) -> Result<(), DomainError> {
        for (name, value) in [("expire_after", self.expire_after), ("destroy_after_idle", self.destroy_after_idle)] {
            if value.is_some_and(|v| v <= 0) {
                return Err(DomainError::invalid(name, "must be positive"));
            }
        }
        match (self.expire_after, cap) {
            (Some(v), Some(c)) if v > c => Err(DomainError::FailedPrecondition(format!(
                "expire_after of {} days exceeds the lifecycle policy cap of {} days",
                v / 86_400_000,
                c / 86_400_000
            ))),
            _ => Ok(()),
        }
    }
}

/// Where a lifecycle policy applies: the whole instance, or one module (an
/// exception that overrides the instance policy for that module).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PolicyScope {
    Instance,
    Module(Name),
}

/// An instance lifecycle policy or a module policy exception: caps what the
/// specs' lifecycle definitions may set.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LifecyclePolicy {
    pub scope: PolicyScope,
    pub active: bool,
    /// Longest allowed expire_after, in milliseconds.
    pub max_expire_after: Option<i64>,
}

/// The cap for a module: its active exception, else the active instance policy.
pub fn effective_cap(policies: &[LifecyclePolicy], module: &Name) -> Option<i64> {
    let exception = policies.iter().find(|p| p.active && p.scope == PolicyScope::Module(module.clone()));
    let instance = policies.iter().find(|p| p.active && p.scope == PolicyScope::Instance);
    exception.or(instance).and_then(|p| p.max_expire_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn module_exception_overrides_instance_policy() {
        let m = Name::parse("m", "module").unwrap();
        let other = Name::parse("o", "module").unwrap();
        let instance =
            LifecyclePolicy { scope: PolicyScope::Instance, active: true, max_expire_after: Some(365 * DAY) };
        let exception =
            LifecyclePolicy { scope: PolicyScope::Module(m.clone()), active: true, max_expire_after: Some(730 * DAY) };
        let policies = vec![instance.clone(), exception.clone()];
        assert_eq!(effective_cap(&policies, &m), Some(730 * DAY));
        assert_eq!(effective_cap(&policies, &other), Some(365 * DAY));
        let inactive = vec![instance, LifecyclePolicy { active: false, ..exception }];
        assert_eq!(effective_cap(&inactive, &m), Some(365 * DAY));
        assert_eq!(effective_cap(&[], &m), None);
    }

    #[test]
    fn lifecycle_caps() {
        let lc = LifecycleDefinition { expire_after: Some(400 * DAY), destroy_after_idle: None };
        assert!(lc.check_cap(None).is_ok());
        assert!(lc.check_cap(Some(730 * DAY)).is_ok());
        assert!(matches!(lc.check_cap(Some(365 * DAY)), Err(DomainError::FailedPrecondition(_))));
        let bad = LifecycleDefinition { expire_after: Some(0), destroy_after_idle: None };
        assert_eq!(bad.check_cap(None), Err(DomainError::invalid("expire_after", "must be positive")));
    }
}
