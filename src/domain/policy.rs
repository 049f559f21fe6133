//! Module access policies (MAPs) and their evaluation (kmf-domain.md §1.4):
//! StrictReject always denies; otherwise a matching Track grants; Reject
//! denies unless a Track grants; no matching policy denies.

use super::DomainError;
use super::auth::{Caller, Role};
use super::ids::{Host, Name, SysId, UnixMillis};

/// What a crypto call (or an export) does with a key.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Operation {
    Encrypt,
    Decrypt,
    Sign,
    Verify,
    Mac,
    VerifyMac,
    Wrap,
    Unwrap,
    /// `KeyManagement.ExportKey`: a key's material leaves the instance.
    Export,
}

pub const ALL_OPERATIONS: [Operation; 9] = [
    Operation::Encrypt,
    Operation::Decrypt,
    Operation::Sign,
    Operation::Verify,
    Operation::Mac,
    Operation::VerifyMac,
    Operation::Wrap,
    Operation::Unwrap,
    Operation::Export,
];

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Encrypt => "encrypt",
            Operation::Decrypt => "decrypt",
            Operation::Sign => "sign",
            Operation::Verify => "verify",
            Operation::Mac => "mac",
            Operation::VerifyMac => "verify_mac",
            Operation::Wrap => "wrap",
            Operation::Unwrap => "unwrap",
            Operation::Export => "export",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        ALL_OPERATIONS.into_iter().find(|o| o.as_str() == text)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ApprovalType {
    OneTime,
    Recurring,
}

/// Whom a policy is about.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum PolicyType {
    /// Operators holding this role.
    Role(Role),
    /// One named caller identity (the operator certificate's name).
    Script(String),
    /// Code running in system context (the daemon's own jobs).
    System,
    /// Inbound key-exchange requests from one target (used by clone flows).
    ResourceExchange { target_sys_id: SysId, target_host: Host, approval: ApprovalType },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PolicyResult {
    Track,
    Reject,
    StrictReject,
}

impl PolicyResult {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyResult::Track => "Track",
            PolicyResult::Reject => "Reject",
            PolicyResult::StrictReject => "StrictReject",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccessPolicy {
    pub name: Name,
    pub module: Name,
    pub kind: PolicyType,
    pub result: PolicyResult,
    /// Only this spec (the reference's "specify purpose"); None = every spec.
    pub spec: Option<Name>,
    /// Only these operations (granular operation); empty = every operation.
    pub operations: Vec<Operation>,
    pub active: bool,
    pub created_at: UnixMillis,
}

impl AccessPolicy {
    /// Checks the fields that do not depend on other records.
    pub fn validate(&self) -> Result<(), DomainError> {
        if let PolicyType::Script(name) = &self.kind
            && (name.is_empty() || name.len() > 64)
        {
            return Err(DomainError::invalid("script", "a Script policy names a caller identity (1-64 characters)"));
        }
        if matches!(self.kind, PolicyType::ResourceExchange { .. }) && !self.operations.is_empty() {
            return Err(DomainError::invalid(
                "operations",
                "Resource Exchange policies apply to exchange requests, not operations",
            ));
        }
        Ok(())
    }
}

/// Who is asking, as policies see it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Subject {
    Operator { name: String, roles: Vec<Role> },
    System,
}

impl From<&Caller> for Subject {
    fn from(c: &Caller) -> Self {
        match c {
            Caller::Operator { name, roles } => Subject::Operator { name: name.clone(), roles: roles.clone() },
            // Peers never reach crypto calls; treat them as nobody in particular.
            Caller::Instance(id) => Subject::Operator { name: format!("instance:{id}"), roles: Vec::new() },
        }
    }
}

/// One access attempt.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccessRequest {
    pub subject: Subject,
    pub module: Name,
    pub spec: Name,
    pub operation: Operation,
}

/// One line of the explanation: a policy, whether it matched, and why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Evaluated {
    pub policy: Name,
    pub result: PolicyResult,
    pub matched: bool,
    pub why: String,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AccessDecision {
    pub allowed: bool,
    pub reason: String,
    pub evaluated: Vec<Evaluated>,
}

/// Why a policy does not apply to a request (rendered only for explanations).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mismatch {
    Inactive,
    OtherModule,
    OtherSpec,
    OtherOperation,
    MissingRole,
    OtherScript,
    NotSystem,
    ExchangeOnly,
}

