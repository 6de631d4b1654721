//! The Dapr gRPC API (`dapr.proto.runtime.v1.Dapr`) on `--dapr-grpc-port`.
//!
//! [`api`] builds one tower service (tonic's `Dapr` server inside), so the sidecar serves
//! it with the same server as the HTTP API and tests can drive it without a socket. Each
//! RPC decodes its protobuf request into an [`ops`](super::ops) call and encodes the
//! result; errors become a gRPC status with a `google.rpc.ErrorInfo` detail.

mod app_channel;
mod configuration;
pub(crate) mod convert;
mod dispatch;
mod invoke;
mod jobs;
mod proxy;
mod service;
mod status;
mod subscribe;
mod task_hub;
mod workflow;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::Service;
use tower_http::catch_panic::CatchPanicLayer;

pub use app_channel::GrpcAppChannel;
pub use status::to_status;

use crate::runtime::Runtime;

/// The gRPC API of one sidecar, as the server serves it.
///
/// Layers, outermost first, and why (the first two as on HTTP, see `api/layers.rs`):
/// 1. **tracing** (`spec.tracing`): the call's span covers everything below.
/// 2. **metrics**: every call with the status the client got, in its trailers.
/// 3. **catch-panic**: a bug in one RPC answers that RPC with INTERNAL and leaves the
///    connection and the sidecar running.
/// 4. **API logging** (`--enable-api-logging`): every call, the refused ones included.
/// 5. **API token**: before any RPC runs, as on HTTP; there are no exempt methods, and a
///    proxied call needs the token too.
/// 6. **API allowlist** (`spec.api`): after the token, above the proxy (a proxied call is
///    the invocation API).
/// 7. [`dispatch::Dispatch`]: the proxy by `dapr-app-id`, the RPCs, and UNIMPLEMENTED for
///    the rest.
///
/// One `ServiceBuilder` stack of concrete layers, as for HTTP: an absent layer is a
/// pass-through, and of the layers every sidecar has, none boxes a service per call.
pub fn api(
    rt: Arc<Runtime>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future = impl Send + 'static>
+ Clone
+ Send
+ 'static {
    let state = || rt.clone();
    let allowlist = rt
        .api_allowlist
        .is_some()
        .then(|| middleware::from_fn_with_state(state(), allowlist));
    let token = rt
        .api_token
        .is_some()
        .then(|| middleware::from_fn_with_state(state(), require_token));
    let logging = rt
        .enable_api_logging
        .then(|| middleware::from_fn_with_state(state(), super::layers::log_grpc_call));
    let metrics = rt
        .metrics
        .is_enabled()
        .then(|| crate::metrics::layers::GrpcLayer(rt.metrics.clone()));
    // Outermost, as on the HTTP API (see `api::layers`).
    let tracing = rt
        .tracer
        .clone()
        .map(|tracer| crate::trace::ServeLayer::new(tracer, crate::trace::Naming::GrpcMethod));
    tower::ServiceBuilder::new()
        .option_layer(tracing)
        .option_layer(metrics)
        // catch-panic answers with a body of its own type; the layers above take axum's.
        .map_response(IntoResponse::into_response)
        .layer(CatchPanicLayer::custom(panic_status as fn(_) -> _))
        .option_layer(logging)
        .option_layer(token)
        .option_layer(allowlist)
        .service(dispatch::Dispatch::new(rt.clone()))
}

fn panic_status(panic: Box<dyn std::any::Any + Send>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    tracing::error!(panic = detail, "grpc handler panicked");
    grpc_response(tonic::Status::internal(format!(
        "internal error while handling the request: {detail}"
    )))
}

pub(super) fn grpc_response(status: tonic::Status) -> Response {
    status.into_http::<axum::body::Body>()
}

async fn require_token(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    let expected = rt.api_token.as_deref().unwrap_or_default();
    let presented = req
        .headers()
        .get("dapr-api-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if super::layers::constant_time_eq(presented, expected.as_bytes()) {
        next.run(req).await
    } else {
        tracing::debug!(path = req.uri().path(), "grpc call refused: bad api token");
        grpc_response(to_status(super::ApiError::new(
            http::StatusCode::UNAUTHORIZED,
            "ERR_API_UNAUTHORIZED",
            "invalid api token: send the value of DAPR_API_TOKEN in the dapr-api-token metadata",
        )))
    }
}

async fn allowlist(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    if let Some(list) = &rt.api_allowlist {
        let (service, rpc) = dispatch::split(req.uri().path()).unwrap_or_default();
        let checked = if service == trellis_proto::DAPR_SERVICE {
            list.check_grpc(rpc, false)
        } else if req.headers().contains_key(crate::invoke::APP_ID) {
            list.check_grpc(rpc, true)
        } else {
            Ok(())
        };
        if let Err(refused) = checked {
            return grpc_response(to_status(refused));
        }
    }
    next.run(req).await
}

/// Any RPC this build does not serve: UNIMPLEMENTED, naming the building block, so a user
/// knows what is missing rather than guessing from a bare status.
fn unimplemented(path: &str) -> Response {
    let message = match dispatch::split(path) {
        Some((trellis_proto::DAPR_SERVICE, rpc)) => format!(
            "{rpc} is part of the {} API, which this Trellis build does not implement yet",
            building_block(rpc)
        ),
        Some((trellis_proto::TASK_HUB_SERVICE, rpc)) => {
            format!("{rpc} is not a method of TaskHubSidecarService (the workflow API)")
        }
        Some((service, _)) => format!("unknown service {service}"),
        None => format!("unknown method {path}"),
    };
    tracing::debug!(path, "unimplemented grpc method");
    grpc_response(tonic::Status::unimplemented(message))
}

/// The Dapr building block an RPC of the `Dapr` service belongs to, by its name.
fn building_block(rpc: &str) -> &'static str {
    const BLOCKS: &[(&str, &str)] = &[
        ("actor", "actors"),
        ("workflow", "workflow"),
        ("configuration", "configuration"),
        ("secret", "secrets"),
        ("binding", "bindings"),
        ("lock", "distributed lock"),
        ("job", "jobs"),
        ("crypt", "cryptography"),
        ("subtle", "cryptography"),
        ("converse", "conversation"),
    ];
    let rpc = rpc.to_ascii_lowercase();
    BLOCKS
        .iter()
        .find(|(needle, _)| rpc.contains(needle))
        .map_or("Dapr", |(_, block)| block)
}

#[cfg(test)]
mod tests {
    use super::building_block;

    #[test]
    fn names_the_building_block_of_an_rpc() {
        assert_eq!(building_block("GetSecret"), "secrets");
        assert_eq!(building_block("GetBulkSecret"), "secrets");
        assert_eq!(building_block("TryLockAlpha1"), "distributed lock");
        assert_eq!(building_block("UnlockAlpha1"), "distributed lock");
        assert_eq!(building_block("StartWorkflowBeta1"), "workflow");
        assert_eq!(building_block("RegisterActorReminder"), "actors");
        assert_eq!(
            building_block("SubscribeConfigurationAlpha1"),
            "configuration"
        );
        assert_eq!(building_block("InvokeBinding"), "bindings");
        assert_eq!(building_block("ScheduleJobAlpha1"), "jobs");
        assert_eq!(building_block("DeleteJobsByPrefix"), "jobs");
        assert_eq!(building_block("SubtleSignAlpha1"), "cryptography");
        assert_eq!(building_block("EncryptAlpha1"), "cryptography");
        assert_eq!(building_block("ConverseAlpha2"), "conversation");
    }
}
