//! Prometheus metrics of one sidecar: what it records, and `GET /metrics` on its own port.
//!
//! One [`Metrics`] handle per sidecar, made in `sidecar.rs` and passed to the few places
//! every call of a kind passes through: the API layers (`layers.rs`: HTTP and gRPC server
//! side), [`Invoker::invoke`](crate::invoke::Invoker::invoke) (invocation, caller side),
//! the internal port (callee side), the app channel (sidecar → app), the component handles
//! (`components.rs`, wrapped where the outbound resiliency policies are), the delivery
//! loop and the resiliency runner (`resiliency.rs`). A disabled handle
//! (`--enable-metrics=false`) makes every recording a branch on `None`.
//!
//! Recording costs one label lookup and atomic adds. The series of the calls every request
//! records (the API's, invocation's on both sides, the app channel's) are found among the
//! label sets recorded last ([`recent`]), by comparing a few short strings, and recorded in
//! place; the others, and sets with a value past its label's limit, take the family's
//! lookup (a hash and a read lock). The metrics allocate nothing per call once a series
//! exists (the wrappers of `async_trait` handles, the app channel and components, add the
//! one boxed future every such call has). Where the labels are known ahead (a component's
//! operations, a subscription's statuses, a policy's events) the series are looked up once
//! and kept. Label values that come from requests are bounded ([`bounded`]).

pub mod app_channel;
mod bounded;
pub mod components;
mod families;
pub mod layers;
mod recent;
mod resiliency;
pub mod server;
#[cfg(test)]
mod tests;
mod trace;

use std::sync::Arc;
use std::time::Duration;

use prometheus::{Histogram, IntCounter, Registry};
use recent::{Keep, Recent};

pub use bounded::{BoundedValues, OTHER};
pub use families::LATENCY_MS;
use families::{Families, Timed};
pub use resiliency::{BreakerState, Policed, PolicyTarget};

/// Distinct target apps, callers, topics, gRPC methods and app paths each keep their own
/// label up to this many; later ones are [`OTHER`].
const LABEL_LIMIT: usize = 100;

/// The gRPC methods of Dapr's services alone are about a hundred; proxied calls add the
/// app's own.
const GRPC_METHOD_LIMIT: usize = 300;

/// The status label of a call that got no answer (the transport failed).
pub const NO_ANSWER: &str = "_error";

/// A sidecar's metrics; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics(Option<Arc<Inner>>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    f: Families,
    apps: BoundedValues,
    topics: BoundedValues,
    grpc_methods: BoundedValues,
    app_paths: BoundedValues,
    /// The series of the label sets recorded last, per family recorded on every call.
    http_server: Recent<Series>,
    grpc_server: Recent<Series>,
    http_client: Recent<Series>,
    /// By target app.
    invoke_sent: Recent<IntCounter>,
    /// By target app and status: the count and the latency.
    invoke_answered: Recent<(IntCounter, Histogram)>,
    /// By caller and status: received, answered.
    invoke_served: Recent<(IntCounter, IntCounter)>,
}

/// A counter and a histogram of one label set, looked up once.
#[derive(Debug, Clone)]
pub struct Series {
    count: IntCounter,
    latency: Histogram,
}

impl Series {
    pub fn record(&self, elapsed: Duration) {
        self.count.inc();
        self.latency.observe(millis(elapsed));
    }
}

impl Timed {
    fn series(&self, labels: &[&str]) -> Option<Series> {
        Some(Series {
            count: self.count.get_metric_with_label_values(labels).ok()?,
            latency: self.latency.get_metric_with_label_values(labels).ok()?,
        })
    }
}

