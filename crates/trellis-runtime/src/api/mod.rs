//! The Dapr API: HTTP routes and wire JSON, the gRPC service ([`grpc`]), and the mapping
//! of errors to Dapr codes.
//!
//! Every operation is implemented once in [`ops`]; the HTTP handlers here and the gRPC
//! service are thin adapters over it. [`router`] builds the public HTTP API,
//! [`grpc::api`] the gRPC API and [`internal_api`] the sidecar-to-sidecar port; all are
//! tower services (the HTTP one an `axum::Router`) that tests can drive without a socket.
//! The sidecar serves the public one as a [`PublicApi`], which sends invocations past the
//! router when no layer but metrics and catch-panic is configured (`fast.rs`).

mod allowlist;
mod app_id;
pub mod callbacks;
mod configuration;
mod error;
mod fast;
mod gojson;
pub mod grpc;
mod internal;
mod invoke;
mod jobs;
mod layers;
mod lock;
mod meta;
pub mod middleware;
pub mod ops;
mod pubsub;
mod secrets;
mod state;
mod workflow;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post, put};

pub use allowlist::ApiAllowlist;
pub use error::ApiError;
pub use fast::PublicApi;
pub use internal::internal_api;
pub use layers::{INVOKE_ROUTE, Route, catch_panic, route_template, trace_id};
pub use workflow::instance_json as workflow_instance_json;

use crate::runtime::Runtime;

/// The public Dapr API of one sidecar.
pub fn router(rt: Arc<Runtime>) -> Router {
    layered(rt).0
}

/// [`router`], and whether it has a layer besides metrics and catch-panic
/// ([`layers::public`]).
fn layered(rt: Arc<Runtime>) -> (Router, bool) {
    let routes = Router::new()
        .route("/v1.0/healthz", get(meta::healthz))
        .route("/v1.0/healthz/outbound", get(meta::healthz_outbound))
        .route("/v1.0/metadata", get(meta::get_metadata))
        .route("/v1.0/metadata/{key}", put(meta::put_metadata))
        .route("/v1.0/shutdown", post(meta::shutdown))
        .route("/v1.0/invoke/{*rest}", any(invoke::by_path))
        .route("/v1.0/state/{store}", post(state::save).put(state::save))
        .route(
            "/v1.0/state/{store}/bulk",
            post(state::bulk).put(state::bulk),
        )
        .route(
            "/v1.0/state/{store}/transaction",
            post(state::transaction).put(state::transaction),
        )
        .route(
            "/v1.0/state/{store}/{key}",
            get(state::get).delete(state::delete),
        )
        .route(
            "/v1.0-alpha1/state/{store}/query",
            post(state::query).put(state::query),
        )
        // `bulk` is matched before `{key}`, as in Dapr: a secret named "bulk" cannot be read
        // one at a time.
        .route("/v1.0/secrets/{store}/bulk", get(secrets::bulk))
        .route("/v1.0/secrets/{store}/{key}", get(secrets::get))
        .route("/v1.0/configuration/{store}", get(configuration::get))
        .route(
            "/v1.0-alpha1/configuration/{store}",
            get(configuration::get),
        )
        .route(
            "/v1.0/configuration/{store}/subscribe",
            get(configuration::subscribe),
        )
        .route(
            "/v1.0-alpha1/configuration/{store}/subscribe",
            get(configuration::subscribe),
        )
        .route(
            "/v1.0/configuration/{store}/{id}/unsubscribe",
            get(configuration::unsubscribe),
        )
        .route(
            "/v1.0-alpha1/configuration/{store}/{id}/unsubscribe",
            get(configuration::unsubscribe),
        )
        .route("/v1.0-alpha1/lock/{store}", post(lock::lock))
        .route("/v1.0-alpha1/unlock/{store}", post(lock::unlock))
        .route(
            "/v1.0/publish/bulk/{pubsub}/{*topic}",
            post(pubsub::bulk_publish).put(pubsub::bulk_publish),
        )
        .route(
            "/v1.0-alpha1/publish/bulk/{pubsub}/{*topic}",
            post(pubsub::bulk_publish).put(pubsub::bulk_publish),
        )
        .route(
            "/v1.0/publish/{pubsub}/{*topic}",
            post(pubsub::publish).put(pubsub::publish),
        )
        .route(
            "/v1.0/publish/{pubsub}",
            post(pubsub::publish_no_topic).put(pubsub::publish_no_topic),
        )
        .route(
            "/v1.0/publish/{pubsub}/",
            post(pubsub::publish_no_topic).put(pubsub::publish_no_topic),
        );
    let routes = jobs::routes(workflow::routes(routes))
        // Dapr sends every unmatched route to service invocation, which then fails for lack
        // of an app id; the same answer keeps clients that probe routes consistent.
        .fallback(|| async { ApiError::no_app_id() })
        .with_state(rt.clone());
    layers::public(routes, rt)
}
