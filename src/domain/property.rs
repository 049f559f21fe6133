//! System properties: typed and validated. Two are known to the product;
//! any other property is a string.

use super::DomainError;
use super::ids::UnixMillis;

pub const AUTO_KEY_EXCHANGE: &str = "glide_encryption.auto_key_exchange.enabled";
pub const REKEYED: &str = "protected.script.values.kmf.rekeyed";

/// Longest property value.
pub const MAX_VALUE_LEN: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PropertyType {
    Bool,
    String,
}

impl PropertyType {
    pub fn as_str(self) -> &'static str {
        match self {
            PropertyType::Bool => "bool",
            PropertyType::String => "string",
        }
    }
}

/// The type and default of a property name (`None`: absent until written).
pub fn schema(name: &str) -> (PropertyType, Option<&'static str>) {
    match name {
        AUTO_KEY_EXCHANGE => (PropertyType::Bool, Some("true")),
        REKEYED => (PropertyType::Bool, None),
        _ => (PropertyType::String, None),
    }
}

/// Properties only the instance writes (an operator's set is refused).
pub fn is_system_only(name: &str) -> bool {
    name == REKEYED
}

/// Protected properties (`protected.*`): a clone neither copies nor erases them.
pub fn is_protected(name: &str) -> bool {
    name.starts_with("protected.")
}

/// A stored property.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Property {
    pub name: String,
    pub value: String,
    pub updated_at: UnixMillis,
    pub updated_by: String,
}

/// Validates a name: 1 to 128 of `a-z 0-9 _ . -`, starting with a letter.
pub fn validate_name(name: &str) -> Result<(), DomainError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid("name", "expected 1-128 of a-z 0-9 _ . -, starting with a letter"))
    }
}

/// Validates and normalises a value for `name` (booleans become "true"/"false").
pub fn validate_value(name: &str, value: &str) -> Result<String, DomainError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(DomainError::invalid("value", format!("longer than {MAX_VALUE_LEN} bytes")));
    }
    match schema(name).0 {
        PropertyType::Bool => match value.trim().to_ascii_lowercase().as_str() {
            "true" => Ok("true".into()),
            "false" => Ok("false".into()),
            _ => Err(DomainError::invalid("value", format!("{name} is a bool: true or false"))),
        },
        PropertyType::String => Ok(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_validation() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (AUTO_KEY_EXCHANGE, "TRUE", Some("true")),
            (AUTO_KEY_EXCHANGE, " false ", Some("false")),
            (AUTO_KEY_EXCHANGE, "yes", None),
            (REKEYED, "1", None),
            (REKEYED, "true", Some("true")),
            ("custom.thing", "anything at all", Some("anything at all")),
        ];
        for (name, value, want) in cases {
            assert_eq!(validate_value(name, value).ok().as_deref(), *want, "{name}={value}");
        }
        let too_long = DomainError::invalid("value", format!("longer than {MAX_VALUE_LEN} bytes"));
        assert_eq!(validate_value("x", &"v".repeat(MAX_VALUE_LEN + 1)), Err(too_long));
        assert_eq!(schema(AUTO_KEY_EXCHANGE), (PropertyType::Bool, Some("true")));
        assert_eq!(schema(REKEYED), (PropertyType::Bool, None));
        for bad in ["", "Upper", "1starts.with.digit", "has space", &"a".repeat(129)] {
            let refused = DomainError::invalid("name", "expected 1-128 of a-z 0-9 _ . -, starting with a letter");
            assert_eq!(validate_name(bad), Err(refused), "{bad}");
        }
        assert!(validate_name("glide.kmf.x-y_z").is_ok());
        assert!(is_protected(REKEYED) && !is_protected(AUTO_KEY_EXCHANGE) && !is_protected("protectedx"));
    }
}
