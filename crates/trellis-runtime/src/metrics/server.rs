//! `GET /metrics` on the sidecar's metrics port (`--metrics-port`): the Prometheus text
//! exposition, served by `crate::server::serve` like the other ports, on its own listener so
//! that scrapers need no API token and never share limits with the app's calls.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;

use super::Metrics;
use crate::health::Health;

/// The content type of the text format version 0.0.4, which every Prometheus reads.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct Scrape {
    metrics: Metrics,
    health: Arc<Health>,
}

/// The metrics port's routes: `GET /metrics` (and `/` for a quick look in a browser).
pub fn router(metrics: Metrics, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/", get(scrape))
        .with_state(Scrape { metrics, health })
        .layer(crate::api::catch_panic())
}

async fn scrape(State(s): State<Scrape>) -> impl IntoResponse {
    // Health is a state, not an event: read when asked.
    s.metrics
        .set_app_healthy(s.health.ready() && s.health.app_healthy());
    (
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        s.metrics.encode(),
    )
}
