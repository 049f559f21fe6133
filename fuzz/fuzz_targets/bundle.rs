//! Fuzzes the key bundle (Bundle::decode): no panic, and what decodes round-trips (kmf::fuzzing::bundle).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kmf::fuzzing::bundle(data));
