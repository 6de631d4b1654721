//! `trellis-bench blocks`: the smaller building blocks through a sidecar against the same
//! store used directly in process, in the same run:
//!
//! - **secrets**: `GET /v1.0/secrets/secretstore/<k>` on the embedded encrypted store
//!   (seeded with 64 secrets) vs `SqliteSecretStore::get` on the same file;
//! - **configuration**: `GET /v1.0/configuration/configstore?key=<k>` on the embedded
//!   store (64 items) vs `SqliteConfigurationStore::get` on the same file;
//! - **lock** (embedded, and Redis): lock + unlock pairs, each client on keys of its own
//!   (uncontended), `POST /v1.0-alpha1/lock|unlock/<store>` vs the store's `try_lock` /
//!   `unlock` in process. Each operation is one lock or one unlock; a pair is two.
//!
//! Each part has its own sidecar (`trellis run --app-id bench`, no app), started before the
//! part and stopped after it. The secrets and configuration parts also measure the floor of any HTTP hop
//! here: the same clients sending `GET /` to the bench's echo app (hyper on one thread, a
//! process of its own, as the sidecar is), against the same direct baseline. What that
//! bare server adds is what no sidecar answering over HTTP can go below on this machine.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use http::{HeaderValue, Method, StatusCode, Uri};
use trellis_lock::{LockStore, TryLock, UnlockStatus};
use trellis_secrets::SecretStore;

use crate::load::{Call, Client, HttpClient};
use crate::procs::Watch;
use crate::report::{self, PhaseText, Target};
use crate::runner::{self, BenchArgs, Results, Scenario, Session};
use crate::sidecar::{Sidecar, Spec};

/// Secrets the secrets part reads, in turn.
const SECRETS: usize = 64;

/// Items the configuration part reads, in turn.
const ITEMS: usize = 64;

#[derive(Args)]
pub struct BlocksArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Redis for the Redis lock part (host:port).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// Which parts to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "secrets,configuration,lock-embedded,lock-redis"
    )]
    parts: Vec<PartName>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PartName {
    Secrets,
    Configuration,
    LockEmbedded,
    LockRedis,
}

impl PartName {
    fn title(self) -> &'static str {
        match self {
            PartName::Secrets => "secrets (embedded)",
            PartName::Configuration => "configuration (embedded)",
            PartName::LockEmbedded => "lock (embedded)",
            PartName::LockRedis => "lock (Redis)",
        }
    }

    fn dir(self) -> &'static str {
        match self {
            PartName::Secrets => "secrets",
            PartName::Configuration => "configuration",
            PartName::LockEmbedded => "lock-embedded",
            PartName::LockRedis => "lock-redis",
        }
    }
}

pub async fn run(args: BlocksArgs) -> Result<()> {
    let mut session = Session::start(&args.bench, "trellis-bench-blocks-", None)?;
    let mut done: Vec<(PartName, Results)> = Vec::new();
    for part in [
        PartName::Secrets,
        PartName::Configuration,
        PartName::LockEmbedded,
        PartName::LockRedis,
    ] {
        if !args.parts.contains(&part) {
            continue;
        }
        eprintln!("part: {}", part.title());
        let res = run_part(&args, &session, part).await;
        if let Some((results, notes)) = runner::keep(&mut session.notes, part.title(), res) {
            session.notes.extend(notes);
            done.push((part, results));
        }
    }
    let md = render(&args, &session, &done);
    session.finish(&md)
}

