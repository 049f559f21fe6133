//! The layering rules: ARCHITECTURE.md's code map ("may use") as tables, and
//! the check of one file's paths against them.

use crate::tidy_paths::NamedPath;

/// What a module may use of the crate's other modules.
pub enum Uses {
    Only(&'static [&'static str]),
    Everything,
}

/// Every top-level module of `src/` (`lib` is `src/lib.rs`, `bin` is `src/bin/`).
pub const MODULES: &[(&str, Uses)] = &[
    ("domain", Uses::Only(&[])),
    ("offload", Uses::Only(&[])),
    ("store", Uses::Only(&["domain", "offload"])),
    ("signer", Uses::Only(&["domain", "offload"])),
    ("tls", Uses::Only(&["domain", "clock"])),
    ("node", Uses::Only(&["domain", "store", "signer", "clock", "error"])),
    // "everything above": the layers above in the table, and clock and error (status.rs maps AppError).
    ("rpc", Uses::Only(&["domain", "store", "signer", "tls", "node", "clock", "error"])),
    ("metrics", Uses::Only(&["domain", "node", "tls", "connections"])),
    ("connections", Uses::Only(&[])),
    ("tls_reload", Uses::Only(&["tls", "rpc", "clock"])),
    // The fuzz targets' bodies: the decoders they drive.
    ("fuzzing", Uses::Only(&["domain", "store", "config", "cli"])),
    ("app", Uses::Everything),
    // The code map leaves these columns empty: what the code uses today.
    ("config", Uses::Only(&["domain", "app", "node", "signer", "tls", "connections"])),
    ("telemetry", Uses::Only(&["config"])),
    ("clock", Uses::Only(&["domain"])),
    ("error", Uses::Only(&["domain", "store", "signer", "offload"])),
    ("cli", Uses::Everything),
    ("lib", Uses::Only(&[])),
    ("bin", Uses::Only(&["cli"])),
];

/// The only crates the domain may use ("nothing but std, thiserror, zeroize, hex, sha2, croner, chrono").
pub const DOMAIN_CRATES: &[&str] = &["std", "core", "alloc", "thiserror", "zeroize", "hex", "sha2", "croner", "chrono"];

/// Crates the code map gives to named modules only; a place is a module or a
/// file or directory under `src/`.
pub const CRATES: &[(&str, &[&str])] = &[
    ("redb", &["store/redb_engine.rs", "store/migrate_v1.rs"]),
    ("cryptoki", &["signer/pkcs11/", "app"]),
    ("openssl", &["signer", "app", "cli"]),
    ("rustls", &["tls", "rpc", "app", "cli"]),
    ("rcgen", &["tls", "rpc", "app", "cli"]),
    ("x509_parser", &["tls", "rpc", "app", "cli"]),
    ("prometheus", &["metrics", "app", "cli"]),
    ("hyper", &["metrics", "app", "cli"]),
];

/// Generated protobuf types stay at the RPC edge: only these modules name them.
pub const GENERATED_TYPES: (&str, &[&str]) = ("crate::rpc::pb", &["rpc", "cli", "app"]);

/// What the domain never names: it performs no I/O, and time is its argument.
pub const NOT_IN_DOMAIN: &[&str] = &[
    "std::fs",
    "std::env",
    "std::process",
    "std::thread",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "std::net::UdpSocket",
    "std::net::ToSocketAddrs",
    "std::time::SystemTime",
    "std::time::UNIX_EPOCH",
    "std::time::Instant::now",
    "chrono::Utc::now",
    "chrono::Local",
];

/// Uses one file may make beyond its module's row, as the code map says.
pub const FILE_EXTRAS: &[(&str, &str)] = &[
    ("node/diagnostics/mod.rs", "crate::tls::validity"),
    // the unit tests' harness issues each instance's certificate
    ("node/testing.rs", "crate::tls::pki"),
];

/// Test code in `src/` may also use these (module, what).
pub const TEST_EXTRAS: &[(&str, &str)] = &[
    // the instance-key tests issue a CA and a certificate to sign with
    ("signer", "crate::tls::pki"),
    // the services' unit tests read a certificate an instance presents
    ("node", "crate::tls::pki"),
];

/// Where the code does what the code map does not allow: reported, kept narrow
/// (file and path) so nothing else slips in; remove a line once the code or the
/// map is mended (a line nothing matches fails the test).
pub const KNOWN_DEVIATIONS: &[(&str, &str)] = &[
    ("metrics/mod.rs", "crate::store::StoreCounts"),
    ("metrics/server.rs", "crate::signer::primitives::random_bytes"),
];

/// The files of `node` every service may use: the ports, the shared context
/// and the caches.
pub const NODE_SHARED: &[&str] = &["ports", "context", "cache"];

/// The services of `node` (one folder each), in the one-way order of their
/// imports: each may use the services its row names (and `NODE_SHARED`),
/// never one after it. `node/mod.rs`, which builds them all, uses every one.
pub const NODE_SERVICES: &[(&str, &[&str])] = &[
    ("ports", &[]),
    ("cache", &[]),
    ("context", &["ports"]),
    ("jobs", &[]),
    ("audit", &["jobs"]),
    ("catalog", &["jobs", "audit"]),
    ("crypto", &["jobs", "audit", "catalog"]),
    ("exchange", &["jobs", "audit", "catalog", "crypto"]),
    ("clone", &["jobs", "audit", "catalog", "crypto", "exchange"]),
    ("rekey", &["jobs", "audit", "catalog", "crypto", "exchange"]),
    ("byok", &["jobs", "audit", "catalog", "crypto", "exchange"]),
    ("diagnostics", &["jobs", "audit", "catalog", "crypto", "exchange", "clone", "rekey", "byok"]),
    // The unit tests' harness (cfg(test)): builds whole instances.
    ("testing", &["jobs", "audit", "catalog", "crypto", "exchange", "clone", "rekey", "byok", "diagnostics", "mod"]),
];

