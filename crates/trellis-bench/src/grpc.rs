//! `trellis-bench grpc`: gRPC service invocation through two sidecars against a direct gRPC
//! call, beside the HTTP path measured in the same run.
//!
//! Scenarios, each sending the same `--body` bytes and expecting them back:
//! * `http direct`, `http via trellis`: an HTTP POST to the HTTP echo app, directly and
//!   through two sidecars (`/v1.0/invoke/echo/method/echo`), as `trellis-bench invoke` does;
//! * `grpc direct`: `AppCallback/OnInvoke` on a gRPC echo app;
//! * `grpc proxy via trellis`: the same call sent to sidecar A's gRPC port with
//!   `dapr-app-id` metadata, proxied to the app through sidecar B;
//! * `grpc InvokeService via trellis`: `Dapr/InvokeService` on sidecar A, which sidecar B
//!   turns into `OnInvoke` on the app.
//!
//! Each client task owns one connection (an HTTP/1.1 keep-alive or one HTTP/2 channel).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use tonic::transport::{Channel, Endpoint};
use trellis_proto::common as pbc;
use trellis_proto::runtime::{
    self as pb, app_callback_client::AppCallbackClient, dapr_client::DaprClient,
};

use crate::load::{self, Client, Mode, Outcome, Schedule, Target};
use crate::procs::{self, ChildGuard};
use crate::{echo, report, sidecar};

#[derive(Args)]
pub struct GrpcArgs {
    /// Requests per second in the fixed-rate phase.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each measured phase, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Unrecorded warm-up before each phase.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// Connections (HTTP keep-alive or HTTP/2 channels) used by the load generator.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this trellis binary instead of building one with cargo.
    #[arg(long)]
    trellis_bin: Option<PathBuf>,
}

// ---- the gRPC echo app -------------------------------------------------------------------

struct EchoApp;

#[tonic::async_trait]
impl pb::app_callback_server::AppCallback for EchoApp {
    async fn on_invoke(
        &self,
        request: tonic::Request<pbc::InvokeRequest>,
    ) -> Result<tonic::Response<pbc::InvokeResponse>, tonic::Status> {
        let req = request.into_inner();
        Ok(tonic::Response::new(pbc::InvokeResponse {
            data: req.data,
            content_type: req.content_type,
        }))
    }

    async fn list_topic_subscriptions(
        &self,
        _request: tonic::Request<()>,
    ) -> Result<tonic::Response<pb::ListTopicSubscriptionsResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }

    async fn on_topic_event(
        &self,
        _request: tonic::Request<pb::TopicEventRequest>,
    ) -> Result<tonic::Response<pb::TopicEventResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }

    async fn on_bulk_topic_event(
        &self,
        _request: tonic::Request<pb::TopicEventBulkRequest>,
    ) -> Result<tonic::Response<pb::TopicEventBulkResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
}

/// Serves the gRPC echo app until stdin reaches EOF (the bench has gone).
pub async fn serve_echo(port: u16) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("grpc echo app: binding 127.0.0.1:{port}"))?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(pb::app_callback_server::AppCallbackServer::new(EchoApp))
        .serve_with_incoming_shutdown(incoming, echo::parent_gone())
        .await
        .context("grpc echo app")
}

async fn spawn_echo(port: u16) -> Result<ChildGuard> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["grpc-echo-server", "--port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let guard = ChildGuard::spawn("grpc echo app", &mut cmd, None::<&Path>)?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(guard);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the grpc echo app did not listen on {port}")
}

// ---- clients -----------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Via {
    Direct,
    Proxy,
    InvokeService,
}

struct GrpcClient {
    port: u16,
    via: Via,
    body: Bytes,
    channel: Option<Channel>,
}

impl GrpcClient {
    async fn channel(&mut self) -> Result<Channel> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(self.channel.insert(channel).clone())
    }
}

