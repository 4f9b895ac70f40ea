//! Compiles the protocol definitions in `proto/` without needing `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/peer.proto",
        "proto/operator.proto",
        "proto/workload.proto",
        "proto/authorizer.proto",
        "proto/otlp.proto",
    ];
    // Shared by several protocols: generated once, referred to by the others.
    let shared = ["proto/golden.proto", "proto/tap.proto"];
    for proto in protos.iter().chain(&shared) {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(protox::compile(shared, ["proto"])?)?;
    tonic_prost_build::configure()
        .build_transport(false)
        .extern_path(".strait.golden.v1", "crate::proto::golden")
        .extern_path(".strait.tap.v1", "crate::proto::tap")
        .compile_fds(protox::compile(protos, ["proto"])?)?;
    Ok(())
}
