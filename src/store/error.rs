//! The store's errors, typed: which kind of row and which row a refused write was about
//! (`RowKind`), why a system approval was refused (`GrantRefused`), and what
//! failed beneath the store's own rules (`BackendError`). Callers match on
//! these variants, never on an error's text; `Display` is for people.

use std::fmt;

use thiserror::Error;

use crate::offload::TaskFailed;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(BackendError),
    #[error("store record is corrupt: {0}")]
    Corrupt(String),
    #[error("{kind} already exists: {id}")]
    AlreadyExists { kind: RowKind, id: String },
    /// The row is no longer what the caller read (or is in a state the
    /// write does not apply to; `id` then says which): read it again.
    #[error("{kind} {id} changed since it was read")]
    Stale { kind: RowKind, id: String },
    #[error("{kind} {id} not found")]
    Missing { kind: RowKind, id: String },
    /// The approval without a person was refused by the rows as they stand
    /// in its transaction (`domain::clone::system_approval_refusal`); nothing
    /// was written, and reading again would not change the answer.
    #[error("clone grant refused: {0}")]
    GrantRefused(String),
    /// An optimistic transaction lost a race; the store retries it.
    #[error("store: transaction conflict")]
    Conflict,
    #[error("instance already initialised at {0}")]
    AlreadyInitialised(String),
    #[error("no instance at {0} (run `kmfd init` first)")]
    NotInitialised(String),
}

/// The kind of row a refused write was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowKind {
    Module,
    Spec,
    Key,
    Request,
    Record,
    Property,
    JobLease,
    ImportKey,
    AccessPolicy,
    LifecyclePolicy,
    /// The lifecycle cap a module's specs inherit from its policies.
    LifecyclePolicyCap,
    Clone,
    RunningClone,
    CloneSchedule,
    /// A source's record of the automatic exchange a clone target may ask for.
    CloneExchange,
    Rekey,
}

impl RowKind {
    /// The kind of row as error messages name it (`DomainError` takes it too).
    pub const fn label(self) -> &'static str {
        match self {
            RowKind::Module => "module",
            RowKind::Spec => "spec",
            RowKind::Key => "key",
            RowKind::Request => "request",
            RowKind::Record => "record",
            RowKind::Property => "property",
            RowKind::JobLease => "job lease",
            RowKind::ImportKey => "import key",
            RowKind::AccessPolicy => "access policy",
            RowKind::LifecyclePolicy => "lifecycle policy",
            RowKind::LifecyclePolicyCap => "lifecycle policy cap of module",
            RowKind::Clone => "clone",
            RowKind::RunningClone => "running clone",
            RowKind::CloneSchedule => "clone schedule",
            RowKind::CloneExchange => "clone exchange for target",
            RowKind::Rekey => "rekey",
        }
    }
}

impl fmt::Display for RowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What failed beneath the store's rules. None of these is the caller's
/// doing; the RPC edge answers them INTERNAL with an error id.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The engine itself failed (I/O, a full disk, a damaged file); its message.
    #[error("{0}")]
    Engine(String),
    /// The data file is held open by another process (or another store in
    /// this one): one instance's file has one daemon.
    #[error("the data file is already open (another kmfd holds it)")]
    InUse,
    /// The data file could not be created.
    #[error("creating {path}: {reason}")]
    Create { path: String, reason: String },
    /// A write lost this many optimistic races in a row.
    #[error("a write lost {0} races in a row; try again")]
    Contended(usize),
    /// The blocking task that ran a transaction or a snapshot read failed.
    #[error("{0}")]
    Task(String),
    /// The engine was used against its own contract (a bug, not an outage).
    #[error("{0}")]
    Misuse(&'static str),
}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        StoreError::Backend(e)
    }
}

impl From<TaskFailed> for StoreError {
    fn from(e: TaskFailed) -> Self {
        StoreError::Backend(BackendError::Task(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_kind_and_row() {
        let stale = StoreError::Stale { kind: RowKind::JobLease, id: "j1".into() };
        assert_eq!(stale.to_string(), "job lease j1 changed since it was read");
        let dup = StoreError::AlreadyExists { kind: RowKind::CloneExchange, id: "t".into() };
        assert_eq!(dup.to_string(), "clone exchange for target already exists: t");
        let contended = StoreError::from(BackendError::Contended(200));
        assert_eq!(contended.to_string(), "store: a write lost 200 races in a row; try again");
    }
}
