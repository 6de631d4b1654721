//! The tower layers around the public API, composed in one place.
//!
//! The layers form one stack, added with one `Router::layer` call, which wraps each route
//! after routing, so all of them see the route template the request matched
//! (`MatchedPath`), and the fallback. Order, outermost first, and why:
//! 1. **tracing** (`spec.tracing`): outermost, so a request's span covers everything done
//!    for it and ends with the status the caller got (a panic's 500, a refusal by any layer
//!    below); and the layers below (API logging) see the span's `traceparent`.
//! 2. **metrics** (`--enable-metrics`, on by default): above catch-panic and every check,
//!    so every request is counted with the status the client got, panics (500) and
//!    refusals included; inside the span, so that a later exemplar can name its trace. Its
//!    own code cannot panic: it only reads the request and the status.
//! 3. **catch-panic**: so a bug anywhere below (a layer or a handler) becomes a 500 for
//!    that one request instead of a dead connection or a dead sidecar.
//! 4. **CORS** (`--allowed-origins`): answers browsers' preflight requests itself (they
//!    carry no API token) and adds the headers to every answer, refusals included, so a
//!    browser can read why it was refused.
//! 5. **API logging** (`--enable-api-logging`): sees the final status of every request,
//!    including the ones the token check rejects.
//! 6. **API token**: before any routing or invocation, so that no unauthenticated request
//!    reaches a handler; health routes are exempt as in Dapr.
//! 7. **HTTP pipeline** (`spec.httpPipeline`: rate limit, route checks...): after the token,
//!    so unauthenticated floods are refused before they cost a middleware anything, and
//!    before everything that routes. (`spec.appHttpPipeline` is no layer of this API: it
//!    wraps the app channel, which every request to the app goes through; see
//!    `api::middleware::app`.)
//! 8. **API allowlist** (`spec.api`): after the token (an unauthenticated caller learns
//!    nothing about which APIs exist) and above the `dapr-app-id` dispatch, which is the
//!    invocation API and must be subject to it too.
//! 9. **`dapr-app-id` dispatch**: the header form of invocation wins over every route, as in
//!    Dapr, so it must sit below every check and above the handlers.
//!
//! Resiliency is not a layer of the API: a policy belongs to the call's target (the invoked
//! app, the component, the direction), known only below the routes, and one API request
//! may make several policed calls (a transaction and a dead letter are component calls
//! too). It wraps `Invoker::invoke` and each opened component instead; see
//! `crate::resiliency`. Component and invocation metrics are recorded there too, for the
//! same reason.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use http::{Method, StatusCode};
use tower_http::catch_panic::CatchPanicLayer;

use super::error::ApiError;
use crate::runtime::Runtime;

/// `routes` with the public API's layers, and whether any layer besides tracing, metrics
/// and catch-panic is among them: the invocation fast path ([`super::fast`]) puts those
/// three around its handler itself ([`fast_path`]), so it may run only when there is no
/// other. Told here, where the layers are added, so that a new one can never be skipped by
/// it.
pub fn public(routes: Router, rt: Arc<Runtime>) -> (Router, bool) {
    let state = || rt.clone();
    let allowlist = rt
        .api_allowlist
        .is_some()
        .then(|| middleware::from_fn_with_state(state(), allowlist));
    let pipeline = (!rt.http_pipeline.is_empty())
        .then(|| middleware::from_fn_with_state(state(), super::middleware::run));
    let token = rt
        .api_token
        .is_some()
        .then(|| middleware::from_fn_with_state(state(), require_token));
    let logging = rt
        .enable_api_logging
        .then(|| middleware::from_fn_with_state(state(), log_http_call));
    let cors = cors(&rt.allowed_origins);
    let metrics = rt
        .metrics
        .is_enabled()
        .then(|| crate::metrics::layers::HttpLayer::new(rt.metrics.clone()));
    let tracing = rt
        .tracer
        .clone()
        .map(|tracer| crate::trace::ServeLayer::new(tracer, crate::trace::Naming::Route));
    // Tracing is no check: the fast path puts it around its handler too (`fast_path`).
    let checks = allowlist.is_some()
        || pipeline.is_some()
        || token.is_some()
        || logging.is_some()
        || cors.is_some();
    // One `Router::layer` call for the whole stack: each call wraps every route in one more
    // boxed, cloned-per-request service with a boxed future, which the layers, being
    // concrete types inside one stack, do not need. An absent layer is a pass-through.
    let stack = tower::ServiceBuilder::new()
        .option_layer(tracing)
        .option_layer(metrics)
        // catch-panic answers with a body of its own type; the layers above take axum's.
        .map_response(IntoResponse::into_response)
        .layer(catch_panic())
        .option_layer(cors)
        .option_layer(logging)
        .option_layer(token)
        .option_layer(pipeline)
        .option_layer(allowlist)
        .layer(super::app_id::AppIdLayer(state()));
    (routes.layer(stack), checks)
}

