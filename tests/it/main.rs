//! One integration-test binary: in-process nodes over real mTLS on port 0,
//! process tests of the built binaries, grpcurl, and tidy checks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks may panic on a broken fixture

mod approve_wait;
mod audit;
mod binaries;
mod bootstrap;
mod byok;
mod clone;
mod clone_crash;
mod clone_exchange;
mod clone_schedule;
mod connections;
mod crash;
mod crypto_ops;
mod crypto_specs;
mod diagnostics;
mod exactly_once;
mod exchange;
mod fuzz_seeds;
mod grpcurl;
mod hsm;
mod hsm_process;
mod lifecycle;
mod local_errors;
mod metrics;
mod negatives;
mod peer_channels;
mod peer_refusals;
mod policies;
mod process;
mod properties;
mod proxy;
mod rekey;
mod rekey_crash;
mod revocation;
mod schedule_crash;
mod signer_contract;
mod skip;
mod softhsm;
mod store_contract;
mod store_contract_rekey;
mod support;
mod tidy;
mod tidy_paths;
mod tidy_rules;
mod wire_codes;
