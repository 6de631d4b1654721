//! Distributed tracing in the sidecar: the tracer `Configuration.spec.tracing` asks for,
//! the span of the request being served, and the one way each hop records its span.
//!
//! How a trace travels through a sidecar:
//! - Every inbound request (the HTTP API, the gRPC API, a peer on the internal port) gets a
//!   server span, the child of its `traceparent` or a new trace's root, by [`ServeLayer`]. The
//!   request's `traceparent` header is then replaced by the span's own, so everything
//!   below that passes headers on (invocation to a peer, the internal port to the app,
//!   publish into the CloudEvent) names this span as the parent without knowing about
//!   tracing; and the span's context is the task's [`current`] one, for the spans of
//!   component calls ([`child`]).
//! - A publish records a producer span whose context goes into the CloudEvent
//!   (`traceparent`, `tracestate`, `traceid`); the delivery of that event records a
//!   consumer span, the child of the event's context, and sends it to the subscriber as its
//!   `traceparent`, so the subscriber's work is a child of the publisher's.
//!
//! With `samplingRate: "0"` spans still carry the trace on (with the not-sampled flag) but
//! record nothing. Without `spec.tracing` nothing here runs: no tracer, no layer, and a
//! `traceparent` passes through as it came.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use futures_util::future::Either;
use http::{HeaderName, HeaderValue};
use tokio::task::futures::TaskLocalFuture;
use trellis_resources::TracingSpec;
use trellis_trace::export::{OtlpGrpc, OtlpHttp, Roots, Zipkin};
use trellis_trace::{Config, Exporter, Span, SpanContext, SpanKind, Tracer};

/// The W3C trace context headers, by their prebuilt names: each traced request reads both
/// and writes one, and a name given as a string is parsed on every lookup.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

tokio::task_local! {
    /// The context of the span serving the request this task works on.
    static CURRENT: SpanContext;
}

/// The context of the span serving the current request; none outside a traced request.
pub fn current() -> Option<SpanContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `f` with `context` as the current span's.
pub async fn scoped<F: Future>(context: SpanContext, f: F) -> F::Output {
    CURRENT.scope(context, f).await
}

/// A span of `kind`, the child of the current request's span (or a new trace's root when
/// there is none); none when tracing is off.
pub fn child(
    tracer: Option<&Tracer>,
    kind: SpanKind,
    name: impl FnOnce() -> Cow<'static, str>,
) -> Option<Span> {
    let tracer = tracer?;
    Some(tracer.span_with(kind, current().as_ref(), name))
}

/// A resiliency event (a retry, a timeout, a refusal by an open breaker) as a short internal
/// span named `name`, the child of the current request's span, so that it shows in the trace
/// of the call it happened to; nothing outside a traced request (a new trace for an event
/// would be a trace of nothing).
pub fn event(
    tracer: Option<&Tracer>,
    name: &'static str,
    target: &str,
    attributes: impl FnOnce(&mut Span),
) {
    let (Some(tracer), Some(parent)) = (tracer, current()) else {
        return;
    };
    let mut span = tracer.span_with(SpanKind::Internal, Some(&parent), || name.into());
    if span.is_recording() {
        span.set_attribute("trellis.resiliency.target", target.to_string());
        attributes(&mut span);
    }
    span.end();
}

/// Runs `call` (a component call: a store, a broker) under a client span named `name`
/// (`state/get`, ...), the child of the current request's span; a failure marks the span.
pub async fn client<T, E: std::fmt::Display>(
    tracer: Option<&Tracer>,
    name: &'static str,
    component: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(mut span) = child(tracer, SpanKind::Client, || name.into()) else {
        return call.await;
    };
    if span.is_recording() {
        span.set_attribute("trellis.component", component.to_string());
    }
    let result = call.await;
    if let Err(e) = &result {
        span.set_error(e.to_string());
    }
    result
}

