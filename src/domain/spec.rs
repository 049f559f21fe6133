//! Crypto specifications: purpose × algorithm × size, validated against the
//! reference's table (kmf-domain.md §1.2), and what follows from a spec: the
//! operations its keys serve, the shape of its key material and the scheme
//! that turns a key into ciphertexts, signatures or MACs.
//!
//! The reference names each asymmetric direction as its own purpose
//! (Asymmetric Data Encryption / Decryption, Signature Generation /
//! Verification, ...). kmf generates and keeps both halves of every RSA key,
//! so one purpose covers both directions; a module access policy's operation
//! filter restricts a caller to one direction.

use super::DomainError;
use super::ids::{Name, UnixMillis};
use super::lifecycle::LifecycleDefinition;
use super::policy::Operation;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Purpose {
    SymmetricDataEncryption,
    SymmetricKeyWrapping,
    SymmetricAuthenticity,
    AsymmetricDataEncryption,
    AsymmetricKeyWrapping,
    /// Signature generation and verification.
    Signature,
}

pub const ALL_PURPOSES: [Purpose; 6] = [
    Purpose::SymmetricDataEncryption,
    Purpose::SymmetricKeyWrapping,
    Purpose::SymmetricAuthenticity,
    Purpose::AsymmetricDataEncryption,
    Purpose::AsymmetricKeyWrapping,
    Purpose::Signature,
];

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::SymmetricDataEncryption => "symmetric_data_encryption",
            Purpose::SymmetricKeyWrapping => "symmetric_key_wrapping",
            Purpose::SymmetricAuthenticity => "symmetric_authenticity",
            Purpose::AsymmetricDataEncryption => "asymmetric_data_encryption",
            Purpose::AsymmetricKeyWrapping => "asymmetric_key_wrapping",
            Purpose::Signature => "signature",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_PURPOSES.into_iter().find(|p| p.as_str() == s)
    }

    /// The algorithms the reference offers for this purpose.
    pub fn algorithms(self) -> &'static [Algorithm] {
        match self {
            Purpose::SymmetricDataEncryption | Purpose::SymmetricKeyWrapping => {
                &[Algorithm::AesGcm, Algorithm::AesCbc, Algorithm::AesCtr]
            }
            Purpose::SymmetricAuthenticity => &[Algorithm::Hmac],
            Purpose::AsymmetricDataEncryption | Purpose::AsymmetricKeyWrapping | Purpose::Signature => {
                &[Algorithm::Rsa]
            }
        }
    }

    /// The operations keys of this purpose serve: one that makes content
    /// (needs the current key) and one that reads it (any key that may).
    pub fn operations(self) -> [Operation; 2] {
        match self {
            Purpose::SymmetricDataEncryption | Purpose::AsymmetricDataEncryption => {
                [Operation::Encrypt, Operation::Decrypt]
            }
            Purpose::SymmetricKeyWrapping | Purpose::AsymmetricKeyWrapping => [Operation::Wrap, Operation::Unwrap],
            Purpose::SymmetricAuthenticity => [Operation::Mac, Operation::VerifyMac],
            Purpose::Signature => [Operation::Sign, Operation::Verify],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Algorithm {
    AesGcm,
    AesCbc,
    AesCtr,
    Hmac,
    Rsa,
}

pub const ALL_ALGORITHMS: [Algorithm; 5] =
    [Algorithm::AesGcm, Algorithm::AesCbc, Algorithm::AesCtr, Algorithm::Hmac, Algorithm::Rsa];

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::AesGcm => "aes_gcm",
            Algorithm::AesCbc => "aes_cbc",
            Algorithm::AesCtr => "aes_ctr",
            Algorithm::Hmac => "hmac",
            Algorithm::Rsa => "rsa",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_ALGORITHMS.into_iter().find(|a| a.as_str() == s)
    }

    /// The size a spec gets when none is given.
    pub fn default_size(self) -> u32 {
        match self {
            Algorithm::Rsa => 3072,
            _ => 256,
        }
    }

    /// Key sizes in bits the reference offers.
    pub fn sizes(self) -> &'static [u32] {
        match self {
            Algorithm::AesGcm | Algorithm::AesCbc | Algorithm::AesCtr => &[128, 192, 256],
            Algorithm::Hmac => &[256, 384, 512],
            Algorithm::Rsa => &[2048, 3072, 4096],
        }
    }
}

