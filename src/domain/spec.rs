//! Crypto specifications: purpose × algorithm × size. The slice supports
//! AES-GCM data encryption; issue 3 widens the table.

use super::DomainError;
use super::ids::{Name, UnixMillis};
use super::key::LifecycleDefinition;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Purpose {
    SymmetricDataEncryption,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Algorithm {
    AesGcm,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Module {
    pub name: Name,
    pub created_at: UnixMillis,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Spec {
    pub name: Name,
    pub module: Name,
    pub purpose: Purpose,
    pub algorithm: Algorithm,
    pub key_size_bits: u32,
    pub created_at: UnixMillis,
    /// How this spec's keys age (expiration, destruction after idling).
    pub lifecycle: LifecycleDefinition,
}

impl Spec {
    /// Validates the combination against the reference's table.
    pub fn try_new(
        name: Name,
        module: Name,
        purpose: Purpose,
        algorithm: Algorithm,
        key_size_bits: u32,
        created_at: UnixMillis,
    ) -> Result<Self, DomainError> {
        match (purpose, algorithm, key_size_bits) {
            (Purpose::SymmetricDataEncryption, Algorithm::AesGcm, 128 | 192 | 256) => {}
            (Purpose::SymmetricDataEncryption, Algorithm::AesGcm, other) => {
                return Err(DomainError::invalid(
                    "key_size_bits",
                    format!("AES-GCM keys are 128, 192 or 256 bits, not {other}"),
                ));
            }
        }
        Ok(Spec {
            name,
            module,
            purpose,
            algorithm,
            key_size_bits,
            created_at,
            lifecycle: LifecycleDefinition::default(),
        })
    }

    pub fn key_len_bytes(&self) -> usize {
        (self.key_size_bits / 8) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_sizes() {
        let n = |s: &str| Name::parse(s, "x").unwrap();
        for (bits, ok) in [(128, true), (192, true), (256, true), (512, false), (0, false)] {
            let got =
                Spec::try_new(n("s"), n("m"), Purpose::SymmetricDataEncryption, Algorithm::AesGcm, bits, UnixMillis(0));
            assert_eq!(got.is_ok(), ok, "{bits}");
        }
    }
}
