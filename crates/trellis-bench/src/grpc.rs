//! `trellis-bench grpc`: the sidecar's gRPC paths against direct calls, beside the HTTP
//! paths measured in the same run.
//!
//! The invocation part sends the same `--body` bytes and expects them back:
//! * `http direct`, `http via trellis`: an HTTP POST to the HTTP echo app, directly and
//!   through two sidecars (`/v1.0/invoke/echo/method/echo`), as `trellis-bench invoke` does;
//! * `grpc direct`: `AppCallback/OnInvoke` on a gRPC echo app;
//! * `grpc proxy via trellis`: the same call sent to sidecar A's gRPC port with
//!   `dapr-app-id` metadata, proxied to the app through sidecar B;
//! * `grpc InvokeService via trellis`: `Dapr/InvokeService` on sidecar A, which sidecar B
//!   turns into `OnInvoke` on the app.
//!
//! The state part saves and gets single keys of the embedded store (`statestore`) on one
//! sidecar (`trellis run --app-id bench`, no app), through `Dapr/SaveState` and
//! `Dapr/GetState` and through the HTTP state API, against the same store used directly
//! in process: the `state` bench's embedded baseline, with its keys and value. Beside them
//! run two floors, `http round trip (echo app)` and `grpc round trip (echo app)`: the same
//! clients calling an echo app directly with the value's size of body. A call through the
//! sidecar contains such a round trip and an in-process call does not, so what a sidecar row
//! adds over the store is at least the floor of its protocol, whatever the sidecar does; the
//! report shows what each row costs beyond it (for reference, no target).
//!
//! Each client task owns one connection (an HTTP/1.1 keep-alive or one HTTP/2 channel).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use clap::builder::RangedU64ValueParser;
use http_body_util::BodyExt as _;
use trellis_proto::common as pbc;
use trellis_proto::runtime::{
    self as pb, app_callback_client::AppCallbackClient, dapr_client::DaprClient,
};

use crate::direct::{self, Backend, Op};
use crate::echo;
use crate::invoke::{echo_scenario, watch};
use crate::load::{self, Client, Target};
use crate::procs::{self, ChildGuard};
use crate::report::{self, PhaseText, Target as Goal};
use crate::runner::{self, BenchArgs, Results, Scenario, Session};
use crate::sidecar::{self, Sidecar, Spec};
use crate::state::{self, KEYS, Keys, SIDECAR_PREFIX};

/// gRPC state overhead over the store used directly, p50 (issue 8).
const STATE_ADDED_P50_MS: f64 = 0.05;
/// Idle RSS of a sidecar with the gRPC server linked (issue 8).
const RSS_IDLE_MIB: f64 = 10.0;

/// The gRPC app's id: the `dapr-app-id` of proxied calls.
const GRPC_APP_ID: &str = "grpc-echo";
/// The store of the state part: the sidecar's built-in embedded store.
const STORE: &str = "statestore";
/// The state part's floors: a round trip to an echo app, no sidecar, no store.
const HTTP_FLOOR: &str = "http round trip (echo app)";
const GRPC_FLOOR: &str = "grpc round trip (echo app)";

