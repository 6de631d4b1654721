//! Every metric a sidecar exposes, defined once: name, help, labels. The names and labels
//! are Dapr's where Dapr has the metric (so its Grafana dashboards work unchanged), and
//! `trellis_*` by the same rules otherwise; `docs/observability.md` lists them all.
//!
//! `app_id` (and `namespace` where Dapr has it) are constant labels of the sidecar's own
//! registry, so recording hashes only the labels that vary.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Latency buckets in milliseconds: Dapr's default distribution, with four sub-millisecond
/// buckets in front, since most of a sidecar's own work takes well under one.
pub const LATENCY_MS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0, 25.0, 30.0,
    40.0, 50.0, 65.0, 80.0, 100.0, 130.0, 160.0, 200.0, 250.0, 300.0, 400.0, 500.0, 650.0, 800.0,
    1_000.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0,
];

/// A counter and a latency histogram with the same labels, recorded together.
#[derive(Debug, Clone)]
pub struct Timed {
    pub count: IntCounterVec,
    pub latency: HistogramVec,
}

#[derive(Debug)]
pub struct Families {
    pub http_server: Timed,
    pub grpc_server: Timed,
    pub http_client: Timed,
    pub invoke_sent: IntCounterVec,
    pub invoke_answered: Timed,
    pub invoke_received: IntCounterVec,
    pub invoke_answered_callee: IntCounterVec,
    pub state: Timed,
    pub configuration: Timed,
    pub lock: Timed,
    pub egress: Timed,
    pub ingress: Timed,
    pub resiliency_count: IntCounterVec,
    pub resiliency_activations: IntCounterVec,
    pub breaker_state: IntGaugeVec,
    pub app_healthy: IntGaugeVec,
    pub build_info: IntGaugeVec,
}

struct Def<'a> {
    registry: &'a Registry,
    app_id: &'a str,
    namespace: &'a str,
}

impl Def<'_> {
    fn opts(&self, name: &str, help: &str, namespaced: bool) -> Opts {
        let opts = Opts::new(name, help).const_label("app_id", self.app_id);
        match namespaced {
            true => opts.const_label("namespace", self.namespace),
            false => opts,
        }
    }

    fn counter(
        &self,
        name: &str,
        help: &str,
        namespaced: bool,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        let c = IntCounterVec::new(self.opts(name, help, namespaced), labels)?;
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }

    fn gauge(
        &self,
        name: &str,
        help: &str,
        namespaced: bool,
        labels: &[&str],
    ) -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(self.opts(name, help, namespaced), labels)?;
        self.registry.register(Box::new(g.clone()))?;
        Ok(g)
    }

    /// `<prefix>_<count>` and `<prefix>_<latency>` (milliseconds).
    fn timed(
        &self,
        (count, latency): (&str, &str),
        what: &str,
        namespaced: bool,
        labels: &[&str],
    ) -> prometheus::Result<Timed> {
        let count = self.counter(count, &format!("The number of {what}."), namespaced, labels)?;
        let opts = HistogramOpts::from(self.opts(
            latency,
            &format!("The latency of {what}, in milliseconds."),
            namespaced,
        ))
        .buckets(LATENCY_MS.to_vec());
        let latency = HistogramVec::new(opts, labels)?;
        self.registry.register(Box::new(latency.clone()))?;
        Ok(Timed { count, latency })
    }
}

