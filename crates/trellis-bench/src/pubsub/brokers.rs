//! The two brokers of `trellis-bench pubsub` as the bench reaches them directly: the
//! embedded SQLite broker opened in process, and NATS JetStream through async-nats. Each
//! supplies its publishers and its consumer; `phases.rs` runs the same sequence on both.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};
use trellis_pubsub::sqlite::SqliteBroker;
use trellis_pubsub::{Metadata, PubSub, SubscribeRequest, Subscription};

use super::app::{self, Board};
use super::paths::{self, JsPublisher, Shape, SqlitePublisher};
use super::phases::{Broker, Consumer, Direct, run_broker};
use super::report::PubsubReport;
use super::{Ctx, EMBEDDED, EMBEDDED_PUBSUB, JETSTREAM, SUB_APP};
use crate::procs::Watch;
use crate::runner::Session;

/// How long reaching NATS may take before the JetStream part is skipped.
const NATS_REACH_LIMIT: Duration = Duration::from_secs(3);
/// The JetStream component's name in the sidecars.
const JS_PUBSUB: &str = "jetstream";

// ---- the embedded broker -------------------------------------------------------------------

/// The embedded broker in this process: publishing through `publish_to`, consuming from
/// `consume_from` (the same handle, or a second one on the same file).
pub struct Embedded {
    file: std::path::PathBuf,
    publish_to: Arc<SqliteBroker>,
    consume_from: Arc<SqliteBroker>,
}

async fn open_sqlite(file: &Path) -> Result<Arc<SqliteBroker>> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Only the file, as the sidecar's built-in `pubsub` has: every other setting at its
    // default (prefetch, pollInterval, fsync on every publishing commit).
    let md = Metadata::from_pairs([("connectionString", file.display().to_string())]);
    Ok(Arc::new(SqliteBroker::open(&md).await?))
}

impl Direct for Embedded {
    type Publisher = SqlitePublisher;

    fn publisher(&self, topic: &str, shape: Shape) -> SqlitePublisher {
        SqlitePublisher {
            broker: self.publish_to.clone(),
            topic: topic.to_owned(),
            shape,
        }
    }

    async fn consumer(&self, ctx: &Ctx<'_>, topic: &str) -> Result<Consumer> {
        // Subscribing creates the group: from here on it is owed every message of the topic.
        let sub = self
            .consume_from
            .subscribe(SubscribeRequest::new(topic, SUB_APP))
            .await?;
        let (stop, rx) = watch::channel(false);
        let task = ctx.app.spawn(consume_sqlite(
            ctx.app.board.clone(),
            sub,
            topic.to_owned(),
            ctx.args.direct_in_flight,
            rx,
        ));
        Ok(Consumer { stop, task })
    }

    /// The consumer on a second broker handle on the same file: it learns of the other
    /// handle's publishes by polling, as a subscriber sidecar does of the publisher
    /// sidecar's.
    async fn second(&self) -> Result<Option<(&'static str, Self)>> {
        let second = Embedded {
            file: self.file.clone(),
            publish_to: self.publish_to.clone(),
            consume_from: open_sqlite(&self.file).await?,
        };
        Ok(Some(("direct, two handles on one file", second)))
    }
}

/// The bench's direct consumer on the embedded broker: records each delivery on `topic`
/// and acks it, up to `in_flight` acks at once (as the sidecar's delivery loop settles up
/// to `max_in_flight` deliveries at once). Runs on the app thread until `stop`.
async fn consume_sqlite(
    board: Arc<Board>,
    mut sub: Box<dyn Subscription>,
    topic: String,
    in_flight: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = stop.wait_for(|s| *s) => break,
        };
        let next = tokio::select! {
            n = sub.next() => n,
            _ = stop.wait_for(|s| *s) => break,
        };
        let delivery = match next {
            None => break,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                eprintln!("  direct consumer on {topic}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        board.record(Some(&topic), &[app::stamp_of(&delivery.message.data)]);
        tokio::spawn(async move {
            let _ = delivery.ack().await;
            drop(permit);
        });
    }
    sub.close().await?;
    Ok(())
}

/// The embedded part: the broker in process against two sidecars sharing one data dir,
/// hence one broker file.
pub async fn embedded(
    ctx: &Ctx<'_>,
    report: &mut PubsubReport,
    notes: &mut Vec<String>,
) -> Result<()> {
    let dir = ctx.tmp.join("embedded");
    let file = dir.join("direct/pubsub.db");
    let raw = open_sqlite(&file).await?;
    let broker = Broker {
        title: EMBEDDED,
        short: "embedded",
        pubsub: EMBEDDED_PUBSUB,
        direct: Embedded {
            file,
            publish_to: raw.clone(),
            consume_from: raw,
        },
        direct_path: "direct (in process)",
        messages: ctx.args.messages,
        prefix: String::new(),
        sep: '-',
        component: None,
        extra_watches: Vec::new(),
        dir,
    };
    run_broker(ctx, &broker, report, notes).await
}

// ---- NATS JetStream ------------------------------------------------------------------------

