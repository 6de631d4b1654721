//! `trellis-bench state`: the state API through a trellis sidecar against
//! the same operations done directly by the bench, per backend (Redis,
//! PostgreSQL, the embedded SQLite store), plus the embedded store's raw
//! capability called in process.
//!
//! Each backend gets its own sidecar (`trellis run --app-id bench`, no app),
//! started just before its part and stopped right after, so no idle sidecar
//! shares the cores with another part. Within a part the sidecar and direct
//! phases alternate (fixed-rate save, get; max-throughput save, get), so
//! both sides of a comparison run close together in time.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderValue, Method, StatusCode, Uri};

use crate::direct::{self, Backend, Data, Op};
use crate::load::{self, Call, Client, HttpClient, Mode, Outcome, Schedule};
use crate::procs::{self, Usage, Watch};
use crate::sidecar::{self, StartError, StateSidecar};
use crate::state_report::{OpResult, Part, Raw, SidecarUsage, StateReport};

/// Distinct keys per path; every save and get picks key `seq % KEYS`.
pub const KEYS: usize = 1024;

#[derive(Args)]
pub struct StateArgs {
    /// Operations per second in the fixed-rate phases.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each measured phase, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Unrecorded warm-up before each phase.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// Clients (keep-alive HTTP connections, or direct connections) per phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Size in bytes of the stored value (a JSON string, quotes included).
    #[arg(long, default_value_t = 256)]
    value: usize,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this trellis binary instead of building one with cargo.
    #[arg(long)]
    trellis_bin: Option<PathBuf>,
    /// Redis to use (host:port).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// PostgreSQL connection string.
    #[arg(long, default_value = "host=127.0.0.1 user=postgres dbname=test")]
    postgres: String,
    /// Concurrent writers for the embedded store's raw save rate.
    #[arg(long, default_value_t = 64)]
    raw_writers: usize,
    /// Concurrent readers for the embedded store's raw get rate.
    #[arg(long, default_value_t = 256)]
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

/// How long reaching Redis or PostgreSQL may take before that part is skipped.
const REACH_LIMIT: Duration = Duration::from_secs(3);

pub async fn run(args: StateArgs) -> Result<()> {
    if args.rate == 0 || args.concurrency == 0 || args.duration.is_zero() {
        bail!("--rate, --concurrency and --duration must be greater than zero");
    }
    if args.value < 2 {
        bail!("--value must be at least 2 (the value is a JSON string)");
    }
    if args.raw_writers == 0 || args.raw_readers == 0 {
        bail!("--raw-writers and --raw-readers must be greater than zero");
    }
    let command = crate::command_line();
    let (cpus, cpu_model) = procs::machine();
    let load_at_start = procs::loadavg();
    let mut notes = Vec::new();
    let mut versions = Vec::new();

    let trellis_bin = sidecar::locate(args.trellis_bin.as_deref())
        .inspect_err(|e| {
            eprintln!("no sidecar parts: {e:#}");
            notes.push(format!("every sidecar path skipped: {e:#}"));
        })
        .ok();
    if let Some(bin) = &trellis_bin {
        versions.push(format!("trellis: {}", bin.display()));
    }
    let tmp = tempfile::Builder::new()
        .prefix("trellis-bench-state-")
        .tempdir()
        .context("creating a temp dir")?;
    let unique = unique_name();
    let value = json_string(args.value);
    let ctx = Ctx {
        args: &args,
        bin: trellis_bin.as_deref(),
        tmp: tmp.path(),
        unique: &unique,
        value: &value,
    };

    let mut parts = Vec::new();
    for (backend, name) in [
        (Kind::Redis, PartName::Redis),
        (Kind::Postgres, PartName::Postgres),
        (Kind::Embedded, PartName::Embedded),
    ] {
        if !args.parts.contains(&name) {
            continue;
        }
        eprintln!("part: {}", backend.title());
        match run_part(&ctx, backend, &mut notes, &mut versions).await {
            Ok(Some(p)) => parts.push(p),
            Ok(None) => {}
            Err(e) => {
                eprintln!("{} failed: {e:#}", backend.title());
                notes.push(format!("{} failed: {e:#}", backend.title()));
            }
        }
    }

    let raw = if args.parts.contains(&PartName::Raw) {
        match raw_capability(&ctx).await {
            Ok(r) => Some(r),
            Err(e) => {
                notes.push(format!("embedded store raw capability failed: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let md = StateReport {
        command,
        date: crate::report::utc_now(),
        cpus,
        cpu_model,
        load: (load_at_start, procs::loadavg()),
        rate: f64::from(args.rate),
        duration: args.duration,
        warmup: args.warmup,
        concurrency: args.concurrency,
        value: args.value,
        keys: KEYS,
        versions,
        parts,
        raw,
        raw_callers: (args.raw_writers, args.raw_readers),
        notes,
    }
    .render();
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    Ok(())
}

struct Ctx<'a> {
    args: &'a StateArgs,
    bin: Option<&'a Path>,
    tmp: &'a Path,
    /// Key prefix / table name of this run: `trellisbench_<pid>_<nanos>`.
    unique: &'a str,
    /// The value every save stores (JSON text).
    value: &'a Bytes,
}

#[derive(Clone, Copy)]
enum Kind {
    Redis,
    Postgres,
    Embedded,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Redis => "Redis",
            Kind::Postgres => "PostgreSQL",
            Kind::Embedded => "embedded (SQLite)",
        }
    }
    fn dir(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Postgres => "postgres",
            Kind::Embedded => "embedded",
        }
    }
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
fn json_string(len: usize) -> Bytes {
    let mut v = Vec::with_capacity(len);
    v.push(b'"');
    v.resize(len - 1, b'x');
    v.push(b'"');
    Bytes::from(v)
}

/// Sets up one backend (reachability, sidecar, direct connection), runs its
/// phases and cleans up. `Ok(None)` = skipped, with a note saying why.
async fn run_part(
    ctx: &Ctx<'_>,
    kind: Kind,
    notes: &mut Vec<String>,
    versions: &mut Vec<String>,
) -> Result<Option<Part>> {
    let dir = ctx.tmp.join(kind.dir());
    let components = dir.join("components");
    std::fs::create_dir_all(&components)?;
    let direct_table = format!("{}_direct", ctx.unique);
    let direct_prefix = match kind {
        Kind::Redis => format!("{direct_table}||"),
        // Separate table or file: the sidecar's own prefix.
        Kind::Postgres | Kind::Embedded => "bench||".to_owned(),
    };

    // The backend itself, reached directly; an unreachable one skips the part.
    let (backend, store, component) = match kind {
        Kind::Redis => {
            let mut conn = match direct::redis_connect(&ctx.args.redis, REACH_LIMIT).await {
                Ok(c) => c,
                Err(e) => return skip(notes, kind, &ctx.args.redis, &e),
            };
            versions.push(format!("Redis: {}", direct::redis_version(&mut conn).await));
            let yaml = component_yaml(
                "redisstore",
                "state.redis",
                &[("redisHost", &ctx.args.redis), ("keyPrefix", ctx.unique)],
            );
            (Backend::Redis(conn), "redisstore", Some(yaml))
        }
        Kind::Postgres => {
            let client = match direct::pg_connect(&ctx.args.postgres, REACH_LIMIT).await {
                Ok(c) => c,
                Err(e) => return skip(notes, kind, &ctx.args.postgres, &e),
            };
            let version: String = client
                .query_one("SHOW server_version", &[])
                .await
                .map(|r| r.get(0))
                .unwrap_or_else(|_| "unknown".into());
            versions.push(format!("PostgreSQL: {version}"));
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
        Kind::Embedded => {
            let store = direct::sqlite_open(&dir.join("direct.db")).await?;
            (Backend::Sqlite(store), "statestore", None)
        }
    };

    let mut sidecar = None;
    let mut sidecar_note = None;
    if let Some(bin) = ctx.bin {
        let resources = match &component {
            Some(yaml) => {
                std::fs::write(components.join("store.yaml"), yaml)?;
                Some(components.as_path())
            }
            None => None,
        };
        let data_dir = dir.join("data");
        match sidecar::start_state(bin, &data_dir, resources, &dir.join("sidecar.log")).await {
            Ok(s) => sidecar = Some(s),
            Err(StartError::Rejected(line)) => {
                let msg = format!(
                    "{}: trellis run rejected the component, so only the direct path ran: {line}",
                    kind.title()
                );
                eprintln!("{msg}");
                sidecar_note = Some(msg);
            }
            Err(StartError::Other(e)) => {
                let msg = format!("{}: sidecar did not start: {e:#}", kind.title());
                eprintln!("{msg}");
                sidecar_note = Some(msg);
            }
        }
    }
    notes.extend(sidecar_note);

    let result = measure_part(
        ctx,
        kind,
        store,
        sidecar.as_ref(),
        &backend,
        &direct_prefix,
        notes,
    )
    .await;
    if let Some(s) = sidecar.as_mut() {
        if let Some(status) = s.child.exited() {
            notes.push(format!(
                "{}: the sidecar exited during the run ({status}); log tail:\n{}",
                kind.title(),
                procs::log_tail(&s.log, 5)
            ));
        }
        notes.extend(s.stop());
    }
    drop(sidecar);
    cleanup(ctx, kind, &backend, &direct_table, notes).await;
    result.map(Some)
}

fn skip(
    notes: &mut Vec<String>,
    kind: Kind,
    addr: &str,
    e: &anyhow::Error,
) -> Result<Option<Part>> {
    let msg = format!("{} skipped: not reachable at {addr}: {e:#}", kind.title());
    eprintln!("{msg}");
    notes.push(msg);
    Ok(None)
}

fn component_yaml(name: &str, type_name: &str, metadata: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {type_name}\n  version: v1\n  metadata:\n"
    );
    for (k, v) in metadata {
        // JSON strings are valid YAML scalars and quote whatever needs it.
        let v = yaml_quote(v);
        y.push_str(&format!("  - name: {k}\n    value: {v}\n"));
    }
    y
}

fn yaml_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Removes this run's keys and tables (the embedded store lives in the temp dir).
async fn cleanup(
    ctx: &Ctx<'_>,
    kind: Kind,
    backend: &Backend,
    direct_table: &str,
    notes: &mut Vec<String>,
) {
    let res = match (kind, backend) {
        (Kind::Redis, Backend::Redis(conn)) => {
            let mut conn = conn.clone();
            direct::redis_delete_matching(&mut conn, &format!("{}*", ctx.unique))
                .await
                .map(|n| eprintln!("  deleted {n} redis keys"))
        }
        (Kind::Postgres, _) => {
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

/// Precomputed HTTP requests for one store: save bodies and get URIs per key.
#[derive(Clone)]
struct HttpData {
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

    fn clients(
        &self,
        port: u16,
        op: Op,
        n: usize,
    ) -> Vec<HttpClient<impl Fn(u64) -> Call + Send + Sync + 'static>> {
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

/// Fill both paths, then the eight phases, sidecar and direct alternating.
async fn measure_part(
    ctx: &Ctx<'_>,
    kind: Kind,
    store: &'static str,
    sidecar: Option<&StateSidecar>,
    backend: &Backend,
    direct_prefix: &str,
    notes: &mut Vec<String>,
) -> Result<Part> {
    let args = ctx.args;
    let n = args.concurrency;
    let http = HttpData::new(store, ctx.value)?;
    let data = Data {
        keys: Arc::new((0..KEYS).map(|i| format!("{direct_prefix}k{i}")).collect()),
        value: ctx.value.clone(),
    };
    let title = kind.title();

    let mut sidecar = sidecar;
    let watch = sidecar.map(|s| Watch {
        label: format!("sidecar ({title})"),
        pids: vec![s.child.pid()],
    });
    let idle_kb = watch.as_ref().map(|w| procs::rss_kb(&w.pids));
    if let Some(s) = sidecar {
        eprintln!("  writing {KEYS} keys through the sidecar");
        if let Err(e) = load::fill(http.clients(s.port, Op::Save, n), KEYS as u64).await {
            notes.push(format!(
                "{title}: saving through the sidecar failed, sidecar path skipped: {e:#}"
            ));
            sidecar = None;
        }
    }
    eprintln!("  writing {KEYS} keys directly");
    load::fill(backend.clients(&data, Op::Save, n).await?, KEYS as u64)
        .await
        .context("saving directly")?;

    let mut incarnation = backend.incarnation().await;
    let rate = f64::from(args.rate);
    let mut fixed = Vec::new();
    let mut max = Vec::new();
    let mut usage = [[Usage::default(); 2]; 2];
    for (m, mode) in [Mode::FixedRate(rate), Mode::MaxThroughput]
        .into_iter()
        .enumerate()
    {
        for (o, op) in [Op::Save, Op::Get].into_iter().enumerate() {
            let what = match mode {
                Mode::FixedRate(_) => format!("{} {} at {} ops/s", title, op.name(), args.rate),
                Mode::MaxThroughput => format!("{} {} max throughput", title, op.name()),
            };
            let mut result = OpResult {
                op,
                sidecar: None,
                direct: None,
            };
            if let Some(s) = sidecar {
                eprintln!("phase: {what} via sidecar");
                let (out, u) = phase(
                    &format!("sidecar {}", op.name()),
                    mode,
                    args,
                    http.clients(s.port, op, n),
                    watch.as_ref(),
                )
                .await?;
                usage[m][o] = u.unwrap_or_default();
                first_error(notes, title, "sidecar", op, mode, &out);
                result.sidecar = Some(out);
            }
            eprintln!("phase: {what} direct");
            let clients = backend.clients(&data, op, n).await?;
            let (out, _) =
                phase(&format!("direct {}", op.name()), mode, args, clients, None).await?;
            first_error(notes, title, "direct", op, mode, &out);
            result.direct = Some(out);
            let now = backend.incarnation().await;
            if now != incarnation {
                let msg = format!(
                    "{title}: the server restarted (or stopped answering) during or just before the \
                     {what} phases (identity {} → {}; the bench never restarts it): those numbers \
                     and errors are suspect",
                    incarnation.as_deref().unwrap_or("?"),
                    now.as_deref().unwrap_or("none")
                );
                eprintln!("  {msg}");
                notes.push(msg);
                incarnation = now;
                // A restarted Redis comes back empty: write the keys again so
                // the following get phases find them.
                if let Some(s) = sidecar {
                    let _ = load::fill(http.clients(s.port, Op::Save, n), KEYS as u64).await;
                }
                if let Ok(clients) = backend.clients(&data, Op::Save, n).await {
                    let _ = load::fill(clients, KEYS as u64).await;
                }
            }
            match mode {
                Mode::FixedRate(_) => fixed.push(result),
                Mode::MaxThroughput => max.push(result),
            }
        }
    }
    Ok(Part {
        title,
        store,
        direct_path: match kind {
            Kind::Redis => {
                "bench → Redis (redis crate: EVALSHA of the store's SET script; MULTI HGETALL PTTL EXEC), one shared multiplexed connection"
            }
            Kind::Postgres => {
                "bench → PostgreSQL (tokio-postgres: the store's prepared v1 upsert / select), one connection per client"
            }
            Kind::Embedded => {
                "bench → `trellis_state::sqlite::SqliteStore` in process (same defaults as the sidecar's `statestore`)"
            }
        },
        target: matches!(kind, Kind::Redis | Kind::Postgres),
        fixed,
        max,
        usage: sidecar.map(|_| SidecarUsage {
            idle_kb: idle_kb.unwrap_or_default(),
            fixed: usage[0],
            max: usage[1],
        }),
    })
}

fn first_error(
    notes: &mut Vec<String>,
    title: &str,
    path: &str,
    op: Op,
    mode: Mode,
    out: &Outcome,
) {
    if let Some(e) = &out.first_error {
        let phase = match mode {
            Mode::FixedRate(_) => "fixed rate",
            Mode::MaxThroughput => "max throughput",
        };
        notes.push(format!(
            "{title} {path} {} {phase}: {} errors, first: {e}",
            op.name(),
            out.errors
        ));
    }
}

/// One measured phase; with a watch, the process's CPU and RSS over exactly
/// the measured window.
async fn phase<C: Client>(
    label: &str,
    mode: Mode,
    args: &StateArgs,
    clients: Vec<C>,
    watch: Option<&Watch>,
) -> Result<(Outcome, Option<Usage>)> {
    let schedule = Schedule::new(args.warmup, args.duration);
    let monitor = watch.cloned().map(|w| {
        tokio::task::spawn_blocking(move || {
            procs::monitor(&[w], schedule.measure_from, schedule.end)
        })
    });
    let outcome = load::run_clients(label, mode, schedule, clients).await?;
    let usage = match monitor {
        Some(m) => m.await.context("resource monitor panicked")?.pop(),
        None => None,
    };
    eprintln!(
        "  {label}: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
        outcome.rate(),
        outcome.ms(0.5),
        outcome.ms(0.99),
        outcome.errors
    );
    Ok((outcome, usage))
}

/// The embedded store called in process: single-key saves with many
/// concurrent writers (group commit, fsync on), then gets.
async fn raw_capability(ctx: &Ctx<'_>) -> Result<Raw> {
    let args = ctx.args;
    let path = ctx.tmp.join("raw.db");
    let store = direct::sqlite_open(&path).await?;
    let backend = Backend::Sqlite(store);
    let data = Data {
        keys: Arc::new((0..KEYS).map(|i| format!("bench||k{i}")).collect()),
        value: ctx.value.clone(),
    };
    load::fill(
        backend.clients(&data, Op::Save, args.raw_writers).await?,
        KEYS as u64,
    )
    .await?;
    let me = Watch {
        label: "bench process".into(),
        pids: vec![std::process::id()],
    };
    eprintln!(
        "phase: embedded store raw saves, {} writers",
        args.raw_writers
    );
    let clients = backend.clients(&data, Op::Save, args.raw_writers).await?;
    let (saves, save_cpu) =
        phase("raw save", Mode::MaxThroughput, args, clients, Some(&me)).await?;
    eprintln!(
        "phase: embedded store raw gets, {} readers",
        args.raw_readers
    );
    let clients = backend.clients(&data, Op::Get, args.raw_readers).await?;
    let (gets, get_cpu) = phase("raw get", Mode::MaxThroughput, args, clients, Some(&me)).await?;
    Ok(Raw {
        writers: args.raw_writers,
        readers: args.raw_readers,
        saves,
        gets,
        save_cpu: save_cpu.unwrap_or_default(),
        get_cpu: get_cpu.unwrap_or_default(),
    })
}
