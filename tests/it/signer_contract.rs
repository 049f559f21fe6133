//! One contract for the `Signer` trait, run against both backends: the
//! software signer always, the pkcs11 signer on SoftHSM2 (in a child process
//! with its own token directory, see `softhsm.rs`). Also: the KEK cannot be
//! read from the token, and what a wrong PIN or a missing token look like.

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use kmf::domain::bundle::WrappingAlgorithm;
use kmf::domain::key::{DataKey, WrappedKey};
use kmf::signer::pkcs11::{PinSource, Pkcs11Signer};
use kmf::signer::primitives::{random_key, rsa_oaep_encrypt};
use kmf::signer::software::SoftwareSigner;
use kmf::signer::{CryptoError, Signer};

use crate::softhsm::{MODULE, Token, softhsm_child};

/// What a wrapped key that fails the signer's own integrity check gives.
const INTEGRITY: &str = "cryptographic operation failed: key unwrap: integrity check failed";
/// What a transport key that does not open gives, on either signer.
const TRANSPORT_REFUSED: &str = "transport key unwrap failed";

/// RFC 5649: the key padded to a multiple of 8 bytes, plus the 8-byte integrity block.
fn kwp_len(n: usize) -> usize {
    n.div_ceil(8) * 8 + 8
}

fn wrap_round_trips_at_every_length(signer: &dyn Signer) {
    for len in [16, 24, 32, 64, 2400] {
        let key = random_key(len);
        let wrapped = signer.wrap(&key).expect("wrap");
        assert_eq!(wrapped.0.len(), kwp_len(len), "{}: RFC 5649 length for {len} bytes", signer.kind());
        assert_ne!(&wrapped.0[8..8 + len.min(16)], &key.expose()[..len.min(16)], "wrapped is not plain");
        assert_eq!(signer.unwrap(&wrapped).expect("unwrap").expose(), key.expose(), "{}: {len} bytes", signer.kind());
        assert_eq!(signer.wrap(&key).expect("wrap again").0, wrapped.0, "RFC 5649 is deterministic");
    }
    let (a, b) = (random_key(32), random_key(32));
    assert_ne!(signer.wrap(&a).expect("a").0, signer.wrap(&b).expect("b").0);
}

fn tampered_wrapped_keys_do_not_unwrap(signer: &dyn Signer) {
    // A key failing the RFC 5649 integrity check: the software signer says so; SoftHSM answers
    // C_UnwrapKey with CKR_GENERAL_ERROR, which the pkcs11 signer reports as the token's error.
    // Too short for RFC 5649: refused before the KEK is used (pkcs11: the token's length check).
    let software = signer.kind() == "software";
    let failed_check = if software {
        INTEGRITY
    } else {
        "PKCS#11 signer: unwrapping a key under the KEK: C_UnwrapKey returned GeneralError"
    };
    let too_short =
        if software { "cryptographic operation failed: key unwrap: not an RFC 5649 wrapped key" } else { INTEGRITY };
    let wrapped = signer.wrap(&random_key(32)).expect("wrap");
    for i in [0, 7, 8, 20, wrapped.0.len() - 1] {
        let mut bad = wrapped.0.clone();
        bad[i] ^= 0x01;
        let err = signer.unwrap(&WrappedKey(bad)).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(failed_check), "{}: flipped byte {i}", signer.kind());
    }
    for (bad, want) in
        [(&wrapped.0[..wrapped.0.len() - 8], failed_check), (&wrapped.0[..7], too_short), (&[][..], too_short)]
    {
        let err = signer.unwrap(&WrappedKey(bad.to_vec())).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some(want), "{}: {} bytes", signer.kind(), bad.len());
    }
}

/// The source's side is openssl (`rsa_oaep_encrypt` with the announced hash);
/// the signer opens it with the handle.
fn transport_keys_round_trip(signer: &dyn Signer, announced: WrappingAlgorithm) {
    let tk = signer.create_transport_key().expect("transport key");
    assert_eq!(tk.wrapping, announced, "{}", signer.kind());
    let aes = random_key(32);
    let sealed = rsa_oaep_encrypt(&tk.public_der, tk.wrapping, aes.expose()).expect("RSA-3072 SPKI public key");
    let opened = signer.open_transport_key(&tk.handle, tk.wrapping, &sealed).expect("open");
    assert_eq!(opened.expose(), aes.expose());
    let mut bad = sealed.clone();
    bad[10] ^= 1;
    let err = signer.open_transport_key(&tk.handle, tk.wrapping, &bad).err();
    assert!(matches!(err, Some(CryptoError::Failed(TRANSPORT_REFUSED))), "{}: tampered: {err:?}", signer.kind());
    let other = signer.create_transport_key().expect("second transport key");
    assert_ne!(other.handle, tk.handle);
    let err = signer.open_transport_key(&other.handle, tk.wrapping, &sealed).err();
    assert!(matches!(err, Some(CryptoError::Failed(TRANSPORT_REFUSED))), "{}: another key: {err:?}", signer.kind());
    assert!(!contains(&tk.handle, aes.expose()));
    signer.destroy_transport_key(&tk.handle).expect("destroy");
    signer.destroy_transport_key(&other.handle).expect("destroy the second");
}

