//! Compiles every proto under proto/ with protox (pure Rust), so a fresh machine builds the
//! wire protocol with cargo alone: no system protoc. The encoded descriptor set is kept for
//! gRPC reflection, so grpcurl works against every Arbiter server without proto files.
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "arbiter/supervisor/v1/supervisor.proto",
    "arbiter/video/v1/video.proto",
    "arbiter/worker/v1/worker.proto",
    "arbiter/tts/v1/tts.proto",
    // The kubelet's, for the supervisor's Kubernetes mode (and the tests that play the kubelet).
    "kubelet/dra/v1/api.proto",
    "kubelet/pluginregistration/v1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("arbiter_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        // Undecodable requests are the caller's mistake: INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::StrictCodec")
        // A holder gets one update per change of its lease, so a Granted that restates the
        // whole Lease costs nothing worth boxing it for (and boxing would change the type
        // every holder matches on).
        .enum_attribute(
            "arbiter.supervisor.v1.LeaseUpdate.update",
            "#[allow(clippy::large_enum_variant)]",
        )
        .compile_fds(compiler.file_descriptor_set())?;
    // tonic-prost-build 0.14 does not pass its own rerun-if-changed on: say it here.
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