/// The tracer `spec` asks for, exporting as the app `service`; none without a spec.
/// Errors name the field.
pub fn tracer(spec: Option<&TracingSpec>, service: &str) -> Result<Option<Tracer>, String> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    // Dapr's default sampling rate is "1" only in its Kubernetes defaults; a spec without
    // one samples everything when an exporter is set, as `dapr init`'s configuration does.
    let rate = match spec.sampling_rate.as_deref().map(str::trim) {
        None | Some("") => 1.0,
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!("spec.tracing.samplingRate: {text:?} is not a number from 0 to 1")
            })?,
    };
    let mut config = Config::new(service, rate);
    if let Some(otel) = &spec.otel {
        // Dapr's `isSecure: false` is plaintext; `true` is TLS, the collector's certificate
        // verified against the system's roots (or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
        let tls = otel.is_secure.then(Roots::native);
        let protocol = otel.protocol.as_deref().unwrap_or("grpc");
        let exporter = match protocol.to_ascii_lowercase().as_str() {
            "grpc" => OtlpGrpc::new(&otel.endpoint_address, tls).map(Exporter::OtlpGrpc),
            "http" | "http/protobuf" => {
                OtlpHttp::new(&otel.endpoint_address, tls).map(Exporter::OtlpHttp)
            }
            other => {
                return Err(format!(
                    "spec.tracing.otel.protocol: {other:?} is neither \"grpc\" nor \"http\""
                ));
            }
        }
        .map_err(|e| format!("spec.tracing.{e}"))?;
        config.exporters.push(exporter);
    }
    if let Some(zipkin) = &spec.zipkin {
        let exporter = Zipkin::new(&zipkin.endpoint_address, &Roots::native())
            .map_err(|e| format!("spec.tracing.{e}"))?;
        config.exporters.push(Exporter::Zipkin(exporter));
    }
    if spec.stdout {
        config.exporters.push(Exporter::Stdout);
    }
    // Tests read what was exported soon after the calls; a sidecar's batches wait at most
    // this long either way.
    config.flush_interval = Duration::from_millis(500);
    Ok(Some(Tracer::start(config)))
}

/// How an inbound request's server span is named.
#[derive(Debug, Clone)]
pub enum Naming {
    /// `<METHOD> <route template>`, OpenTelemetry's HTTP convention (the public HTTP API).
    Route,
    /// `<METHOD> <route>` for a service that serves only that route (the invocation fast
    /// path, whose requests are never routed and carry no matched template).
    OneRoute(&'static str),
    /// The gRPC method, `/package.Service/Method`.
    GrpcMethod,
    /// `CallLocal/<app id>` (the internal port: a peer's invocation of this app), as Dapr
    /// names it; the method goes in an attribute, not the name, to keep names few.
    CallLocal(std::sync::Arc<str>),
}

/// The server span of every inbound request, its context current for the inner service
/// and in the request's `traceparent`: a tower layer rather than a `middleware::from_fn`,
/// whose boxed future and `Next` would cost an allocation and a dynamic call per request,
/// and which the invocation fast path (`api::fast`) can put around its handler too.
#[derive(Clone)]
pub struct ServeLayer {
    tracer: Tracer,
    naming: Naming,
}

impl ServeLayer {
    pub fn new(tracer: Tracer, naming: Naming) -> Self {
        Self { tracer, naming }
    }
}

impl<S> tower::Layer<S> for ServeLayer {
    type Service = Serve<S>;

