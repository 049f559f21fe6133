//! Encrypted records: the instance's own data, addressed by (table, field,
//! record_id). The address, canonically encoded, is the associated data.

use super::DomainError;
use super::codec::Writer;
use super::ids::{KeyId, Name, UnixMillis};

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct RecordAddress {
    pub table: Name,
    pub field: Name,
    pub record_id: String,
}

impl RecordAddress {
    pub fn parse(table: &str, field: &str, record_id: &str) -> Result<Self, DomainError> {
        let ok = !record_id.is_empty() && record_id.len() <= 128 && record_id.chars().all(|c| !c.is_control());
        if !ok {
            return Err(DomainError::invalid("record_id", "1 to 128 characters, no control characters"));
        }
        Ok(RecordAddress {
            table: Name::parse(table, "table")?,
            field: Name::parse(field, "field")?,
            record_id: record_id.to_owned(),
        })
    }

    /// The associated data that binds a record's ciphertext to its address.
    pub fn associated_data(&self) -> Vec<u8> {
        let mut w = Writer::new(b"KMFD", 1);
        w.str(self.table.as_str()).str(self.field.as_str()).str(&self.record_id);
        w.finish()
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredRecord {
    pub address: RecordAddress,
    pub ciphertext: Vec<u8>,
    pub key_id: KeyId,
    pub updated_at: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_validated_and_bound_unambiguously() {
        let bad_id = DomainError::invalid("record_id", "1 to 128 characters, no control characters");
        assert_eq!(RecordAddress::parse("t", "f", ""), Err(bad_id.clone()));
        assert_eq!(RecordAddress::parse("t", "f", "a\nb"), Err(bad_id));
        let bad_table = DomainError::invalid("table", "expected 1 to 64 characters of A-Z a-z 0-9 _ . -");
        assert_eq!(RecordAddress::parse("bad table", "f", "1"), Err(bad_table));
        let a = RecordAddress::parse("t", "fx", "1").unwrap();
        let b = RecordAddress::parse("t", "f", "x1").unwrap();
        assert_ne!(a.associated_data(), b.associated_data(), "length prefixes keep fields apart");
    }
}