/// One part: its store, its sidecar, its two scenarios.
async fn run_part(
    args: &BlocksArgs,
    session: &Session,
    part: PartName,
) -> Result<(Results, Vec<String>)> {
    let dir = session.tmp.path().join(part.dir());
    let data_dir = dir.join("data");
    let components = dir.join("components");
    std::fs::create_dir_all(&components)?;
    let n = args.bench.connections;
    let unique = format!("trellisbench-{}-{}", std::process::id(), part.dir());
    let (store_name, direct): (&str, Direct) = match part {
        PartName::Secrets => {
            let store = open_secrets(&data_dir).await?;
            for i in 0..SECRETS {
                store
                    .set(&format!("k{i}"), &format!("k{i}"), "s3cr3t-value")
                    .await?;
            }
            ("secretstore", Direct::Secrets(Arc::new(store)))
        }
        PartName::Configuration => {
            std::fs::create_dir_all(&data_dir)?;
            let file = data_dir
                .join("bench-configuration.db")
                .display()
                .to_string();
            let md = trellis_configuration::Metadata::from_pairs([("connectionString", &file)]);
            let store = trellis_configuration::sqlite::SqliteConfigurationStore::open(&md).await?;
            for i in 0..ITEMS {
                store
                    .set(&format!("k{i}"), "value", &Default::default())
                    .await?;
            }
            std::fs::write(
                components.join("configuration.yaml"),
                format!(
                    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: configstore\n\
                     spec:\n  type: configuration.sqlite\n  version: v1\n  metadata:\n  - name: \
                     connectionString\n    value: \"{file}\"\n"
                ),
            )?;
            ("configstore", Direct::Configuration(Arc::new(store)))
        }
        PartName::LockEmbedded => {
            let md = trellis_lock::Metadata::from_pairs([(
                "connectionString",
                dir.join("direct-lock.db").display().to_string(),
            )]);
            let store = trellis_lock::sqlite::SqliteLockStore::open(&md).await?;
            ("lockstore", Direct::Lock(Arc::new(store)))
        }
        PartName::LockRedis => {
            let md = trellis_lock::Metadata::from_pairs([("redisHost", args.redis.as_str())]);
            let store = tokio::time::timeout(
                Duration::from_secs(3),
                trellis_lock::redis::RedisLockStore::open(&md),
            )
            .await
            .context("Redis did not answer within 3s")?
            .with_context(|| format!("Redis at {}", args.redis))?;
            std::fs::write(
                components.join("lock.yaml"),
                format!(
                    "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: redislock\n\
                     spec:\n  type: lock.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    \
                     value: \"{}\"\n",
                    args.redis
                ),
            )?;
            ("redislock", Direct::Lock(Arc::new(store)))
        }
    };
    let mut notes = Vec::new();
    let mut sidecar = None;
    if let Some(bin) = &session.bin {
        let mut spec = Spec::new("sidecar", "bench", &data_dir, dir.join("sidecar.log"));
        if matches!(part, PartName::LockRedis | PartName::Configuration) {
            spec.resources = Some(&components);
        }
        match Sidecar::start(bin, spec).await {
            Ok(s) => sidecar = Some(s),
            Err(e) => notes.push(format!("{}: sidecar did not start: {e}", part.title())),
        }
    }
    let title = part.title();
    let mut scenarios = Vec::new();
    if let Some(s) = &sidecar {
        let port = s.port;
        let unique = unique.clone();
        let make = move || {
            let clients = (0..n)
                .map(|c| http_client(part, port, store_name, &unique, c))
                .collect::<Vec<_>>();
            async move { Ok(clients) }
        };
        scenarios.push(
            Scenario::new("sidecar", make)
                .against("direct")
                .labels(vec![title.into(), "sidecar".into()])
                .watch(Watch {
                    label: format!("{title} sidecar"),
                    pids: vec![s.pid()],
                }),
        );
    }
    let mut _floor_app = None;
    if matches!(part, PartName::Secrets | PartName::Configuration) {
        let port = crate::procs::free_port()?;
        _floor_app = Some(crate::echo::spawn(port).await?);
        let make = move || {
            let clients = (0..n).map(|_| floor_client(port)).collect::<Vec<_>>();
            async move { Ok(clients) }
        };
        scenarios.push(
            Scenario::new(FLOOR, make)
                .against("direct")
                .labels(vec![title.into(), FLOOR.into()]),
        );
    }
    let direct_unique = format!("{unique}-direct");
    let make = move || {
        let clients = (0..n)
            .map(|c| DirectClient {
                direct: direct.clone(),
                prefix: format!("{direct_unique}-{c}"),
                calls: 0,
            })
            .collect::<Vec<_>>();
        async move { Ok(clients) }
    };
    scenarios.push(Scenario::new("direct", make).labels(vec![title.into(), "direct".into()]));
    let results = runner::run(&args.bench, scenarios, async |_: &str| {}).await;
    if let Some(s) = sidecar.as_mut() {
        notes.extend(s.stop().await);
    }
    let results = results?;
    notes.extend(results.error_notes(&format!("{title}: ")));
    Ok((results, notes))
}

