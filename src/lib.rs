//! kmf: a key-exchange daemon. See ARCHITECTURE.md for the code map.
//!
//! - `domain`: pure core (no I/O).
//! - `store`: redb adapter. `signer`: KEK backends and crypto primitives.
//! - `tls`: PKI, rustls configs, identity. `rpc`: generated types, services,
//!   status mapping and the peer client.
//! - `node`: the use cases, wiring domain, store, signer and peer client.
//! - `app`: composition root (listener, TLS acceptor, services, background
//!   tasks). `config`: settings. `cli`: kmfd and kmfctl commands.

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
pub mod rpc;
pub mod signer;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tls_reload;