/// How a spec's keys turn into protected content (docs/wire-formats.md,
/// "Crypto schemes").
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Scheme {
    /// AES-GCM, 96-bit random nonce, 128-bit tag.
    AesGcm { key_bytes: usize },
    /// AES-CBC + HMAC-SHA-2, encrypt-then-MAC as RFC 7518 §5.2
    /// (A128CBC-HS256 / A192CBC-HS384 / A256CBC-HS512).
    AesCbcHmac { key_bytes: usize },
    /// The same composition with AES-CTR (no padding) in place of CBC.
    AesCtrHmac { key_bytes: usize },
    /// Deterministic AES-SIV (RFC 5297): equality preserving.
    AesSiv { key_bytes: usize },
    /// HMAC-SHA-256/384/512 with a key of the digest's size.
    Hmac { key_bytes: usize },
    /// RSA-OAEP with SHA-256 and MGF1-SHA-256 (asymmetric data encryption).
    RsaOaep { bits: u32 },
    /// RSA-OAEP-SHA-256 of a one-time AES-256 key, then AES key wrap with
    /// padding (RFC 5649) of the payload: PKCS#11's CKM_RSA_AES_KEY_WRAP.
    RsaAesKeyWrap { bits: u32 },
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt.
    RsaPss { bits: u32 },
}

/// Largest plaintext (or payload to wrap) one item accepts.
pub const MAX_PLAINTEXT: usize = 4 * 1024 * 1024;
/// Largest key material `Wrap` accepts.
pub const MAX_WRAP_PAYLOAD: usize = 8 * 1024;

impl Scheme {
    /// Largest input `Encrypt` or `Wrap` accepts under this scheme.
    pub fn max_input(self) -> usize {
        match self {
            // k - 2 hLen - 2 (RFC 8017 §7.1.1).
            Scheme::RsaOaep { bits } => bits as usize / 8 - 2 * 32 - 2,
            Scheme::RsaAesKeyWrap { .. } => MAX_WRAP_PAYLOAD,
            Scheme::AesGcm { .. }
            | Scheme::AesCbcHmac { .. }
            | Scheme::AesCtrHmac { .. }
            | Scheme::AesSiv { .. }
            | Scheme::Hmac { .. }
            | Scheme::RsaPss { .. } => MAX_PLAINTEXT,
        }
    }

    pub fn label(self) -> String {
        match self {
            Scheme::AesGcm { key_bytes } => format!("AES-{}-GCM", key_bytes * 8),
            Scheme::AesCbcHmac { key_bytes } => format!("AES-{}-CBC-HMAC-SHA-{}", key_bytes * 8, key_bytes * 16),
            Scheme::AesCtrHmac { key_bytes } => format!("AES-{}-CTR-HMAC-SHA-{}", key_bytes * 8, key_bytes * 16),
            Scheme::AesSiv { key_bytes } => format!("AES-{}-SIV", key_bytes * 8),
            Scheme::Hmac { key_bytes } => format!("HMAC-SHA-{}", key_bytes * 8),
            Scheme::RsaOaep { bits } => format!("RSA-{bits} OAEP-SHA-256"),
            Scheme::RsaAesKeyWrap { bits } => format!("RSA-{bits} AES key wrap (OAEP-SHA-256)"),
            Scheme::RsaPss { bits } => format!("RSA-{bits} PSS-SHA-256"),
        }
    }
}

/// What a key's material must be.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MaterialShape {
    /// Random bytes of this length.
    Secret { len: usize },
    /// An RSA private key (PKCS#8 DER) with a modulus of this many bits.
    RsaPrivate { bits: u32 },
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
    /// Deterministic encryption (AES-SIV); only symmetric data encryption
    /// with AES-CBC offers it.
    pub equality_preserving: bool,
    /// Its keys may be exported (BYOK export); set at creation, false by default.
    pub exportable: bool,
    pub created_at: UnixMillis,
    /// How this spec's keys age (expiration, destruction after idling).
    pub lifecycle: LifecycleDefinition,
}

/// The choices a new spec is made of.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SpecChoice {
    pub purpose: Purpose,
    pub algorithm: Algorithm,
    pub key_size_bits: u32,
    pub equality_preserving: bool,
}

