//! The process-wide PKCS#11 contexts, and small helpers on cryptoki errors
//! and objects.
//!
//! A module is loaded and `C_Initialize`d once per process and kept for the
//! life of the process: a second `C_Initialize` answers
//! CKR_CRYPTOKI_ALREADY_INITIALIZED, and unloading a module whose sessions are
//! open is undefined. Several signers (two test nodes, `config check` then
//! `run`) share it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::settings::OpenError;
use crate::signer::CryptoError;

static MODULES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A short, PIN-free description of a cryptoki error.
pub(super) fn describe(e: &Error) -> String {
    match e {
        Error::Pkcs11(rv, function) => format!("C_{function:?} returned {rv:?}"),
        Error::LibraryLoading(err) => format!("cannot load the module: {err}"),
        other => other.to_string(),
    }
}

pub(super) fn token_error(what: &str, e: &Error) -> CryptoError {
    CryptoError::Token(format!("{what}: {}", describe(e)))
}

/// Errors after which the session, the slot or our object handles may be
/// stale: worth one retry on a freshly opened session.
pub(super) fn is_stale(e: &Error) -> bool {
    matches!(
        e,
        Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::SlotIdInvalid
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::WrappingKeyHandleInvalid
                | RvError::UnwrappingKeyHandleInvalid,
            _
        )
    )
}

/// The process-wide context of `module`, loaded and initialised on first use.
pub(super) fn module(path: &Path) -> Result<Pkcs11, String> {
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut modules = lock(MODULES.get_or_init(Default::default));
    if let Some(ctx) = modules.get(&key) {
        return Ok(ctx.clone());
    }
    let ctx =
        Pkcs11::new(&key).map_err(|e| format!("cannot load PKCS#11 module {}: {}", path.display(), describe(&e)))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("PKCS#11 module {}: {}", path.display(), describe(&e))),
    }
    modules.insert(key, ctx.clone());
    Ok(ctx)
}

pub(super) fn module_ctx(module: &Path) -> Result<Pkcs11, OpenError> {
    module_path_checked(module)?;
    self::module(module).map_err(|reason| OpenError { field: "module", reason })
}

fn module_path_checked(module: &Path) -> Result<(), OpenError> {
    if module.is_file() {
        Ok(())
    } else {
        Err(OpenError { field: "module", reason: format!("{} is not a file", module.display()) })
    }
}

/// Objects of `class` labelled `label`.
pub(super) fn find_by_label(session: &Session, class: ObjectClass, label: &str) -> Result<Vec<ObjectHandle>, Error> {
    session.find_objects(&[Attribute::Class(class), Attribute::Label(label.as_bytes().to_vec())])
}
