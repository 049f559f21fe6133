//! Key material per spec: random secrets, or RSA private keys held as
//! PKCS#8 DER. Either way the bytes only ever exist in a zeroizing
//! `DataKey` and are stored wrapped under the KEK.

use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use zeroize::Zeroizing;

use super::CryptoError;
use super::primitives::random_key;
use crate::domain::key::DataKey;
use crate::domain::spec::MaterialShape;

/// Makes new material of `shape`.
pub fn generate_material(shape: MaterialShape) -> Result<DataKey, CryptoError> {
    match shape {
        MaterialShape::Secret { len } => Ok(random_key(len)),
        MaterialShape::RsaPrivate { bits } => {
            let key = PKey::from_rsa(Rsa::generate(bits)?)?;
            Ok(DataKey::new(Zeroizing::new(key.private_key_to_pkcs8()?)))
        }
    }
}

/// Checks that `material` (e.g. a key arriving in an exchange bundle) fits
/// `shape`. The reason never includes the material.
pub fn check_material(shape: MaterialShape, material: &DataKey) -> Result<(), String> {
    match shape {
        MaterialShape::Secret { len } if material.expose().len() == len => Ok(()),
        MaterialShape::Secret { len } => {
            Err(format!("key is {} bits, spec wants {}", material.expose().len() * 8, len * 8))
        }
        MaterialShape::RsaPrivate { bits } => {
            let key = PKey::private_key_from_pkcs8(material.expose())
                .map_err(|_| "key is not a PKCS#8 private key, spec wants RSA".to_owned())?;
            let rsa = key.rsa().map_err(|_| "key is not RSA, spec wants RSA".to_owned())?;
            let got = rsa.size() * 8;
            // Material arrives signed and under an authenticated key wrap, so
            // a size check suffices (no costly primality re-check per key).
            if got != bits {
                return Err(format!("key is RSA-{got}, spec wants RSA-{bits}"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_material_fits_its_shape_and_no_other() {
        let secret = MaterialShape::Secret { len: 32 };
        let rsa = MaterialShape::RsaPrivate { bits: 2048 };
        let s = generate_material(secret).unwrap();
        let r = generate_material(rsa).unwrap();
        assert_eq!(check_material(secret, &s), Ok(()));
        assert_eq!(check_material(rsa, &r), Ok(()));
        assert_eq!(
            check_material(MaterialShape::Secret { len: 16 }, &s).unwrap_err(),
            "key is 256 bits, spec wants 128"
        );
        assert!(check_material(rsa, &s).unwrap_err().contains("PKCS#8"));
        let e = check_material(MaterialShape::RsaPrivate { bits: 3072 }, &r).unwrap_err();
        assert_eq!(e, "key is RSA-2048, spec wants RSA-3072");
        assert_ne!(generate_material(secret).unwrap().expose(), s.expose());
    }
}
