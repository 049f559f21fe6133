//! One integration-test binary: in-process nodes over real mTLS on port 0,
//! process tests of the built binaries, grpcurl, and tidy checks.

mod approve_wait;
mod audit;
mod crypto_ops;
mod crypto_specs;
mod diagnostics;
mod exchange;
mod grpcurl;
mod hsm;
mod hsm_process;
mod lifecycle;
mod metrics;
mod negatives;
mod peer_channels;
mod policies;
mod process;
mod properties;
mod signer_contract;
mod softhsm;
mod support;
mod tidy;