impl Families {
    pub fn register(
        registry: &Registry,
        app_id: &str,
        namespace: &str,
    ) -> prometheus::Result<Self> {
        let d = Def {
            registry,
            app_id,
            namespace,
        };
        let http = ["method", "path", "status"];
        let grpc = ["grpc_server_method", "grpc_server_status"];
        let component = ["component", "operation", "success"];
        let policy = ["name", "policy", "flow_direction", "target", "status"];
        Ok(Self {
            http_server: d.timed(
                ("dapr_http_server_request_count", "dapr_http_server_latency"),
                "requests to the HTTP API, by route template and status",
                false,
                &http,
            )?,
            grpc_server: d.timed(
                (
                    "dapr_grpc_io_server_completed_rpcs",
                    "dapr_grpc_io_server_server_latency",
                ),
                "calls of the gRPC API, by method and status",
                false,
                &grpc,
            )?,
            http_client: d.timed(
                (
                    "dapr_http_client_completed_count",
                    "dapr_http_client_roundtrip_latency",
                ),
                "requests from the sidecar to its app, by path and status",
                false,
                &http,
            )?,
            invoke_sent: d.counter(
                "dapr_runtime_service_invocation_req_sent_total",
                "The number of service invocations sent, by target app.",
                false,
                &["dst_app_id", "type"],
            )?,
            invoke_answered: Timed {
                count: d.counter(
                    "dapr_runtime_service_invocation_res_recv_total",
                    "The number of answers to service invocations, by target app and status.",
                    false,
                    &["src_app_id", "status", "type"],
                )?,
                latency: {
                    let opts = HistogramOpts::from(d.opts(
                        "dapr_runtime_service_invocation_res_recv_latency_ms",
                        "The latency of service invocations, by target app and status, in milliseconds.",
                        false,
                    ))
                    .buckets(LATENCY_MS.to_vec());
                    let h = HistogramVec::new(opts, &["src_app_id", "status"])?;
                    registry.register(Box::new(h.clone()))?;
                    h
                },
            },
            invoke_received: d.counter(
                "dapr_runtime_service_invocation_req_recv_total",
                "The number of service invocations received from other apps, by caller.",
                false,
                &["src_app_id"],
            )?,
            invoke_answered_callee: d.counter(
                "dapr_runtime_service_invocation_res_sent_total",
                "The number of answers sent to other apps' invocations, by caller and status.",
                false,
                &["dst_app_id", "status"],
            )?,
            state: d.timed(
                (
                    "dapr_component_state_count",
                    "dapr_component_state_latencies",
                ),
                "operations on state stores",
                true,
                &component,
            )?,
            configuration: d.timed(
                (
                    "dapr_component_configuration_count",
                    "dapr_component_configuration_latencies",
                ),
                "operations on configuration stores",
                true,
                &component,
            )?,
            lock: d.timed(
                (
                    "trellis_component_lock_count",
                    "trellis_component_lock_latencies",
                ),
                "operations on lock stores",
                true,
                &component,
            )?,
            egress: d.timed(
                (
                    "dapr_component_pubsub_egress_count",
                    "dapr_component_pubsub_egress_latencies",
                ),
                "messages published to pub/sub components",
                true,
                &["component", "success", "topic"],
            )?,
            ingress: d.timed(
                (
                    "dapr_component_pubsub_ingress_count",
                    "dapr_component_pubsub_ingress_latencies",
                ),
                "messages delivered to the app, by how they were settled",
                true,
                &["component", "process_status", "status", "topic"],
            )?,
            resiliency_count: d.counter(
                "dapr_resiliency_count",
                "The number of times a resiliency policy was applied to a call.",
                true,
                &policy,
            )?,
            resiliency_activations: d.counter(
                "dapr_resiliency_activations_total",
                "The number of times a resiliency policy acted: a retry, a timeout, a circuit breaker changing state.",
                true,
                &policy,
            )?,
            breaker_state: d.gauge(
                "dapr_resiliency_cb_state",
                "A circuit breaker's state: 1 on the series of its current state, 0 on the others.",
                true,
                &policy,
            )?,
            app_healthy: d.gauge(
                "trellis_app_healthy",
                "1 while the app is ready and passes its health checks, else 0.",
                false,
                &[],
            )?,
            build_info: d.gauge(
                "trellis_build_info",
                "Always 1; the labels say which Trellis and which Dapr API version this is.",
                false,
                &["version", "dapr_version"],
            )?,
        })
    }
}
