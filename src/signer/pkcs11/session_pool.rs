//! A small pool of logged-in read/write sessions on one token.
//!
//! - A `Session` is `Send` but not `Sync`: the pool hands each one to exactly
//!   one thread at a time (a Mutex-guarded idle list, a Condvar when all are
//!   busy). Callers are synchronous (the node calls the signer from
//!   `spawn_blocking`); an operation holds a session for microseconds.
//! - Login is per token and application: the first session logs in, later
//!   ones get CKR_USER_ALREADY_LOGGED_IN, which is fine.
//! - A session or token that went away (CKR_SESSION_HANDLE_INVALID,
//!   DEVICE_REMOVED, TOKEN_NOT_PRESENT, ...) resets the pool: idle sessions
//!   are closed, the slot and the KEK handle are looked up again, and the
//!   operation is retried once on a fresh session. A wrong PIN is never
//!   retried (tokens lock after a few failures).

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::module::{describe, find_by_label, is_stale, lock, module_ctx, token_error};
use super::settings::{OpenError, PinSource};
use crate::signer::CryptoError;

/// Sessions per signer. Two cores; imports and crypto calls overlap.
pub(super) const SESSIONS: usize = 4;

struct State {
    idle: Vec<Session>,
    /// Sessions in existence (idle and leased).
    open: usize,
    /// Bumped by every reset; sessions of an older generation are closed on return.
    generation: u64,
    slot: Option<Slot>,
    kek: Option<ObjectHandle>,
    /// Set once the token refused the PIN: we never try it again.
    pin_refused: bool,
}

/// A bounded pool of logged-in sessions on the token labelled `token_label`.
pub(super) struct SessionPool {
    ctx: Pkcs11,
    module: PathBuf,
    token_label: String,
    pin: AuthPin,
    pin_source: PinSource,
    kek_label: String,
    state: Mutex<State>,
    returned: Condvar,
}

/// A session lent by the pool; goes back on drop unless discarded.
pub(super) struct Lease<'a> {
    pool: &'a SessionPool,
    session: Option<Session>,
    generation: u64,
}

impl Lease<'_> {
    pub(super) fn session(&self) -> &Session {
        // allowed: `session` is Some from `lease()` until `discard` or `drop`, which both consume the lease
        #[allow(clippy::expect_used)]
        self.session.as_ref().expect("a lease holds its session until dropped")
    }

    fn discard(mut self) {
        self.session = None; // closed here (C_CloseSession)
        let mut st = lock(&self.pool.state);
        st.open -= 1;
        drop(st);
        self.pool.returned.notify_one();
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        let mut st = lock(&self.pool.state);
        if st.generation == self.generation {
            st.idle.push(session);
        } else {
            st.open -= 1;
            drop(st);
            drop(session);
        }
        self.pool.returned.notify_one();
    }
}