impl SpecChoice {
    /// Fills what a request left unset: no purpose and no algorithm is
    /// AES-256-GCM symmetric data encryption (the default spec); a purpose
    /// alone takes its first algorithm; an algorithm alone takes the one
    /// purpose it serves (AES: data encryption; HMAC: authenticity; RSA
    /// serves three, so the purpose must be set); no size is the algorithm's
    /// default.
    pub fn with_defaults(
        purpose: Option<Purpose>,
        algorithm: Option<Algorithm>,
        key_size_bits: Option<u32>,
        equality_preserving: bool,
    ) -> Result<Self, DomainError> {
        let (purpose, algorithm) = match (purpose, algorithm) {
            (Some(p), Some(a)) => (p, a),
            (Some(p), None) => (p, p.algorithms()[0]),
            (None, None) => (Purpose::SymmetricDataEncryption, Algorithm::AesGcm),
            (None, Some(a @ (Algorithm::AesGcm | Algorithm::AesCbc | Algorithm::AesCtr))) => {
                (Purpose::SymmetricDataEncryption, a)
            }
            (None, Some(Algorithm::Hmac)) => (Purpose::SymmetricAuthenticity, Algorithm::Hmac),
            (None, Some(Algorithm::Rsa)) => {
                return Err(DomainError::invalid(
                    "purpose",
                    "set a purpose: rsa serves asymmetric_data_encryption, asymmetric_key_wrapping or signature",
                ));
            }
        };
        let key_size_bits = key_size_bits.unwrap_or_else(|| algorithm.default_size());
        Ok(SpecChoice { purpose, algorithm, key_size_bits, equality_preserving })
    }

    /// e.g. "symmetric_data_encryption aes_cbc 256 equality preserving".
    pub fn describe(&self) -> String {
        let ep = if self.equality_preserving { " equality preserving" } else { "" };
        format!("{} {} {}{ep}", self.purpose.as_str(), self.algorithm.as_str(), self.key_size_bits)
    }

    /// Checks the combination against the reference's table; the error names
    /// the field and the rule.
    pub fn validate(&self) -> Result<(), DomainError> {
        let (purpose, algorithm) = (self.purpose, self.algorithm);
        if !purpose.algorithms().contains(&algorithm) {
            let offered: Vec<&str> = purpose.algorithms().iter().map(|a| a.as_str()).collect();
            return Err(DomainError::invalid(
                "algorithm",
                format!("purpose {} takes {}, not {}", purpose.as_str(), offered.join(" or "), algorithm.as_str()),
            ));
        }
        if !algorithm.sizes().contains(&self.key_size_bits) {
            let sizes: Vec<String> = algorithm.sizes().iter().map(u32::to_string).collect();
            return Err(DomainError::invalid(
                "key_size_bits",
                format!("{} keys are {} bits, not {}", algorithm.as_str(), sizes.join(", "), self.key_size_bits),
            ));
        }
        if self.equality_preserving && (purpose, algorithm) != (Purpose::SymmetricDataEncryption, Algorithm::AesCbc) {
            return Err(DomainError::invalid(
                "equality_preserving",
                format!(
                    "only symmetric_data_encryption with aes_cbc offers equality preserving, not {} with {}",
                    purpose.as_str(),
                    algorithm.as_str()
                ),
            ));
        }
        Ok(())
    }
}

impl Spec {
    /// Validates the combination against the reference's table.
    pub fn try_new(name: Name, module: Name, choice: SpecChoice, created_at: UnixMillis) -> Result<Self, DomainError> {
        choice.validate()?;
        Ok(Spec {
            name,
            module,
            purpose: choice.purpose,
            algorithm: choice.algorithm,
            key_size_bits: choice.key_size_bits,
            equality_preserving: choice.equality_preserving,
            exportable: false,
            created_at,
            lifecycle: LifecycleDefinition::default(),
        })
    }

    pub fn choice(&self) -> SpecChoice {
        SpecChoice {
            purpose: self.purpose,
            algorithm: self.algorithm,
            key_size_bits: self.key_size_bits,
            equality_preserving: self.equality_preserving,
        }
    }

