//! Architecture checks: every module of `src/` uses only what the code map in
//! ARCHITECTURE.md lets it use (rules in `tidy_rules.rs`), read from the code
//! parsed with syn (`tidy_paths.rs`); rustls runs on ring.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::tidy_paths::{NamedPath, named_paths};
use crate::tidy_rules::{KNOWN_DEVIATIONS, MODULES, NODE_SERVICES, check, module_of, node_service_of};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate names a path may start with: std's and the dependencies'.
fn externs() -> BTreeSet<String> {
    let manifest: toml::Table =
        std::fs::read_to_string(root().join("Cargo.toml")).expect("Cargo.toml").parse().expect("parse Cargo.toml");
    let mut names: BTreeSet<String> = ["std", "core", "alloc"].map(String::from).into();
    for table in ["dependencies", "dev-dependencies"] {
        let deps = manifest.get(table).and_then(|d| d.as_table()).expect("dependency table");
        names.extend(deps.keys().map(|k| k.replace('-', "_")));
    }
    names
}

/// `src/node/jobs.rs` is `crate::node::jobs`; `mod.rs` is its directory's module.
fn module_path(relative: &str) -> Vec<String> {
    let mut segments = vec!["crate".to_string()];
    let stem = relative.trim_end_matches(".rs");
    if stem == "lib" || relative.starts_with("bin/") {
        return segments;
    }
    segments.extend(stem.split('/').filter(|s| *s != "mod").map(String::from));
    segments
}

/// Every file of `src/` (path relative to `src/`) with the paths it names.
fn scan_src() -> Vec<(String, Vec<NamedPath>)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let externs = externs();
    files
        .iter()
        .map(|file| {
            let relative =
                file.strip_prefix(root().join("src")).expect("under src").to_string_lossy().replace('\\', "/");
            let source = std::fs::read_to_string(file).expect("read");
            let paths = named_paths(&source, &module_path(&relative), &externs, "kmf")
                .unwrap_or_else(|e| panic!("src/{relative} does not parse: {e}"));
            (relative, paths)
        })
        .collect()
}