impl SessionPool {
    pub(super) fn new(
        module: &Path,
        token_label: &str,
        pin_source: &PinSource,
        kek_label: &str,
    ) -> Result<Self, OpenError> {
        let ctx = module_ctx(module)?;
        let pin = pin_source.read().map_err(|reason| OpenError::pin(pin_source, reason))?;
        Ok(SessionPool {
            ctx,
            module: module.to_owned(),
            token_label: token_label.to_owned(),
            pin,
            pin_source: pin_source.clone(),
            kek_label: kek_label.to_owned(),
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
                generation: 0,
                slot: None,
                kek: None,
                pin_refused: false,
            }),
            returned: Condvar::new(),
        })
    }

    pub(super) fn token_label(&self) -> &str {
        &self.token_label
    }

    pub(super) fn kek_label(&self) -> &str {
        &self.kek_label
    }

    pub(super) fn module_path(&self) -> &Path {
        &self.module
    }

    /// Finds the slot whose token carries our label (slot ids change when a
    /// token is initialised, so never by number).
    fn find_slot(&self) -> Result<Slot, OpenError> {
        let slots = self.ctx.get_slots_with_token().map_err(|e| OpenError::token(describe(&e)))?;
        let mut labels = Vec::new();
        let mut found = Vec::new();
        for slot in slots {
            if let Ok(info) = self.ctx.get_token_info(slot) {
                if info.label() == self.token_label {
                    found.push(slot);
                }
                labels.push(format!("'{}'", info.label()));
            }
        }
        match found.as_slice() {
            [slot] => Ok(*slot),
            [] => Err(OpenError::token(format!(
                "no token labelled '{}' in {} (tokens: {})",
                self.token_label,
                self.module.display(),
                if labels.is_empty() { "none".to_owned() } else { labels.join(", ") }
            ))),
            _ => Err(OpenError::token(format!("{} tokens are labelled '{}'", found.len(), self.token_label))),
        }
    }

    fn open_session(&self) -> Result<Session, OpenError> {
        let cached = lock(&self.state).slot;
        let slot = match cached {
            Some(slot) => slot,
            None => {
                let slot = self.find_slot()?;
                lock(&self.state).slot = Some(slot);
                slot
            }
        };
        let session = self.ctx.open_rw_session(slot).map_err(|e| {
            if is_stale(&e) {
                lock(&self.state).slot = None;
            }
            OpenError::token(format!("opening a session on token '{}': {}", self.token_label, describe(&e)))
        })?;
        if lock(&self.state).pin_refused {
            return Err(OpenError::pin(
                &self.pin_source,
                format!("the PIN was refused by token '{}' earlier; fix it and restart", self.token_label),
            ));
        }
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(Error::Pkcs11(
                rv @ (RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired | RvError::PinLenRange),
                _,
            )) => {
                lock(&self.state).pin_refused = true;
                Err(OpenError::pin(
                    &self.pin_source,
                    format!("the PIN was refused by token '{}' ({rv:?})", self.token_label),
                ))
            }
            Err(e) => Err(OpenError::token(format!("login to token '{}': {}", self.token_label, describe(&e)))),
        }
    }

    /// Lends an idle session, opens one if fewer than `SESSIONS` exist, or
    /// waits for one to come back.
    pub(super) fn lease(&self) -> Result<Lease<'_>, OpenError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(session) = st.idle.pop() {
                return Ok(Lease { pool: self, session: Some(session), generation: st.generation });
            }
            if st.open < SESSIONS {
                st.open += 1;
                let generation = st.generation;
                drop(st);
                return match self.open_session() {
                    Ok(session) => Ok(Lease { pool: self, session: Some(session), generation }),
                    Err(e) => {
                        lock(&self.state).open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.returned.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Forgets sessions, slot and handles after a stale-session error.
    fn reset(&self) {
        let mut st = lock(&self.state);
        st.generation += 1;
        let idle = std::mem::take(&mut st.idle);
        st.open -= idle.len();
        st.slot = None;
        st.kek = None;
        drop(st);
        drop(idle);
        self.returned.notify_all();
    }

    /// The KEK's handle, looked up by label once per pool generation.
    /// None when the token holds no single key with that label.
    fn kek(&self, session: &Session) -> Result<Option<ObjectHandle>, Error> {
        let cached = lock(&self.state).kek;
        if let Some(kek) = cached {
            return Ok(Some(kek));
        }
        let found = find_by_label(session, ObjectClass::SECRET_KEY, &self.kek_label)?;
        let [kek] = found.as_slice() else { return Ok(None) };
        lock(&self.state).kek = Some(*kek);
        Ok(Some(*kek))
    }

    /// Runs `op` on a pooled session, retrying once on a fresh session after
    /// a stale-session error.
    pub(super) fn run<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&Session) -> Result<T, Error>,
    ) -> Result<T, CryptoError> {
        self.run_inner(what, false, |s, _| op(s))
    }

    /// As `run`, with the KEK's handle.
    pub(super) fn run_with_kek<T>(
        &self,
        what: &str,
        mut op: impl FnMut(&Session, ObjectHandle) -> Result<T, Error>,
    ) -> Result<T, CryptoError> {
        // run_inner always passes the KEK when asked to.
        self.run_inner(what, true, |s, kek| kek.map_or(Err(Error::InvalidValue), |kek| op(s, kek)))
    }

    fn run_inner<T>(
        &self,
        what: &str,
        with_kek: bool,
        mut op: impl FnMut(&Session, Option<ObjectHandle>) -> Result<T, Error>,
    ) -> Result<T, CryptoError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = self.lease().map_err(|e| CryptoError::Token(e.reason))?;
            let result = match with_kek {
                true => match self.kek(lease.session()) {
                    Ok(Some(kek)) => op(lease.session(), Some(kek)),
                    Ok(None) => {
                        return Err(CryptoError::Token(format!(
                            "KEK '{}' not found on token '{}'",
                            self.kek_label, self.token_label
                        )));
                    }
                    Err(e) => Err(e),
                },
                false => op(lease.session(), None),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if is_stale(&e) => {
                    lease.discard();
                    self.reset();
                    if attempt >= 2 {
                        return Err(token_error(what, &e));
                    }
                    tracing::warn!(token = %self.token_label, error = %describe(&e), "PKCS#11 session lost; reopening once");
                }
                Err(e) => return Err(token_error(what, &e)),
            }
        }
    }
}
