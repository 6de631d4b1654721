//! The server-side metrics middlewares of the HTTP and gRPC APIs (composed in
//! `api/layers.rs` and `api/grpc/mod.rs`).
//!
//! HTTP: a request is recorded when its response head is ready, labelled with the route
//! template it matched. gRPC: a call's status is in its trailers (or, for an early error,
//! its headers), known only once the response body ends, so the body is wrapped and the
//! call recorded when it ends or is dropped (a stream's latency is its whole life).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::Metrics;
use crate::Body;

/// Records every request of the public HTTP API: a tower layer of its own rather than a
/// `middleware::from_fn`, whose boxed future would cost an allocation per request.
#[derive(Debug, Clone)]
pub struct HttpLayer {
    metrics: Metrics,
    route: Option<&'static str>,
}

impl HttpLayer {
    /// Labels each request with the route template it matched (`api::route_template`).
    pub fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            route: None,
        }
    }

    /// Labels every request `route`: for a service that serves that one route.
    pub fn with_route(metrics: Metrics, route: &'static str) -> Self {
        Self {
            metrics,
            route: Some(route),
        }
    }
}

impl<S> tower::Layer<S> for HttpLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> HttpMetrics<S> {
        HttpMetrics {
            inner,
            metrics: self.metrics.clone(),
            route: self.route,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    metrics: Metrics,
    route: Option<&'static str>,
}

impl<S> tower::Service<Request> for HttpMetrics<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Recorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let method = req.method().clone();
        let route = match self.route {
            Some(route) => crate::api::Route::Static(route),
            None => crate::api::route_template(&req),
        };
        Recorded {
            inner: self.inner.call(req),
            call: Some(HttpCall {
                metrics: self.metrics.clone(),
                method,
                route,
                started: Instant::now(),
            }),
        }
    }
}

struct HttpCall {
    metrics: Metrics,
    method: http::Method,
    route: crate::api::Route,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// The inner service's future; records the request when the response head is ready.
    pub struct Recorded<F> {
        #[pin]
        inner: F,
        call: Option<HttpCall>,
    }
}

impl<F, E> std::future::Future for Recorded<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(call)) = (&out, this.call.take()) {
            call.metrics.http_server(
                &call.method,
                call.route.as_str(),
                resp.status().as_str(),
                call.started.elapsed(),
            );
        }
        Poll::Ready(out)
    }
}

/// Records every call of the gRPC API: a tower layer rather than a `middleware::from_fn`,
/// for the same reason as [`HttpLayer`].
#[derive(Debug, Clone)]
pub struct GrpcLayer(pub Metrics);

impl<S> tower::Layer<S> for GrpcLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Metrics,
}

impl<S> tower::Service<Request> for GrpcMetrics<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = GrpcRecorded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        // A `Uri` shares its bytes: kept for the label without copying the path.
        let call = Call {
            metrics: self.metrics.clone(),
            uri: req.uri().clone(),
            started: Instant::now(),
            status: None,
        };
        GrpcRecorded {
            inner: self.inner.call(req),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future; hands the call to the answer's body, which records it
    /// when it ends (or records it at once for a trailers-only answer).
    pub struct GrpcRecorded<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, E> std::future::Future for GrpcRecorded<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = match std::task::ready!(this.inner.poll(cx)) {
            Ok(resp) => resp,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let Some(mut call) = this.call.take() else {
            return Poll::Ready(Ok(resp));
        };
        call.status = grpc_status(resp.headers());
        if call.status.is_some() {
            // A trailers-only answer: the call is over.
            drop(call);
            return Poll::Ready(Ok(resp));
        }
        Poll::Ready(Ok(resp.map(|body| {
            Body::new(Observed {
                inner: body,
                call: Some(call),
            })
        })))
    }
}

/// A gRPC call being answered; recorded when dropped.
struct Call {
    metrics: Metrics,
    uri: http::Uri,
    started: Instant,
    status: Option<i32>,
}

impl Drop for Call {
    fn drop(&mut self) {
        // No status at all: the answer was cut off (the client went away, say).
        let status = self.status.map_or("Canceled", code_name);
        self.metrics
            .grpc_server(self.uri.path(), status, self.started.elapsed());
    }
}

pin_project_lite::pin_project! {
    struct Observed {
        #[pin]
        inner: Body,
        call: Option<Call>,
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), this.call.as_mut()) {
                    call.status = grpc_status(trailers);
                }
            }
            Poll::Ready(None) => {
                // Recorded here, as the call ends, rather than whenever the body is dropped.
                if let Some(mut call) = this.call.take() {
                    // Ended without trailers: tonic always sends them, so this is an
                    // error answer of another layer.
                    call.status.get_or_insert(2);
                }
            }
            Poll::Ready(Some(Err(_))) => drop(this.call.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// gRPC status codes by the names grpc-go gives them, which Dapr's metrics carry.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => super::OTHER,
    }
}
