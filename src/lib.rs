//! kmf: a key-exchange daemon. See ARCHITECTURE.md for the code map.
//!
//! - `domain`: pure core (no I/O): types, state machines, decisions.
//! - `store`: the store port over the engine port (redb, in-memory).
//!   `signer`: KEK backends (software, PKCS#11) and crypto primitives.
//! - `tls`: PKI, rustls configs, identity, CRL. `rpc`: generated types, the
//!   thin gRPC services, the one status mapping and the peer client.
//! - `node`: the use-case services (catalog, crypto, exchange, clone, rekey,
//!   BYOK, audit, diagnostics) and the job runner, built from one context.
//! - `app`: composition root (listeners, TLS acceptor, services, background
//!   tasks). `config`: settings. `cli`: kmfd and kmfctl commands. `metrics`,
//!   `connections`, `tls_reload`, `telemetry`, `clock`, `error`: as named;
//!   `offload`: the blocking pool the store and the signer run their work on.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connections;
pub mod domain;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod node;
pub mod offload;
pub mod rpc;
pub mod signer;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tls_reload;