/// The service of a file of `node` (`node/exchange/source.rs` is `exchange`,
/// `node/ports.rs` is `ports`, `node/mod.rs` is `mod`).
pub fn node_service_of(file: &str) -> Option<&str> {
    let rest = file.strip_prefix("node/")?;
    let first = rest.split('/').next().unwrap_or(rest);
    Some(first.strip_suffix(".rs").unwrap_or(first))
}

/// Why `path`, named in the `node` file `file`, breaks the services' order.
fn node_order_refusal(file: &str, path: &NamedPath) -> Option<String> {
    let service = node_service_of(file)?;
    if path.segments.first()? != "crate" || path.segments.get(1)? != "node" || service == "mod" {
        return None;
    }
    let Some(target) = path.segments.get(2).map(String::as_str) else {
        return Some(format!("node/{service} names the whole layer; name the service it uses"));
    };
    // An item of node/mod.rs (`crate::node::Services`) is in `mod`.
    let target = if NODE_SERVICES.iter().any(|(name, _)| *name == target) { target } else { "mod" };
    // The unit tests (`tests.rs`, `tests_*.rs` of a service, or a cfg(test) item) may use the harness.
    let test_file = file.rsplit('/').next().is_some_and(|f| f == "tests.rs" || f.starts_with("tests_"));
    if target == service || (target == "testing" && (path.in_test || test_file)) {
        return None;
    }
    let Some((_, uses)) = NODE_SERVICES.iter().find(|(name, _)| *name == service) else {
        return Some(format!("node/{service} has no row in tidy_rules::NODE_SERVICES"));
    };
    let shared = NODE_SHARED.contains(&target) && !NODE_SHARED.contains(&service);
    (!shared && !uses.contains(&target)).then(|| format!("node/{service} may not use node/{target} (NODE_SERVICES)"))
}

/// `node/jobs.rs` is in `node`, `app.rs` in `app`, `bin/kmfd.rs` in `bin`.
pub fn module_of(file: &str) -> &str {
    let first = file.split('/').next().unwrap_or(file);
    first.strip_suffix(".rs").unwrap_or(first)
}

fn starts_with(path: &NamedPath, prefix: &str) -> bool {
    let prefix: Vec<&str> = prefix.split("::").collect();
    path.segments.len() >= prefix.len() && path.segments.iter().zip(&prefix).all(|(a, b)| a == b)
}

fn is_in(file: &str, place: &str) -> bool {
    place == module_of(file) || file == place || (place.ends_with('/') && file.starts_with(place))
}

/// Why `path`, named in `file` (relative to `src/`), breaks the rules; None if it does not.
pub fn refusal(file: &str, path: &NamedPath) -> Option<String> {
    let module = module_of(file);
    let first = path.segments.first()?.as_str();
    let (generated, edge) = GENERATED_TYPES;
    if starts_with(path, generated) && !edge.contains(&module) {
        return Some(format!("generated types only in {edge:?}"));
    }
    if module == "domain" && NOT_IN_DOMAIN.iter().any(|p| starts_with(path, p)) {
        return Some("the domain performs no I/O and reads no clock".into());
    }
    if first == "crate" {
        let target = path.segments.get(1)?.as_str();
        let rule = MODULES.iter().find(|(name, _)| *name == module).map(|(_, uses)| uses);
        let allowed = match rule {
            Some(Uses::Everything) => true,
            Some(Uses::Only(list)) => list.contains(&target),
            None => false,
        };
        let extra = FILE_EXTRAS.iter().any(|(f, p)| *f == file && starts_with(path, p))
            || (path.in_test && TEST_EXTRAS.iter().any(|(m, p)| *m == module && starts_with(path, p)));
        if target == module && module == "node" {
            return node_order_refusal(file, path);
        }
        return (target != module && !allowed && !extra).then(|| format!("{module} may not use {target}"));
    }
    if module == "domain" && !DOMAIN_CRATES.contains(&first) {
        return Some(format!("the domain uses nothing but {DOMAIN_CRATES:?}"));
    }
    let (_, places) = CRATES.iter().find(|(name, _)| *name == first)?;
    (!places.iter().any(|place| is_in(file, place))).then(|| format!("{first} only in {places:?}"))
}

/// Every refusal of one file, as `src/<file>:<line>: <path>: <why>`, and the
/// known deviations it used.
pub fn check(file: &str, paths: &[NamedPath]) -> (Vec<String>, Vec<(&'static str, &'static str)>) {
    let mut refused = Vec::new();
    let mut deviations = Vec::new();
    for path in paths {
        let Some(why) = refusal(file, path) else { continue };
        match KNOWN_DEVIATIONS.iter().find(|(f, p)| *f == file && starts_with(path, p)) {
            Some(deviation) => deviations.push(*deviation),
            None => refused.push(format!("src/{file}:{}: {}: {why}", path.line, path.text())),
        }
    }
    (refused, deviations)
}
