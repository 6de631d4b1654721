//! `trellis-bench state`: the state API through a trellis sidecar against
//! the same operations done directly by the bench, per backend (Redis,
//! PostgreSQL, the embedded SQLite store), plus the embedded store's raw
//! capability called in process.
//!
//! Each backend gets its own sidecar (`trellis run --app-id bench`, no app),
//! started just before its part and stopped right after, so no idle sidecar
//! shares the cores with another part. Within a part the runner alternates the
//! sidecar and direct phases (fixed-rate save, get; max-throughput save, get),
//! so both sides of a comparison run close together in time.
//!
//! The HTTP clients and the direct scenarios are shared with the `grpc` bench,
//! which measures the embedded store through the sidecar's gRPC API the same way.

mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use clap::builder::RangedU64ValueParser;
use http::{HeaderValue, Method, StatusCode, Uri};

use crate::direct::{self, Backend, Data, Op};
use crate::load::{self, Call, HttpClient, Mode};
use crate::procs::Watch;
use crate::runner::{self, BenchArgs, Results, Scenario, Session};
use crate::sidecar::{Sidecar, Spec, StartError};

/// Distinct keys per path; every save and get picks key `seq % KEYS`.
pub const KEYS: usize = 1024;

/// The key prefix the sidecar gives app `bench`'s keys, used by the direct paths
/// that have a table or file of their own.
pub const SIDECAR_PREFIX: &str = "bench||";

#[derive(Args)]
#[command(mut_arg("connections", |a| a
    .long("concurrency")
    .value_name("CONCURRENCY")
    .help("Clients (keep-alive HTTP connections, or direct connections) per phase")))]
pub struct StateArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Size in bytes of the stored value (a JSON string, quotes included).
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(2..))]
    value: usize,
    /// Redis to use (host:port).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// PostgreSQL connection string.
    #[arg(long, default_value = "host=127.0.0.1 user=postgres dbname=test")]
    postgres: String,
    /// Concurrent writers for the embedded store's raw save rate.
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    raw_writers: usize,
    /// Concurrent readers for the embedded store's raw get rate.
    #[arg(long, default_value_t = 256, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    raw_readers: usize,
    /// Which parts to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "redis,postgres,embedded,raw"
    )]
    parts: Vec<PartName>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PartName {
    Redis,
    Postgres,
    Embedded,
    /// The embedded store's raw capability, in process.
    Raw,
}

impl PartName {
    fn title(self) -> &'static str {
        match self {
            PartName::Redis => "Redis",
            PartName::Postgres => "PostgreSQL",
            PartName::Embedded | PartName::Raw => "embedded (SQLite)",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            PartName::Redis => "redis",
            PartName::Postgres => "postgres",
            PartName::Embedded | PartName::Raw => "embedded",
        }
    }

    fn direct_path(self) -> &'static str {
        match self {
            PartName::Redis => {
                "bench → Redis (redis crate: EVALSHA of the store's SET script; MULTI HGETALL PTTL EXEC), one shared multiplexed connection"
            }
            PartName::Postgres => {
                "bench → PostgreSQL (tokio-postgres: the store's prepared v1 upsert / select), one connection per client"
            }
            PartName::Embedded | PartName::Raw => {
                "bench → `trellis_state::sqlite::SqliteStore` in process (same defaults as the sidecar's `statestore`)"
            }
        }
    }
}

/// How long reaching Redis or PostgreSQL may take before that part is skipped.
const REACH_LIMIT: Duration = Duration::from_secs(3);

/// One backend's results.
pub struct Part {
    pub title: &'static str,
    pub store: &'static str,
    pub direct_path: &'static str,
    /// Whether the sidecar-overhead target applies.
    pub target: bool,
    pub results: Results,
}

/// The embedded store called in process.
pub struct Raw {
    pub saves: runner::Measured,
    pub gets: runner::Measured,
}

pub async fn run(args: StateArgs) -> Result<()> {
    let mut session = Session::start(&args.bench, "trellis-bench-state-", None)?;
    let unique = unique_name();
    let value = json_string(args.value);
    let ctx = Ctx {
        args: &args,
        bin: session.bin.clone(),
        tmp: session.tmp.path().to_owned(),
        unique: &unique,
        value: &value,
    };

    let mut parts = Vec::new();
    for name in [PartName::Redis, PartName::Postgres, PartName::Embedded] {
        if !args.parts.contains(&name) {
            continue;
        }
        eprintln!("part: {}", name.title());
        let res = run_part(&ctx, name, &mut session).await;
        let what = name.title().to_owned();
        parts.extend(runner::keep(&mut session.notes, &what, res).flatten());
    }

    let raw = if args.parts.contains(&PartName::Raw) {
        let res = raw_capability(&ctx).await;
        runner::keep(&mut session.notes, "embedded store raw capability", res)
    } else {
        None
    };
    let md = report::render(&args, &session, &parts, raw.as_ref());
    session.finish(&md)
}