#[derive(Args)]
pub struct GrpcArgs {
    #[command(flatten)]
    bench: BenchArgs,
    /// Request body size in bytes (invocation part).
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Size in bytes of the stored value (state part; a JSON string, quotes included).
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(2..))]
    value: usize,
    /// Which parts to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "invoke,state"
    )]
    parts: Vec<PartName>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PartName {
    /// Service invocation: HTTP and gRPC, direct and through two sidecars.
    Invoke,
    /// GetState and SaveState through the sidecar's gRPC and HTTP APIs vs. the store.
    State,
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

    async fn on_job_event(
        &self,
        _request: tonic::Request<pb::JobEventRequest>,
    ) -> Result<tonic::Response<pb::JobEventResponse>, tonic::Status> {
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

/// One of the gRPC calls this bench measures, for [`calls`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Call {
    /// An `OnInvoke` of the echo app carrying `dapr-app-id`.
    Proxy,
    /// `Dapr/InvokeService` of the echo app.
    InvokeService,
    /// `Dapr/SaveState` of one key.
    Save,
    /// `Dapr/GetState` of that key (saved once first).
    Get,
}

/// Makes `count` rounds of the gRPC calls this bench measures (a proxied call and an
/// `InvokeService` of the echo app, a `SaveState` and a `GetState`), or `count` of the
/// `only` one, on the sidecar whose gRPC API is on `port`; for `scripts/link-order`, which
/// lays out the code they run, and `scripts/instructions-per-call`, which counts it.
pub async fn calls(port: u16, count: u64, only: Option<Call>, body: Option<usize>) -> Result<()> {
    let body = match body {
        Some(len) => Bytes::from(vec![b'x'; len]),
        None => Bytes::from_static(b"link order"),
    };
    let keys = Arc::new(vec!["link-order".to_string()]);
    let mut invoke = [
        (Call::Proxy, Via::Proxy),
        (Call::InvokeService, Via::InvokeService),
    ]
    .into_iter()
    .filter(|(call, _)| only.is_none_or(|o| o == *call))
    .map(|(_, via)| InvokeClient {
        conn: Conn::new(port),
        via,
        body: body.clone(),
    })
    .collect::<Vec<_>>();
    let mut state = [(Call::Save, Op::Save), (Call::Get, Op::Get)]
        .into_iter()
        .filter(|(call, _)| only.is_none_or(|o| o == *call))
        .map(|(_, op)| StateClient {
            conn: Conn::new(port),
            op,
            keys: keys.clone(),
            value: body.clone(),
        })
        .collect::<Vec<_>>();
    if only == Some(Call::Get) {
        let mut save = StateClient {
            conn: Conn::new(port),
            op: Op::Save,
            keys: keys.clone(),
            value: body.clone(),
        };
        save.call(0).await?;
    }
    for seq in 0..count {
        for c in &mut invoke {
            c.call(seq).await?;
        }
        for c in &mut state {
            c.call(seq).await?;
        }
    }
    Ok(())
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

/// One HTTP/2 connection to 127.0.0.1:`port`, opened on first use and after a failure.
struct Conn {
    port: u16,
    channel: Option<H2>,
}

impl Conn {
    fn new(port: u16) -> Self {
        Self {
            port,
            channel: None,
        }
    }

    async fn get(&mut self) -> Result<H2> {
        if let Some(c) = &self.channel {
            return Ok(c.clone());
        }
        let channel = H2::connect(self.port).await?;
        Ok(self.channel.insert(channel).clone())
    }
}

/// A gRPC channel that is one `h2` connection and nothing else, for tonic's generated
/// clients. A call's one message leaves with its headers in one write, as the gRPC SDKs
/// send a unary call. tonic's own `Channel` queues each call for a worker task of its own
/// (a `tower::buffer`) under reconnect, origin and user-agent layers, and hyper's client
/// below it writes the headers and the message apart, so the server is woken twice per
/// call. Both costs would be in every latency this bench measures, and in the state rows'
/// "added" figure too, whose baseline has no client at all. (The HTTP clients, in
/// `load.rs`, are hyper connections used directly, for the same reason.)
#[derive(Clone)]
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    authority: http::uri::Authority,
}

impl H2 {
    async fn connect(port: u16) -> Result<Self> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            authority: format!("127.0.0.1:{port}").parse()?,
        })
    }

    fn dapr(self) -> DaprClient<Self> {
        DaprClient::new(self)
    }

    fn app(self) -> AppCallbackClient<Self> {
        AppCallbackClient::new(self)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Answer>;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        // Waited for in `call`, on the clone the call owns.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let (send, authority) = (self.send.clone(), self.authority.clone());
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            // A unary call's body is its one message, ready at once.
            let message = body.collect().await?.to_bytes();
            let path = parts.uri.path_and_query().cloned();
            parts.uri = http::Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")))
                .build()?;
            let mut send = send.ready().await?;
            let (answer, mut stream) =
                send.send_request(http::Request::from_parts(parts, ()), false)?;
            stream.send_data(message, true)?;
            Ok(answer.await?.map(|body| Answer {
                body,
                data_done: false,
            }))
        })
    }
}

/// An answer's body: its DATA frames, then its trailers (the gRPC status).
struct Answer {
    body: h2::RecvStream,
    data_done: bool,
}

