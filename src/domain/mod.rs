//! The pure core: identities, keys, exchange requests and their state machine,
//! the bundle and receipt formats, the ciphertext header and authorisation,
//! and the decisions the services take on what they read (`delivery`,
//! `exchange_decide`, `exchange_import`, `clone_decide`, `rekey_plan`,
//! `sweeps`): a service reads, calls the decision, and writes conditionally.
//!
//! Nothing here performs I/O: no tokio, tonic, redb, openssl, rustls, file
//! system, environment or clock. Time and randomness come in as arguments.
//! `tests/it/tidy.rs` enforces this.

pub mod audit;
pub mod auth;
pub mod bundle;
pub mod byok;
pub mod ciphertext;
pub mod clone;
pub mod clone_decide;
pub mod clone_exchange;
pub mod clone_merge;
pub mod clone_schedule;
pub mod codec;
pub mod delivery;
pub mod error;
pub mod exchange;
pub mod exchange_decide;
pub mod exchange_import;
#[cfg(test)]
mod fixtures;
pub mod health;
pub mod ids;
pub mod job;
pub mod key;
pub mod lifecycle;
pub mod policy;
pub mod property;
pub mod record;
pub mod refusals;
pub mod rekey;
pub mod rekey_plan;
pub mod schedule;
pub mod spec;
pub mod sweeps;

pub use error::DomainError;