/// The invocation fast path's stack around `handler`: the same tracing and metrics layers,
/// in the same order, as [`public`] puts around the router's invocation route (the handler
/// catches its own panics), each labelling its requests [`INVOKE_ROUTE`], since they are
/// invocations by construction and have no matched route to read it from.
pub fn fast_path<S>(rt: &Runtime, handler: S) -> FastPath<S> {
    let tracing = rt.tracer.clone().map(|tracer| {
        crate::trace::ServeLayer::new(tracer, crate::trace::Naming::OneRoute(INVOKE_ROUTE))
    });
    tower::ServiceBuilder::new()
        .option_layer(tracing)
        .layer(crate::metrics::layers::HttpLayer::with_route(
            rt.metrics.clone(),
            INVOKE_ROUTE,
        ))
        .service(handler)
}

/// What [`fast_path`] makes.
pub type FastPath<S> = tower::util::Either<
    crate::trace::Serve<crate::metrics::layers::HttpMetrics<S>>,
    crate::metrics::layers::HttpMetrics<S>,
>;

/// The route template of the invocation API, whichever form the call took.
pub const INVOKE_ROUTE: &str = "/v1.0/invoke/{id}/method/{method}";

/// The route a request matched, as a label: its template, never its raw path.
#[derive(Debug, Clone)]
pub enum Route {
    Static(&'static str),
    Matched(MatchedPath),
}

impl Route {
    pub fn as_str(&self) -> &str {
        match self {
            Route::Static(s) => s,
            Route::Matched(m) => m.as_str(),
        }
    }
}

/// The template of the route `req` matched: [`INVOKE_ROUTE`] for invocations (the header
/// form goes to invocation whatever its path), `_other` when no route matched.
pub fn route_template(req: &Request) -> Route {
    if req.headers().contains_key(crate::invoke::APP_ID) {
        return Route::Static(INVOKE_ROUTE);
    }
    match req.extensions().get::<MatchedPath>() {
        Some(m) if m.as_str().starts_with("/v1.0/invoke/") => Route::Static(INVOKE_ROUTE),
        Some(m) => Route::Matched(m.clone()),
        None => Route::Static(crate::metrics::OTHER),
    }
}

/// CORS for the listed origins; none for an empty list (Dapr's default `*`).
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    let origins: Vec<http::HeaderValue> = origins
        .iter()
        .filter(|o| o.as_str() != "*")
        .filter_map(|o| http::HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(tower_http::cors::Any)
            .allow_headers(tower_http::cors::Any),
    )
}

/// The layer that turns a panic into a Dapr-style 500, shared with the internal port.
pub fn catch_panic() -> CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    CatchPanicLayer::custom(panic_response as fn(_) -> _)
}

/// A handler of every request a service gets, as that service, answering a panic as the
/// catch-panic layer does: for the services that stand without a router's catch-panic
/// layer (the invocation fast path, the internal port). Its future is the handler's one
/// boxed future, caught.
#[derive(Clone)]
pub struct Caught {
    rt: Arc<Runtime>,
    handler: Handler,
}