impl hyper::body::Body for Answer {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match std::task::ready!(self.body.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.body.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.body.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(hyper::body::Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }
}

#[derive(Clone, Copy)]
enum Via {
    Direct,
    Proxy,
    InvokeService,
}

/// Invokes `echo` on the gRPC app and checks the echoed length.
struct InvokeClient {
    conn: Conn,
    via: Via,
    body: Bytes,
}

impl Client for InvokeClient {
    async fn call(&mut self, _seq: u64) -> Result<()> {
        let channel = self.conn.get().await?;
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
            Via::Direct => channel.app().on_invoke(message).await?,
            Via::Proxy => {
                let mut req = tonic::Request::new(message);
                req.metadata_mut().insert(
                    "dapr-app-id",
                    tonic::metadata::MetadataValue::from_static(GRPC_APP_ID),
                );
                channel.app().on_invoke(req).await?
            }
            Via::InvokeService => {
                let req = pb::InvokeServiceRequest {
                    id: GRPC_APP_ID.into(),
                    message: Some(message),
                };
                channel.dapr().invoke_service(req).await?
            }
        };
        let len = reply.into_inner().data.map_or(0, |d| d.value.len());
        if len != self.body.len() {
            bail!("echoed {len} bytes, expected {}", self.body.len());
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.conn.channel = None;
    }
}

/// `Dapr/SaveState` of one key (last write, no ETag) or `Dapr/GetState` of one key, with
/// the keys and value of the HTTP state clients.
struct StateClient {
    conn: Conn,
    op: Op,
    keys: Arc<Vec<String>>,
    value: Bytes,
}

impl Client for StateClient {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let mut dapr = self.conn.get().await?.dapr();
        let key = self.keys[(seq % self.keys.len() as u64) as usize].clone();
        match self.op {
            Op::Save => {
                let item = pbc::StateItem {
                    key,
                    value: self.value.to_vec(),
                    ..Default::default()
                };
                dapr.save_state(pb::SaveStateRequest {
                    store_name: STORE.into(),
                    states: vec![item],
                })
                .await?;
            }
            Op::Get => {
                let req = pb::GetStateRequest {
                    store_name: STORE.into(),
                    key,
                    ..Default::default()
                };
                let len = dapr.get_state(req).await?.into_inner().data.len();
                if len != self.value.len() {
                    bail!("value of {len} bytes, expected {}", self.value.len());
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.conn.channel = None;
    }
}

/// Makes [`InvokeClient`]s of `port`, each with its own connection, sending `body`.
fn invoke_clients(port: u16, via: Via, body: &Bytes) -> impl Fn() -> InvokeClient + use<> {
    let body = body.clone();
    move || InvokeClient {
        conn: Conn::new(port),
        via,
        body: body.clone(),
    }
}

fn grpc_scenario<'a, C: Client>(name: &str, make: impl Fn() -> C + 'a, n: usize) -> Scenario<'a> {
    Scenario::new(name, move || {
        let clients: Vec<C> = (0..n).map(|_| make()).collect();
        async move { Ok(clients) }
    })
}

// ---- the run -----------------------------------------------------------------------------

pub async fn run(args: GrpcArgs) -> Result<()> {
    let mut session = Session::start(&args.bench, "trellis-bench-grpc-", None)?;
    let bin = session
        .bin
        .clone()
        .context("the grpc bench measures sidecars, and there is no trellis binary")?;
    let tmp = session.tmp.path().to_owned();
    let ctx = Ctx {
        args: &args,
        bin: &bin,
        tmp: &tmp,
        n: args.bench.connections,
    };
    let mut results = Vec::new();
    if args.parts.contains(&PartName::Invoke) {
        eprintln!("part: invocation");
        let res = invoke_part(&ctx, &mut session.notes).await;
        results.extend(runner::keep(&mut session.notes, "the invocation part", res));
    }
    if args.parts.contains(&PartName::State) {
        eprintln!("part: state");
        let res = state_part(&ctx, &mut session.notes).await;
        results.extend(runner::keep(&mut session.notes, "the state part", res));
    }
    let md = render(&args, &session, &results);
    session.finish(&md)
}

/// What every part runs with.
struct Ctx<'a> {
    args: &'a GrpcArgs,
    bin: &'a Path,
    tmp: &'a Path,
    /// Clients per phase.
    n: usize,
}