    pub fn scheme(&self) -> Scheme {
        let key_bytes = (self.key_size_bits / 8) as usize;
        match self.algorithm {
            Algorithm::AesCbc if self.equality_preserving => Scheme::AesSiv { key_bytes },
            Algorithm::AesGcm => Scheme::AesGcm { key_bytes },
            Algorithm::AesCbc => Scheme::AesCbcHmac { key_bytes },
            Algorithm::AesCtr => Scheme::AesCtrHmac { key_bytes },
            Algorithm::Hmac => Scheme::Hmac { key_bytes },
            Algorithm::Rsa => {
                let bits = self.key_size_bits;
                match self.purpose {
                    Purpose::AsymmetricKeyWrapping => Scheme::RsaAesKeyWrap { bits },
                    Purpose::Signature => Scheme::RsaPss { bits },
                    _ => Scheme::RsaOaep { bits },
                }
            }
        }
    }

    /// The material a key of this spec holds.
    pub fn material(&self) -> MaterialShape {
        match self.scheme() {
            Scheme::AesGcm { key_bytes } | Scheme::Hmac { key_bytes } => MaterialShape::Secret { len: key_bytes },
            // An encryption key and a MAC key (CBC/CTR), or SIV's two halves.
            Scheme::AesCbcHmac { key_bytes } | Scheme::AesCtrHmac { key_bytes } | Scheme::AesSiv { key_bytes } => {
                MaterialShape::Secret { len: 2 * key_bytes }
            }
            Scheme::RsaOaep { bits } | Scheme::RsaAesKeyWrap { bits } | Scheme::RsaPss { bits } => {
                MaterialShape::RsaPrivate { bits }
            }
        }
    }