impl Client for GrpcClient {
    async fn call(&mut self, _seq: u64) -> Result<()> {
        let channel = self.channel().await?;
        let message = pbc::InvokeRequest {
            method: "echo".into(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: self.body.to_vec(),
            }),
            content_type: "application/octet-stream".into(),
            http_extension: None,
        };
        let reply = match self.via {
            Via::Direct => AppCallbackClient::new(channel).on_invoke(message).await?,
            Via::Proxy => {
                let mut req = tonic::Request::new(message);
                req.metadata_mut().insert(
                    "dapr-app-id",
                    tonic::metadata::MetadataValue::from_static("grpc-echo"),
                );
                AppCallbackClient::new(channel).on_invoke(req).await?
            }
            Via::InvokeService => {
                let req = pb::InvokeServiceRequest {
                    id: "grpc-echo".into(),
                    message: Some(message),
                };
                DaprClient::new(channel).invoke_service(req).await?
            }
        };
        let len = reply.into_inner().data.map_or(0, |d| d.value.len());
        if len != self.body.len() {
            bail!("echoed {len} bytes, expected {}", self.body.len());
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.channel = None;
    }
}

// ---- the run -----------------------------------------------------------------------------

struct Row {
    name: &'static str,
    baseline: &'static str,
    fixed: Outcome,
    max: Outcome,
}

