//! `trellis-bench configuration`: how fast a change made in a configuration store reaches
//! every subscribed app, and what reading an item through a sidecar costs over reading it
//! from the store directly, per store (the embedded SQLite store, Redis, PostgreSQL).
//!
//! Per store: `--subscribers` sidecars (`trellis run`, one per app id, sharing the data
//! dir), each fronting an app of the bench's own that records when each change arrives,
//! and each subscribed over HTTP to one key. The bench then writes `--changes` new values
//! of that key straight into the store (the embedded one through its own
//! `SqliteConfigurationStore` on the same file, as `trellis config set` does; Redis with
//! `SET`; PostgreSQL with an `UPDATE` its trigger announces), one every
//! `--change-interval`, and measures write → app delivery for every app (p50, p99, max;
//! a change not delivered within 1 s counts as lost). Then it reads the key `--gets` times
//! in a row, through the first sidecar (HTTP, one keep-alive connection) and directly
//! (the same store crate the sidecar uses, in process), and compares the p50s. The same
//! loop against the bench's echo app (a bare hyper server on one thread in a process of its
//! own, `GET /` answered with nothing) gives the floor: what any HTTP hop costs here.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use trellis_configuration::{ConfigurationStore, Metadata};

use crate::report::{Align, Table, ms, write_notes, write_run_header};
use crate::runner::{BenchArgs, Session, keep, parse_duration};
use crate::sidecar::{Sidecar, Spec};

#[derive(Args)]
pub struct ConfigurationArgs {
    /// `--out` and `--trellis-bin` are used; the phase flags are not.
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Changes written per store.
    #[arg(long, default_value_t = 200)]
    changes: u64,
    /// Time between two changes.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    change_interval: Duration,
    /// Subscribed apps (one sidecar each).
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Reads of the key per path, one after another.
    #[arg(long, default_value_t = 5000)]
    gets: u64,
    /// Redis to use (host:port).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// PostgreSQL connection string.
    #[arg(long, default_value = "host=127.0.0.1 user=postgres dbname=test")]
    postgres: String,
    /// Which stores to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "embedded,redis,postgres"
    )]
    parts: Vec<Part>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Embedded,
    Redis,
    Postgres,
}

impl Part {
    fn title(self) -> &'static str {
        match self {
            Part::Embedded => "embedded (configuration.sqlite)",
            Part::Redis => "Redis (configuration.redis)",
            Part::Postgres => "PostgreSQL (configuration.postgresql)",
        }
    }
}

/// A change not delivered within this counts as lost.
const LOST_AFTER: Duration = Duration::from_secs(1);
const KEY: &str = "bench-config";
const STORE: &str = "benchconfig";

/// What one store measured.
struct Measured {
    part: Part,
    delivery: Histogram<u64>,
    expected: u64,
    lost: u64,
    sidecar_get: Histogram<u64>,
    direct_get: Histogram<u64>,
    floor_get: Histogram<u64>,
}

/// When each change was written, by its value, and when each app got it.
#[derive(Default)]
struct Clock {
    written: HashMap<u64, Instant>,
    delivery: Option<Histogram<u64>>,
    delivered: u64,
}

type Shared = Arc<Mutex<Clock>>;

fn lock(c: &Shared) -> std::sync::MutexGuard<'_, Clock> {
    c.lock().unwrap_or_else(|p| p.into_inner())
}

fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| anyhow!("histogram: {e}"))
}

pub async fn run(args: ConfigurationArgs) -> Result<()> {
    let mut session = Session::start(&args.bench, "trellis-bench-configuration-", None)?;
    let Some(bin) = session.bin.clone() else {
        return finish(&session, &[]);
    };
    let mut results = Vec::new();
    for &part in &args.parts {
        let dir = session.tmp.path().join(format!("{}", results.len()));
        let res = measure(&args, &bin, &dir, part).await;
        if let Some(m) = keep(&mut session.notes, part.title(), res) {
            results.push(m);
        }
    }
    finish(&session, &results)
}

