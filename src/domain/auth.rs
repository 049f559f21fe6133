//! Who is calling and what they may do. The caller comes from the verified
//! certificate (see `tls::identity`); this module only decides.

use super::DomainError;
use super::ids::SysId;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Admin,
    CryptographicManager,
    CryptographicOperator,
    CryptographicAuditor,
}

impl Role {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        Ok(match text {
            "admin" => Role::Admin,
            "cryptographic_manager" => Role::CryptographicManager,
            "cryptographic_operator" => Role::CryptographicOperator,
            "cryptographic_auditor" => Role::CryptographicAuditor,
            _ => {
                return Err(DomainError::invalid(
                    "role",
                    "expected admin, cryptographic_manager, cryptographic_operator or cryptographic_auditor",
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::CryptographicManager => "cryptographic_manager",
            Role::CryptographicOperator => "cryptographic_operator",
            Role::CryptographicAuditor => "cryptographic_auditor",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Caller {
    /// A peer daemon.
    Instance(SysId),
    /// A person or tool with an operator certificate.
    Operator { name: String, roles: Vec<Role> },
}

impl Caller {
    /// A short name for history and logs.
    pub fn actor(&self) -> String {
        match self {
            Caller::Instance(id) => format!("instance:{id}"),
            Caller::Operator { name, .. } => format!("operator:{name}"),
        }
    }
}

/// What an RPC needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Permission {
    /// Read anything (info, lists, gets).
    Read,
    /// Create modules and specs, generate keys.
    ManageKeys,
    /// Rotate keys.
    RotateKeys,
    /// Encrypt and decrypt.
    UseKeys,
    /// Create, approve and reject exchange requests.
    ManageExchanges,
    /// The peer-to-peer KeyExchange service.
    PeerExchange,
    /// Export a key's material (BYOK export), besides the access policies.
    ExportKeys,
}

fn roles_for(permission: Permission) -> &'static [Role] {
    use Role::*;
    match permission {
        Permission::Read => &[Admin, CryptographicManager, CryptographicOperator, CryptographicAuditor],
        Permission::ManageKeys | Permission::ManageExchanges => &[Admin, CryptographicManager],
        Permission::RotateKeys | Permission::UseKeys => &[Admin, CryptographicManager, CryptographicOperator],
        Permission::PeerExchange => &[],
        Permission::ExportKeys => &[Admin],
    }
}

/// Allows or refuses `caller` for `permission`.
pub fn authorize(caller: &Caller, permission: Permission) -> Result<(), DomainError> {
    match (caller, permission) {
        (Caller::Instance(_), Permission::PeerExchange) => Ok(()),
        (Caller::Instance(_), _) => Err(DomainError::PermissionDenied(
            "instances may only call the peer services KeyExchange and CloneSource".into(),
        )),
        (Caller::Operator { .. }, Permission::PeerExchange) => Err(DomainError::PermissionDenied(
            "the peer services KeyExchange and CloneSource are for instance certificates only".into(),
        )),
        (Caller::Operator { name, roles }, p) => {
            let allowed = roles_for(p);
            if roles.iter().any(|r| allowed.contains(r)) {
                Ok(())
            } else {
                let need: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                Err(DomainError::PermissionDenied(format!(
                    "operator {name} needs one of the roles {}",
                    need.join(", ")
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Permission::*;
    use super::Role::*;
    use super::*;

    #[test]
    fn role_table() {
        let op = |r: Role| Caller::Operator { name: "x".into(), roles: vec![r] };
        let table = [
            (Admin, [true, true, true, true, true, false, true]),
            (CryptographicManager, [true, true, true, true, true, false, false]),
            (CryptographicOperator, [true, false, true, true, false, false, false]),
            (CryptographicAuditor, [true, false, false, false, false, false, false]),
        ];
        let perms = [Read, ManageKeys, RotateKeys, UseKeys, ManageExchanges, PeerExchange, ExportKeys];
        for (role, want) in table {
            for (p, w) in perms.iter().zip(want) {
                assert_eq!(authorize(&op(role), *p).is_ok(), w, "{role:?} {p:?}");
            }
        }
        let inst = Caller::Instance(SysId::from_random([1; 16]));
        for p in perms {
            assert_eq!(authorize(&inst, p).is_ok(), p == PeerExchange, "instance {p:?}");
        }
        let nobody = Caller::Operator { name: "n".into(), roles: vec![] };
        let refused = authorize(&nobody, Read);
        assert!(
            matches!(&refused, Err(DomainError::PermissionDenied(m)) if m.starts_with("operator n needs one of the roles")),
            "{refused:?}"
        );
        // An operator on a peer service is told which services those are
        // (CloneSource as well as KeyExchange), and an instance on an operator one.
        let peer = authorize(&op(Admin), PeerExchange).unwrap_err().to_string();
        assert!(peer.contains("KeyExchange and CloneSource are for instance certificates only"), "{peer}");
        let operator = authorize(&inst, Read).unwrap_err().to_string();
        assert!(operator.contains("only call the peer services KeyExchange and CloneSource"), "{operator}");
    }

    #[test]
    fn roles_parse() {
        for r in [Admin, CryptographicManager, CryptographicOperator, CryptographicAuditor] {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        let expected = "expected admin, cryptographic_manager, cryptographic_operator or cryptographic_auditor";
        assert_eq!(Role::parse("root"), Err(DomainError::invalid("role", expected)));
    }
}
