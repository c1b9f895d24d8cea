//! Compiles the protos with protox (pure Rust), so no system `protoc` is needed, and
//! writes the encoded descriptor set that the reflection service serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/switchyard/v1/data_plane.proto",
        "proto/switchyard/v1/operator.proto",
        "proto/switchyard/v1/brain.proto",
        "proto/switchyard/v1/auth.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("switchyard_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::SmallBufferCodec")
        // The CLI and HTTP API print these as JSON.
        .type_attribute(".switchyard.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
