//! The public HTTP API as served: the router, with a shorter way in for invocations.
//!
//! An invocation is the API's hot path, and most of what a sidecar adds to a call is fixed
//! cost per request (`docs/benchmarks.md`, "The proxy floor"). Through the router, each one
//! pays a route lookup over every route, the matched path and its parameters stored in the
//! request, and a boxed service and future per middleware, none of which the invocation
//! handler uses. [`PublicApi`] sends a path-form invocation
//! (`/v1.0/invoke/{id}/method/...`) straight to that handler instead, under the same
//! layers the router would put around it ([`layers::fast_path`]).
//!
//! It does so only when those are all there is: the tracing span, the metrics recorder and
//! catch-panic ([`layers::public`] says whether the router has any other). With any other
//! layer configured (an API token, CORS, API logging, an HTTP pipeline, an API allowlist),
//! every request goes through the router, so no check is ever skipped. Requests that carry
//! `dapr-app-id` always go through the router too: the header form wins over the path
//! there, as in Dapr.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::Response;
use futures_util::future::Either;
use http::Method;
use tower::Service;

use super::invoke;
use super::layers::{self, FastPath};
use crate::invoke::APP_ID;
use crate::runtime::Runtime;

/// The public HTTP API: [`super::router`], and the invocation fast path when it applies.
#[derive(Clone)]
pub struct PublicApi {
    router: Router,
    fast: Option<FastPath<Invoke>>,
}

impl PublicApi {
    pub fn new(rt: Arc<Runtime>) -> Self {
        let (router, checks) = super::layered(rt.clone());
        let fast = (!checks).then(|| layers::fast_path(&rt, invoke_handler(rt.clone())));
        Self { router, fast }
    }

    /// Whether invocations skip the router (for tests).
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }
}

impl Service<Request> for PublicApi {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        <FastPath<Invoke> as Service<Request>>::Future,
        <Router as Service<Request>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both are always ready: the router and the invocation handler hold no capacity.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &mut self.fast {
            Some(fast) if takes(&req) => Either::Left(fast.call(req)),
            _ => Either::Right(self.router.call(req)),
        }
    }
}

/// Whether `req` is one the router would give the invocation handler as it is: the path
/// form (which the router's `/v1.0/invoke/{*rest}` matches only with something after the
/// prefix), no `dapr-app-id` header, and a method the router does nothing special with
/// (it empties the answer to a HEAD, and CONNECT is no invocation).
fn takes(req: &Request) -> bool {
    let path = req.uri().path();
    path.len() > invoke::INVOKE_PREFIX.len()
        && path.starts_with(invoke::INVOKE_PREFIX)
        && !matches!(*req.method(), Method::HEAD | Method::CONNECT)
        && !req.headers().contains_key(APP_ID)
}

/// The invocation handler as a service, catching a panic as the router's catch-panic
/// layer does (the same answer, without re-boxing the body).
pub type Invoke = layers::Caught;

fn invoke_handler(rt: Arc<Runtime>) -> Invoke {
    layers::Caught::new(rt, |rt, req| Box::pin(invoke::by_path(State(rt), req)))
}

#[cfg(test)]
mod tests {
    use super::takes;
    use axum::body::Body;
    use http::Request;

    fn req(method: &str, path: &str, header: Option<(&str, &str)>) -> axum::extract::Request {
        let mut b = Request::builder().method(method).uri(path);
        if let Some((k, v)) = header {
            b = b.header(k, v);
        }
        b.body(Body::empty()).unwrap()
    }

    #[test]
    fn takes_path_form_invocations_only() {
        assert!(takes(&req("POST", "/v1.0/invoke/b/method/echo", None)));
        assert!(takes(&req("GET", "/v1.0/invoke/b/method/x?y=1", None)));
        assert!(takes(&req("DELETE", "/v1.0/invoke/b", None)));
        // The router's fallback answers these.
        assert!(!takes(&req("POST", "/v1.0/invoke/", None)));
        assert!(!takes(&req("POST", "/v1.0/invoke", None)));
        assert!(!takes(&req("POST", "/v1.0/state/s", None)));
        // The header form wins over the path, in the router.
        assert!(!takes(&req(
            "POST",
            "/v1.0/invoke/b/method/echo",
            Some(("dapr-app-id", "c"))
        )));
        assert!(!takes(&req("HEAD", "/v1.0/invoke/b/method/echo", None)));
    }
}
