//! Compiles `proto/` with protox (no system protoc) and writes the descriptor set
//! that the daemon embeds for server reflection.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true).open_files([
        "kmf/v1/kmf.proto",
        "kmf/v1/audit.proto",
        "kmf/v1/properties.proto",
        "kmf/v1/policies.proto",
        "kmf/v1/crypto.proto",
        "kmf/v1/diagnostics.proto",
        "kmf/v1/clone.proto",
        "kmf/v1/rekey.proto",
    ])?;
    std::fs::write(out_dir.join("kmf_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    // Type names (`prost::Name`) let kmfctl find a response's descriptor for `--json`.
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure().compile_fds_with_config(compiler.file_descriptor_set(), config)?;
    Ok(())
}