/// The store's component and what the bench uses to write and read it directly.
struct Backend {
    resources: Option<std::path::PathBuf>,
    direct: Arc<dyn ConfigurationStore>,
    write: Box<dyn Fn(u64) -> futures_util::future::BoxFuture<'static, Result<()>>>,
    /// What to run once the store is measured (PostgreSQL: drop the bench's table).
    cleanup: Option<(Arc<tokio_postgres::Client>, String)>,
}

async fn backend(args: &ConfigurationArgs, dir: &Path, part: Part) -> Result<Backend> {
    std::fs::create_dir_all(dir)?;
    let component = |kind: &str, md: &[(&str, &str)]| -> Result<std::path::PathBuf> {
        let res = dir.join("resources");
        std::fs::create_dir_all(&res)?;
        let mut yaml = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {STORE}\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n"
        );
        for (k, v) in md {
            let _ = writeln!(yaml, "  - name: {k}\n    value: \"{v}\"");
        }
        std::fs::write(res.join("config.yaml"), yaml)?;
        Ok(res)
    };
    match part {
        Part::Embedded => {
            let file = dir.join("configuration.db").display().to_string();
            let res = component("configuration.sqlite", &[("connectionString", &file)])?;
            let md = Metadata::from_pairs([("connectionString", file.as_str())]);
            let store =
                Arc::new(trellis_configuration::sqlite::SqliteConfigurationStore::open(&md).await?);
            store.set(KEY, "0", &Default::default()).await?;
            let writer = store.clone();
            Ok(Backend {
                resources: Some(res),
                direct: store,
                cleanup: None,
                write: Box::new(move |n| {
                    let w = writer.clone();
                    Box::pin(async move {
                        w.set(KEY, &n.to_string(), &Default::default()).await?;
                        Ok(())
                    })
                }),
            })
        }
        Part::Redis => {
            let res = component("configuration.redis", &[("redisHost", &args.redis)])?;
            let md = Metadata::from_pairs([("redisHost", args.redis.as_str())]);
            let store =
                Arc::new(trellis_configuration::redis::RedisConfigurationStore::open(&md).await?);
            let conn = redis::Client::open(format!("redis://{}", args.redis))?
                .get_multiplexed_async_connection()
                .await?;
            let set = move |n: u64| {
                let mut c = conn.clone();
                Box::pin(async move {
                    let _: () = redis::cmd("SET")
                        .arg(KEY)
                        .arg(format!("{n}||{n}"))
                        .query_async(&mut c)
                        .await?;
                    Ok(())
                }) as futures_util::future::BoxFuture<'static, Result<()>>
            };
            set(0).await?;
            Ok(Backend {
                resources: Some(res),
                direct: store,
                cleanup: None,
                write: Box::new(set),
            })
        }
        Part::Postgres => {
            let table = format!("trellis_bench_config_{}", std::process::id());
            let (client, conn) = tokio_postgres::connect(&args.postgres, tokio_postgres::NoTls)
                .await
                .context("connecting to postgresql")?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS {table};
                     CREATE TABLE {table} (KEY VARCHAR NOT NULL, VALUE VARCHAR NOT NULL, VERSION VARCHAR NOT NULL, METADATA JSON);
                     CREATE OR REPLACE FUNCTION {table}_notify() RETURNS TRIGGER AS $$
                     BEGIN
                         PERFORM pg_notify('{table}', json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data', row_to_json(NEW))::text);
                         RETURN NULL;
                     END; $$ LANGUAGE plpgsql;
                     CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE ON {table}
                         FOR EACH ROW EXECUTE PROCEDURE {table}_notify();
                     INSERT INTO {table} VALUES ('{KEY}', '0', '0', NULL);"
                ))
                .await?;
            let md = [
                ("connectionString", args.postgres.as_str()),
                ("table", table.as_str()),
                ("notifyChannel", table.as_str()),
            ];
            let res = component("configuration.postgresql", &md)?;
            let store = Arc::new(
                trellis_configuration::postgres::PostgresConfigurationStore::open(
                    &Metadata::from_pairs(md),
                )
                .await?,
            );
            let client = Arc::new(client);
            let update = format!("UPDATE {table} SET value = $1, version = $1 WHERE key = '{KEY}'");
            let drop = format!("DROP TABLE {table}; DROP FUNCTION {table}_notify()");
            Ok(Backend {
                resources: Some(res),
                direct: store,
                cleanup: Some((client.clone(), drop)),
                write: Box::new(move |n| {
                    let (c, sql) = (client.clone(), update.clone());
                    Box::pin(async move {
                        c.execute(&sql, &[&n.to_string()]).await?;
                        Ok(())
                    })
                }),
            })
        }
    }
}

