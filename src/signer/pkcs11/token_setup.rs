//! Making a token where the module offers a free slot (SoftHSM2 always does):
//! `C_InitToken` with the security officer PIN, then `C_InitPIN` for the user
//! PIN. Used by `kmfctl bootstrap` for a deployment's HSM-backed instance;
//! a real HSM's tokens are made by its own tools. PINs never reach an error.

use std::path::Path;

use cryptoki::context::Pkcs11;
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::module::{describe, module};
use super::settings::PinSource;
use crate::signer::CryptoError;

/// What `ensure_token` found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSetup {
    /// A token with the label was there already; nothing was changed.
    Existed,
    /// The first free slot's token was initialised with the label and both PINs.
    Created,
}

fn err(what: &str, e: &cryptoki::error::Error) -> CryptoError {
    CryptoError::Token(format!("{what}: {}", describe(e)))
}

/// The slots whose token is initialised and labelled `label`, and the slots
/// whose token is not initialised yet.
fn scan(ctx: &Pkcs11, label: &str) -> Result<(Vec<Slot>, Vec<Slot>), CryptoError> {
    let (mut labelled, mut free) = (Vec::new(), Vec::new());
    for slot in ctx.get_slots_with_token().map_err(|e| err("listing slots", &e))? {
        let info = ctx.get_token_info(slot).map_err(|e| err("reading token info", &e))?;
        if !info.token_initialized() {
            free.push(slot);
        } else if info.label().trim_end() == label {
            labelled.push(slot);
        }
    }
    Ok((labelled, free))
}

fn pin(source: &PinSource) -> Result<AuthPin, CryptoError> {
    source.read().map_err(|e| CryptoError::Token(format!("{source}: {e}")))
}

/// Makes sure a token labelled `label` exists on `module`: if none does, the
/// first free slot's token is initialised with the PIN `so_pin` names, and
/// the user PIN set to the one `user_pin` names. Several tokens with the label
/// are an error (as for the signer).
pub fn ensure_token(
    module_path: &Path,
    label: &str,
    so_pin: &PinSource,
    user_pin: &PinSource,
) -> Result<TokenSetup, CryptoError> {
    let ctx = module(module_path).map_err(CryptoError::Token)?;
    let (labelled, free) = scan(&ctx, label)?;
    match labelled.len() {
        0 => {}
        1 => return Ok(TokenSetup::Existed),
        n => return Err(CryptoError::Token(format!("{n} tokens are labelled '{label}'"))),
    }
    let slot = *free.first().ok_or_else(|| {
        CryptoError::Token(format!("no token is labelled '{label}' and the module has no free slot to make one"))
    })?;
    let so = pin(so_pin)?;
    ctx.init_token(slot, &so, label).map_err(|e| err("C_InitToken", &e))?;
    // SoftHSM2 moves an initialised token to a new slot id: look it up again.
    let (labelled, _) = scan(&ctx, label)?;
    let slot =
        *labelled.first().ok_or_else(|| CryptoError::Token(format!("token '{label}' vanished after C_InitToken")))?;
    let session = ctx.open_rw_session(slot).map_err(|e| err("opening a session", &e))?;
    session.login(UserType::So, Some(&so)).map_err(|e| err("security officer login", &e))?;
    session.init_pin(&pin(user_pin)?).map_err(|e| err("C_InitPIN", &e))?;
    session.logout().map_err(|e| err("logout", &e))?;
    Ok(TokenSetup::Created)
}
