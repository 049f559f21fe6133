//! Fuzzes the ciphertext header (ciphertext::parse): no panic, and what decodes round-trips (kmf::fuzzing::ciphertext).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kmf::fuzzing::ciphertext(data));