struct Ctx<'a> {
    args: &'a StateArgs,
    bin: Option<PathBuf>,
    tmp: PathBuf,
    /// Key prefix / table name of this run: `trellisbench_<pid>_<nanos>`.
    unique: &'a str,
    /// The value every save stores (JSON text).
    value: &'a Bytes,
}

/// A unique, SQL-safe name for this run's tables and key prefixes.
fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "trellisbench_{}_{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// A JSON string `"xxx…"` that is `len` bytes long, quotes included.
pub fn json_string(len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    v.push(b'"');
    v.resize(len.max(2) - 1, b'x');
    v.push(b'"');
    Bytes::from(v)
}

/// Sets up one backend (reachability, sidecar, direct connection), runs its
/// phases and cleans up. `Ok(None)` = skipped, with a note saying why.
async fn run_part(ctx: &Ctx<'_>, kind: PartName, session: &mut Session) -> Result<Option<Part>> {
    let notes = &mut session.notes;
    let dir = ctx.tmp.join(kind.dir());
    let components = dir.join("components");
    std::fs::create_dir_all(&components)?;
    let direct_table = format!("{}_direct", ctx.unique);
    let direct_prefix = match kind {
        PartName::Redis => format!("{direct_table}||"),
        // Separate table or file: the sidecar's own prefix.
        _ => SIDECAR_PREFIX.to_owned(),
    };
    let skip = |notes: &mut Vec<String>, addr: &str, e: &anyhow::Error| {
        let msg = format!("{} skipped: not reachable at {addr}: {e:#}", kind.title());
        eprintln!("{msg}");
        notes.push(msg);
        Ok(None)
    };

    // The backend itself, reached directly; an unreachable one skips the part.
    let (backend, store, component) = match kind {
        PartName::Redis => {
            let mut conn = match direct::redis_connect(&ctx.args.redis, REACH_LIMIT).await {
                Ok(c) => c,
                Err(e) => return skip(notes, &ctx.args.redis, &e),
            };
            let version = direct::redis_version(&mut conn).await;
            session.versions.push(format!("Redis: {version}"));
            let yaml = component_yaml(
                "redisstore",
                "state.redis",
                &[("redisHost", &ctx.args.redis), ("keyPrefix", ctx.unique)],
            );
            (Backend::Redis(conn), "redisstore", Some(yaml))
        }
        PartName::Postgres => {
            let client = match direct::pg_connect(&ctx.args.postgres, REACH_LIMIT).await {
                Ok(c) => c,
                Err(e) => return skip(notes, &ctx.args.postgres, &e),
            };
            let version: String = client
                .query_one("SHOW server_version", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or_else(|_| "unknown".into());
            session.versions.push(format!("PostgreSQL: {version}"));
            client
                .batch_execute(&direct::pg_create_v1(&direct_table))
                .await
                .context("creating the direct table")?;
            let yaml = component_yaml(
                "pgstore",
                "state.postgresql",
                &[
                    ("connectionString", &ctx.args.postgres),
                    ("tableName", ctx.unique),
                ],
            );
            let backend = Backend::Postgres {
                conn_str: ctx.args.postgres.clone(),
                table: direct_table.clone(),
            };
            (backend, "pgstore", Some(yaml))
        }
        PartName::Embedded | PartName::Raw => {
            let store = direct::sqlite_open(&dir.join("direct.db")).await?;
            (Backend::Sqlite(store), "statestore", None)
        }
    };

    let mut sidecar = None;
    if let Some(bin) = &ctx.bin {
        let data_dir = dir.join("data");
        let mut spec = Spec::new("sidecar", "bench", &data_dir, dir.join("sidecar.log"));
        if let Some(yaml) = &component {
            std::fs::write(components.join("store.yaml"), yaml)?;
            spec.resources = Some(&components);
        }
        match Sidecar::start(bin, spec).await {
            Ok(s) => sidecar = Some(s),
            Err(StartError::Rejected(line)) => notes.push(format!(
                "{}: trellis run rejected the component, so only the direct path ran: {line}",
                kind.title()
            )),
            Err(e) => notes.push(format!("{}: sidecar did not start: {e}", kind.title())),
        }
    }

    let keys = Keys::new(store, &direct_prefix, ctx.value)?;
    let result = measure_part(ctx, kind, sidecar.as_ref(), &backend, &keys, notes).await;
    if let Some(s) = sidecar.as_mut() {
        notes.extend(s.stop().await);
    }
    drop(sidecar);
    cleanup(ctx, kind, &backend, &direct_table, notes).await;
    let results = result?;
    Ok(Some(Part {
        title: kind.title(),
        store,
        direct_path: kind.direct_path(),
        target: matches!(kind, PartName::Redis | PartName::Postgres),
        results,
    }))
}

fn component_yaml(name: &str, type_name: &str, metadata: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {type_name}\n  version: v1\n  metadata:\n"
    );
    for (k, v) in metadata {
        // JSON strings are valid YAML scalars and quote whatever needs it.
        let v = serde_json::to_string(v).unwrap_or_default();
        y.push_str(&format!("  - name: {k}\n    value: {v}\n"));
    }
    y
}

