//! Dapr's gRPC wire contract, generated at build time from the `.proto` files in `proto/`.
//!
//! The files are written for Trellis from Dapr's wire facts (package, service, message and
//! field names and numbers), so that Dapr's SDKs and generated clients talk to Trellis
//! unchanged. Only the runtime's API layer (and tests) use these types: the building blocks
//! never see them.

// The modules mirror the protobuf packages, as the generated code refers to other packages
// by relative paths (`super::super::common::v1`).
#[allow(clippy::all, missing_docs)]
pub mod dapr {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.common.v1");
            }
        }
        pub mod runtime {
            pub mod v1 {
                tonic::include_proto!("dapr.proto.runtime.v1");
            }
        }
    }
}

/// The durabletask task-hub protocol of the Dapr workflow SDKs (`TaskHubSidecarService`, history
/// events, actions, work items). Its `.proto` file has no package, so prost writes it to `_.rs`.
#[allow(clippy::all, missing_docs)]
pub mod durabletask {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// `dapr.proto.common.v1`: invocation, state items and options.
pub use dapr::proto::common::v1 as common;
/// `dapr.proto.runtime.v1`: the `Dapr` service and the `AppCallback` services.
pub use dapr::proto::runtime::v1 as runtime;

/// The fully qualified name of the `Dapr` service, the prefix of its RPC paths.
pub const DAPR_SERVICE: &str = "dapr.proto.runtime.v1.Dapr";

/// The fully qualified name of the workflow SDKs' service (its file has no package).
pub const TASK_HUB_SERVICE: &str = "TaskHubSidecarService";

// `DAPR_RPCS` and `TASK_HUB_RPCS`: the names of the RPCs each service declares, sorted
// (written by build.rs).
include!(concat!(env!("OUT_DIR"), "/dapr_rpcs.rs"));

#[cfg(test)]
mod rpc_names {
    /// The server looks names up by binary search (`api/grpc/dispatch.rs` in the runtime).
    #[test]
    fn are_sorted_and_known() {
        for names in [super::DAPR_RPCS, super::TASK_HUB_RPCS] {
            assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        }
        assert!(super::DAPR_RPCS.binary_search(&"GetState").is_ok());
        assert!(super::TASK_HUB_RPCS.binary_search(&"Hello").is_ok());
    }
}