async fn open_secrets(data_dir: &Path) -> Result<trellis_secrets::sqlite::SqliteSecretStore> {
    std::fs::create_dir_all(data_dir)?;
    let md = trellis_secrets::Metadata::from_pairs([(
        "connectionString",
        data_dir.join("secrets.db").display().to_string(),
    )]);
    Ok(trellis_secrets::sqlite::SqliteSecretStore::open(&md).await?)
}

/// Client `c` of the sidecar path: secret gets in turn, or lock/unlock alternating on keys
/// of its own (its own count, so the alternation holds in either load mode).
fn http_client(
    part: PartName,
    port: u16,
    store: &'static str,
    unique: &str,
    c: usize,
) -> HttpClient<impl Fn(u64) -> Call + Send + Sync + 'static + use<>> {
    let json = HeaderValue::from_static("application/json");
    let calls = AtomicU64::new(0);
    let prefix = format!("{unique}-{c}");
    // The gets' paths, read in turn; none for the lock parts.
    let get_uris: Vec<Uri> = match part {
        PartName::Secrets => (0..SECRETS)
            .map(|i| format!("/v1.0/secrets/{store}/k{i}"))
            .collect::<Vec<_>>(),
        PartName::Configuration => (0..ITEMS)
            .map(|i| format!("/v1.0/configuration/{store}?key=k{i}"))
            .collect(),
        PartName::LockEmbedded | PartName::LockRedis => Vec::new(),
    }
    .into_iter()
    .filter_map(|path| Uri::try_from(path).ok())
    .collect();
    let lock_uri = Uri::try_from(format!("/v1.0-alpha1/lock/{store}")).ok();
    let unlock_uri = Uri::try_from(format!("/v1.0-alpha1/unlock/{store}")).ok();
    HttpClient::new(port, move |seq| {
        if !get_uris.is_empty() {
            let uris = &get_uris;
            return Call {
                method: Method::GET,
                uri: uris[(seq % uris.len() as u64) as usize].clone(),
                body: Bytes::new(),
                content_type: json.clone(),
                status: StatusCode::OK,
                body_len: None,
            };
        }
        let k = calls.fetch_add(1, Ordering::Relaxed);
        let resource = format!("{prefix}-{}", k / 2);
        let (uri, body) = if k.is_multiple_of(2) {
            (
                lock_uri.clone(),
                format!(r#"{{"resourceId":"{resource}","lockOwner":"o","expiryInSeconds":60}}"#),
            )
        } else {
            (
                unlock_uri.clone(),
                format!(r#"{{"resourceId":"{resource}","lockOwner":"o"}}"#),
            )
        };
        Call {
            method: Method::POST,
            uri: uri.unwrap_or_default(),
            body: Bytes::from(body),
            content_type: json.clone(),
            status: StatusCode::OK,
            body_len: None,
        }
    })
}

/// The scenario of the bare HTTP server (see the module docs).
const FLOOR: &str = "bare HTTP server";

/// A client of the bare HTTP server: `GET /`, answered 200 with an empty body.
fn floor_client(port: u16) -> HttpClient<impl Fn(u64) -> Call + Send + Sync + 'static + use<>> {
    let json = HeaderValue::from_static("application/json");
    HttpClient::new(port, move |_| Call {
        method: Method::GET,
        uri: Uri::from_static("/"),
        body: Bytes::new(),
        content_type: json.clone(),
        status: StatusCode::OK,
        body_len: None,
    })
}