/// JetStream through async-nats: publishing on the bench's connection, consuming with a
/// durable pull consumer of `stream` on a connection of its own.
pub struct JetStream {
    js: jetstream::Context,
    stream: String,
}

impl Direct for JetStream {
    type Publisher = JsPublisher;

    fn publisher(&self, subject: &str, shape: Shape) -> JsPublisher {
        JsPublisher {
            js: self.js.clone(),
            subject: subject.to_owned(),
            shape,
        }
    }

    /// Creates a durable consumer for `subject` (before anything is published, so nothing
    /// is missed) and consumes it on the app thread.
    async fn consumer(&self, ctx: &Ctx<'_>, subject: &str) -> Result<Consumer> {
        let name = format!("bench-{}", subject.replace('.', "-"));
        let st = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::New,
            filter_subject: subject.to_owned(),
            ..Default::default()
        };
        st.create_consumer(config)
            .await
            .map_err(|e| anyhow!("creating consumer {name}: {e}"))?;
        let (stop, rx) = watch::channel(false);
        let task = ctx.app.spawn(consume_jetstream(
            ctx.app.board.clone(),
            ctx.args.nats.clone(),
            self.stream.clone(),
            name,
            subject.to_owned(),
            rx,
        ));
        // Give the pull request a moment to reach the server before anything is published.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Consumer { stop, task })
    }
}

async fn connect_nats(url: &str) -> Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_secs(5)));
    tokio::time::timeout(NATS_REACH_LIMIT, opts.connect(url))
        .await
        .map_err(|_| anyhow!("connecting timed out after {NATS_REACH_LIMIT:?}"))?
        .map_err(|e| anyhow!("{e}"))
}

/// The bench's direct JetStream consumer: its own connection (as a separate app would
/// have), the durable pull consumer `name` of `stream`, async-nats's default continuous
/// pull; records each message on `topic` and acks it. Runs on the app thread until `stop`.
async fn consume_jetstream(
    board: Arc<Board>,
    url: String,
    stream: String,
    name: String,
    topic: String,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let client = connect_nats(&url).await?;
    let js = jetstream::new(client);
    let consumer: consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .map_err(|e| anyhow!("{e}"))?
        .get_consumer(&name)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| anyhow!("{e}"))?;
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let msg = match next {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                eprintln!("  direct consumer on {topic}: {e}");
                continue;
            }
        };
        board.record(Some(&topic), &[app::stamp_of(&msg.payload)]);
        if let Err(e) = msg.ack().await {
            eprintln!("  direct consumer on {topic}: ack: {e}");
        }
    }
    Ok(())
}

/// The NATS server process, when it runs on this machine (its CPU is part of the cost of
/// the JetStream paths).
fn nats_server_watch() -> Option<Watch> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "nats-server")
        })
        .collect();
    (!pids.is_empty()).then(|| Watch {
        label: "nats-server".into(),
        pids,
    })
}

/// The JetStream part: skipped with a note when NATS does not answer. Two streams of this
/// run, one the bench publishes to directly and one the sidecars use (the component finds
/// it by subject), deleted at the end; file storage, as the component creates by default,
/// and an hour's max age so a killed run leaves nothing big.
pub async fn jetstream(ctx: &Ctx<'_>, report: &mut PubsubReport, session: &mut Session) {
    let url = &ctx.args.nats;
    let client = match connect_nats(url).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("{JETSTREAM} skipped: not reachable at {url}: {e:#}");
            eprintln!("{msg}");
            session.notes.push(msg);
            return;
        }
    };
    let version = &client.server_info().version;
    session
        .versions
        .push(format!("NATS server: {version} at {url}"));
    let js = jetstream::new(client);
    let prefix = format!("trellisbench.{}.", ctx.unique);
    let direct_stream = format!("TRELLISBENCH_{}_DIRECT", ctx.unique);
    let sidecar_stream = format!("TRELLISBENCH_{}_SIDECAR", ctx.unique);
    let notes = &mut session.notes;
    let res = async {
        for (name, path) in [(&direct_stream, "direct"), (&sidecar_stream, "sidecar")] {
            js.create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}{path}.>")],
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(3600),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("creating stream {name} (is JetStream enabled?): {e}"))?;
        }
        let broker = Broker {
            title: JETSTREAM,
            short: "JetStream",
            pubsub: JS_PUBSUB,
            direct: JetStream {
                js: js.clone(),
                stream: direct_stream.clone(),
            },
            direct_path: "direct (async-nats)",
            messages: ctx.args.js_messages,
            prefix: prefix.clone(),
            sep: '.',
            component: Some(paths::jetstream_component(JS_PUBSUB, url)),
            extra_watches: nats_server_watch().into_iter().collect(),
            dir: ctx.tmp.join("jetstream"),
        };
        run_broker(ctx, &broker, report, notes).await
    }
    .await;
    crate::runner::keep(notes, &format!("{JETSTREAM} part"), res);
    for name in [&direct_stream, &sidecar_stream] {
        match js.delete_stream(name).await {
            Ok(_) => eprintln!("  deleted stream {name}"),
            Err(e) => notes.push(format!("deleting stream {name} failed: {e}")),
        }
    }
}