pub async fn run(args: GrpcArgs) -> Result<()> {
    if args.rate == 0 || args.connections == 0 || args.duration.is_zero() {
        bail!("--rate, --connections and --duration must be greater than zero");
    }
    let command = crate::command_line();
    let (cpus, cpu_model) = procs::machine();
    let load_at_start = procs::loadavg();
    let bin = sidecar::locate(args.trellis_bin.as_deref())?;
    let tmp = tempfile::Builder::new()
        .prefix("trellis-bench-grpc-")
        .tempdir()
        .context("creating a temp dir")?;
    let data_dir = tmp.path().join("trellis-data");
    std::fs::create_dir_all(&data_dir)?;

    // HTTP path: the HTTP echo app behind sidecars A and B, as `invoke` measures it.
    let http_echo = procs::free_port()?;
    let _http_app = echo::spawn(http_echo).await?;
    let mut http_sidecars = sidecar::start(&bin, tmp.path(), &data_dir, http_echo).await?;

    // gRPC path: the gRPC echo app behind sidecar B (`--app-protocol grpc`), called through
    // sidecar A's gRPC port.
    let grpc_echo = procs::free_port()?;
    let _grpc_app = spawn_echo(grpc_echo).await?;
    let (port_b, port_a, grpc_a) = (
        procs::free_port()?,
        procs::free_port()?,
        procs::free_port()?,
    );
    let spawn = |name: &str, app_id: &str, http: u16, grpc: u16, app: Option<u16>| {
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--app-id", app_id, "--dapr-http-port"])
            .arg(http.to_string())
            .arg("--dapr-grpc-port")
            .arg(grpc.to_string())
            .args(["--dapr-internal-grpc-port", "0", "--data-dir"])
            .arg(&data_dir)
            .stdin(Stdio::null());
        if let Some(app) = app {
            cmd.args(["--app-protocol", "grpc", "--app-port"])
                .arg(app.to_string());
        }
        ChildGuard::spawn(
            name,
            &mut cmd,
            Some(&tmp.path().join(format!("{app_id}.log"))),
        )
    };
    let mut b = spawn("grpc sidecar B", "grpc-echo", port_b, 0, Some(grpc_echo))?;
    let mut a = spawn("grpc sidecar A", "grpc-bench-client", port_a, grpc_a, None)?;
    for port in [port_b, port_a] {
        load::wait_for_status(port, "GET", "/v1.0/healthz", 204, Duration::from_secs(10)).await?;
    }
    let probe = GrpcClient {
        port: grpc_a,
        via: Via::InvokeService,
        body: Bytes::from_static(b"x"),
        channel: None,
    };
    load::fill(vec![probe], 1)
        .await
        .context("sidecar A cannot reach the grpc echo app through sidecar B")?;
    let idle_a_kb = procs::rss_kb(&[a.pid()]);

    let body = Bytes::from(vec![b'x'; args.body]);
    let http_target = |port: u16, path: &str| Target {
        port,
        path: path.to_owned(),
    };
    let grpc_clients = |port: u16, via: Via| -> Vec<GrpcClient> {
        (0..args.connections)
            .map(|_| GrpcClient {
                port,
                via,
                body: body.clone(),
                channel: None,
            })
            .collect()
    };
    let mut rows = Vec::new();
    for (name, baseline) in [
        ("http direct", "http direct"),
        ("http via trellis", "http direct"),
        ("grpc direct", "grpc direct"),
        ("grpc proxy via trellis", "grpc direct"),
        ("grpc InvokeService via trellis", "grpc direct"),
    ] {
        let mut outcomes = Vec::new();
        for mode in [Mode::FixedRate(f64::from(args.rate)), Mode::MaxThroughput] {
            eprintln!(
                "phase: {name}, {}",
                if matches!(mode, Mode::MaxThroughput) {
                    "max throughput"
                } else {
                    "fixed rate"
                }
            );
            let schedule = Schedule::new(args.warmup, args.duration);
            let outcome = match name {
                "http direct" => {
                    load::run(
                        name,
                        &http_target(http_echo, "/echo"),
                        mode,
                        args.connections,
                        body.clone(),
                        schedule,
                    )
                    .await?
                }
                "http via trellis" => {
                    load::run(
                        name,
                        &http_target(http_sidecars.port_a, sidecar::INVOKE_PATH),
                        mode,
                        args.connections,
                        body.clone(),
                        schedule,
                    )
                    .await?
                }
                "grpc direct" => {
                    load::run_clients(name, mode, schedule, grpc_clients(grpc_echo, Via::Direct))
                        .await?
                }
                "grpc proxy via trellis" => {
                    load::run_clients(name, mode, schedule, grpc_clients(grpc_a, Via::Proxy))
                        .await?
                }
                _ => {
                    load::run_clients(
                        name,
                        mode,
                        schedule,
                        grpc_clients(grpc_a, Via::InvokeService),
                    )
                    .await?
                }
            };
            outcomes.push(outcome);
        }
        let max = outcomes.pop().context("max phase")?;
        let fixed = outcomes.pop().context("fixed phase")?;
        rows.push(Row {
            name,
            baseline,
            fixed,
            max,
        });
    }
    let mut notes = Vec::new();
    for (child, name) in [(&mut a, "grpc sidecar A"), (&mut b, "grpc sidecar B")] {
        if let Some(status) = child.exited() {
            notes.push(format!(
                "{name} exited during the run ({status}); its numbers are suspect"
            ));
        }
    }
    notes.extend(http_sidecars.stop());

    let md = render(
        &args,
        &rows,
        idle_a_kb,
        &command,
        cpus,
        &cpu_model,
        &load_at_start,
        &notes,
    );
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render(
    args: &GrpcArgs,
    rows: &[Row],
    idle_a_kb: u64,
    command: &str,
    cpus: usize,
    cpu_model: &str,
    load: &str,
    notes: &[String],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "## gRPC invocation: {}\n", report::utc_now());
    let _ = writeln!(
        s,
        "`{command}` on {cpus} CPUs ({cpu_model}), load average before: {load}\n"
    );
    let _ = writeln!(
        s,
        "Fixed rate {} req/s over {} connections, {} B bodies, {:?} measured after {:?} warm-up.\n",
        args.rate, args.connections, args.body, args.duration, args.warmup
    );
    let base = |name: &str| rows.iter().find(|r| r.name == name);
    s.push_str("| scenario | req/s | errors | p50 | p90 | p99 | added p50 | added p90 | added p99 | max req/s |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let added = |q: f64| match base(r.baseline) {
            Some(b) if b.name != r.name => format!("{:+.3}", r.fixed.ms(q) - b.fixed.ms(q)),
            _ => "—".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {:.0} |",
            r.name,
            r.fixed.rate(),
            r.fixed.errors + r.max.errors,
            r.fixed.ms(0.50),
            r.fixed.ms(0.90),
            r.fixed.ms(0.99),
            added(0.50),
            added(0.90),
            added(0.99),
            r.max.rate(),
        );
    }
    let _ = writeln!(
        s,
        "\nLatencies in ms; \"added\" is against the direct call of the same protocol in this run. \
         Sidecar A (gRPC server linked, serving the gRPC path) idle RSS: {:.1} MiB.",
        idle_a_kb as f64 / 1024.0
    );
    for r in rows {
        for (o, phase) in [(&r.fixed, "fixed rate"), (&r.max, "max throughput")] {
            if let Some(e) = &o.first_error {
                let _ = writeln!(s, "- {} {phase}: first error: {e}", r.name);
            }
        }
    }
    for n in notes {
        let _ = writeln!(s, "- {n}");
    }
    s
}
