//! The embedded durable broker: component type `pubsub.sqlite` (Trellis's own), on a local
//! SQLite file that several sidecar processes may share.
//!
//! Metadata: `connectionString` (a file path, a `file:` URI, or `:memory:` for a broker
//! private to this process), `ackDeadline` (default 30 s: how long a delivery stays leased
//! to its subscriber before it is delivered again), `retention` (default 24 h: how long a
//! message is kept after every group acknowledged it; `0` = delete at the next clean-up),
//! `cleanupInterval` (default 5 m; `<= 0` disables), `pollInterval` (default 5 ms: how
//! quickly a subscriber notices what other processes did), `prefetch` (default 256: how many
//! messages a subscriber leases at once; it fetches the next ones when half are handed out,
//! so that a fast consumer never waits for a commit), `deliverPolicy` (`all`, the default:
//! a new group starts at the oldest message its topic holds; `new`: at its first
//! subscribe), `busyTimeout` (default 5 s: how long to wait for
//! another process's write lock), `timeout` (default 20 s: for any one operation).
//!
//! # Layout
//!
//! - `pubsub_messages`: every message, with an id that only grows (`pubsub_meta.next_id`,
//!   advanced under the write lock, so ids are unique and increasing across processes and
//!   never reused after messages are deleted).
//! - `pubsub_groups`: one row per (topic, consumer group) with a **frontier**: the highest
//!   message id already handed out to the group. A group created by its first subscribe
//!   starts before the oldest message its topic holds (`deliverPolicy` `all`, the default,
//!   as Dapr's Redis and JetStream components: a subscriber whose app comes up after its
//!   publisher's loses nothing), or at the current last id (`new`); either way it gets
//!   everything published after that, also while none of its subscribers runs.
//! - `pubsub_inflight`: one row per message handed out to a group and not acknowledged
//!   yet, with the delivery attempt and `visible_at`, the moment it may be handed out
//!   again (the lease deadline, or the time a nack asked for). Ack deletes the row.
//!
//! So a message is done for a group when its id is at or below the frontier and it has no
//! in-flight row. A subscriber **fetches** in one write transaction: first its group's
//! in-flight rows whose `visible_at` has passed (redeliveries, attempt + 1), then new
//! messages above the frontier, in id order; both are leased (`visible_at = now +
//! ackDeadline`) before the transaction commits, so no two subscribers of a group, in any
//! process, hold the same message at once.
//!
//! # Threads and durability
//!
//! SQLite blocks, so no SQLite call runs on a tokio thread. One **writer thread** per
//! broker (`trellis_sqlite::writer`, the group-commit writer every embedded backend shares;
//! `writer.rs` is the broker's side of it) owns the writing connection; publishes,
//! fetches, acks and nacks queue to it, and it applies everything queued in one
//! `BEGIN IMMEDIATE` transaction (each job of several statements in a savepoint, so one
//! failing job fails alone) and answers only after the commit. Batches that publish or
//! create a group commit with `synchronous=FULL` (an fsync of the WAL; concurrent
//! publishers share it: group commit), so an acknowledged publish survives a crash of the
//! process or the machine. Batches of only acks and leases commit with
//! `synchronous=NORMAL`: they survive a crash of the process, and a power loss can at
//! worst forget some of them, which means redeliveries, never lost messages.
//!
//! Other processes on the same file take turns for the write lock (busy timeout). A
//! publish, nack or release in this process wakes this process's subscribers of that topic
//! at once; every such commit also bumps `pubsub_meta.signal`, which a **poller thread**
//! reads while this broker has subscribers, to wake them all for what other processes did:
//! as soon as the file's write-ahead log changes (file notifications: inotify on Linux),
//! and every `pollInterval` in any case (`poller.rs`). Leases that run out are picked up
//! by a timer: a fetch that finds nothing tells the subscriber when the group's next
//! in-flight row becomes visible.
//!
//! Within the process nothing waits for a lease to run out: a delivery dropped unsettled
//! is nacked at once, and leases a subscriber fetched but never handed out (it was closed
//! or dropped) are given back with their attempt undone; a `next` cancelled mid-fetch
//! leaves the fetch to the next call. A subscriber hands out its buffered leases only while
//! at least half the `ackDeadline` is left; a slow consumer gives the rest back and fetches
//! afresh (`subscription.rs`). The per-subscription metadata of [`SubscribeRequest`] is
//! not used.
//!
//! The writer also deletes, every `cleanupInterval` and in chunks: messages past their
//! TTL, and messages older than `retention` that every group of their topic is done with
//! (`cleanup.rs`). A message some group has not acknowledged is kept (until its TTL, if it
//! has one), also when that group never subscribes again.

mod cleanup;
mod config;
mod fetch;
mod jobs;
mod poller;
mod schema;
mod subscription;
mod writer;

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::oneshot;
use trellis_sqlite::writer::Options;

use self::config::Config;
use self::jobs::{Job, Reply};
use self::poller::{Notifier, poller};
use self::schema::{open_reader, open_writer};
use self::subscription::SqliteSubscription;
use self::writer::BrokerWriter;
use crate::{
    BulkPublishError, Capabilities, Metadata, PubSub, PubSubError, PublishRequest,
    SubscribeRequest, Subscription,
};

/// The most jobs one write transaction takes; bounded so a flood still commits, and
/// answers, in slices.
const MAX_BATCH_JOBS: usize = 1024;
/// The most published messages one write transaction takes (a bulk publish counts each
/// message; one larger than this still goes in one transaction, alone).
const MAX_BATCH_MESSAGES: usize = 8192;

