//! The Dapr gRPC API (`dapr.proto.runtime.v1.Dapr`) on `--dapr-grpc-port`.
//!
//! [`router`] builds a plain `axum::Router` (tonic's service inside), so the sidecar serves
//! it with the same server as the HTTP API and tests can drive it without a socket. Each
//! RPC decodes its protobuf request into an [`ops`](super::ops) call and encodes the
//! result; errors become a gRPC status with a `google.rpc.ErrorInfo` detail.

mod app_channel;
mod configuration;
pub(crate) mod convert;
mod invoke;
mod jobs;
mod proxy;
mod service;
mod status;
mod subscribe;
mod task_hub;
mod workflow;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use trellis_proto::durabletask::task_hub_sidecar_service_server::TaskHubSidecarServiceServer;
use trellis_proto::runtime::dapr_server::DaprServer;

pub use app_channel::GrpcAppChannel;
pub use status::to_status;

use crate::runtime::Runtime;

/// The gRPC API of one sidecar.
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
/// 7. **proxy by `dapr-app-id`**: above the RPC dispatch, since a proxied call is for a
///    service the sidecar does not serve itself.
pub fn router(rt: Arc<Runtime>) -> Router {
    // Messages over the limit the HTTP API applies (`--max-body-size`) are refused by tonic
    // with OUT_OF_RANGE before any operation runs.
    let dapr = DaprServer::new(service::DaprApi::new(rt.clone()))
        .max_decoding_message_size(rt.max_request_body)
        .max_encoding_message_size(usize::MAX);
    // The workflow SDKs' service, on the same port as in Dapr.
    let task_hub = TaskHubSidecarServiceServer::new(task_hub::TaskHub::new(rt.clone()))
        .max_decoding_message_size(rt.max_request_body)
        .max_encoding_message_size(usize::MAX);
    let mut router = tonic::service::Routes::new(dapr)
        .add_service(task_hub)
        .into_axum_router()
        .fallback(unimplemented)
        .layer(middleware::from_fn(undeclared_rpcs))
        .layer(middleware::from_fn_with_state(
            rt.clone(),
            proxy::proxy_by_app_id,
        ));
    if rt.api_allowlist.is_some() {
        router = router.layer(middleware::from_fn_with_state(rt.clone(), allowlist));
    }
    if rt.api_token.is_some() {
        router = router.layer(middleware::from_fn_with_state(rt.clone(), require_token));
    }
    if rt.enable_api_logging {
        router = router.layer(middleware::from_fn_with_state(
            rt.clone(),
            super::layers::log_grpc_call,
        ));
    }
    router = router.layer(CatchPanicLayer::custom(panic_status as fn(_) -> _));
    if rt.metrics.is_enabled() {
        router = router.layer(middleware::from_fn_with_state(
            rt.metrics.clone(),
            crate::metrics::layers::grpc,
        ));
    }
    // Outermost, as on the HTTP API (see `api::layers`).
    if let Some(tracer) = &rt.tracer {
        router = router.layer(crate::trace::ServeLayer::new(
            tracer.clone(),
            crate::trace::Naming::GrpcMethod,
        ));
    }
    router
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
        let path = req.uri().path();
        let (service, rpc) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or_default();
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

/// tonic answers an RPC its service does not declare with a bare UNIMPLEMENTED; this layer
/// answers it first, naming the building block.
async fn undeclared_rpcs(req: Request, next: Next) -> Response {
    let undeclared = req
        .uri()
        .path()
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .is_some_and(|(service, rpc)| match service {
            trellis_proto::DAPR_SERVICE => !trellis_proto::DAPR_RPCS.contains(&rpc),
            trellis_proto::TASK_HUB_SERVICE => !trellis_proto::TASK_HUB_RPCS.contains(&rpc),
            _ => false,
        });
    if undeclared {
        unimplemented(req).await.into_response()
    } else {
        next.run(req).await
    }
}

/// Any RPC this build does not serve: UNIMPLEMENTED, naming the building block, so a user
/// knows what is missing rather than guessing from a bare status.
async fn unimplemented(req: Request) -> impl IntoResponse {
    let path = req.uri().path();
    let message = match path.strip_prefix('/').and_then(|p| p.split_once('/')) {
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
