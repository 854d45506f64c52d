//! Compiles the wire contract with protox, so no system `protoc` is needed,
//! and writes the descriptor set that server reflection serves.

use std::{env, error::Error, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_file("customers/v1/customer.proto")?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("customers_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    // Our codec reports undecodable requests as INVALID_ARGUMENT; prost's
    // own reports them as INTERNAL.
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .codec_path("crate::api::codec::ContractCodec")
        .build_client(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