async fn measure(args: &ConfigurationArgs, bin: &Path, dir: &Path, part: Part) -> Result<Measured> {
    eprintln!("configuration: {}", part.title());
    let backend = backend(args, dir, part).await?;
    let clock: Shared = Arc::new(Mutex::new(Clock {
        delivery: Some(histogram()?),
        ..Default::default()
    }));
    let mut sidecars = Vec::new();
    for i in 0..args.subscribers {
        let app_port = serve_app(clock.clone()).await?;
        let app_id = format!("bench-config-{i}");
        let mut spec = Spec::new(
            format!("sidecar {i}"),
            &app_id,
            dir,
            dir.join(format!("sidecar-{i}.log")),
        );
        spec.app = Some((app_port, "http"));
        spec.resources = backend.resources.as_deref();
        let sidecar = Sidecar::start(bin, spec)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let sub = get(
            sidecar.port,
            &format!("/v1.0/configuration/{STORE}/subscribe?key={KEY}"),
        )
        .await?;
        if sub.0 != StatusCode::OK {
            return Err(anyhow!(
                "subscribe answered {}: {}",
                sub.0,
                String::from_utf8_lossy(&sub.1)
            ));
        }
        sidecars.push(sidecar);
    }
    // Changes, paced.
    for n in 1..=args.changes {
        lock(&clock).written.insert(n, Instant::now());
        (backend.write)(n).await?;
        tokio::time::sleep(args.change_interval).await;
    }
    tokio::time::sleep(LOST_AFTER).await;
    let (delivery, delivered) = {
        let mut c = lock(&clock);
        (c.delivery.take().unwrap_or(histogram()?), c.delivered)
    };
    let expected = args.changes * args.subscribers as u64;
    // Gets: through the first sidecar, then directly.
    let port = sidecars
        .first()
        .map(|s| s.port)
        .ok_or_else(|| anyhow!("no sidecar"))?;
    let path = format!("/v1.0/configuration/{STORE}?key={KEY}");
    let sidecar_get = sequential_gets(port, &path, args.gets).await?;
    let floor_get = {
        let port = crate::procs::free_port()?;
        let _app = crate::echo::spawn(port).await?;
        sequential_gets(port, "/", args.gets).await?
    };
    let mut direct_get = histogram()?;
    let keys = vec![KEY.to_string()];
    for _ in 0..args.gets {
        let started = Instant::now();
        backend.direct.get(&keys, &Default::default()).await?;
        record(&mut direct_get, started.elapsed());
    }
    for mut s in sidecars {
        s.stop().await;
    }
    if let Some((client, sql)) = &backend.cleanup {
        client.batch_execute(sql).await?;
    }
    Ok(Measured {
        part,
        delivery,
        expected,
        lost: expected.saturating_sub(delivered),
        sidecar_get,
        direct_get,
        floor_get,
    })
}

/// `n` GETs of `path`, one after another on one keep-alive connection, each expecting 200.
async fn sequential_gets(port: u16, path: &str, n: u64) -> Result<Histogram<u64>> {
    let mut h = histogram()?;
    let mut sender = crate::load::connect(port).await?;
    for _ in 0..n {
        let started = Instant::now();
        let req = Request::get(path)
            .header(http::header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::new()))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if status != StatusCode::OK {
            return Err(anyhow!("GET {path} answered {status}"));
        }
        record(&mut h, started.elapsed());
    }
    Ok(h)
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