    /// Refuses an operation this spec's purpose does not serve.
    pub fn check_operation(&self, op: Operation) -> Result<(), DomainError> {
        let ops = self.purpose.operations();
        if ops.contains(&op) {
            return Ok(());
        }
        Err(DomainError::invalid(
            "spec",
            format!(
                "spec {} has purpose {}, which serves {} and {}, not {}",
                self.name,
                self.purpose.as_str(),
                ops[0].as_str(),
                ops[1].as_str(),
                op.as_str()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(purpose: Purpose, algorithm: Algorithm, key_size_bits: u32, ep: bool) -> SpecChoice {
        SpecChoice { purpose, algorithm, key_size_bits, equality_preserving: ep }
    }

    /// The reference's table (kmf-domain.md §1.2), row by row.
    const TABLE: [(Purpose, &[Algorithm], &[u32]); 6] = [
        (
            Purpose::SymmetricDataEncryption,
            &[Algorithm::AesGcm, Algorithm::AesCbc, Algorithm::AesCtr],
            &[128, 192, 256],
        ),
        (Purpose::SymmetricKeyWrapping, &[Algorithm::AesGcm, Algorithm::AesCbc, Algorithm::AesCtr], &[128, 192, 256]),
        (Purpose::SymmetricAuthenticity, &[Algorithm::Hmac], &[256, 384, 512]),
        (Purpose::AsymmetricDataEncryption, &[Algorithm::Rsa], &[2048, 3072, 4096]),
        (Purpose::AsymmetricKeyWrapping, &[Algorithm::Rsa], &[2048, 3072, 4096]),
        (Purpose::Signature, &[Algorithm::Rsa], &[2048, 3072, 4096]),
    ];

    #[test]
    fn every_combination_against_the_reference_table() {
        let sizes = [0, 1, 64, 128, 192, 256, 384, 512, 1024, 2048, 3072, 4096, 8192];
        let mut accepted = 0;
        for (purpose, algorithms, allowed_sizes) in TABLE {
            for algorithm in ALL_ALGORITHMS {
                for bits in sizes {
                    for ep in [false, true] {
                        let want_ok = algorithms.contains(&algorithm)
                            && allowed_sizes.contains(&bits)
                            && (!ep || (purpose, algorithm) == (Purpose::SymmetricDataEncryption, Algorithm::AesCbc));
                        let got = choice(purpose, algorithm, bits, ep).validate();
                        assert_eq!(got.is_ok(), want_ok, "{purpose:?} {algorithm:?} {bits} ep={ep}: {got:?}");
                        accepted += usize::from(want_ok);
                    }
                }
            }
        }
        // 2 purposes x 3 AES modes x 3 sizes, + 3 HMAC, + 3 RSA purposes x 3, + 3 equality-preserving CBC.
        assert_eq!(accepted, 18 + 3 + 9 + 3);
    }

    #[test]
    fn refusals_name_the_field_and_the_rule() {
        let msg = |c: SpecChoice| c.validate().unwrap_err().to_string();
        let m = msg(choice(Purpose::SymmetricAuthenticity, Algorithm::AesGcm, 256, false));
        assert!(m.contains("algorithm") && m.contains("symmetric_authenticity takes hmac, not aes_gcm"), "{m}");
        let m = msg(choice(Purpose::Signature, Algorithm::Rsa, 1024, false));
        assert!(m.contains("key_size_bits") && m.contains("rsa keys are 2048, 3072, 4096 bits, not 1024"), "{m}");
        let m = msg(choice(Purpose::SymmetricDataEncryption, Algorithm::AesGcm, 256, true));
        assert!(m.contains("equality_preserving") && m.contains("only symmetric_data_encryption with aes_cbc"), "{m}");
    }

    #[test]
    fn defaults_fill_what_is_unset() {
        use Algorithm as A;
        use Purpose as P;
        let d = |p, a, b| SpecChoice::with_defaults(p, a, b, false).map(|c| (c.purpose, c.algorithm, c.key_size_bits));
        assert_eq!(d(None, None, None), Ok((P::SymmetricDataEncryption, A::AesGcm, 256)));
        assert_eq!(d(Some(P::Signature), None, None), Ok((P::Signature, A::Rsa, 3072)));
        assert_eq!(d(Some(P::SymmetricAuthenticity), None, Some(512)), Ok((P::SymmetricAuthenticity, A::Hmac, 512)));
        assert_eq!(d(None, Some(A::AesCtr), Some(128)), Ok((P::SymmetricDataEncryption, A::AesCtr, 128)));
        assert_eq!(d(None, Some(A::Hmac), None), Ok((P::SymmetricAuthenticity, A::Hmac, 256)));
        let err = d(None, Some(A::Rsa), None).unwrap_err().to_string();
        assert!(err.contains("purpose") && err.contains("rsa serves"), "{err}");
        // Defaults are then validated like any choice.
        let c = SpecChoice::with_defaults(Some(P::SymmetricKeyWrapping), None, None, true).unwrap();
        let refused = c.validate();
        assert!(
            matches!(refused, Err(DomainError::InvalidArgument { field: "equality_preserving", .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn schemes_and_material() {
        let n = |s: &str| Name::parse(s, "x").unwrap();
        let spec = |c| Spec::try_new(n("s"), n("m"), c, UnixMillis(0)).unwrap();
        let cases = [
            (
                choice(Purpose::SymmetricDataEncryption, Algorithm::AesGcm, 256, false),
                MaterialShape::Secret { len: 32 },
            ),
            (
                choice(Purpose::SymmetricDataEncryption, Algorithm::AesCbc, 128, false),
                MaterialShape::Secret { len: 32 },
            ),
            (choice(Purpose::SymmetricDataEncryption, Algorithm::AesCbc, 256, true), MaterialShape::Secret { len: 64 }),
            (choice(Purpose::SymmetricKeyWrapping, Algorithm::AesCtr, 192, false), MaterialShape::Secret { len: 48 }),
            (choice(Purpose::SymmetricAuthenticity, Algorithm::Hmac, 384, false), MaterialShape::Secret { len: 48 }),
            (choice(Purpose::Signature, Algorithm::Rsa, 3072, false), MaterialShape::RsaPrivate { bits: 3072 }),
        ];
        for (c, shape) in cases {
            assert_eq!(spec(c).material(), shape, "{c:?}");
        }
        assert_eq!(
            spec(choice(Purpose::SymmetricDataEncryption, Algorithm::AesCbc, 192, true)).scheme(),
            Scheme::AesSiv { key_bytes: 24 }
        );
    }

    #[test]
    fn operations_follow_the_purpose() {
        let n = |s: &str| Name::parse(s, "x").unwrap();
        for (purpose, algorithms, sizes) in TABLE {
            let s =
                Spec::try_new(n("s"), n("m"), choice(purpose, algorithms[0], sizes[0], false), UnixMillis(0)).unwrap();
            for op in super::super::policy::ALL_OPERATIONS {
                assert_eq!(s.check_operation(op).is_ok(), purpose.operations().contains(&op), "{purpose:?} {op:?}");
            }
        }
        for p in ALL_PURPOSES {
            assert_eq!(Purpose::parse(p.as_str()), Some(p));
        }
        for a in ALL_ALGORITHMS {
            assert_eq!(Algorithm::parse(a.as_str()), Some(a));
        }
    }
}
