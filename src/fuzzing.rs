//! The bodies of the cargo-fuzz targets in `fuzz/` (README, "Fuzzing"), here
//! so that the main build compiles them and the seed tests run them. Each
//! feeds arbitrary bytes to one decoder: it must answer with an error, never
//! a panic, and what it accepts must survive encode → decode unchanged.
//! Not an API: nothing in the daemon calls these.

use std::path::PathBuf;

use crate::config::{RunArgs, resolve};
use crate::domain::bundle::{Bundle, Receipt};
use crate::domain::ciphertext;

pub use crate::store::fuzzing::stored_row;

/// The key bundle (source → target), as `DeliverBundle` receives it.
pub fn bundle(bytes: &[u8]) {
    if let Ok(b) = Bundle::decode(bytes) {
        assert_eq!(Bundle::decode(&b.encode()).as_ref(), Ok(&b), "bundle round trip");
    }
}

/// The receipt (target → source), as the source receives it.
pub fn receipt(bytes: &[u8]) {
    if let Ok(r) = Receipt::decode(bytes) {
        assert_eq!(Receipt::decode(&r.encode()).as_ref(), Ok(&r), "receipt round trip");
    }
}

/// A ciphertext's header, as Decrypt and the record calls split it.
pub fn ciphertext(bytes: &[u8]) {
    if let Ok((key, header, body)) = ciphertext::parse(bytes) {
        assert_eq!(header.len() + body.len(), bytes.len(), "header and body are the whole input");
        assert_eq!(header, ciphertext::encode_header(&key).as_slice(), "the header is the key's header");
        assert_eq!(header.len(), ciphertext::header_len(&key));
    }
}

/// `kmfd.toml` (resolved with the one required flag given, so a file without
/// `data_dir` gets past the parse to the checks too) and the `kmfctl
/// bootstrap` manifest. Both are read with `read_to_string`: bytes that are
/// not UTF-8 are refused before any parser sees them, so they stop here too.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let args = RunArgs { data_dir: Some(PathBuf::from("/data")), ..Default::default() };
    let _ = resolve(&args, Some(text));
    let _ = crate::cli::ctl_bootstrap::parse_manifest(text);
}