/// Removes this run's keys and tables (the embedded store lives in the temp dir).
async fn cleanup(
    ctx: &Ctx<'_>,
    kind: PartName,
    backend: &Backend,
    direct_table: &str,
    notes: &mut Vec<String>,
) {
    let res = match (kind, backend) {
        (PartName::Redis, Backend::Redis(conn)) => {
            let mut conn = conn.clone();
            direct::redis_delete_matching(&mut conn, &format!("{}*", ctx.unique))
                .await
                .map(|n| eprintln!("  deleted {n} redis keys"))
        }
        (PartName::Postgres, _) => {
            async {
                let client = direct::pg_connect(&ctx.args.postgres, REACH_LIMIT).await?;
                client
                    .batch_execute(&direct::pg_drop(&[ctx.unique, direct_table], direct_table))
                    .await?;
                eprintln!("  dropped tables {} and {direct_table}", ctx.unique);
                anyhow::Ok(())
            }
            .await
        }
        _ => Ok(()),
    };
    if let Err(e) = res {
        notes.push(format!("{}: clean-up failed: {e:#}", kind.title()));
    }
}

// ---- the paths, shared with the grpc bench --------------------------------------------------

/// Precomputed HTTP requests for one store: save bodies and get URIs per key.
#[derive(Clone)]
pub struct HttpData {
    save_uri: Uri,
    bodies: Arc<Vec<Bytes>>,
    get_uris: Arc<Vec<Uri>>,
    value_len: usize,
}

impl HttpData {
    fn new(store: &str, value: &Bytes) -> Result<Self> {
        let value_text = std::str::from_utf8(value)?;
        let mut bodies = Vec::with_capacity(KEYS);
        let mut get_uris = Vec::with_capacity(KEYS);
        for i in 0..KEYS {
            bodies.push(Bytes::from(format!(
                r#"[{{"key":"k{i}","value":{value_text}}}]"#
            )));
            get_uris.push(Uri::try_from(format!("/v1.0/state/{store}/k{i}"))?);
        }
        Ok(Self {
            save_uri: Uri::try_from(format!("/v1.0/state/{store}"))?,
            bodies: Arc::new(bodies),
            get_uris: Arc::new(get_uris),
            value_len: value.len(),
        })
    }

    /// `n` clients doing `op` through the sidecar's HTTP API on `port`.
    fn clients(
        &self,
        port: u16,
        op: Op,
        n: usize,
    ) -> Vec<HttpClient<impl Fn(u64) -> Call + Send + Sync + 'static + use<>>> {
        (0..n)
            .map(|_| {
                let d = self.clone();
                HttpClient::new(port, move |seq| {
                    let i = (seq % KEYS as u64) as usize;
                    match op {
                        Op::Save => Call {
                            method: Method::POST,
                            uri: d.save_uri.clone(),
                            body: d.bodies[i].clone(),
                            content_type: HeaderValue::from_static("application/json"),
                            status: StatusCode::NO_CONTENT,
                            body_len: None,
                        },
                        Op::Get => Call {
                            method: Method::GET,
                            uri: d.get_uris[i].clone(),
                            body: Bytes::new(),
                            content_type: HeaderValue::from_static("application/json"),
                            status: StatusCode::OK,
                            body_len: Some(d.value_len),
                        },
                    }
                })
            })
            .collect()
    }
}

/// The keys and value of a part: as the sidecar's HTTP API names them (`k<i>` in
/// `store`), and as the direct path stores them (`<prefix>k<i>`).
pub struct Keys {
    pub http: HttpData,
    pub data: Data,
}

impl Keys {
    pub fn new(store: &str, direct_prefix: &str, value: &Bytes) -> Result<Self> {
        Ok(Self {
            http: HttpData::new(store, value)?,
            data: Data {
                keys: Arc::new((0..KEYS).map(|i| format!("{direct_prefix}k{i}")).collect()),
                value: value.clone(),
            },
        })
    }

    /// Writes every key through the sidecar's HTTP API.
    pub async fn fill_sidecar(&self, port: u16, n: usize) -> Result<()> {
        load::fill(self.http.clients(port, Op::Save, n), KEYS as u64).await
    }