/// What [`Caught`] calls: a function, so that the service's type can be named.
pub type Handler = fn(Arc<Runtime>, Request) -> BoxFuture<'static, Response>;

impl Caught {
    pub fn new(rt: Arc<Runtime>, handler: Handler) -> Self {
        Self { rt, handler }
    }
}

impl tower::Service<Request> for Caught {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Map<
        futures_util::future::CatchUnwind<AssertUnwindSafe<BoxFuture<'static, Response>>>,
        fn(std::thread::Result<Response>) -> Result<Response, std::convert::Infallible>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::convert::Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let answer: fn(std::thread::Result<Response>) -> Result<Response, _> =
            |served| Ok(served.unwrap_or_else(panic_response));
        AssertUnwindSafe((self.handler)(self.rt.clone(), req))
            .catch_unwind()
            .map(answer)
    }
}

pub(super) fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    tracing::error!(panic = detail, "request handler panicked");
    ApiError::internal(format!(
        "internal error while handling the request: {detail}"
    ))
    .into_response()
}

async fn allowlist(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    if let Some(list) = &rt.api_allowlist {
        let by_header = req.headers().contains_key(crate::invoke::APP_ID);
        if let Err(refused) = list.check_http(req.uri().path(), by_header) {
            return refused.into_response();
        }
    }
    next.run(req).await
}

async fn require_token(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    let exempt = req.method() == Method::GET
        && matches!(
            req.uri().path().trim_matches('/'),
            "v1.0/healthz" | "v1.0/healthz/outbound"
        );
    if exempt {
        return next.run(req).await;
    }
    let expected = rt.api_token.as_deref().unwrap_or_default();
    let presented = req
        .headers()
        .get("dapr-api-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(presented, expected.as_bytes()) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ERR_API_UNAUTHORIZED",
            "invalid api token: send the value of DAPR_API_TOKEN in the dapr-api-token header",
        )
        .into_response()
    }
}

/// Compares without an early exit, so response timing does not reveal how much of a guessed
/// token was right.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `--enable-api-logging` on the HTTP API: one line per call, with its route template.
async fn log_http_call(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    let route = route_template(&req);
    log_call(&rt, route.as_str(), req, next).await
}

/// `--enable-api-logging` on the gRPC API: one line per call, the method its route.
pub(super) async fn log_grpc_call(
    State(rt): State<Arc<Runtime>>,
    req: Request,
    next: Next,
) -> Response {
    let uri = req.uri().clone();
    log_call(&rt, uri.path(), req, next).await
}

/// One API call's log line: method, route template, status, latency, the calling app (the
/// sidecar's own: only its app calls its API) and the trace id of an incoming
/// `traceparent`, if any.
async fn log_call(rt: &Runtime, route: &str, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let trace_id = req
        .headers()
        .get(&crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id)
        .map(str::to_string);
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        %method,
        route,
        status = resp.status().as_u16(),
        duration_us = started.elapsed().as_micros() as u64,
        caller_app_id = %rt.app.app_id,
        trace_id = trace_id.as_deref().unwrap_or(""),
        "api call"
    );
    resp
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is one.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && hex(flags, 2);
    valid.then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::{catch_panic, constant_time_eq, trace_id};
    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_panicking_handler_becomes_a_500() {
        let router = axum::Router::new()
            .route(
                "/boom",
                axum::routing::get(|| async {
                    if true {
                        panic!("handler bug");
                    }
                }),
            )
            .layer(catch_panic());
        let resp = router
            .clone()
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(resp.into_body(), 4096).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errorCode"], "ERR_INTERNAL");
        assert!(json["message"].as_str().unwrap().contains("handler bug"));
    }

    #[test]
    fn reads_trace_ids() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(&format!("00-{id}-00f067aa0ba902b7-01")), Some(id));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn compares_tokens() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