/// The HTTP echo app behind sidecars A and B, as `invoke` measures it, and the gRPC echo
/// app behind sidecar B (`--app-protocol grpc`), called through sidecar A's gRPC port.
async fn invoke_part(ctx: &Ctx<'_>, notes: &mut Vec<String>) -> Result<Results> {
    let (args, bin, tmp, n) = (ctx.args, ctx.bin, ctx.tmp, ctx.n);
    let data_dir = tmp.join("trellis-data");
    std::fs::create_dir_all(&data_dir)?;
    let http_echo = procs::free_port()?;
    let _http_app = echo::spawn(http_echo).await?;
    let mut http = sidecar::start_pair(bin, tmp, &data_dir, http_echo, None).await?;

    let grpc_echo = procs::free_port()?;
    let _grpc_app = spawn_echo(grpc_echo).await?;
    let log = |name: &str| tmp.join(format!("{name}.log"));
    let mut b = Spec::new("grpc sidecar B", GRPC_APP_ID, &data_dir, log(GRPC_APP_ID));
    b.app = Some((grpc_echo, "grpc"));
    let mut b = Sidecar::start(bin, b).await?;
    let mut a = Spec::new(
        "grpc sidecar A",
        "grpc-bench-client",
        &data_dir,
        log("grpc-a"),
    );
    a.grpc = true;
    let mut a = Sidecar::start(bin, a).await?;
    let grpc_a = a.grpc_port.context("sidecar A has no gRPC port")?;
    let probe = InvokeClient {
        conn: Conn::new(grpc_a),
        via: Via::InvokeService,
        body: Bytes::from_static(b"x"),
    };
    load::fill(vec![probe], 1)
        .await
        .context("sidecar A cannot reach the grpc echo app through sidecar B")?;

    let body = Bytes::from(vec![b'x'; args.body]);
    let target = |port: u16, path: &str| Target {
        port,
        path: path.to_owned(),
    };
    let invoke = |port: u16, via: Via| invoke_clients(port, via, &body);
    let grpc_watches = |sc: Scenario<'static>, what: &str| {
        sc.against("grpc direct")
            .watch(watch(&format!("grpc sidecar A ({what})"), a.pid()))
            .watch(watch(&format!("grpc sidecar B ({what})"), b.pid()))
    };
    let scenarios = vec![
        echo_scenario("http direct", target(http_echo, "/echo"), &body, n),
        echo_scenario(
            "http via trellis",
            target(http.a.port, sidecar::INVOKE_PATH),
            &body,
            n,
        )
        .against("http direct")
        .watch(watch("http sidecar A", http.a.pid()))
        .watch(watch("http sidecar B", http.b.pid())),
        grpc_scenario("grpc direct", invoke(grpc_echo, Via::Direct), n),
        grpc_watches(
            grpc_scenario("grpc proxy via trellis", invoke(grpc_a, Via::Proxy), n),
            "proxy",
        ),
        grpc_watches(
            grpc_scenario(
                "grpc InvokeService via trellis",
                invoke(grpc_a, Via::InvokeService),
                n,
            ),
            "InvokeService",
        ),
    ];
    let results = runner::run(&args.bench, scenarios, async |_| {}).await?;
    notes.extend(results.error_notes(""));
    notes.extend(a.stop().await);
    notes.extend(b.stop().await);
    notes.extend(http.stop().await);
    Ok(results)
}