async fn get(port: u16, path: &str) -> Result<(StatusCode, Bytes)> {
    let mut sender = crate::load::connect(port).await?;
    let req = Request::get(path)
        .header(http::header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// An app that records, for each change it is sent, how long after its write it came.
async fn serve_app(clock: Shared) -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let clock = clock.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| on_change(clock.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(port)
}

async fn on_change(
    clock: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let arrived = Instant::now();
    let body = req.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = value["items"][KEY]["value"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = n {
        let mut c = lock(&clock);
        if let Some(written) = c.written.get(&n).copied() {
            let d = arrived.saturating_duration_since(written);
            if d <= LOST_AFTER {
                c.delivered += 1;
                if let Some(h) = c.delivery.as_mut() {
                    record(h, d);
                }
            }
        }
    }
    Ok(Response::new(Full::new(Bytes::new())))
}

fn q(h: &Histogram<u64>, quantile: f64) -> String {
    if h.is_empty() {
        return "–".into();
    }
    ms(h.value_at_quantile(quantile) as f64 / 1000.0)
}

fn finish(session: &Session, results: &[Measured]) -> Result<()> {
    let mut s = String::new();
    write_run_header(&mut s, "configuration", session);
    s.push_str("\n## Change → app delivery\n\nEach change written straight into the store, timed until each subscribed app received its `POST /configuration/<store>/<key>` (ms).\n\n");
    let mut t = Table::new([
        ("store", Align::Left),
        ("deliveries", Align::Right),
        ("lost", Align::Right),
        ("p50", Align::Right),
        ("p99", Align::Right),
        ("max", Align::Right),
        ("target p99 ≤ 100 ms", Align::Left),
    ]);
    for m in results {
        let p99 = m.delivery.value_at_quantile(0.99) as f64 / 1000.0;
        let met = !m.delivery.is_empty() && m.lost == 0 && p99 <= 100.0;
        t.push(vec![
            m.part.title().into(),
            format!("{}", m.expected - m.lost),
            format!("{}", m.lost),
            q(&m.delivery, 0.5),
            q(&m.delivery, 0.99),
            if m.delivery.is_empty() {
                "–".into()
            } else {
                ms(m.delivery.max() as f64 / 1000.0)
            },
            if met { "met".into() } else { "missed".into() },
        ]);
    }
    t.render(&mut s);
    s.push_str("\n## Get: through a sidecar vs. the store directly\n\nOne key read one call after another (ms); the sidecar path is HTTP on one keep-alive connection, the direct one the same store crate in process. \"Bare HTTP\" is the same loop against a bare hyper server (`GET /`, empty answer): the least any HTTP hop adds here.\n\n");
    let mut t = Table::new([
        ("store", Align::Left),
        ("sidecar p50", Align::Right),
        ("direct p50", Align::Right),
        ("added p50", Align::Right),
        ("sidecar p99", Align::Right),
        ("direct p99", Align::Right),
        ("bare HTTP p50", Align::Right),
        ("bare HTTP added p50", Align::Right),
        ("target added p50 ≤ 0.05 ms", Align::Left),
    ]);
    for m in results {
        let p = |h: &Histogram<u64>| h.value_at_quantile(0.5) as f64 / 1000.0;
        let added = p(&m.sidecar_get) - p(&m.direct_get);
        t.push(vec![
            m.part.title().into(),
            q(&m.sidecar_get, 0.5),
            q(&m.direct_get, 0.5),
            format!("{added:+.3}"),
            q(&m.sidecar_get, 0.99),
            q(&m.direct_get, 0.99),
            q(&m.floor_get, 0.5),
            format!("{:+.3}", p(&m.floor_get) - p(&m.direct_get)),
            if added <= 0.05 {
                "met".into()
            } else {
                "missed".into()
            },
        ]);
    }
    t.render(&mut s);
    s.push('\n');
    write_notes(&mut s, &session.notes);
    session.finish(&s)
}
