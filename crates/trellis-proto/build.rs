//! Compiles `proto/**/*.proto` with protox (a protobuf compiler in Rust), so `cargo build`
//! needs no `protoc` on the machine, and generates tonic servers and clients from them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/dapr/proto/runtime/v1/dapr.proto",
        "proto/dapr/proto/runtime/v1/appcallback.proto",
        "proto/durabletask/task_hub.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    // The RPC names of the `Dapr` service, so the server can tell an RPC it serves from one
    // of a building block it does not have (tonic answers both with a bare UNIMPLEMENTED).
    let rpcs: Vec<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "dapr.proto.runtime.v1")
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "Dapr")
        .flat_map(|s| s.method.iter().map(|m| format!("{:?}", m.name())))
        .collect();
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("dapr_rpcs.rs");
    std::fs::write(
        out,
        format!("pub const DAPR_RPCS: &[&str] = &[{}];\n", rpcs.join(", ")),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
