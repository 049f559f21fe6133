//! Fuzzes kmfd.toml and the bootstrap manifest: no panic, and what decodes round-trips (kmf::fuzzing::config).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kmf::fuzzing::config(data));
