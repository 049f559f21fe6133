//! Fuzzes every stored row decoder of the store: no panic, and what decodes round-trips (kmf::fuzzing::stored_row).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kmf::fuzzing::stored_row(data));