    fn layer(&self, inner: S) -> Serve<S> {
        Serve {
            inner,
            tracer: self.tracer.clone(),
            naming: self.naming.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Serve<S> {
    inner: S,
    tracer: Tracer,
    naming: Naming,
}

impl<S> tower::Service<Request> for Serve<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<S::Future, Served<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        // Health probes come every few seconds from orchestrators; a trace of each would
        // drown the app's own.
        if req.uri().path().starts_with("/v1.0/healthz") {
            return Either::Left(self.inner.call(req));
        }
        let span = open(&self.tracer, &self.naming, &mut req);
        // Current while the inner future runs, where every service below does its work
        // (their `call`s only route and box); the span's own children start there.
        Either::Right(Served {
            inner: CURRENT.scope(span.context().clone(), self.inner.call(req)),
            span: Some(span),
        })
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, with the span's context current while it runs; ends the
    /// span with the answer's status. Dropped before that (the caller went away), the span
    /// ends as it is.
    pub struct Served<F> {
        #[pin]
        inner: TaskLocalFuture<SpanContext, F>,
        span: Option<Span>,
    }
}

impl<F, E> Future for Served<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        if let (Ok(resp), Some(span)) = (&out, this.span.take()) {
            close(span, resp);
        }
        Poll::Ready(out)
    }
}

/// The server span of `req`: the child of its `traceparent` (or a new trace's root), whose
/// own `traceparent` replaces the caller's in `req`.
fn open(tracer: &Tracer, naming: &Naming, req: &mut Request) -> Span {
    let headers = req.headers();
    let parent = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|tp| {
            let state = headers.get(&TRACESTATE).and_then(|v| v.to_str().ok());
            SpanContext::from_headers(tp, state)
        });
    let mut span = tracer.span_with(SpanKind::Server, parent.as_ref(), || match naming {
        Naming::Route => {
            let route = crate::api::route_template(req);
            format!("{} {}", req.method(), route.as_str()).into()
        }
        Naming::OneRoute(route) => format!("{} {route}", req.method()).into(),
        Naming::GrpcMethod => req.uri().path().to_string().into(),
        Naming::CallLocal(app_id) => format!("CallLocal/{app_id}").into(),
    });
    if span.is_recording() {
        span.set_attribute("http.request.method", req.method().to_string());
        if let Naming::CallLocal(_) = naming {
            span.set_attribute("rpc.method", req.uri().path().to_string());
        }
    }
    // From the `String` itself: its bytes become the header's, without a copy.
    if let Ok(tp) = HeaderValue::try_from(span.context().traceparent()) {
        req.headers_mut().insert(TRACEPARENT, tp);
    }
    span
}

/// Ends the server span with what the caller got.
fn close(mut span: Span, resp: &Response) {
    if span.is_recording() {
        let status = resp.status();
        span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
        if let Some(code) = resp
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
        {
            span.set_attribute("rpc.grpc.status_code", code.to_string());
        }
        if status.is_server_error() {
            span.set_error(status.to_string());
        }
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_resources::{OtelSpec, ZipkinSpec};

    fn spec(rate: Option<&str>) -> TracingSpec {
        TracingSpec {
            sampling_rate: rate.map(str::to_string),
            stdout: false,
            otel: None,
            zipkin: None,
        }
    }

    #[tokio::test]
    async fn specs_become_tracers_or_errors_naming_the_field() {
        assert!(tracer(None, "a").expect("no spec").is_none());
        assert!(tracer(Some(&spec(Some("0.5"))), "a").expect("ok").is_some());
        let err = tracer(Some(&spec(Some("2"))), "a").expect_err("out of range");
        assert!(err.contains("samplingRate"), "{err}");
        let mut s = spec(None);
        s.otel = Some(OtelSpec {
            endpoint_address: "localhost:4317".into(),
            is_secure: false,
            protocol: Some("thrift".into()),
        });
        let err = tracer(Some(&s), "a").expect_err("bad protocol");
        assert!(err.contains("otel.protocol"), "{err}");
        // (isSecure: true reads the system's roots: tests/it/tracing.rs in the binary's crate.)
        s.otel = Some(OtelSpec {
            endpoint_address: "https://collector.example:4318".into(),
            is_secure: false,
            protocol: Some("http".into()),
        });
        let err = tracer(Some(&s), "a").expect_err("https without isSecure");
        assert!(
            err.starts_with("spec.tracing.otel: ") && err.contains("isSecure"),
            "{err}"
        );
        s.otel = None;
        s.zipkin = Some(ZipkinSpec {
            endpoint_address: String::new(),
        });
        let err = tracer(Some(&s), "a").expect_err("no endpoint");
        assert!(err.contains("zipkin"), "{err}");
    }

    #[tokio::test]
    async fn children_follow_the_current_span() {
        let t = tracer(Some(&spec(Some("1"))), "a")
            .expect("ok")
            .expect("tracer");
        assert!(
            child(None, SpanKind::Client, || "x".into()).is_none(),
            "off without a tracer"
        );
        let root = t.span("root", SpanKind::Server, None);
        let ctx = root.context().clone();
        let inner = scoped(ctx.clone(), async {
            child(Some(&t), SpanKind::Client, || "state/get".into()).map(|s| s.context().clone())
        })
        .await
        .expect("a span");
        assert_eq!(inner.trace_id, ctx.trace_id);
        assert!(current().is_none(), "the scope ended");
    }
}