/// One sidecar with the embedded store and its gRPC API; the same store file opened in
/// process is the baseline.
async fn state_part(ctx: &Ctx<'_>, notes: &mut Vec<String>) -> Result<Results> {
    let (args, bin, tmp, n) = (ctx.args, ctx.bin, ctx.tmp, ctx.n);
    let dir = tmp.join("state");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir)?;
    let backend = Backend::Sqlite(direct::sqlite_open(&dir.join("direct.db")).await?);
    let mut spec = Spec::new("state sidecar", "bench", &data_dir, dir.join("sidecar.log"));
    spec.grpc = true;
    let mut sidecar = Sidecar::start(bin, spec).await?;
    let grpc_port = sidecar
        .grpc_port
        .context("the state sidecar has no gRPC port")?;
    let value = state::json_string(args.value);
    let keys = Keys::new(STORE, SIDECAR_PREFIX, &value)?;
    let grpc_keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("k{i}")).collect());

    // The floor under the sidecar rows: one round trip to an app that does nothing but
    // answer, with the same client and the value's size of body, over each protocol.
    let (http_echo, grpc_echo) = (procs::free_port()?, procs::free_port()?);
    let _http_app = echo::spawn(http_echo).await?;
    let _grpc_app = spawn_echo(grpc_echo).await?;
    let http_floor = Target {
        port: http_echo,
        path: "/echo".to_owned(),
    };
    let mut scenarios = vec![
        echo_scenario(HTTP_FLOOR, http_floor, &value, n),
        grpc_scenario(
            GRPC_FLOOR,
            invoke_clients(grpc_echo, Via::Direct, &value),
            n,
        ),
    ];
    for op in [Op::Save, Op::Get] {
        let direct = format!("state {} direct (in process)", op.name());
        let via = |api: &str| format!("state {} via trellis {api}", op.name());
        let grpc = {
            let (keys, value) = (grpc_keys.clone(), value.clone());
            move || StateClient {
                conn: Conn::new(grpc_port),
                op,
                keys: keys.clone(),
                value: value.clone(),
            }
        };
        scenarios.push(keys.direct_scenario(&direct, &backend, op, n));
        scenarios.push(
            keys.http_scenario(&via("HTTP"), sidecar.port, op, n)
                .against(&direct)
                .watch(watch(
                    &format!("state sidecar (HTTP {})", op.name()),
                    sidecar.pid(),
                )),
        );
        scenarios.push(
            grpc_scenario(&via("gRPC"), grpc, n)
                .against(&direct)
                .watch(watch(
                    &format!("state sidecar (gRPC {})", op.name()),
                    sidecar.pid(),
                )),
        );
    }
    // Idle RSS is read above, before any state call.
    eprintln!("  writing {KEYS} keys through the sidecar and directly");
    keys.fill_sidecar(sidecar.port, n)
        .await
        .context("saving through the sidecar")?;
    keys.fill_direct(&backend, n)
        .await
        .context("saving directly")?;
    let results = runner::run(&args.bench, scenarios, async |_| {}).await;
    notes.extend(sidecar.stop().await);
    let results = results?;
    notes.extend(results.error_notes(""));
    Ok(results)
}

fn render(args: &GrpcArgs, session: &Session, results: &[Results]) -> String {
    let bench = &args.bench;
    let mut s = String::new();
    report::write_run_header(&mut s, "gRPC", session);
    let _ = writeln!(
        s,
        "- Load: {} connections per phase (HTTP/1.1 keep-alive, or one HTTP/2 channel each), {} B bodies \
         (invocation), {} B values over {KEYS} keys (state), {} warm-up before each phase (not recorded)",
        bench.connections,
        args.body,
        args.value,
        report::secs(bench.warmup)
    );
    s.push_str(
        "- Paths: *http direct* = client → HTTP echo app; *http via trellis* = client → sidecar A (HTTP API) → \
         sidecar B → echo app; *grpc direct* = client → gRPC echo app (`OnInvoke`); *grpc proxy* = client → \
         sidecar A's gRPC port (`OnInvoke` with `dapr-app-id`) → sidecar B → app; *grpc InvokeService* = \
         client → `Dapr/InvokeService` on sidecar A → sidecar B → app (`OnInvoke`); *state … direct* = \
         `trellis_state::sqlite::SqliteStore` in the bench process (the sidecar's `statestore` defaults); \
         *state … via trellis* = client → `trellis run --app-id bench` (HTTP state API, or `Dapr/SaveState` / \
         `Dapr/GetState`) → `statestore`; *http / grpc round trip (echo app)* = the state clients' \
         connection to an echo app (HTTP POST, or `OnInvoke`) with a value-sized body, no sidecar: the \
         floor of a call over each protocol. Everything on 127.0.0.1, all on the same cores.\n\n",
    );
    let all: Vec<&Results> = results.iter().collect();
    let text = PhaseText {
        labels: &["scenario"],
        unit: "ops/s",
        who: "connection",
        added: "scenario − its baseline (the direct call of the same protocol, or the store called in process)",
        shares: "The load generator, the apps, the store and the sidecars share the same cores.",
    };
    report::phase_tables(&mut s, bench, &text, &all);
    report::resources_table(&mut s, bench, "ops/s", &all);
    report::targets_table(&mut s, ["measured", "reference"], &targets(&all));
    if bench.rate != 1000 {
        let _ = writeln!(
            s,
            "The targets are defined at 1000 ops/s; this run used {} ops/s.\n",
            bench.rate
        );
    }
    report::write_notes(&mut s, &session.notes);
    s
}