fn debug_shows_no_secret(signer: &dyn Signer, debug: String, secrets: &[&str]) {
    for secret in secrets {
        assert!(!debug.contains(secret), "{}: Debug shows a secret: {debug}", signer.kind());
    }
    assert!(debug.contains("redacted"), "{debug}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn software_signer_meets_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kek.key");
    SoftwareSigner::create_key_file(&path).expect("kek file");
    let kek_hex = hex::encode(std::fs::read(&path).expect("kek"));
    let signer = SoftwareSigner::load(&path).expect("load");
    wrap_round_trips_at_every_length(&signer);
    tampered_wrapped_keys_do_not_unwrap(&signer);
    transport_keys_round_trip(&signer, WrappingAlgorithm::RsaAesKeyWrapSha256);
    debug_shows_no_secret(&signer, format!("{signer:?}"), &[&kek_hex]);
}

#[test]
fn pkcs11_signer_meets_the_contract() {
    let hsm = softhsm_child!("pkcs11_signer_meets_the_contract");
    let token = hsm.token();
    let cfg = hsm.config(&token);
    Pkcs11Signer::create_kek(&cfg).expect("create KEK");
    let signer = Pkcs11Signer::open(&cfg).expect("open");
    assert_eq!(signer.kind(), "pkcs11");
    wrap_round_trips_at_every_length(&signer);
    tampered_wrapped_keys_do_not_unwrap(&signer);
    // SoftHSM2 2.6 does RSA-OAEP with SHA-1 only: the probe must notice.
    transport_keys_round_trip(&signer, WrappingAlgorithm::RsaAesKeyWrapSha1);
    debug_shows_no_secret(&signer, format!("{signer:?}"), &[&token.pin]);

    // pkcs11 only: the transport private key is a token object, gone once destroyed.
    let tk = signer.create_transport_key().expect("transport key");
    let sealed = rsa_oaep_encrypt(&tk.public_der, tk.wrapping, &[7u8; 32]).expect("seal");
    assert_eq!(transport_objects(&token), 1);
    signer.destroy_transport_key(&tk.handle).expect("destroy");
    assert_eq!(transport_objects(&token), 0, "the private key is destroyed on the token");
    let err = signer.open_transport_key(&tk.handle, tk.wrapping, &sealed).expect_err("opened after destroy");
    assert!(err.to_string().contains("not found"), "{err}");
    let err = signer.open_transport_key(b"not-a-label", tk.wrapping, &sealed).err();
    assert!(matches!(err, Some(CryptoError::Failed("not a pkcs11 transport key handle"))), "{err:?}");

    // Several threads share the pool (more than its sessions).
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| {
                for len in [16, 32, 48] {
                    let key = random_key(len);
                    let back = signer.unwrap(&signer.wrap(&key).expect("wrap")).expect("unwrap");
                    assert_eq!(back.expose(), key.expose());
                }
            });
        }
    });

    // Another signer on the same token and KEK reads what the first wrote
    // (the KEK is a persistent token object).
    let wrapped = signer.wrap(&DataKey::new(zeroize::Zeroizing::new(vec![5u8; 32]))).expect("wrap");
    drop(signer);
    let again = Pkcs11Signer::open(&cfg).expect("reopen");
    assert_eq!(again.unwrap(&wrapped).expect("unwrap").expose(), &[5u8; 32][..]);
}

/// A logged-in session on `token` through the process-wide context.
pub fn session(token: &Token) -> cryptoki::session::Session {
    let ctx = kmf::signer::pkcs11::shared_context(MODULE.as_ref()).expect("module");
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|t| t.label() == token.label))
        .expect("token slot");
    let s = ctx.open_rw_session(slot).expect("session");
    match s.login(UserType::User, Some(&AuthPin::from(token.pin.clone()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => s,
        Err(e) => panic!("login: {e}"),
    }
}

pub fn transport_objects(token: &Token) -> usize {
    let s = session(token);
    let keys = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]).expect("find");
    keys.iter()
        .filter(|k| {
            s.get_attributes(**k, &[AttributeType::Label])
                .expect("label")
                .iter()
                .any(|a| matches!(a, Attribute::Label(l) if l.starts_with(b"kmf-transport-")))
        })
        .count()
}

