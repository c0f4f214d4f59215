//! Compiles `sesame/v1/*.proto` with protox (no system `protoc`) and generates prost messages
//! and tonic clients and servers.

use std::path::Path;

const PROTOS: &[&str] = &[
    "sesame/v1/connection.proto",
    "sesame/v1/dialer.proto",
    "sesame/v1/remote.proto",
    "sesame/v1/token.proto",
    "sesame/v1/tunnel.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    println!("cargo:rerun-if-changed={}", root.join("sesame").display());
    println!("cargo:rerun-if-changed={}", root.join("google").display());

    let descriptors = protox::compile(PROTOS, [root])?;
    tonic_prost_build::configure()
        // Data payloads stay `Bytes`, so a decoded chunk is a slice of the receive buffer and
        // the relay forwards it without copying.
        .bytes(".sesame.v1")
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(descriptors)?;
    Ok(())
}