    /// Writes every key directly.
    pub async fn fill_direct(&self, backend: &Backend, n: usize) -> Result<()> {
        load::fill(backend.clients(&self.data, Op::Save, n).await?, KEYS as u64).await
    }

    /// `op` through the sidecar's HTTP API on `port`.
    pub fn http_scenario<'a>(&self, name: &str, port: u16, op: Op, n: usize) -> Scenario<'a> {
        let http = self.http.clone();
        Scenario::new(name, move || {
            let clients = http.clients(port, op, n);
            async move { Ok(clients) }
        })
    }

    /// `op` done directly on `backend`.
    pub fn direct_scenario<'a>(
        &self,
        name: &str,
        backend: &'a Backend,
        op: Op,
        n: usize,
    ) -> Scenario<'a> {
        let data = self.data.clone();
        Scenario::new(name, move || {
            let data = data.clone();
            async move { backend.clients(&data, op, n).await }
        })
    }
}

/// Fills both paths, then runs the sidecar and direct scenarios of both operations.
async fn measure_part(
    ctx: &Ctx<'_>,
    kind: PartName,
    sidecar: Option<&Sidecar>,
    backend: &Backend,
    keys: &Keys,
    notes: &mut Vec<String>,
) -> Result<Results> {
    let n = ctx.args.bench.connections;
    let title = kind.title();
    let mut scenarios = Vec::new();
    for op in [Op::Save, Op::Get] {
        let (via, direct) = (
            format!("sidecar {}", op.name()),
            format!("direct {}", op.name()),
        );
        if let Some(s) = sidecar {
            let label = format!("{title} sidecar ({})", op.name());
            scenarios.push(
                keys.http_scenario(&via, s.port, op, n)
                    .against(&direct)
                    .labels(vec![title.into(), op.name().into(), "sidecar".into()])
                    .watch(Watch {
                        label,
                        pids: vec![s.pid()],
                    }),
            );
        }
        scenarios.push(keys.direct_scenario(&direct, backend, op, n).labels(vec![
            title.into(),
            op.name().into(),
            "direct".into(),
        ]));
    }
    // The sidecar's idle RSS is read above, before any state call.
    if let Some(s) = sidecar {
        eprintln!("  writing {KEYS} keys through the sidecar");
        if let Err(e) = keys.fill_sidecar(s.port, n).await {
            notes.push(format!(
                "{title}: saving through the sidecar failed, sidecar path skipped: {e:#}"
            ));
            scenarios.retain(Scenario::is_baseline);
        }
    }
    eprintln!("  writing {KEYS} keys directly");
    keys.fill_direct(backend, n)
        .await
        .context("saving directly")?;

    let mut incarnation = backend.incarnation().await;
    let results = runner::run(&ctx.args.bench, scenarios, async |what: &str| {
        let now = backend.incarnation().await;
        if now == incarnation {
            return;
        }
        let msg = format!(
            "{title}: the server restarted (or stopped answering) during or just before the \
             {what} phase (identity {} → {}; the bench never restarts it): those numbers \
             and errors are suspect",
            incarnation.as_deref().unwrap_or("?"),
            now.as_deref().unwrap_or("none")
        );
        eprintln!("  {msg}");
        notes.push(msg);
        incarnation = now;
        // A restarted Redis comes back empty: write the keys again so the following get
        // phases find them.
        if let Some(s) = sidecar {
            let _ = keys.fill_sidecar(s.port, n).await;
        }
        let _ = keys.fill_direct(backend, n).await;
    })
    .await?;
    notes.extend(results.error_notes(&format!("{title} ")));
    Ok(results)
}

/// The embedded store called in process: single-key saves with many
/// concurrent writers (group commit, fsync on), then gets.
async fn raw_capability(ctx: &Ctx<'_>) -> Result<Raw> {
    let args = ctx.args;
    let store = direct::sqlite_open(&ctx.tmp.join("raw.db")).await?;
    let backend = Backend::Sqlite(store);
    let keys = Keys::new("statestore", SIDECAR_PREFIX, ctx.value)?;
    keys.fill_direct(&backend, args.raw_writers).await?;
    let me = [Watch {
        label: "bench process".into(),
        pids: vec![std::process::id()],
    }];
    let phase = async |op: Op, n: usize| {
        eprintln!("phase: embedded store raw {}s, {n} callers", op.name());
        let clients = backend.clients(&keys.data, op, n).await?;
        let label = format!("raw {}", op.name());
        runner::phase(&args.bench, &label, Mode::MaxThroughput, clients, &me).await
    };
    let saves = phase(Op::Save, args.raw_writers).await?;
    let gets = phase(Op::Get, args.raw_readers).await?;
    Ok(Raw { saves, gets })
}
