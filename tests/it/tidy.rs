//! Architecture checks: the domain stays pure, generated types stay at the edge.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn offenders(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    assert!(!files.is_empty(), "no files under {dir}");
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue; // docs may name what the code must not use
            }
            for f in forbidden {
                if line.contains(f) {
                    found.push(format!("{}:{}: {f}", file.display(), n + 1));
                }
            }
        }
    }
    found
}

#[test]
fn domain_has_no_io_imports() {
    let forbidden = [
        "tokio",
        "tonic",
        "redb",
        "openssl",
        "rustls",
        "std::fs",
        "std::env",
        "std::net::TcpStream",
        "SystemTime",
        "Instant::now",
        "Utc::now",
        "Local::now",
        "crate::store",
        "crate::rpc",
        "crate::signer",
        "crate::tls",
        "crate::node",
        "crate::app",
    ];
    let found = offenders("src/domain", &forbidden);
    assert!(found.is_empty(), "the domain must stay pure:\n{}", found.join("\n"));
}

#[test]
fn generated_types_stay_in_rpc_and_cli() {
    let mut found = Vec::new();
    for dir in ["src/domain", "src/node", "src/store", "src/signer", "src/tls"] {
        found.extend(offenders(dir, &["pb::", "crate::rpc"]));
    }
    assert!(found.is_empty(), "protobuf types outside the RPC edge:\n{}", found.join("\n"));
}

#[test]
fn only_the_store_imports_redb() {
    let mut found = Vec::new();
    for dir in ["src/domain", "src/node", "src/rpc", "src/signer", "src/tls", "src/cli"] {
        found.extend(offenders(dir, &["redb::"]));
    }
    assert!(found.is_empty(), "redb outside the store:\n{}", found.join("\n"));
}

#[test]
fn rustls_uses_ring_only() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).expect("Cargo.lock");
    assert!(lock.contains("name = \"ring\""), "ring is the crypto provider");
    assert!(!lock.contains("name = \"aws-lc-rs\"") && !lock.contains("name = \"aws-lc-sys\""), "aws-lc in Cargo.lock");
}
