//! Compiles the demo's gRPC service (the sample app the tests call) without `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../cli/proto/demo.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../cli/proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
