//! Compiles `proto/**/*.proto` with protox (a protobuf compiler in Rust), so `cargo build`
//! needs no `protoc` on the machine, and generates tonic servers and clients from them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/dapr/proto/runtime/v1/dapr.proto",
        "proto/dapr/proto/runtime/v1/appcallback.proto",
        "proto/durabletask/task_hub.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    // The RPC names of the services the sidecar serves, so the server can tell an RPC it
    // serves from one of a building block it does not have (tonic answers both with a bare
    // UNIMPLEMENTED).
    let rpcs = |package: &str, service: &str| -> String {
        fds.file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == service)
            .flat_map(|s| s.method.iter().map(|m| format!("{:?}", m.name())))
            // Sorted, so that the server finds a name by binary search.
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("dapr_rpcs.rs");
    std::fs::write(
        out,
        format!(
            "pub const DAPR_RPCS: &[&str] = &[{}];\npub const TASK_HUB_RPCS: &[&str] = &[{}];\n",
            rpcs("dapr.proto.runtime.v1", "Dapr"),
            rpcs("", "TaskHubSidecarService"),
        ),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
