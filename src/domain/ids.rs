//! Identifiers as newtypes: sys_id, request id, module and spec names, host,
//! key id and timestamps. Each is validated once, where it is parsed.

use std::fmt;

use super::DomainError;

/// An instance's identity: 32 lowercase hex characters, generated once.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysId(String);

impl SysId {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        parse_hex32(text, "sys_id").map(SysId)
    }

    /// Builds a sys_id from 16 random bytes drawn by the caller.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        SysId(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 16 raw bytes (used in the ciphertext header).
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        // Valid by construction: 32 lowercase hex characters.
        if hex::decode_to_slice(&self.0, &mut out).is_err() {
            unreachable!("SysId holds 32 hex characters");
        }
        out
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SysId(hex::encode(bytes))
    }
}

impl fmt::Display for SysId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SysId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SysId({})", self.0)
    }
}

/// A clone's id (on the target that runs it).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct CloneId(String);

impl CloneId {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        parse_hex32(text, "clone_id").map(CloneId)
    }

    pub fn from_random(bytes: [u8; 16]) -> Self {
        CloneId(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CloneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An exchange request's id, shared by its source and target records.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(String);

impl RequestId {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        parse_hex32(text, "request_id").map(RequestId)
    }

    pub fn from_random(bytes: [u8; 16]) -> Self {
        RequestId(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Names a one-time BYOK import key (`KeyManagement.GetImportParameters`):
/// 32 hex digits from 16 random bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImportToken(String);

impl ImportToken {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        parse_hex32(text, "import_token").map(ImportToken)
    }

    pub fn from_random(bytes: [u8; 16]) -> Self {
        ImportToken(hex::encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImportToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ImportToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImportToken({})", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

fn parse_hex32(text: &str, field: &'static str) -> Result<String, DomainError> {
    let ok = text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok { Ok(text.to_owned()) } else { Err(DomainError::invalid(field, "expected 32 lowercase hex characters")) }
}

/// A name of a module or a spec: 1 to 64 of `A-Z a-z 0-9 _ . -`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Name(String);

impl Name {
    pub fn parse(text: &str, field: &'static str) -> Result<Self, DomainError> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(Name(text.to_owned()))
        } else {
            Err(DomainError::invalid(field, "expected 1 to 64 characters of A-Z a-z 0-9 _ . -"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a daemon is dialled: `name:port`, `ipv4:port` or `[ipv6]:port`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Host {
    name: String,
    port: u16,
}

impl Host {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let bad = |reason: &str| DomainError::invalid("host", format!("{reason} (expected name:port)"));
        let (name, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, port) = rest.split_once("]:").ok_or_else(|| bad("unclosed IPv6 bracket"))?;
            if inner.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address"));
            }
            (inner, port)
        } else {
            text.rsplit_once(':').ok_or_else(|| bad("no port"))?
        };
        let port: u16 = port.parse().map_err(|_| bad("port is not a number from 0 to 65535"))?;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        let name_ok =
            name.parse::<std::net::Ipv6Addr>().is_ok() || (name.len() <= 253 && name.split('.').all(label_ok));
        if !name_ok {
            return Err(bad("not a DNS name or IP address"));
        }
        Ok(Host { name: name.to_ascii_lowercase(), port })
    }

    /// A host some daemon will dial, from the request field `field`: as
    /// `parse`, and the port may not be 0 (0 only means "the port bound at
    /// start" for an instance's own host).
    pub fn parse_dialable(text: &str, field: &'static str) -> Result<Self, DomainError> {
        let host = Host::parse(text).map_err(|e| match e {
            DomainError::InvalidArgument { reason, .. } => DomainError::invalid(field, reason),
            other => other,
        })?;
        if host.port == 0 {
            return Err(DomainError::invalid(field, "port 0 cannot be dialled (expected name:port, port 1 to 65535)"));
        }
        Ok(host)
    }

    pub fn new_unchecked_port(&self, port: u16) -> Host {
        Host { name: self.name.clone(), port }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.contains(':') {
            write!(f, "[{}]:{}", self.name, self.port)
        } else {
            write!(f, "{}:{}", self.name, self.port)
        }
    }
}

/// A key's global identity: where it was generated, its spec and version.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct KeyId {
    pub origin: SysId,
    pub spec: Name,
    pub version: u32,
}

impl KeyId {
    /// Parses the text form `<origin sys_id>:<spec>:v<version>`.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let bad = || DomainError::invalid("key_id", "expected <sys_id>:<spec>:v<version>");
        let mut parts = text.splitn(3, ':');
        let origin = SysId::parse(parts.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let spec = Name::parse(parts.next().ok_or_else(bad)?, "spec").map_err(|_| bad())?;
        let version = parts.next().and_then(|v| v.strip_prefix('v')).ok_or_else(bad)?;
        let version = version.parse().map_err(|_| bad())?;
        Ok(KeyId { origin, spec, version })
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:v{}", self.origin, self.spec, self.version)
    }
}

/// Milliseconds since the Unix epoch. The domain never reads a clock.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    pub fn plus_millis(self, millis: i64) -> Self {
        UnixMillis(self.0.saturating_add(millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_id_accepts_only_32_lowercase_hex() {
        assert!(SysId::parse("0123456789abcdef0123456789abcdef").is_ok());
        for bad in ["", "0123456789ABCDEF0123456789ABCDEF", "0123", "g123456789abcdef0123456789abcdef"] {
            assert_eq!(
                SysId::parse(bad),
                Err(DomainError::invalid("sys_id", "expected 32 lowercase hex characters")),
                "{bad}"
            );
        }
        let id = SysId::from_random([7; 16]);
        assert_eq!(SysId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn host_parsing() {
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("localhost:8443", Some(("localhost", 8443))),
            ("127.0.0.1:0", Some(("127.0.0.1", 0))),
            ("[::1]:9000", Some(("::1", 9000))),
            ("Node-A.example.com:1", Some(("node-a.example.com", 1))),
            ("localhost", None),
            ("localhost:99999", None),
            ("bad host:80", None),
            (":80", None),
            ("-x:80", None),
            ("a_b:80", None),
            ("[zz]:80", None),
        ];
        for (text, want) in cases {
            let got = Host::parse(text).ok().map(|h| (h.name().to_owned(), h.port()));
            assert_eq!(got, want.map(|(n, p)| (n.to_owned(), p)), "{text}");
        }
        assert_eq!(Host::parse("[::1]:9000").map(|h| h.to_string()), Ok("[::1]:9000".into()));
    }

    #[test]
    fn key_id_text_round_trip() {
        let id = KeyId { origin: SysId::from_random([1; 16]), spec: Name::parse("pay", "spec").unwrap(), version: 3 };
        assert_eq!(KeyId::parse(&id.to_string()), Ok(id));
        let refused = Err(DomainError::invalid("key_id", "expected <sys_id>:<spec>:v<version>"));
        assert_eq!(KeyId::parse("nope"), refused);
        assert_eq!(KeyId::parse("01010101010101010101010101010101:pay:3"), refused);
    }

    #[test]
    fn names_are_restricted() {
        assert!(Name::parse("global.my_module-1", "module").is_ok());
        let refused = Err(DomainError::invalid("module", "expected 1 to 64 characters of A-Z a-z 0-9 _ . -"));
        assert_eq!(Name::parse("", "module"), refused);
        assert_eq!(Name::parse("a/b", "module"), refused);
        assert_eq!(Name::parse(&"x".repeat(65), "module"), refused);
    }
}