#[test]
fn the_kek_cannot_be_read_from_the_token() {
    let hsm = softhsm_child!("the_kek_cannot_be_read_from_the_token");
    let token = hsm.token();
    let cfg = hsm.config(&token);
    Pkcs11Signer::create_kek(&cfg).expect("create KEK");
    let signer = Pkcs11Signer::open(&cfg).expect("open");
    signer.wrap(&random_key(32)).expect("the KEK works");
    let s = session(&token);
    let found = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(b"kmf-kek".to_vec())])
        .expect("find");
    let [kek] = found.as_slice() else { panic!("one KEK expected, found {}", found.len()) };
    let kek = *kek;

    // CKA_VALUE is refused...
    let info = s.get_attribute_info(kek, &[AttributeType::Value]).expect("attribute info");
    assert!(matches!(info.as_slice(), [AttributeInfo::Sensitive]), "CKA_VALUE is sensitive: {info:?}");
    let values = s.get_attributes(kek, &[AttributeType::Value]).expect("get attributes");
    assert!(values.iter().all(|a| !matches!(a, Attribute::Value(_))), "the KEK value came out");

    // ...and so is wrapping it out under another key.
    let other = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[Attribute::Token(false), Attribute::ValueLen(32.into()), Attribute::Wrap(true), Attribute::Unwrap(true)],
        )
        .expect("another AES key");
    for mechanism in [Mechanism::AesKeyWrapPad, Mechanism::AesKeyWrap] {
        match s.wrap_key(&mechanism, other, kek) {
            Err(Error::Pkcs11(RvError::KeyUnextractable, _)) => {}
            other => panic!("wrapping the KEK out was not refused as unextractable: {other:?}"),
        }
    }

    // Its attributes say so, and cannot be relaxed.
    let attrs = s
        .get_attributes(
            kek,
            &[
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Token,
                AttributeType::Sensitive,
                AttributeType::AlwaysSensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Wrap,
                AttributeType::Unwrap,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
            ],
        )
        .expect("attributes");
    let expected = [
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Token(true),
        Attribute::Sensitive(true),
        Attribute::AlwaysSensitive(true),
        Attribute::Extractable(false),
        Attribute::NeverExtractable(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
    ];
    assert_eq!(attrs, expected);
    for relax in [Attribute::Extractable(true), Attribute::Sensitive(false)] {
        let err = s.update_attributes(kek, std::slice::from_ref(&relax)).err();
        assert!(matches!(err, Some(Error::Pkcs11(RvError::ActionProhibited, _))), "{relax:?}: {err:?}");
    }
}

#[test]
fn wrong_pin_missing_token_and_missing_kek_are_named_errors() {
    let hsm = softhsm_child!("wrong_pin_missing_token_and_missing_kek_are_named_errors");
    // A fresh second token: the first signer below logs in to the first only.
    let [token, other_token] = hsm.tokens();
    let mut cfg = hsm.config(&token);
    let err = Pkcs11Signer::open(&cfg).expect_err("no KEK yet");
    assert_eq!(err.field, "kek_label", "{err}");
    assert!(err.reason.contains("no key labelled 'kmf-kek'"), "{err}");
    Pkcs11Signer::create_kek(&cfg).expect("create");
    let err = Pkcs11Signer::create_kek(&cfg).expect_err("created twice");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");

    // A wrong PIN, from a file and from a variable: the source is named, never the PIN.
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("wrong.pin");
    std::fs::write(&wrong, "0000wrong0000\n").expect("pin");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let mut wrong_cfg = hsm.config(&other_token);
    wrong_cfg.pin = PinSource::File(wrong.clone());
    let err = Pkcs11Signer::open(&wrong_cfg).expect_err("wrong PIN");
    assert_eq!(err.field, "pin_file", "{err}");
    assert!(err.reason.contains(&wrong.display().to_string()) && err.reason.contains("PinIncorrect"), "{err}");
    assert!(!err.to_string().contains("0000wrong0000") && !err.to_string().contains(&other_token.pin), "{err}");
    wrong_cfg.pin = PinSource::Env("KMF_TEST_NO_SUCH_PIN_VAR".into());
    let err = Pkcs11Signer::open(&wrong_cfg).expect_err("unset variable");
    assert_eq!((err.field, err.reason.as_str()), ("pin_env", "pin_env $KMF_TEST_NO_SUCH_PIN_VAR: is not set"));
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o644)).expect("chmod");
    wrong_cfg.pin = PinSource::File(wrong);
    let err = Pkcs11Signer::open(&wrong_cfg).expect_err("readable PIN file");
    assert!(err.reason.contains("chmod 600"), "{err}");

    cfg.token_label = "no-such-token".into();
    let err = Pkcs11Signer::open(&cfg).expect_err("missing token");
    assert_eq!(err.field, "token_label", "{err}");
    assert!(err.reason.contains("no token labelled 'no-such-token'"), "{err}");
    cfg.module = "/nonexistent/libpkcs11.so".into();
    assert_eq!(Pkcs11Signer::open(&cfg).expect_err("missing module").field, "module");
}