fn mismatch(p: &AccessPolicy, r: &AccessRequest) -> Option<Mismatch> {
    if !p.active {
        return Some(Mismatch::Inactive);
    }
    if p.module != r.module {
        return Some(Mismatch::OtherModule);
    }
    if p.spec.as_ref().is_some_and(|s| s != &r.spec) {
        return Some(Mismatch::OtherSpec);
    }
    if !p.operations.is_empty() && !p.operations.contains(&r.operation) {
        return Some(Mismatch::OtherOperation);
    }
    match (&p.kind, &r.subject) {
        (PolicyType::Role(role), Subject::Operator { roles, .. }) if roles.contains(role) => None,
        (PolicyType::Role(_), _) => Some(Mismatch::MissingRole),
        (PolicyType::Script(who), Subject::Operator { name, .. }) if who == name => None,
        (PolicyType::Script(_), _) => Some(Mismatch::OtherScript),
        (PolicyType::System, Subject::System) => None,
        (PolicyType::System, _) => Some(Mismatch::NotSystem),
        (PolicyType::ResourceExchange { .. }, _) => Some(Mismatch::ExchangeOnly),
    }
}

fn explain(p: &AccessPolicy, m: Option<Mismatch>) -> String {
    match m {
        None => "matches".into(),
        Some(Mismatch::Inactive) => "inactive".into(),
        Some(Mismatch::OtherModule) => format!("for module {}", p.module),
        Some(Mismatch::OtherSpec) => format!("for spec {}", p.spec.as_ref().map_or("?", |s| s.as_str())),
        Some(Mismatch::OtherOperation) => {
            let ops: Vec<&str> = p.operations.iter().map(|o| o.as_str()).collect();
            format!("only for {}", ops.join(", "))
        }
        Some(Mismatch::MissingRole) => match &p.kind {
            PolicyType::Role(role) => format!("caller lacks role {}", role.as_str()),
            _ => "caller lacks the role".into(),
        },
        Some(Mismatch::OtherScript) => match &p.kind {
            PolicyType::Script(who) => format!("caller is not {who}"),
            _ => "caller is not the script".into(),
        },
        Some(Mismatch::NotSystem) => "caller is not the system".into(),
        Some(Mismatch::ExchangeOnly) => "applies to exchange requests only".into(),
    }
}

/// One inbound exchange request for one spec, as Resource Exchange policies see it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ExchangeAccess {
    pub module: Name,
    pub spec: Name,
    pub target_sys_id: SysId,
    pub target_host: Host,
    /// The approval the request's frequency needs (One Time or Recurring).
    pub approval: ApprovalType,
}

/// Why a policy does not apply to an exchange request (None: it applies).
fn exchange_mismatch(p: &AccessPolicy, r: &ExchangeAccess) -> Option<String> {
    let PolicyType::ResourceExchange { target_sys_id, target_host, approval } = &p.kind else {
        return Some("applies to key operations, not exchange requests".into());
    };
    if !p.active {
        return Some("inactive".into());
    }
    if p.spec.as_ref().is_some_and(|s| s != &r.spec) {
        return Some(format!("for spec {}", p.spec.as_ref().map_or("?", |s| s.as_str())));
    }
    if target_sys_id != &r.target_sys_id {
        return Some(format!("for target {target_sys_id}"));
    }
    if target_host != &r.target_host {
        return Some(format!("for target host {target_host}, the request names {}", r.target_host));
    }
    if *approval != r.approval {
        let label = |a: ApprovalType| match a {
            ApprovalType::OneTime => "One Time",
            ApprovalType::Recurring => "Recurring",
        };
        return Some(format!("approves {} clones, the request is {}", label(*approval), label(r.approval)));
    }
    None
}

/// Evaluates the module's policies for an exchange request: only Resource
/// Exchange policies for that target, spec and approval type apply, with the
/// same rules as for key operations.
pub fn evaluate_exchange(policies: &[AccessPolicy], request: &ExchangeAccess) -> AccessDecision {
    let mut sorted: Vec<&AccessPolicy> = policies.iter().filter(|p| p.module == request.module).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let evaluated = sorted
        .iter()
        .map(|p| {
            let m = exchange_mismatch(p, request);
            Evaluated {
                policy: p.name.clone(),
                result: p.result,
                matched: m.is_none(),
                why: m.unwrap_or_else(|| "matches".into()),
            }
        })
        .collect();
    decide(evaluated, &request.module)
}

/// The decision alone, without building an explanation (the hot path).
pub fn allows(policies: &[AccessPolicy], request: &AccessRequest) -> bool {
    let mut tracked = false;
    for p in policies.iter().filter(|p| mismatch(p, request).is_none()) {
        match p.result {
            PolicyResult::StrictReject => return false,
            PolicyResult::Track => tracked = true,
            PolicyResult::Reject => {}
        }
    }
    tracked
}

/// Evaluates every policy of the module, in name order, and decides.
pub fn evaluate(policies: &[AccessPolicy], request: &AccessRequest) -> AccessDecision {
    let mut sorted: Vec<&AccessPolicy> = policies.iter().filter(|p| p.module == request.module).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let evaluated: Vec<Evaluated> = sorted
        .iter()
        .map(|p| {
            let m = mismatch(p, request);
            Evaluated { policy: p.name.clone(), result: p.result, matched: m.is_none(), why: explain(p, m) }
        })
        .collect();
    decide(evaluated, &request.module)
}