/// The top-level modules `src/lib.rs` declares.
fn declared_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).expect("src/lib.rs");
    let file = syn::parse_file(&lib).expect("parse src/lib.rs");
    file.items
        .iter()
        .filter_map(|item| match item {
            syn::Item::Mod(m) => Some(m.ident.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_module_keeps_to_its_layer() {
    let declared = declared_modules();
    let ruled: BTreeSet<String> = MODULES.iter().map(|(name, _)| name.to_string()).collect();
    let expected: BTreeSet<String> = declared.iter().cloned().chain(["lib".into(), "bin".into()]).collect();
    assert_eq!(ruled, expected, "tidy_rules::MODULES must have one row per module of src/lib.rs (and lib, bin)");

    let mut visited = BTreeSet::new();
    let mut refused = Vec::new();
    let mut deviations_used = BTreeSet::new();
    for (file, paths) in scan_src() {
        visited.insert(module_of(&file).to_string());
        let (file_refused, file_deviations) = check(&file, &paths);
        refused.extend(file_refused);
        deviations_used.extend(file_deviations);
    }
    assert_eq!(visited, expected, "every module's files were read");
    let services: BTreeSet<String> =
        scan_src().iter().filter_map(|(f, _)| node_service_of(f).map(String::from)).collect();
    let ruled: BTreeSet<String> = NODE_SERVICES.iter().map(|(n, _)| n.to_string()).chain(["mod".into()]).collect();
    assert_eq!(services, ruled, "tidy_rules::NODE_SERVICES must have one row per folder or file of src/node");
    assert!(refused.is_empty(), "uses outside the code map (ARCHITECTURE.md):\n{}", refused.join("\n"));
    let stale: Vec<_> = KNOWN_DEVIATIONS.iter().filter(|d| !deviations_used.contains(*d)).collect();
    assert!(stale.is_empty(), "known deviations no longer in the code, remove them: {stale:?}");
}

/// A file that breaks each rule once, read as `src/domain/bad.rs`.
const BAD_DOMAIN_FILE: &str = r#"use std::fs;
use crate::store::Store;
use crate::domain::ids::SysId; // its own module: fine
use std::time::Instant;
fn f() {
    let _ = tokio::spawn(async {});
    let _ = Instant::now();
    let _ = format!("{:?}", crate::rpc::pb::Key::default());
    let _: std::collections::HashMap<u8, u8> = Default::default(); // fine
}
#[cfg(test)]
mod tests {
    use super::super::super::node::jobs;
}
"#;

#[test]
fn the_layering_check_flags_a_known_bad_file() {
    let paths = named_paths(BAD_DOMAIN_FILE, &module_path("domain/bad.rs"), &externs(), "kmf").expect("parse");
    let (refused, _) = check("domain/bad.rs", &paths);
    let expected = [
        "src/domain/bad.rs:1: std::fs: the domain performs no I/O",
        "src/domain/bad.rs:2: crate::store::Store: domain may not use store",
        "src/domain/bad.rs:6: tokio::spawn: the domain uses nothing but",
        "src/domain/bad.rs:7: std::time::Instant::now: the domain performs no I/O",
        "src/domain/bad.rs:8: crate::rpc::pb::Key::default: generated types only in",
        "src/domain/bad.rs:13: crate::node::jobs: domain may not use node",
    ];
    for line in expected {
        assert!(refused.iter().any(|r| r.starts_with(line)), "not flagged: {line}\nflagged:\n{}", refused.join("\n"));
    }
    assert_eq!(refused.len(), expected.len(), "flagged more than expected:\n{}", refused.join("\n"));

    // The services of `node` import one way (NODE_SERVICES).
    let uses = |what: &str| format!("use crate::node::{what};");
    for (file, what, flagged) in [
        ("node/catalog/keys.rs", "exchange::Exchange", true),
        ("node/jobs/mod.rs", "audit::Audit", true),
        ("node/exchange/source.rs", "clone::Clones", true),
        ("node/clone/target.rs", "rekey::Rekey", true),
        ("node/ports.rs", "context::Context", true),
        ("node/catalog/keys.rs", "Services", true),
        ("node/exchange/source.rs", "catalog::Catalog", false),
        ("node/clone/target.rs", "exchange::PlannedRequest", false),
        ("node/diagnostics/mod.rs", "byok::Byok", false),
        ("node/rekey/mod.rs", "context::Blocking", false),
        ("node/mod.rs", "diagnostics::Diagnostics", false),
        ("node/exchange/tests.rs", "testing::pair", false),
        ("node/exchange/tests_faults.rs", "testing::pair", false),
        ("node/exchange/source.rs", "testing::pair", true),
    ] {
        let paths = named_paths(&uses(what), &module_path(file), &externs(), "kmf").expect("parse");
        assert_eq!(!check(file, &paths).0.is_empty(), flagged, "{what} in {file}: {:?}", check(file, &paths).0);
    }
    let sibling = "use super::super::crypto::Crypto;";
    let paths = named_paths(sibling, &module_path("node/catalog/keys.rs"), &externs(), "kmf").expect("parse");
    assert!(!check("node/catalog/keys.rs", &paths).0.is_empty(), "a super:: path is resolved and checked too");

    let redb = "fn open() -> redb::Database { todo!() }";
    for (file, flagged) in [("store/catalog.rs", true), ("store/redb_engine.rs", false), ("app.rs", true)] {
        let paths = named_paths(redb, &module_path(file), &externs(), "kmf").expect("parse");
        assert_eq!(!check(file, &paths).0.is_empty(), flagged, "redb in {file}");
    }
}

#[test]
fn rustls_uses_ring_only() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    assert!(lock.contains("name = \"ring\""), "ring is the crypto provider");
    assert!(!lock.contains("name = \"aws-lc-rs\"") && !lock.contains("name = \"aws-lc-sys\""), "aws-lc in Cargo.lock");
}