/// The store the direct path calls in process.
#[derive(Clone)]
enum Direct {
    Secrets(Arc<trellis_secrets::sqlite::SqliteSecretStore>),
    Configuration(Arc<trellis_configuration::sqlite::SqliteConfigurationStore>),
    Lock(Arc<dyn LockStore>),
}

struct DirectClient {
    direct: Direct,
    prefix: String,
    calls: u64,
}

impl Client for DirectClient {
    async fn call(&mut self, seq: u64) -> Result<()> {
        match &self.direct {
            Direct::Secrets(store) => {
                let name = format!("k{}", seq % SECRETS as u64);
                let secret = store.get(&name, &Default::default()).await?;
                if secret.is_empty() {
                    bail!("secret {name} is empty");
                }
            }
            Direct::Configuration(store) => {
                use trellis_configuration::ConfigurationStore as _;
                let keys = [format!("k{}", seq % ITEMS as u64)];
                let items = store.get(&keys, &Default::default()).await?;
                if items.is_empty() {
                    bail!("configuration item {} is missing", keys[0]);
                }
            }
            Direct::Lock(store) => {
                let k = self.calls;
                self.calls += 1;
                let resource = format!("{}-{}", self.prefix, k / 2);
                if k.is_multiple_of(2) {
                    let got = store
                        .try_lock(&resource, "o", Duration::from_secs(60))
                        .await?;
                    if !matches!(got, TryLock::Acquired { .. }) {
                        bail!("lock {resource} was held");
                    }
                } else {
                    let status = store.unlock(&resource, "o").await?;
                    if status != UnlockStatus::Success {
                        bail!("unlock {resource}: {status:?}");
                    }
                }
            }
        }
        Ok(())
    }
}

fn render(args: &BlocksArgs, session: &Session, done: &[(PartName, Results)]) -> String {
    let mut s = String::new();
    report::write_run_header(&mut s, "Building blocks (secrets, lock)", session);
    let results: Vec<&Results> = done.iter().map(|(_, r)| r).collect();
    report::phase_tables(
        &mut s,
        &args.bench,
        &PhaseText {
            labels: &["block", "path"],
            unit: "ops/s",
            who: "client",
            added: "sidecar − direct",
            shares: "Sidecar path: the bench and the sidecar share the cores.",
        },
        &results,
    );
    report::resources_table(&mut s, &args.bench, "ops/s", &results);
    let mut targets = Vec::new();
    for (part, r) in done {
        match part {
            PartName::Secrets | PartName::Configuration => {
                let what = if *part == PartName::Secrets {
                    "secret"
                } else {
                    "configuration"
                };
                // With rounds, the median of each round's difference (`Results::paired_ms`).
                let (value, how) = r.difference_ms("sidecar", "direct", 0.5);
                let required = match how {
                    Some(how) => format!("≤ +0.050 ms ({how})"),
                    None => "≤ +0.050 ms".into(),
                };
                targets.push(Target::added_at_most(
                    format!("{what} get overhead, p50 (sidecar − direct)"),
                    value,
                    0.05,
                    required,
                ));
                // Not a target: what the target would cost with no sidecar logic at all.
                if let Some(floor) = r.added_ms(FLOOR, 0.5) {
                    let _ = writeln!(
                        s,
                        "\nA bare HTTP server adds {floor:+.3} ms at p50 over the direct {what} \
                         get under the same load: the floor of any HTTP hop on this machine.\n"
                    );
                }
            }
            PartName::LockEmbedded | PartName::LockRedis => {
                let want = if *part == PartName::LockEmbedded {
                    20_000.0
                } else {
                    10_000.0
                };
                let pairs = r.get("sidecar").map(|sc| sc.max.outcome.rate() / 2.0);
                let per_s = |p: f64| format!("{p:.0}");
                targets.push(Target::at_least(
                    format!("{}: lock+unlock pairs/s through the sidecar", part.title()),
                    pairs,
                    want,
                    format!("≥ {want:.0}"),
                    per_s,
                ));
            }
        }
    }
    report::targets_table(&mut s, ["measured", "required"], &targets);
    let _ = writeln!(s);
    report::write_notes(&mut s, &session.notes);
    s
}
