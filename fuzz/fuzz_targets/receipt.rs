//! Fuzzes the receipt (Receipt::decode): no panic, and what decodes round-trips (kmf::fuzzing::receipt).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kmf::fuzzing::receipt(data));
