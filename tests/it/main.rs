//! One integration-test binary: in-process nodes over real mTLS on port 0,
//! process tests of the built binaries, grpcurl, and tidy checks.

mod audit;
mod crypto_ops;
mod crypto_specs;
mod diagnostics;
mod exchange;
mod grpcurl;
mod lifecycle;
mod metrics;
mod negatives;
mod policies;
mod process;
mod properties;
mod support;
mod tidy;