/// StrictReject denies; else a Track grants; else denied (by a Reject, or by no policy).
fn decide(evaluated: Vec<Evaluated>, module: &Name) -> AccessDecision {
    let hit = |r: PolicyResult| evaluated.iter().find(|e| e.matched && e.result == r);
    let (allowed, reason) = if let Some(e) = hit(PolicyResult::StrictReject) {
        (false, format!("denied by StrictReject policy {}", e.policy))
    } else if let Some(e) = hit(PolicyResult::Track) {
        (true, format!("granted by Track policy {}", e.policy))
    } else if let Some(e) = hit(PolicyResult::Reject) {
        (false, format!("denied by Reject policy {} (no Track policy grants)", e.policy))
    } else {
        (false, format!("no access policy of module {module} matches"))
    };
    AccessDecision { allowed, reason, evaluated }
}

#[cfg(test)]
mod tests {
    use super::PolicyResult::*;
    use super::*;

    fn n(s: &str) -> Name {
        Name::parse(s, "name").unwrap()
    }

    fn policy(name: &str, kind: PolicyType, result: PolicyResult, ops: &[Operation]) -> AccessPolicy {
        AccessPolicy {
            name: n(name),
            module: n("m"),
            kind,
            result,
            spec: None,
            operations: ops.to_vec(),
            active: true,
            created_at: UnixMillis(0),
        }
    }

    fn req(roles: &[Role], op: Operation) -> AccessRequest {
        AccessRequest {
            subject: Subject::Operator { name: "app".into(), roles: roles.to_vec() },
            module: n("m"),
            spec: n("s"),
            operation: op,
        }
    }

    /// The reference's acceptance scenario 7, plus the other policy types.
    #[test]
    fn evaluation_table() {
        use Operation::*;
        let op_role = Role::CryptographicOperator;
        let track = policy("a-track", PolicyType::Role(op_role), Track, &[]);
        let reject = policy("b-reject", PolicyType::Role(op_role), Reject, &[]);
        let strict = policy("c-strict", PolicyType::Role(op_role), StrictReject, &[]);
        let enc_only = policy("d-enc", PolicyType::Role(op_role), Track, &[Encrypt]);
        let script = policy("e-script", PolicyType::Script("app".into()), Track, &[]);
        let system = policy("f-system", PolicyType::System, Track, &[]);
        let cases: Vec<(&str, Vec<AccessPolicy>, AccessRequest, bool)> = vec![
            ("no policy", vec![], req(&[op_role], Encrypt), false),
            ("track", vec![track.clone()], req(&[op_role], Encrypt), true),
            ("track, other role", vec![track.clone()], req(&[Role::Admin], Encrypt), false),
            ("reject alone", vec![reject.clone()], req(&[op_role], Encrypt), false),
            ("reject + track", vec![reject.clone(), track.clone()], req(&[op_role], Encrypt), true),
            ("strict + track", vec![strict.clone(), track.clone()], req(&[op_role], Encrypt), false),
            ("encrypt-only, encrypt", vec![enc_only.clone()], req(&[op_role], Encrypt), true),
            ("encrypt-only, decrypt", vec![enc_only.clone()], req(&[op_role], Decrypt), false),
            ("script by name", vec![script.clone()], req(&[], Decrypt), true),
            ("system policy, operator", vec![system.clone()], req(&[op_role], Encrypt), false),
            (
                "system policy, system",
                vec![system],
                AccessRequest { subject: Subject::System, ..req(&[], Encrypt) },
                true,
            ),
            ("inactive track", vec![AccessPolicy { active: false, ..track.clone() }], req(&[op_role], Encrypt), false),
            (
                "other spec",
                vec![AccessPolicy { spec: Some(n("other")), ..track.clone() }],
                req(&[op_role], Encrypt),
                false,
            ),
            ("other module", vec![AccessPolicy { module: n("x"), ..track }], req(&[op_role], Encrypt), false),
        ];
        for (what, policies, request, allowed) in cases {
            let d = evaluate(&policies, &request);
            assert_eq!(d.allowed, allowed, "{what}: {}", d.reason);
            assert_eq!(allows(&policies, &request), allowed, "{what}: the fast path agrees");
        }
    }

    #[test]
    fn explanation_lists_every_policy_of_the_module_in_order() {
        let a = policy("b", PolicyType::Role(Role::Admin), Track, &[]);
        let b = policy("a", PolicyType::Script("other".into()), StrictReject, &[]);
        let d = evaluate(&[a, b], &req(&[Role::Admin], Operation::Mac));
        let names: Vec<&str> = d.evaluated.iter().map(|e| e.policy.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!((d.evaluated[0].matched, d.evaluated[1].matched), (false, true));
        assert!(d.allowed && d.reason.contains("Track policy b"), "{}", d.reason);
    }
}