fn db_err(e: rusqlite::Error) -> PubSubError {
    PubSubError::Backend(format!("sqlite: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// What the broker, its subscriptions and deliveries share. The writer thread runs until
/// the last of them is dropped.
#[derive(Debug)]
struct Shared {
    jobs: mpsc::Sender<Job>,
    notifier: Arc<Notifier>,
    timeout: Duration,
    ack_deadline: Duration,
    prefetch: usize,
    replay: bool,
    connection: String,
}

impl Shared {
    fn send<T>(
        &self,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<oneshot::Receiver<Result<T, PubSubError>>, PubSubError> {
        let (tx, rx) = oneshot::channel();
        self.jobs.send(job(tx)).map_err(|_| PubSubError::Closed)?;
        Ok(rx)
    }

    async fn wait<T>(
        &self,
        rx: oneshot::Receiver<Result<T, PubSubError>>,
    ) -> Result<T, PubSubError> {
        self.outcome(tokio::time::timeout(self.timeout, rx).await)
    }

    /// What waiting for the writer's answer came to.
    fn outcome<T>(
        &self,
        waited: Result<
            Result<Result<T, PubSubError>, oneshot::error::RecvError>,
            tokio::time::error::Elapsed,
        >,
    ) -> Result<T, PubSubError> {
        match waited {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(PubSubError::Backend(
                "sqlite pubsub writer thread stopped".into(),
            )),
            Err(_) => Err(PubSubError::Backend(format!(
                "sqlite pubsub operation on {:?} timed out after {:?}",
                self.connection, self.timeout
            ))),
        }
    }

    async fn call<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> Result<T, PubSubError> {
        let rx = self.send(job)?;
        self.wait(rx).await
    }
}

/// The `pubsub.sqlite` broker. See the module docs.
#[derive(Debug)]
pub struct SqliteBroker {
    shared: Arc<Shared>,
}

impl SqliteBroker {
    /// Opens (creating when missing) the database that `metadata` names and starts the
    /// writer and poller threads. They stop once the broker and all its subscriptions and
    /// deliveries are dropped, after finishing what was queued.
    pub async fn open(metadata: &Metadata) -> Result<Self, PubSubError> {
        let cfg = Config::from_metadata(metadata)?;
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(|e| PubSubError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(cfg: Config) -> Result<Self, PubSubError> {
        let conn = open_writer(&cfg)?;
        let poll_conn = if cfg.in_memory() {
            None
        } else {
            Some(open_reader(&cfg)?)
        };
        let notifier = Arc::new(Notifier::new());
        let local_signal = Arc::new(AtomicI64::new(i64::MIN));
        let writer = BrokerWriter::new(&cfg, notifier.clone(), local_signal.clone());
        let options = Options {
            max_jobs: MAX_BATCH_JOBS,
            max_weight: MAX_BATCH_MESSAGES,
            periodic: cfg.cleanup_interval,
            ..Options::new("trellis-pubsub-writer", cfg.busy_timeout)
        };
        let jobs = trellis_sqlite::writer::start(conn, writer, options)
            .map_err(|e| PubSubError::Backend(e.to_string()))?;
        let spawn_err =
            |e: std::io::Error| PubSubError::Backend(format!("cannot start sqlite thread: {e}"));
        if let Some(conn) = poll_conn {
            let (weak, interval) = (Arc::downgrade(&notifier), cfg.poll_interval);
            let connection = cfg.connection.clone();
            std::thread::Builder::new()
                .name("trellis-pubsub-poller".into())
                .spawn(move || poller(conn, interval, weak, local_signal, connection))
                .map_err(spawn_err)?;
        }
        Ok(SqliteBroker {
            shared: Arc::new(Shared {
                jobs,
                notifier,
                timeout: cfg.timeout,
                ack_deadline: cfg.ack_deadline,
                prefetch: cfg.prefetch,
                replay: cfg.replay,
                connection: cfg.connection,
            }),
        })
    }
}

#[async_trait]
impl PubSub for SqliteBroker {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            bulk_publish: true,
            ttl: true,
            ordered: true,
            replay: self.shared.replay,
        }
    }

    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        req.validate()?;
        self.shared
            .call(|reply| Job::Publish {
                msgs: vec![req],
                reply,
            })
            .await
    }

    /// All valid entries go in one transaction: they are published together or not at all.
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Result<(), BulkPublishError> {
        let mut failed = Vec::new();
        let mut indexes = Vec::with_capacity(reqs.len());
        let mut msgs = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            match req.validate() {
                Ok(()) => {
                    indexes.push(i);
                    msgs.push(req);
                }
                Err(e) => failed.push((i, e)),
            }
        }
        if !msgs.is_empty()
            && let Err(e) = self.shared.call(|reply| Job::Publish { msgs, reply }).await
        {
            failed.extend(indexes.into_iter().map(|i| (i, e.clone())));
            failed.sort_by_key(|f| f.0);
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(BulkPublishError { failed })
        }
    }

    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        req.validate()?;
        let topic: Arc<str> = Arc::from(req.topic.as_str());
        // Subscribed to changes before the group exists, so nothing published after the
        // group was created can go unnoticed.
        let (local, remote) = self.shared.notifier.subscribe(&topic);
        let group = self
            .shared
            .call(|reply| Job::Subscribe {
                topic: req.topic,
                group: req.consumer_group,
                replay: self.shared.replay,
                reply,
            })
            .await?;
        Ok(Box::new(SqliteSubscription::new(
            self.shared.clone(),
            group,
            topic,
            (local, remote),
        )))
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.shared.call(|reply| Job::Ping { reply }).await
    }
}