/// The token's CKM_AES_KEY_WRAP_PAD (what the pkcs11 signer wraps with) and
/// the software signer's RFC 5649 are the same format: with a test key the
/// token may reveal, each side unwraps the other's output, byte for byte.
#[test]
fn the_token_key_wrap_is_the_software_rfc_5649() {
    let hsm = softhsm_child!("the_token_key_wrap_is_the_software_rfc_5649");
    let token = hsm.token();
    let s = session(&token);
    let test_kek = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        )
        .expect("an extractable test KEK");
    let kek_value = match s.get_attributes(test_kek, &[AttributeType::Value]).expect("value").pop() {
        Some(Attribute::Value(v)) => v,
        other => panic!("no value: {other:?}"),
    };
    for len in [16, 32, 2400] {
        let data = random_key(len);
        let object = s
            .create_object(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Value(data.expose().to_vec()),
            ])
            .expect("data key object");
        let on_token = s.wrap_key(&Mechanism::AesKeyWrapPad, test_kek, object).expect("token wrap");
        let in_software = kmf::signer::primitives::kwp_wrap(&kek_value, data.expose()).expect("software wrap");
        assert_eq!(on_token, in_software, "{len} bytes: same RFC 5649 bytes");
        let back = kmf::signer::primitives::kwp_unwrap(&kek_value, &on_token).expect("software unwraps token output");
        assert_eq!(&back[..], data.expose());
    }
}

/// `kmfd init --pkcs11-existing-kek` adopts a KEK an HSM officer made, but
/// only one that is AES, sensitive, non-extractable and wrap/unwrap only.
#[test]
fn an_existing_kek_is_adopted_only_when_it_cannot_leave_the_token() {
    let hsm = softhsm_child!("an_existing_kek_is_adopted_only_when_it_cannot_leave_the_token");
    let token = hsm.token();
    let s = session(&token);
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(true),
            Attribute::Label(b"weak".to_vec()),
            Attribute::ValueLen(32.into()),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(true),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ],
    )
    .expect("a weak key");
    let host = kmf::domain::ids::Host::parse("127.0.0.1:0").expect("host");
    let tmp = tempfile::tempdir().expect("tmp");
    let adopt = |label: &str, dir: &str| {
        let mut cfg = hsm.config(&token);
        cfg.kek_label = label.into();
        let signer = kmf::app::SignerConfig::Pkcs11(cfg);
        kmf::app::init_instance_kek(&tmp.path().join(dir), &host, &signer, kmf::app::KekSetup::AdoptExisting)
    };

    let err = adopt("weak", "a").expect_err("a weak KEK is refused").to_string();
    for problem in ["is not sensitive", "is extractable", "may encrypt or decrypt data", "refusing to use it"] {
        assert!(err.contains(problem), "{problem}: {err}");
    }
    assert!(!tmp.path().join("a").join("kmf.redb").exists(), "no instance was made");
    let err = adopt("absent", "b").expect_err("no such KEK").to_string();
    assert!(err.contains("no key labelled 'absent'"), "{err}");

    let cfg = hsm.config(&token);
    Pkcs11Signer::create_kek(&cfg).expect("the officer's KEK");
    adopt(&cfg.kek_label, "c").expect("a proper KEK is adopted");
    let signer = Pkcs11Signer::open(&cfg).expect("the adopted KEK opens");
    let key = random_key(32);
    assert_eq!(signer.unwrap(&signer.wrap(&key).expect("wrap")).expect("unwrap").expose(), key.expose());
    let software = kmf::app::SignerConfig::software_in(&tmp.path().join("d"));
    let err = kmf::app::init_instance_kek(&tmp.path().join("d"), &host, &software, kmf::app::KekSetup::AdoptExisting)
        .expect_err("software has nothing to adopt");
    assert!(err.to_string().contains("needs the pkcs11 signer"), "{err}");
}