pub(crate) fn targets(results: &[&Results]) -> Vec<Goal> {
    // What a scenario adds over its baseline at p50: with rounds, the median of each
    // round's difference (`Results::difference_ms`), as `invoke` and `blocks` judge theirs;
    // how it was taken goes beside it.
    let beyond = |name: &str, base: &str| {
        results.iter().find_map(|r| {
            let (value, how) = r.difference_ms(name, base, 0.5);
            value.map(|v| (v, how))
        })
    };
    let added = |name: &str| {
        let base = results
            .iter()
            .find_map(|r| r.get(name).and_then(|s| s.baseline.clone()))?;
        beyond(name, &base)
    };
    let how = |a: &Option<(f64, Option<String>)>| {
        a.as_ref()
            .and_then(|(_, how)| how.clone())
            .map_or(String::new(), |h| format!(" ({h})"))
    };
    let http = added("http via trellis");
    let mut rows = Vec::new();
    for name in ["grpc proxy via trellis", "grpc InvokeService via trellis"] {
        let v = added(name);
        let label = format!("{name}: added p50 ≤ the HTTP path's{}", how(&v));
        let reference = format!(
            "http via trellis: {}{}",
            http.as_ref()
                .map_or("—".into(), |(v, _)| report::added_ms(*v)),
            how(&http)
        );
        rows.push(Goal::added_at_most(
            label,
            v.map(|(v, _)| v),
            http.as_ref().map(|(v, _)| *v),
            reference,
        ));
    }
    let idle = results
        .iter()
        .find_map(|r| r.get("grpc proxy via trellis"))
        .and_then(|r| r.watches.first())
        .map(|w| report::mib(w.1));
    let mib = |v: f64| format!("{v:.1} MiB");
    rows.push(Goal::at_most(
        format!("grpc sidecar A RSS idle ≤ {RSS_IDLE_MIB} MiB (gRPC server linked)"),
        idle,
        RSS_IDLE_MIB,
        "—".into(),
        mib,
    ));
    // Beside each state target, not a target: how much of it is the round trip itself,
    // which no sidecar can take out (see the module docs).
    let floor = |name: &str| {
        results
            .iter()
            .find_map(|r| r.get(name))
            .filter(|r| r.fixed.outcome.ok > 0)
            .map_or("—".into(), |r| {
                format!("{} ms", report::ms(r.fixed.outcome.ms(0.5)))
            })
    };
    let shown =
        |a: Option<(f64, Option<String>)>| a.map_or("—".into(), |(v, _)| report::added_ms(v));
    for (rpc, op) in [("GetState", "get"), ("SaveState", "save")] {
        let (grpc, http) = (
            format!("state {op} via trellis gRPC"),
            format!("state {op} via trellis HTTP"),
        );
        let over_store = added(&grpc);
        rows.push(Goal::added_at_most(
            format!(
                "gRPC {rpc} overhead over the store p50 ≤ {STATE_ADDED_P50_MS:.2} ms{}",
                how(&over_store)
            ),
            over_store.map(|(v, _)| v),
            STATE_ADDED_P50_MS,
            format!("HTTP: {}", shown(added(&http))),
        ));
        let over_floor = beyond(&grpc, GRPC_FLOOR);
        rows.push(Goal::added_at_most(
            format!(
                "gRPC {rpc} p50 beyond one gRPC round trip to an app ({}){}",
                floor(GRPC_FLOOR),
                how(&over_floor)
            ),
            over_floor.map(|(v, _)| v),
            None,
            format!(
                "HTTP, beyond an HTTP round trip ({}): {}",
                floor(HTTP_FLOOR),
                shown(beyond(&http, HTTP_FLOOR))
            ),
        ));
    }
    rows
}
