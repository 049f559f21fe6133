//! kmfctl: spec creation choices and the sign/verify, MAC/verify,
//! wrap/unwrap and public-key calls.

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as b64;
use clap::Subcommand;

use super::kmfctl::Operator;
use super::print;
use crate::rpc::pb;

#[derive(Subcommand, Debug)]
pub enum CryptoCommand {
    /// Sign a text with a signature spec's Active key (RSA-PSS); prints base64.
    Sign {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        text: String,
    },
    /// Verify a base64 signature from `sign` over a text.
    Verify {
        #[arg(long)]
        signature: String,
        #[arg(long)]
        text: String,
    },
    /// MAC a text with an authenticity spec's Active key (HMAC); prints base64.
    Mac {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        text: String,
    },
    /// Verify a base64 MAC from `mac` over a text.
    VerifyMac {
        #[arg(long)]
        mac: String,
        #[arg(long)]
        text: String,
    },
    /// Wrap key material given as hex with a key-wrapping spec; prints base64.
    Wrap {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        key_hex: String,
        #[arg(long, default_value = "")]
        aad: String,
    },
    /// Unwrap base64 from `wrap`; prints the key material as hex.
    Unwrap {
        #[arg(long)]
        wrapped: String,
        #[arg(long, default_value = "")]
        aad: String,
    },
    /// Print the PEM public key of an RSA spec's Active key.
    PublicKey {
        #[arg(long)]
        spec: String,
    },
}

/// A CreateSpec request. `purpose` and `algorithm` take the proto names in
/// any case (e.g. `signature`, `aes_cbc`); unset ones and size 0 take the
/// daemon's defaults.
pub fn spec_request(
    module: &str,
    name: &str,
    purpose: Option<&str>,
    algorithm: Option<&str>,
    size: u32,
    equality_preserving: bool,
) -> anyhow::Result<pb::CreateSpecRequest> {
    let purpose = match purpose {
        None => pb::CryptoPurpose::Unspecified,
        Some(p) => pb::CryptoPurpose::from_str_name(&p.to_ascii_uppercase())
            .filter(|v| *v != pb::CryptoPurpose::Unspecified)
            .with_context(|| format!("unknown purpose `{p}`"))?,
    };
    let algorithm = match algorithm {
        None => pb::Algorithm::Unspecified,
        Some(a) => pb::Algorithm::from_str_name(&a.to_ascii_uppercase())
            .filter(|v| *v != pb::Algorithm::Unspecified)
            .with_context(|| format!("unknown algorithm `{a}`"))?,
    };
    Ok(pb::CreateSpecRequest {
        module: module.into(),
        name: name.into(),
        purpose: purpose as i32,
        algorithm: algorithm as i32,
        key_size_bits: size,
        equality_preserving,
        exportable: false,
    })
}

/// The response message with `--json`, else `value` (the one result people want).
fn print_result<M: prost::Message + prost::Name>(as_json: bool, response: &M, value: &str) -> anyhow::Result<()> {
    if as_json {
        return print::json(response);
    }
    println!("{value}");
    Ok(())
}

fn decode(what: &str, text: &str) -> anyhow::Result<Vec<u8>> {
    b64.decode(text.trim()).with_context(|| format!("{what} is not base64"))
}

pub async fn crypto(ops: &mut Operator, cmd: CryptoCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        CryptoCommand::Sign { spec, text } => {
            let r = ops.crypto.sign(pb::SignRequest { spec, message: text.into_bytes() }).await?.into_inner();
            print_result(as_json, &r, &b64.encode(&r.signature))?;
        }
        CryptoCommand::Verify { signature, text } => {
            let req = pb::VerifyRequest { signature: decode("signature", &signature)?, message: text.into_bytes() };
            let r = ops.crypto.verify(req).await?.into_inner();
            print_result(as_json, &r, &r.valid.to_string())?;
        }
        CryptoCommand::Mac { spec, text } => {
            let r = ops.crypto.mac(pb::MacRequest { spec, message: text.into_bytes() }).await?.into_inner();
            print_result(as_json, &r, &b64.encode(&r.mac))?;
        }
        CryptoCommand::VerifyMac { mac, text } => {
            let req = pb::VerifyMacRequest { mac: decode("mac", &mac)?, message: text.into_bytes() };
            let r = ops.crypto.verify_mac(req).await?.into_inner();
            print_result(as_json, &r, &r.valid.to_string())?;
        }
        CryptoCommand::Wrap { spec, key_hex, aad } => {
            let key_material = hex::decode(key_hex.trim()).context("key_hex is not hex")?;
            let req = pb::WrapRequest { spec, key_material, associated_data: aad.into_bytes() };
            let r = ops.crypto.wrap(req).await?.into_inner();
            print_result(as_json, &r, &b64.encode(&r.wrapped_key))?;
        }
        CryptoCommand::Unwrap { wrapped, aad } => {
            let req =
                pb::UnwrapRequest { wrapped_key: decode("wrapped", &wrapped)?, associated_data: aad.into_bytes() };
            let r = ops.crypto.unwrap(req).await?.into_inner();
            let material = zeroize::Zeroizing::new(hex::encode(&r.key_material));
            print_result(as_json, &r, &material)?;
        }
        CryptoCommand::PublicKey { spec } => {
            let r = ops.crypto.get_public_key(pb::GetPublicKeyRequest { spec }).await?.into_inner();
            if as_json {
                print::json(&r)?;
            } else {
                print!("{}", r.public_key_pem);
            }
        }
    }
    Ok(())
}