/// Records `elapsed` in the series `recent` keeps for `labels`, which `find` looks up the
/// first time.
fn record(
    recent: &Recent<Series>,
    labels: &[&str],
    elapsed: Duration,
    find: impl FnOnce() -> Option<(Series, Keep)>,
) {
    recent.record(labels, find, |s| s.record(elapsed));
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

impl Metrics {
    /// The metrics of the sidecar of `app_id` in `namespace`, in a registry of their own.
    pub fn new(app_id: &str, namespace: &str) -> Self {
        let registry = Registry::new();
        let f = match Families::register(&registry, app_id, namespace) {
            Ok(f) => f,
            Err(e) => {
                // The definitions are constants: this is a bug, not bad input. A sidecar
                // without metrics is better than no sidecar.
                tracing::error!(error = %e, "cannot define the metrics; serving none");
                return Self::disabled();
            }
        };
        if let Ok(g) = f.build_info.get_metric_with_label_values(&[
            crate::TRELLIS_VERSION,
            crate::RUNTIME_VERSION
                .split('+')
                .next()
                .unwrap_or(crate::RUNTIME_VERSION),
        ]) {
            g.set(1);
        }
        Self(Some(Arc::new(Inner {
            registry,
            f,
            apps: BoundedValues::new(LABEL_LIMIT),
            topics: BoundedValues::new(LABEL_LIMIT),
            grpc_methods: BoundedValues::new(GRPC_METHOD_LIMIT),
            app_paths: BoundedValues::new(LABEL_LIMIT),
            http_server: Recent::default(),
            grpc_server: Recent::default(),
            http_client: Recent::default(),
            invoke_sent: Recent::default(),
            invoke_answered: Recent::default(),
            invoke_served: Recent::default(),
        })))
    }

    /// Adds `trellis_trace_spans_total`, read from `tracer` at each scrape.
    pub fn watch_tracer(&self, tracer: &trellis_trace::Tracer, app_id: &str) {
        let Some(m) = &self.0 else { return };
        let registered = trace::TraceSpans::new(tracer.clone(), app_id)
            .and_then(|c| m.registry.register(Box::new(c)));
        if let Err(e) = registered {
            tracing::error!(error = %e, "cannot define the tracing metrics");
        }
    }

    /// Records nothing, serves nothing.
    pub fn disabled() -> Self {
        Self(None)
    }

    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The Prometheus text exposition of every series.
    pub fn encode(&self) -> String {
        let Some(m) = &self.0 else {
            return String::new();
        };
        prometheus::TextEncoder::new()
            .encode_to_string(&m.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode the metrics: {e}\n"))
    }

    /// One request to the HTTP API; `path` is its route template.
    pub fn http_server(&self, method: &http::Method, path: &str, status: &str, elapsed: Duration) {
        if let Some(m) = &self.0 {
            let labels = [method_label(method), path, status];
            // The path is the route's template: a few values, all kept.
            record(&m.http_server, &labels, elapsed, || {
                Some((m.f.http_server.series(&labels)?, Keep::Yes))
            });
        }
    }

    /// One call of the gRPC API (`/package.Service/Method`).
    pub fn grpc_server(&self, method: &str, status: &str, elapsed: Duration) {
        if let Some(m) = &self.0 {
            record(&m.grpc_server, &[method, status], elapsed, || {
                let method = m.grpc_methods.admit(method);
                let series = m.f.grpc_server.series(&[method, status])?;
                Some((series, Keep::unless_bounded(&[method])))
            });
        }
    }

    /// One request from the sidecar to its app; `path` is bounded here.
    pub fn app_call(&self, method: &http::Method, path: &str, status: &str, elapsed: Duration) {
        if let Some(m) = &self.0 {
            let method = method_label(method);
            record(&m.http_client, &[method, path, status], elapsed, || {
                let path = m.app_paths.admit(path);
                let series = m.f.http_client.series(&[method, path, status])?;
                Some((series, Keep::unless_bounded(&[path])))
            });
        }
    }

    /// An invocation of app `target` leaves (caller side).
    pub fn invoke_sent(&self, target: &str) {
        if let Some(m) = &self.0 {
            let find = || {
                let target = m.apps.admit(target);
                let sent =
                    m.f.invoke_sent
                        .get_metric_with_label_values(&[target, "unary"]);
                Some((sent.ok()?, Keep::unless_bounded(&[target])))
            };
            m.invoke_sent.record(&[target], find, IntCounter::inc);
        }
    }

    /// The invocation of `target` ended with `status` (caller side).
    pub fn invoke_answered(&self, target: &str, status: &str, elapsed: Duration) {
        if let Some(m) = &self.0 {
            let find = || {
                let target = m.apps.admit(target);
                let f = &m.f.invoke_answered;
                let series = (
                    f.count
                        .get_metric_with_label_values(&[target, status, "unary"])
                        .ok()?,
                    f.latency
                        .get_metric_with_label_values(&[target, status])
                        .ok()?,
                );
                Some((series, Keep::unless_bounded(&[target])))
            };
            m.invoke_answered
                .record(&[target, status], find, |(count, latency)| {
                    count.inc();
                    latency.observe(millis(elapsed));
                });
        }
    }

    /// Another app's invocation arrived on the internal port, and was answered `status`
    /// (callee side).
    pub fn invoke_served(&self, caller: &str, status: &str) {
        if let Some(m) = &self.0 {
            let find = || {
                let caller = m.apps.admit(caller);
                let series = (
                    m.f.invoke_received
                        .get_metric_with_label_values(&[caller])
                        .ok()?,
                    m.f.invoke_answered_callee
                        .get_metric_with_label_values(&[caller, status])
                        .ok()?,
                );
                Some((series, Keep::unless_bounded(&[caller])))
            };
            m.invoke_served
                .record(&[caller, status], find, |(received, answered)| {
                    received.inc();
                    answered.inc();
                });
        }
    }

    /// The series of publishing to `topic` of pub/sub `component`: failed, succeeded.
    pub fn egress(&self, component: &str, topic: &str) -> Option<[Series; 2]> {
        let m = self.0.as_ref()?;
        let topic = m.topics.admit(topic);
        Some([
            m.f.egress.series(&[component, "false", topic])?,
            m.f.egress.series(&[component, "true", topic])?,
        ])
    }

    /// The series of a subscription's deliveries, one per way a message is settled.
    pub fn ingress(&self, component: &str, topic: &str) -> Option<Ingress> {
        let m = self.0.as_ref()?;
        let topic = m.topics.admit(topic);
        let series = |status: &str| m.f.ingress.series(&[component, status, status, topic]);
        Some(Ingress {
            success: series("success")?,
            retry: series("retry")?,
            drop: series("drop")?,
            dead_letter: series("dead_letter")?,
        })
    }

    /// The series of one component's operations (see [`components`]).
    pub fn component(
        &self,
        block: components::Kind,
        name: &str,
        operations: &[&'static str],
    ) -> Option<components::Meter> {
        let m = self.0.as_ref()?;
        let family = match block {
            components::Kind::State => &m.f.state,
            components::Kind::Configuration => &m.f.configuration,
            components::Kind::Lock => &m.f.lock,
        };
        components::Meter::new(family, name, operations)
    }

    /// Sets the app health gauge (read at each scrape).
    pub fn set_app_healthy(&self, healthy: bool) {
        if let Some(m) = &self.0
            && let Ok(g) = m.f.app_healthy.get_metric_with_label_values::<&str>(&[])
        {
            g.set(i64::from(healthy));
        }
    }
}

/// A subscription's delivery series.
#[derive(Debug, Clone)]
pub struct Ingress {
    pub success: Series,
    pub retry: Series,
    pub drop: Series,
    pub dead_letter: Series,
}

/// The method label: the standard methods as they are, anything else [`OTHER`].
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method as M;
    match *method {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        M::TRACE => "TRACE",
        M::CONNECT => "CONNECT",
        _ => OTHER,
    }
}
