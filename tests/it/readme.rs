//! README blocks that say they run as written do: the block is taken from
//! README.md, its build lines (`cargo build`, `export PATH=`) replaced by the
//! binaries this test run built, its directory by a temporary one, and run
//! with `bash -euo pipefail` under a time limit.

use std::path::Path;
use std::process::Command;

use crate::binaries::KMFD;

/// The first ```bash block after the heading `heading` in README.md.
fn bash_block(heading: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    let from = readme.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let start = readme[from..].find("```bash\n").expect("a bash block") + from + "```bash\n".len();
    let end = readme[start..].find("```").expect("block end") + start;
    readme[start..end].to_owned()
}

/// Runs `block` in `dir` (which replaces `readme_dir`) with the built binaries first on PATH.
fn run_block(block: &str, readme_dir: &str, dir: &Path) -> (bool, String) {
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("cargo build") && !l.starts_with("export PATH="))
        .map(|l| l.replace(readme_dir, dir.to_str().expect("utf8")) + "\n")
        .collect();
    assert!(script.contains(dir.to_str().expect("utf8")), "the block no longer uses {readme_dir}:\n{script}");
    let bins = Path::new(KMFD).parent().expect("target dir");
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("timeout")
        .args(["180", "bash", "-euo", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path)
        .output()
        .expect("bash");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn readme_byok_block_runs_as_written() {
    let test = "readme::readme_byok_block_runs_as_written";
    if Command::new("openssl").arg("version").output().map(|o| !o.status.success()).unwrap_or(true) {
        crate::skip::skip(test, "the openssl CLI is not installed (apt-get install openssl)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("kmf-byok");
    let (ok, text) = run_block(&bash_block("## Bring your own key (BYOK)"), "/tmp/kmf-byok", &dir);
    assert!(ok, "the README's BYOK commands failed:\n{text}");
    assert!(text.contains("brought here"), "decrypt printed the plaintext:\n{text}");
    assert!(text.contains("the exported key is the imported one"), "{text}");
    // `kill %1` stopped kmfd dev, which removed its directory.
    let dev_out = std::fs::read_to_string(dir.join("dev.out")).expect("dev.out");
    assert!(dev_out.contains("SIGTERM: stopping") && dev_out.contains("removed "), "{dev_out}");
}
