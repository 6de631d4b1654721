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
//! broker owns the writing connection; publishes, fetches, acks and nacks queue to it, and
//! it applies everything queued in one `BEGIN IMMEDIATE` transaction (each job of several
//! statements in a savepoint, so one failing job fails alone) and answers only after the
//! commit. Batches that publish or create a group commit with `synchronous=FULL` (an fsync
//! of the WAL; concurrent publishers share it: group commit), so an acknowledged publish
//! survives a crash of the process or the machine. Batches of only acks and leases commit with `synchronous=NORMAL`: they
//! survive a crash of the process, and a power loss can at worst forget some of them,
//! which means redeliveries, never lost messages.
//!
//! Other processes on the same file take turns for the write lock (busy timeout). A
//! publish, nack or release in this process wakes this process's subscribers of that topic
//! at once; every such commit also bumps `pubsub_meta.signal`, which a **poller thread**
//! reads while this broker has subscribers, to wake them all for what other processes did:
//! as soon as the file's write-ahead log changes (file notifications: inotify on Linux),
//! and every `pollInterval` in any case. Leases that run out are picked up by a timer: a fetch that finds
//! nothing tells the subscriber when the group's next in-flight row becomes visible.
//!
//! Within the process nothing waits for a lease to run out: a delivery dropped unsettled
//! is nacked at once, and leases a subscriber fetched but never handed out (it was closed
//! or dropped) are given back with their attempt undone; a `next` cancelled mid-fetch
//! leaves the fetch to the next call. A subscriber hands out its buffered leases only while at least half the
//! `ackDeadline` is left; a slow consumer gives the rest back and fetches afresh. The
//! per-subscription metadata of [`SubscribeRequest`] is not used.
//!
//! The writer also deletes, every `cleanupInterval` and in chunks: messages past their
//! TTL, and messages older than `retention` that every group of their topic is done with.
//! A message some group has not acknowledged is kept (until its TTL, if it has one), also
//! when that group never subscribes again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{oneshot, watch};

use crate::{
    Acker, BulkPublishError, Capabilities, Delivery, Message, Metadata, PubSub, PubSubError,
    PublishRequest, SubscribeRequest, Subscription,
};

/// The most jobs one write transaction takes; bounded so a flood still commits, and
/// answers, in slices.
const MAX_BATCH_JOBS: usize = 1024;
/// The most published messages one write transaction takes (a bulk publish counts each
/// message; one larger than this still goes in one transaction, alone).
const MAX_BATCH_MESSAGES: usize = 8192;
/// Rows deleted per clean-up transaction, so it never holds the write lock for long.
const CLEANUP_CHUNK: usize = 1000;
/// [`CLEANUP_CHUNK`] as SQL wants it.
const CLEANUP_LIMIT: i64 = CLEANUP_CHUNK as i64;
/// How long an idle subscriber waits before looking again even without a signal; only a
/// safety net, signals and lease timers normally wake it first.
const IDLE_REFETCH: Duration = Duration::from_secs(2);
/// How long a subscriber waits after a failed fetch before trying again.
const ERROR_BACKOFF: Duration = Duration::from_millis(250);

type Reply<T> = oneshot::Sender<Result<T, PubSubError>>;

/// The component configuration, parsed from metadata.
#[derive(Debug, Clone)]
struct Config {
    connection: String,
    ack_deadline: Duration,
    retention: Duration,
    cleanup_interval: Option<Duration>,
    poll_interval: Duration,
    busy_timeout: Duration,
    timeout: Duration,
    prefetch: usize,
    /// A new group starts at the oldest message its topic holds (`deliverPolicy` `all`,
    /// the default, as Dapr's Redis and JetStream components) rather than at its first
    /// subscribe (`new`).
    replay: bool,
}

impl Config {
    fn from_metadata(md: &Metadata) -> Result<Self, PubSubError> {
        let connection = md.require("connectionString")?.to_string();
        let retention = match md.get("retention") {
            None => Duration::from_secs(24 * 3600),
            Some(_) => md.duration("retention")?.unwrap_or(Duration::ZERO),
        };
        let cleanup_interval = match md.get("cleanupInterval") {
            None => Some(Duration::from_secs(300)),
            Some(_) => md.duration("cleanupInterval")?,
        };
        Ok(Config {
            connection,
            ack_deadline: md.positive_duration("ackDeadline", Duration::from_secs(30))?,
            retention,
            cleanup_interval,
            poll_interval: md.positive_duration("pollInterval", Duration::from_millis(5))?,
            busy_timeout: md.positive_duration("busyTimeout", Duration::from_secs(5))?,
            timeout: md.positive_duration("timeout", Duration::from_secs(20))?,
            prefetch: md.usize("prefetch", 256, 1..=4096)?,
            replay: match md
                .get("deliverPolicy")
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("all") => true,
                Some("new") => false,
                Some(other) => {
                    return Err(PubSubError::InvalidRequest(format!(
                        "metadata deliverPolicy: {other:?} is not one of all, new"
                    )));
                }
            },
        })
    }

    /// In-memory databases get one connection (a second one would be another database)
    /// and no poller (no other process can see them).
    fn in_memory(&self) -> bool {
        in_memory(&self.connection)
    }
}

/// Whether a `connectionString` names an in-memory database rather than a file.
fn in_memory(connection: &str) -> bool {
    connection == ":memory:"
        || connection.starts_with("file::memory:")
        || connection.contains("mode=memory")
}

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

// --- jobs for the writer thread -----------------------------------------------------------

enum Job {
    Publish {
        msgs: Vec<PublishRequest>,
        reply: Reply<()>,
    },
    /// Creates the group when new; answers its row id.
    Subscribe {
        topic: String,
        group: String,
        replay: bool,
        reply: Reply<i64>,
    },
    Fetch {
        group: i64,
        topic: Arc<str>,
        max: usize,
        reply: Reply<Fetched>,
    },
    Ack {
        group: i64,
        msg: i64,
        reply: Option<Reply<()>>,
    },
    /// Makes a delivery visible again after `after`, if it is still the lease `attempt`
    /// (a holder whose lease ran out and was re-leased must not move the new lease).
    Nack {
        group: i64,
        topic: Arc<str>,
        msg: i64,
        attempt: u32,
        after: Duration,
        reply: Option<Reply<()>>,
    },
    /// Gives back leased messages that were never handed to the application: visible at
    /// once, and the attempt undone, since they were not delivered.
    Release {
        group: i64,
        topic: Arc<str>,
        items: Vec<(i64, u32)>,
        reply: Option<Reply<()>>,
    },
    Ping {
        reply: Reply<()>,
    },
}

impl Job {
    /// Whether the caller stopped waiting for a job whose only point is the answer (a
    /// publish whose caller timed out and reported failure, a fetch nobody will read):
    /// such a job is skipped. Settlements are applied regardless.
    fn abandoned(&self) -> bool {
        match self {
            Job::Publish { reply, .. } => reply.is_closed(),
            Job::Subscribe { reply, .. } => reply.is_closed(),
            Job::Fetch { reply, .. } => reply.is_closed(),
            Job::Ping { reply } => reply.is_closed(),
            Job::Ack { .. } | Job::Nack { .. } | Job::Release { .. } => false,
        }
    }

    /// Whether the job writes with at most one statement, which SQLite undoes by itself
    /// when it fails: such a job needs no savepoint of its own.
    fn single_statement(&self) -> bool {
        match self {
            Job::Publish { msgs, .. } => msgs.len() <= 1,
            Job::Release { items, .. } => items.len() <= 1,
            Job::Ack { .. } | Job::Nack { .. } | Job::Ping { .. } => true,
            Job::Subscribe { .. } | Job::Fetch { .. } => false,
        }
    }

    fn messages(&self) -> usize {
        match self {
            Job::Publish { msgs, .. } => msgs.len(),
            _ => 1,
        }
    }

    fn fail(self, msg: &str) {
        fn err<T>(msg: &str) -> Result<T, PubSubError> {
            Err(PubSubError::Backend(msg.to_string()))
        }
        match self {
            Job::Publish { reply, .. } | Job::Ping { reply } => drop(reply.send(err(msg))),
            Job::Subscribe { reply, .. } => drop(reply.send(err(msg))),
            Job::Fetch { reply, .. } => drop(reply.send(err(msg))),
            Job::Ack { reply, .. } | Job::Nack { reply, .. } | Job::Release { reply, .. } => {
                if let Some(reply) = reply {
                    drop(reply.send(err(msg)));
                }
            }
        }
    }
}

/// What one fetch leased.
#[derive(Debug, Default)]
struct Fetched {
    items: Vec<Leased>,
    /// When the group's next in-flight message becomes visible (a lease running out, a
    /// nack's delay ending); "now" when more messages are waiting than were fetched.
    next_visible: Option<i64>,
}

#[derive(Debug)]
struct Leased {
    id: i64,
    attempt: u32,
    lease_until: i64,
    topic: Arc<str>,
    data: Bytes,
    content_type: Option<String>,
    metadata: BTreeMap<String, String>,
    published_at: i64,
}

/// An answer held back until the transaction that produced it has committed.
enum Answer {
    Unit(Option<Reply<()>>, Result<(), PubSubError>),
    Group(Reply<i64>, Result<i64, PubSubError>),
    Fetch(i64, Arc<str>, Reply<Fetched>, Result<Fetched, PubSubError>),
}

// --- opening ------------------------------------------------------------------------------

const SCHEMA: &str = "
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS pubsub_messages (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    data BLOB NOT NULL,
    content_type TEXT,
    metadata TEXT,
    published_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS pubsub_messages_topic ON pubsub_messages (topic, id);
CREATE INDEX IF NOT EXISTS pubsub_messages_expires ON pubsub_messages (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS pubsub_groups (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    frontier INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (topic, grp)
);
CREATE TABLE IF NOT EXISTS pubsub_inflight (
    group_id INTEGER NOT NULL,
    msg_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    PRIMARY KEY (group_id, msg_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pubsub_meta (key TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
INSERT OR IGNORE INTO pubsub_meta (key, value) VALUES ('next_id', 1), ('signal', 0);
COMMIT;
";

fn open_connection(cfg: &Config) -> Result<Connection, PubSubError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(&cfg.connection, flags).map_err(|e| {
        PubSubError::Backend(format!(
            "cannot open sqlite database {:?}: {e}",
            cfg.connection
        ))
    })?;
    trellis_sqlite::wait_for_locks(&mut conn, cfg.busy_timeout).map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn open_writer(cfg: &Config) -> Result<Connection, PubSubError> {
    if !cfg.in_memory() && !cfg.connection.starts_with("file:") {
        // The runtime's default broker lives in its data directory, which may not exist yet.
        if let Some(parent) = Path::new(&cfg.connection).parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                PubSubError::Backend(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
    }
    let conn = open_connection(cfg)?;
    if !cfg.in_memory() {
        let got =
            trellis_sqlite::set_journal_mode(&conn, "WAL", cfg.busy_timeout).map_err(db_err)?;
        if !got.eq_ignore_ascii_case("wal") {
            return Err(PubSubError::Backend(format!(
                "sqlite: cannot switch journal mode to wal (it is {got})"
            )));
        }
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864; \
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(db_err)?;
    // In one immediate transaction, so two processes creating the file at once agree.
    if let Err(e) = conn.execute_batch(SCHEMA) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(PubSubError::Backend(format!(
            "sqlite: cannot create the pub/sub tables: {e}"
        )));
    }
    Ok(conn)
}

// --- the writer thread --------------------------------------------------------------------

struct Writer {
    conn: Connection,
    ack_deadline: i64,
    retention: i64,
    cleanup_interval: Option<Duration>,
    notifier: Arc<Notifier>,
    /// The signal value this writer last committed, so the poller can tell its own
    /// commits from other processes'.
    local_signal: Arc<AtomicI64>,
    /// Whether the connection is currently at `synchronous=FULL`.
    full_sync: bool,
    /// Leases whose fetch nobody received (the subscriber stopped waiting): given back in
    /// the next transaction instead of waiting for the ack deadline.
    orphans: Vec<Job>,
    busy_timeout: Duration,
    /// The doorbell other processes' pollers watch (see [`bell_path`]); `None` in memory.
    bell: Option<std::fs::File>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Job>) {
        trellis_sqlite::set_busy_budget(self.busy_timeout);
        let mut next_cleanup = self.cleanup_interval.map(|i| Instant::now() + i);
        loop {
            let first = if !self.orphans.is_empty() {
                Ok(self.orphans.remove(0))
            } else {
                match next_cleanup {
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
                }
            };
            match first {
                Ok(job) => {
                    let mut count = job.messages();
                    let mut batch = vec![job];
                    batch.append(&mut self.orphans);
                    while batch.len() < MAX_BATCH_JOBS && count < MAX_BATCH_MESSAGES {
                        match rx.try_recv() {
                            Ok(job) => {
                                count += job.messages();
                                batch.push(job);
                            }
                            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                        }
                    }
                    self.batch(batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The broker and every subscription and delivery are gone, and every
                // queued job is done.
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let (Some(t), Some(interval)) = (next_cleanup, self.cleanup_interval)
                && Instant::now() >= t
            {
                // One round of chunks at a time, with queued jobs served in between.
                next_cleanup = Some(if self.cleanup() {
                    Instant::now()
                } else {
                    Instant::now() + interval
                });
            }
        }
    }

    fn set_sync(&mut self, full: bool) {
        if self.full_sync != full {
            let pragma = if full {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            };
            match self.conn.execute_batch(pragma) {
                Ok(()) => self.full_sync = full,
                Err(e) => tracing::warn!(error = %e, "sqlite pubsub: cannot set synchronous"),
            }
        }
    }

    /// Applies a batch in one transaction; answers once it has committed.
    fn batch(&mut self, batch: Vec<Job>) {
        let batch: Vec<Job> = batch.into_iter().filter(|j| !j.abandoned()).collect();
        if batch.is_empty() {
            return;
        }
        // Publishes and new groups must be durable when acknowledged (a group lost to a
        // power cut would be created anew later and miss what was published meanwhile);
        // leases and settlements may be lost at the price of a redelivery.
        let durable = batch
            .iter()
            .any(|j| matches!(j, Job::Publish { .. } | Job::Subscribe { .. }));
        self.set_sync(durable);
        if durable && !self.full_sync {
            // Acknowledging a publish that a power cut could undo would break the contract.
            for job in batch {
                job.fail("sqlite: cannot switch to synchronous=FULL");
            }
            return;
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = format!("sqlite: cannot start a write transaction: {e}");
            for job in batch {
                job.fail(&msg);
            }
            return;
        }
        let now = now_ms();
        let mut next_id: Option<i64> = None;
        // Topics where this batch made messages available, so their subscribers should look.
        let mut touched: Vec<String> = Vec::new();
        let mut aborted: Option<String> = None;
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            if let Some(msg) = &aborted {
                job.fail(msg);
                continue;
            }
            let savepoint = !job.single_statement();
            if savepoint && let Err(e) = self.savepoint("SAVEPOINT job") {
                let msg = format!("sqlite: {e}");
                job.fail(&msg);
                aborted = Some(msg);
                continue;
            }
            let (before, touched_before) = (next_id, touched.len());
            let (answer, ok) = self.apply(job, &mut next_id, now, &mut touched);
            if ok {
                if savepoint && let Err(e) = self.savepoint("RELEASE job") {
                    aborted = Some(format!("sqlite: {e}"));
                }
            } else if self.conn.is_autocommit() {
                // Some errors (disk full, I/O) roll back the whole transaction: all that
                // this batch did so far is gone, and all of it fails.
                aborted = Some("sqlite: the transaction was rolled back".into());
            } else {
                next_id = before;
                touched.truncate(touched_before);
                if savepoint && let Err(e) = self.savepoint("ROLLBACK TO job; RELEASE job") {
                    aborted = Some(format!("sqlite: {e}"));
                }
            }
            answers.push(answer);
        }
        let mut signal_value = None;
        if aborted.is_none() {
            if let Some(id) = next_id
                && let Err(e) = self.set_meta("next_id", id)
            {
                aborted = Some(format!("sqlite: cannot save the next message id: {e}"));
            }
            if !touched.is_empty() && aborted.is_none() {
                match self.bump_signal() {
                    Ok(v) => signal_value = Some(v),
                    Err(e) => aborted = Some(format!("sqlite: cannot signal: {e}")),
                }
            }
        }
        let outcome = match aborted {
            Some(msg) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(msg)
            }
            None => self.conn.execute_batch("COMMIT").map_err(|e| {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                format!("sqlite: commit failed: {e}")
            }),
        };
        if let (Ok(()), Some(v)) = (&outcome, signal_value) {
            self.local_signal.store(v, Ordering::Relaxed);
        }
        for answer in answers {
            self.answer(answer, &outcome);
        }
        // After the answers: the ring is for other processes, not on a publisher's path.
        if outcome.is_ok() && signal_value.is_some() {
            self.ring();
        }
        if outcome.is_ok() {
            touched.sort_unstable();
            touched.dedup();
            self.notifier.wake(&touched);
        }
    }

    /// Rings the doorbell: one byte rewritten in place, so the file never grows. A failed
    /// ring only leaves other processes to their `pollInterval`.
    fn ring(&self) {
        #[cfg(unix)]
        if let Some(bell) = &self.bell {
            use std::os::unix::fs::FileExt as _;
            let _ = bell.write_at(b"!", 0);
        }
    }

    fn answer(&mut self, answer: Answer, outcome: &Result<(), String>) {
        let failed = |msg: &String| PubSubError::Backend(msg.clone());
        match answer {
            Answer::Unit(reply, res) => {
                if let Some(reply) = reply {
                    let _ = reply.send(outcome.as_ref().map_err(failed).and(res));
                }
            }
            Answer::Group(reply, res) => {
                let _ = reply.send(outcome.as_ref().map_err(failed).and(res));
            }
            Answer::Fetch(group, topic, reply, res) => {
                let res = outcome.as_ref().map_err(failed).and(res);
                if let Err(Ok(fetched)) = reply.send(res)
                    && !fetched.items.is_empty()
                {
                    // Leased for a subscriber that is no longer waiting.
                    let items = fetched.items.iter().map(|l| (l.id, l.attempt)).collect();
                    self.orphans.push(Job::Release {
                        group,
                        topic,
                        items,
                        reply: None,
                    });
                }
            }
        }
    }

    fn savepoint(&self, sql: &str) -> Result<(), rusqlite::Error> {
        self.conn.execute_batch(sql)
    }

    /// Runs one job; returns its answer and whether it succeeded, and adds the topics where
    /// it made messages available to `touched`.
    fn apply(
        &self,
        job: Job,
        next_id: &mut Option<i64>,
        now: i64,
        touched: &mut Vec<String>,
    ) -> (Answer, bool) {
        match job {
            Job::Publish { msgs, reply } => {
                let res = self.publish(&msgs, next_id, now);
                for m in &msgs {
                    if touched.last() != Some(&m.topic) {
                        touched.push(m.topic.clone());
                    }
                }
                let ok = res.is_ok();
                (Answer::Unit(Some(reply), res), ok)
            }
            Job::Subscribe {
                topic,
                group,
                replay,
                reply,
            } => {
                let res = self.subscribe(&topic, &group, replay, next_id, now);
                let ok = res.is_ok();
                (Answer::Group(reply, res), ok)
            }
            Job::Fetch {
                group,
                topic,
                max,
                reply,
            } => {
                let res = self.fetch(group, &topic, max, now);
                let ok = res.is_ok();
                (Answer::Fetch(group, topic, reply, res), ok)
            }
            Job::Ack { group, msg, reply } => {
                let res = self
                    .conn
                    .prepare_cached(
                        "DELETE FROM pubsub_inflight WHERE group_id = ?1 AND msg_id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![group, msg]))
                    .map(drop)
                    .map_err(db_err);
                let ok = res.is_ok();
                (Answer::Unit(reply, res), ok)
            }
            Job::Nack {
                group,
                topic,
                msg,
                attempt,
                after,
                reply,
            } => {
                let res = self
                    .conn
                    .prepare_cached(
                        "UPDATE pubsub_inflight SET visible_at = ?4 \
                         WHERE group_id = ?1 AND msg_id = ?2 AND attempt = ?3",
                    )
                    .and_then(|mut s| {
                        s.execute(params![group, msg, attempt, now.saturating_add(ms(after))])
                    })
                    .map(drop)
                    .map_err(db_err);
                touched.push(topic.to_string());
                let ok = res.is_ok();
                (Answer::Unit(reply, res), ok)
            }
            Job::Release {
                group,
                topic,
                items,
                reply,
            } => {
                let res = self.release(group, &items, now);
                touched.push(topic.to_string());
                let ok = res.is_ok();
                (Answer::Unit(reply, res), ok)
            }
            Job::Ping { reply } => (Answer::Unit(Some(reply), Ok(())), true),
        }
    }

    fn next_id(&self, cached: &mut Option<i64>) -> Result<i64, PubSubError> {
        if let Some(id) = *cached {
            return Ok(id);
        }
        let id = self
            .conn
            .prepare_cached("SELECT value FROM pubsub_meta WHERE key = 'next_id'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)).optional())
            .map_err(db_err)?
            .unwrap_or(1);
        // Never below what the table holds, even if someone reset the counter row.
        let max: Option<i64> = self
            .conn
            .query_row("SELECT max(id) FROM pubsub_messages", [], |r| r.get(0))
            .map_err(db_err)?;
        let id = id.max(max.unwrap_or(0) + 1);
        *cached = Some(id);
        Ok(id)
    }

    fn set_meta(&self, key: &str, value: i64) -> Result<(), rusqlite::Error> {
        self.conn
            .prepare_cached("UPDATE pubsub_meta SET value = ?2 WHERE key = ?1")?
            .execute(params![key, value])
            .map(drop)
    }

    fn bump_signal(&self) -> Result<i64, rusqlite::Error> {
        self.conn
            .prepare_cached(
                "UPDATE pubsub_meta SET value = value + 1 WHERE key = 'signal' RETURNING value",
            )?
            .query_row([], |r| r.get(0))
    }

    fn publish(
        &self,
        msgs: &[PublishRequest],
        next_id: &mut Option<i64>,
        now: i64,
    ) -> Result<(), PubSubError> {
        let mut id = self.next_id(next_id)?;
        let mut stmt = self
            .conn
            .prepare_cached(
                "INSERT INTO pubsub_messages \
                 (id, topic, data, content_type, metadata, published_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(db_err)?;
        for m in msgs {
            let metadata = if m.metadata.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&m.metadata).map_err(PubSubError::backend)?)
            };
            let expires_at = m.ttl.map(|ttl| now.saturating_add(ms(ttl)));
            let data: &[u8] = &m.data;
            stmt.execute(params![
                id,
                m.topic,
                data,
                m.content_type,
                metadata,
                now,
                expires_at
            ])
            .map_err(db_err)?;
            id += 1;
        }
        *next_id = Some(id);
        Ok(())
    }

    fn subscribe(
        &self,
        topic: &str,
        group: &str,
        replay: bool,
        next_id: &mut Option<i64>,
        now: i64,
    ) -> Result<i64, PubSubError> {
        let existing = self
            .conn
            .prepare_cached("SELECT id FROM pubsub_groups WHERE topic = ?1 AND grp = ?2")
            .and_then(|mut s| s.query_row(params![topic, group], |r| r.get(0)).optional())
            .map_err(db_err)?;
        if let Some(id) = existing {
            return Ok(id);
        }
        // Ids only grow, so frontier 0 is before every message the topic holds.
        let frontier = if replay {
            0
        } else {
            self.next_id(next_id)? - 1
        };
        self.conn
            .prepare_cached(
                "INSERT INTO pubsub_groups (topic, grp, frontier, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| s.execute(params![topic, group, frontier, now]))
            .map_err(db_err)?;
        Ok(self.conn.last_insert_rowid())
    }

    fn fetch(
        &self,
        group: i64,
        topic: &Arc<str>,
        max: usize,
        now: i64,
    ) -> Result<Fetched, PubSubError> {
        let lease_until = now.saturating_add(self.ack_deadline);
        let mut out = Fetched::default();
        let mut due = Vec::new();
        {
            // A group's in-flight rows are few (its subscribers' leases and pending nacks),
            // so one pass over them finds both the due ones and the next to come due.
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT msg_id, attempt, visible_at FROM pubsub_inflight \
                     WHERE group_id = ?1 ORDER BY msg_id",
                )
                .map_err(db_err)?;
            let mut rows = stmt.query([group]).map_err(db_err)?;
            while let Some(row) = rows.next().map_err(db_err)? {
                let visible_at: i64 = row.get(2).map_err(db_err)?;
                if visible_at <= now && due.len() < max {
                    due.push((
                        row.get::<_, i64>(0).map_err(db_err)?,
                        row.get::<_, u32>(1).map_err(db_err)?,
                    ));
                } else {
                    let at = visible_at.max(now);
                    out.next_visible = Some(out.next_visible.map_or(at, |n: i64| n.min(at)));
                }
            }
        }
        if !due.is_empty() {
            let mut get = self
                .conn
                .prepare_cached(
                    "SELECT data, content_type, metadata, published_at, expires_at \
                     FROM pubsub_messages WHERE id = ?1",
                )
                .map_err(db_err)?;
            let mut gone = self
                .conn
                .prepare_cached("DELETE FROM pubsub_inflight WHERE group_id = ?1 AND msg_id = ?2")
                .map_err(db_err)?;
            let mut lease = self
                .conn
                .prepare_cached(
                    "UPDATE pubsub_inflight SET attempt = ?3, visible_at = ?4 \
                     WHERE group_id = ?1 AND msg_id = ?2",
                )
                .map_err(db_err)?;
            for (id, attempt) in due {
                let row = get
                    .query_row([id], |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<i64>>(4)?,
                        ))
                    })
                    .optional()
                    .map_err(db_err)?;
                match row {
                    Some((data, content_type, metadata, published_at, expires_at))
                        if expires_at.is_none_or(|e| e > now) =>
                    {
                        let attempt = attempt.saturating_add(1);
                        lease
                            .execute(params![group, id, attempt, lease_until])
                            .map_err(db_err)?;
                        out.items.push(Leased {
                            id,
                            attempt,
                            lease_until,
                            topic: topic.clone(),
                            data: Bytes::from(data),
                            content_type,
                            metadata: parse_metadata(metadata),
                            published_at,
                        });
                    }
                    // Expired or cleaned up meanwhile: nothing left to deliver.
                    _ => {
                        gone.execute(params![group, id]).map_err(db_err)?;
                    }
                }
            }
        }
        let room = max.saturating_sub(out.items.len());
        if room == 0 {
            return Ok(out);
        }
        let frontier: i64 = self
            .conn
            .prepare_cached("SELECT frontier FROM pubsub_groups WHERE id = ?1")
            .and_then(|mut s| s.query_row([group], |r| r.get(0)).optional())
            .map_err(db_err)?
            .ok_or_else(|| PubSubError::Backend("sqlite: the consumer group was deleted".into()))?;
        let mut last = frontier;
        let mut scanned = 0;
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT id, data, content_type, metadata, published_at, expires_at \
                     FROM pubsub_messages WHERE topic = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                )
                .map_err(db_err)?;
            let mut insert = self
                .conn
                .prepare_cached(
                    "INSERT INTO pubsub_inflight (group_id, msg_id, attempt, visible_at) \
                     VALUES (?1, ?2, 1, ?3)",
                )
                .map_err(db_err)?;
            let limit = i64::try_from(room).unwrap_or(i64::MAX);
            let mut rows = stmt
                .query(params![topic.as_ref(), frontier, limit])
                .map_err(db_err)?;
            while let Some(row) = rows.next().map_err(db_err)? {
                scanned += 1;
                let id: i64 = row.get(0).map_err(db_err)?;
                last = id;
                let expires_at: Option<i64> = row.get(5).map_err(db_err)?;
                if expires_at.is_some_and(|e| e <= now) {
                    continue;
                }
                insert
                    .execute(params![group, id, lease_until])
                    .map_err(db_err)?;
                out.items.push(Leased {
                    id,
                    attempt: 1,
                    lease_until,
                    topic: topic.clone(),
                    data: Bytes::from(row.get::<_, Vec<u8>>(1).map_err(db_err)?),
                    content_type: row.get(2).map_err(db_err)?,
                    metadata: parse_metadata(row.get(3).map_err(db_err)?),
                    published_at: row.get(4).map_err(db_err)?,
                });
            }
        }
        if last > frontier {
            self.conn
                .prepare_cached("UPDATE pubsub_groups SET frontier = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![group, last]))
                .map_err(db_err)?;
        }
        if scanned == room {
            // There may be more; the subscriber should come back at once.
            out.next_visible = Some(now);
        }
        Ok(out)
    }

    fn release(&self, group: i64, items: &[(i64, u32)], now: i64) -> Result<(), PubSubError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "UPDATE pubsub_inflight SET visible_at = ?4, attempt = attempt - 1 \
                 WHERE group_id = ?1 AND msg_id = ?2 AND attempt = ?3",
            )
            .map_err(db_err)?;
        for (msg, attempt) in items {
            stmt.execute(params![group, msg, attempt, now])
                .map_err(db_err)?;
        }
        Ok(())
    }

    /// One round of clean-up, each chunk in its own transaction so that writers waiting
    /// meanwhile (here or in other processes) are held up for one chunk at most. Returns
    /// whether more may be left.
    fn cleanup(&mut self) -> bool {
        self.set_sync(false);
        let now = now_ms();
        let mut more = false;
        match self.in_tx(|conn| {
            conn.execute(
                "DELETE FROM pubsub_messages WHERE id IN (SELECT id FROM pubsub_messages \
                 WHERE expires_at <= ?1 LIMIT ?2)",
                params![now, CLEANUP_LIMIT],
            )
        }) {
            Ok(n) => {
                more |= n == CLEANUP_CHUNK;
                if n > 0 {
                    tracing::debug!(rows = n, "sqlite pubsub: deleted expired messages");
                }
            }
            Err(e) => tracing::warn!(error = %e, "sqlite pubsub: expired message clean-up failed"),
        }
        let topics = match self.topics() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "sqlite pubsub: clean-up cannot list topics");
                return more;
            }
        };
        let cutoff = now.saturating_sub(self.retention);
        for topic in topics {
            match self.in_tx(|conn| delete_done(conn, &topic, cutoff)) {
                Ok(n) => {
                    more |= n == CLEANUP_CHUNK;
                    if n > 0 {
                        tracing::debug!(rows = n, topic, "sqlite pubsub: deleted old messages");
                    }
                }
                Err(e) => tracing::warn!(error = %e, topic, "sqlite pubsub: clean-up failed"),
            }
        }
        more
    }

    fn in_tx<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, rusqlite::Error> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn).and_then(|v| self.conn.execute_batch("COMMIT").map(|()| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// The distinct topics with messages, by skipping through the topic index.
    fn topics(&self) -> Result<Vec<String>, rusqlite::Error> {
        let mut stmt = self.conn.prepare(
            "WITH RECURSIVE t(topic) AS ( \
                 SELECT min(topic) FROM pubsub_messages \
                 UNION ALL \
                 SELECT (SELECT min(topic) FROM pubsub_messages WHERE topic > t.topic) \
                 FROM t WHERE t.topic IS NOT NULL) \
             SELECT topic FROM t WHERE topic IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    }
}

/// Deletes the oldest chunk of `topic`'s messages that every group is done with and that
/// were published before `cutoff`. Returns how many went.
fn delete_done(conn: &Connection, topic: &str, cutoff: i64) -> Result<usize, rusqlite::Error> {
    // Done for every group: at or below every frontier, and below every in-flight row.
    // (Acknowledged messages above the oldest unacknowledged one wait for it.)
    let floor: Option<i64> = conn.query_row(
        "SELECT min(frontier) FROM pubsub_groups WHERE topic = ?1",
        [topic],
        |r| r.get(0),
    )?;
    let lowest_inflight: Option<i64> = conn.query_row(
        "SELECT min(i.msg_id) FROM pubsub_inflight i JOIN pubsub_groups g ON g.id = i.group_id \
         WHERE g.topic = ?1",
        [topic],
        |r| r.get(0),
    )?;
    let bound = floor
        .unwrap_or(i64::MAX)
        .min(lowest_inflight.map_or(i64::MAX, |l| l - 1));
    let mut last = None;
    let mut n = 0;
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, published_at FROM pubsub_messages WHERE topic = ?1 AND id <= ?2 \
             ORDER BY id LIMIT ?3",
        )?;
        let mut rows = stmt.query(params![topic, bound, CLEANUP_LIMIT])?;
        while let Some(row) = rows.next()? {
            let published_at: i64 = row.get(1)?;
            // Ids grow with time: the first one too young ends the chunk.
            if published_at >= cutoff {
                break;
            }
            last = Some(row.get::<_, i64>(0)?);
            n += 1;
        }
    }
    if let Some(last) = last {
        conn.prepare_cached("DELETE FROM pubsub_messages WHERE topic = ?1 AND id <= ?2")?
            .execute(params![topic, last])?;
    }
    Ok(n)
}

fn parse_metadata(text: Option<String>) -> BTreeMap<String, String> {
    match text {
        None => BTreeMap::new(),
        Some(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
            // Only something other than this broker writing the table can cause this; the
            // message itself is still worth delivering.
            tracing::warn!(error = %e, "sqlite pubsub: unreadable message metadata");
            BTreeMap::new()
        }),
    }
}

// --- the poller thread --------------------------------------------------------------------

/// How often the poller looks for a first subscriber, to start watching the doorbell.
const FIRST_SUBSCRIBER_CHECK: Duration = Duration::from_millis(5);

/// Wakes subscribers: per topic for what this process did, and all of them for what other
/// processes did (the shared signal does not say which topic).
#[derive(Debug)]
struct Notifier {
    all: watch::Sender<u64>,
    topics: Mutex<HashMap<Arc<str>, watch::Sender<u64>>>,
}

impl Notifier {
    fn new() -> Self {
        Notifier {
            all: watch::channel(0).0,
            topics: Mutex::new(HashMap::new()),
        }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, watch::Sender<u64>>> {
        // The map stays consistent even if a holder panicked: every operation on it is a
        // single insert or lookup.
        self.topics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Receivers for `topic`'s wake-ups and everyone's.
    fn subscribe(&self, topic: &Arc<str>) -> (watch::Receiver<u64>, watch::Receiver<u64>) {
        let mut topics = self.topics();
        let sender = topics
            .entry(topic.clone())
            .or_insert_with(|| watch::channel(0).0);
        (sender.subscribe(), self.all.subscribe())
    }

    fn wake(&self, topics: &[String]) {
        if topics.is_empty() {
            return;
        }
        let map = self.topics();
        for t in topics {
            if let Some(sender) = map.get(t.as_str()) {
                sender.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    fn wake_all(&self) {
        self.all.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Wakes this broker's subscribers when another process publishes, nacks or releases:
/// reads the signal counter every `interval` while anyone is subscribed. Ends with the
/// broker (when `notifier` can no longer be upgraded).
fn poller(
    conn: Connection,
    interval: Duration,
    notifier: Weak<Notifier>,
    local: Arc<AtomicI64>,
    connection: String,
) {
    let read = || {
        conn.prepare_cached("SELECT value FROM pubsub_meta WHERE key = 'signal'")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
    };
    // Read before any subscriber can exist, so the first change after it is noticed.
    let mut seen = read().ok();
    // The doorbell is watched from the first subscriber on (a process that only publishes
    // need not wake for every commit on the file), for as long as this thread lives;
    // without it, polling alone.
    let mut bell: Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)> = None;
    let mut tried = false;
    loop {
        match &bell {
            Some((_watcher, rx)) => match rx.recv_timeout(interval) {
                // A ring: look at once, once for all rings queued meanwhile.
                Ok(()) => while rx.try_recv().is_ok() {},
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(interval),
            },
            // Until the first subscriber, look for one often (nothing is read meanwhile).
            None if !tried => std::thread::sleep(interval.min(FIRST_SUBSCRIBER_CHECK)),
            None => std::thread::sleep(interval),
        }
        let Some(notifier) = notifier.upgrade() else {
            return;
        };
        if notifier.all.receiver_count() == 0 {
            continue;
        }
        if !tried {
            tried = true;
            bell = watch_bell(&connection);
            // Whatever rang before the watch started is caught by this read.
        }
        match read() {
            Ok(v) => {
                // A change since the last look that is not this broker's own last commit
                // (whose subscribers were woken directly) came from another process.
                if seen != Some(v) && v != local.load(Ordering::Relaxed) {
                    notifier.wake_all();
                }
                seen = Some(v);
            }
            Err(e) => tracing::debug!(error = %e, "sqlite pubsub: poll failed"),
        }
    }
}

/// The doorbell next to the broker file: a writer that committed something subscribers
/// should look at writes a byte to it *after* the commit (the log itself changes before the
/// commit is visible, so watching it would wake readers too early).
///
/// `None` for a `file:` URI and for an in-memory broker: no other process can see the
/// latter, and its name (`:memory:`) is no file to put a bell next to.
fn bell_path(connection: &str) -> Option<std::path::PathBuf> {
    if connection.starts_with("file:") || in_memory(connection) {
        return None;
    }
    let db = Path::new(connection);
    let mut name = db.file_name()?.to_os_string();
    name.push("-bell");
    Some(db.with_file_name(name))
}

/// Tells the poller when the doorbell rings: another process's publish is noticed at once
/// instead of at the next `pollInterval`, which stays as the safety net. `None` (a `file:`
/// URI, no file notifications here) leaves polling alone.
fn watch_bell(connection: &str) -> Option<(notify::RecommendedWatcher, mpsc::Receiver<()>)> {
    use notify::{EventKind, RecursiveMode, Watcher as _};
    let bell = bell_path(connection)?;
    let dir = match bell.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = bell.file_name()?.to_os_string();
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, EventKind::Modify(_) | EventKind::Create(_))
            && event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| tracing::debug!(error = %e, "sqlite pubsub: no file notifications; polling"))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| tracing::debug!(error = %e, "sqlite pubsub: cannot watch the broker's directory; polling"))
        .ok()?;
    Some((watcher, rx))
}

// --- the broker ---------------------------------------------------------------------------

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
            let c = open_connection(&cfg)?;
            c.execute_batch("PRAGMA query_only = 1").map_err(db_err)?;
            Some(c)
        };
        let (jobs, rx) = mpsc::channel();
        let notifier = Arc::new(Notifier::new());
        let local_signal = Arc::new(AtomicI64::new(i64::MIN));
        let writer = Writer {
            conn,
            ack_deadline: ms(cfg.ack_deadline),
            retention: ms(cfg.retention),
            cleanup_interval: cfg.cleanup_interval,
            notifier: notifier.clone(),
            local_signal: local_signal.clone(),
            full_sync: true,
            orphans: Vec::new(),
            busy_timeout: cfg.busy_timeout,
            bell: bell_path(&cfg.connection).and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(p)
                    .ok()
            }),
        };
        let spawn_err =
            |e: std::io::Error| PubSubError::Backend(format!("cannot start sqlite thread: {e}"));
        std::thread::Builder::new()
            .name("trellis-pubsub-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(spawn_err)?;
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
        Ok(Box::new(SqliteSubscription {
            shared: self.shared.clone(),
            group,
            topic,
            local,
            remote,
            buffer: VecDeque::new(),
            next_visible: None,
            closed: false,
            retry_at: None,
            pending: None,
        }))
    }

    async fn ping(&self) -> Result<(), PubSubError> {
        self.shared.call(|reply| Job::Ping { reply }).await
    }
}

/// One subscriber: leases up to `prefetch` messages at a time and hands them out in order.
struct SqliteSubscription {
    shared: Arc<Shared>,
    group: i64,
    topic: Arc<str>,
    /// Wake-ups for this topic from this process, and for anything from other processes.
    local: watch::Receiver<u64>,
    remote: watch::Receiver<u64>,
    /// Leased, not yet handed out.
    buffer: VecDeque<Leased>,
    next_visible: Option<i64>,
    closed: bool,
    retry_at: Option<tokio::time::Instant>,
    /// A fetch sent and not answered yet, with its deadline. Kept here rather than in the
    /// future of `next`, so that a cancelled `next` loses no leases: the next call picks
    /// the answer up.
    pending: Option<(FetchReply, tokio::time::Instant)>,
}

type FetchReply = oneshot::Receiver<Result<Fetched, PubSubError>>;

impl SqliteSubscription {
    /// Stops waiting for a pending fetch; whatever it already leased joins the buffer (to
    /// be given back). A fetch answered after this finds no receiver, and the writer gives
    /// its leases back itself.
    fn abandon_fetch(&mut self) {
        if let Some((mut rx, _)) = self.pending.take() {
            rx.close();
            if let Ok(Ok(fetched)) = rx.try_recv() {
                self.buffer.extend(fetched.items);
            }
        }
    }

    /// Queues a fetch of up to `prefetch` leases; its answer is awaited by `next`.
    fn start_fetch(&mut self) -> Result<(), PubSubError> {
        // Marks the current change as seen: any change from here on wakes the wait.
        self.local.borrow_and_update();
        self.remote.borrow_and_update();
        let (group, topic, max) = (self.group, self.topic.clone(), self.shared.prefetch);
        let rx = self.shared.send(|reply| Job::Fetch {
            group,
            topic,
            max,
            reply,
        })?;
        let deadline = tokio::time::Instant::now() + self.shared.timeout;
        self.pending = Some((rx, deadline));
        Ok(())
    }

    /// Gives back every buffered lease (fire and forget unless a reply is wanted).
    fn release_buffer(&mut self, reply: Option<Reply<()>>) -> bool {
        if self.buffer.is_empty() {
            return false;
        }
        let items = self.buffer.drain(..).map(|l| (l.id, l.attempt)).collect();
        let job = Job::Release {
            group: self.group,
            topic: self.topic.clone(),
            items,
            reply,
        };
        // A closed writer means the leases simply run out.
        self.shared.jobs.send(job).is_ok()
    }

    fn deliver(&self, l: Leased) -> Delivery {
        Delivery {
            message: Message {
                id: l.id.to_string(),
                topic: l.topic.to_string(),
                data: l.data,
                content_type: l.content_type,
                metadata: l.metadata,
                published_at: from_ms(l.published_at),
                delivery_attempt: l.attempt,
            },
            acker: Box::new(SqliteAcker {
                shared: self.shared.clone(),
                group: self.group,
                topic: self.topic.clone(),
                msg: l.id,
                attempt: l.attempt,
                settled: false,
            }),
        }
    }

    async fn wait_for_change(&mut self) {
        let now = now_ms();
        let wait = match self.next_visible {
            Some(at) => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)),
            None => IDLE_REFETCH,
        }
        .min(IDLE_REFETCH);
        let deadline = tokio::time::Instant::now() + wait;
        // The senders live as long as `shared`, so `changed` fails only in theory; should
        // it, the timer still bounds the wait.
        let woken = tokio::select! {
            res = self.local.changed() => res.is_ok(),
            res = self.remote.changed() => res.is_ok(),
            () = tokio::time::sleep_until(deadline) => true,
        };
        if !woken {
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, PubSubError>> {
        loop {
            if self.closed {
                return None;
            }
            if let Some(l) = self.buffer.pop_front() {
                // A lease that has been waiting in the buffer for more than half its time
                // would leave the application too little; give the buffer back and
                // fetch afresh rather than risk a duplicate delivery.
                if l.lease_until - now_ms() < ms(self.shared.ack_deadline) / 2 {
                    self.buffer.push_front(l);
                    self.release_buffer(None);
                    continue;
                }
                // Fetch ahead once half the buffer is handed out, so a fast consumer finds
                // the next leases ready instead of waiting for a commit (or, with other
                // processes on the file, for the write lock) each time the buffer runs dry.
                if self.buffer.len() < self.shared.prefetch / 2
                    && self.pending.is_none()
                    && self.retry_at.is_none()
                {
                    // A failure to queue shows up again on the fetch that waits.
                    let _ = self.start_fetch();
                }
                return Some(Ok(self.deliver(l)));
            }
            if self.pending.is_none() {
                if let Some(at) = self.retry_at.take() {
                    tokio::time::sleep_until(at).await;
                }
                if let Err(e) = self.start_fetch() {
                    self.retry_at = Some(tokio::time::Instant::now() + ERROR_BACKOFF);
                    return Some(Err(e));
                }
            }
            let Some((rx, deadline)) = self.pending.as_mut() else {
                continue;
            };
            let waited = tokio::time::timeout_at(*deadline, rx).await;
            // Answered, or given up on: in both cases no longer pending (a late answer
            // finds the receiver gone, and the writer gives its leases back).
            self.pending = None;
            match self.shared.outcome(waited) {
                Err(e) => {
                    self.retry_at = Some(tokio::time::Instant::now() + ERROR_BACKOFF);
                    return Some(Err(e));
                }
                Ok(fetched) => {
                    self.next_visible = fetched.next_visible;
                    if fetched.items.is_empty() {
                        self.wait_for_change().await;
                    } else {
                        self.buffer.extend(fetched.items);
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), PubSubError> {
        self.closed = true;
        self.abandon_fetch();
        let (tx, rx) = oneshot::channel();
        if self.release_buffer(Some(tx)) {
            return self.shared.wait(rx).await;
        }
        Ok(())
    }
}

impl Drop for SqliteSubscription {
    fn drop(&mut self) {
        self.abandon_fetch();
        self.release_buffer(None);
    }
}

struct SqliteAcker {
    shared: Arc<Shared>,
    group: i64,
    topic: Arc<str>,
    msg: i64,
    attempt: u32,
    /// Set once ack or nack was sent; otherwise dropping nacks.
    settled: bool,
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), PubSubError> {
        self.settled = true;
        let (group, msg) = (self.group, self.msg);
        self.shared
            .call(|reply| Job::Ack {
                group,
                msg,
                reply: Some(reply),
            })
            .await
    }

    async fn nack(mut self: Box<Self>, redeliver_after: Duration) -> Result<(), PubSubError> {
        self.settled = true;
        let (group, msg, attempt) = (self.group, self.msg, self.attempt);
        let topic = self.topic.clone();
        self.shared
            .call(|reply| Job::Nack {
                group,
                topic,
                msg,
                attempt,
                after: redeliver_after,
                reply: Some(reply),
            })
            .await
    }
}

impl Drop for SqliteAcker {
    fn drop(&mut self) {
        if !self.settled {
            // Dropped unsettled (the handler failed or was cancelled): redeliver now
            // rather than when the lease runs out.
            let _ = self.shared.jobs.send(Job::Nack {
                group: self.group,
                topic: self.topic.clone(),
                msg: self.msg,
                attempt: self.attempt,
                after: Duration::ZERO,
                reply: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        assert!(Config::from_metadata(&Metadata::default()).is_err());
        let c = Config::from_metadata(&Metadata::from_pairs([("ConnectionString", "/x/p.db")]))
            .unwrap();
        assert_eq!(c.ack_deadline, Duration::from_secs(30));
        assert_eq!(c.retention, Duration::from_secs(86400));
        assert_eq!(c.cleanup_interval, Some(Duration::from_secs(300)));
        assert_eq!(c.poll_interval, Duration::from_millis(5));
        assert_eq!(c.prefetch, 256);
        assert!(!c.in_memory());
        assert_eq!(bell_path(&c.connection), Some("/x/p.db-bell".into()));
        let c = Config::from_metadata(&Metadata::from_pairs([
            ("connectionString", ":memory:"),
            ("ackDeadline", "2s"),
            ("retention", "0"),
            ("cleanupInterval", "-1"),
            ("pollInterval", "1ms"),
            ("prefetch", "1"),
        ]))
        .unwrap();
        assert!(c.in_memory());
        assert_eq!(bell_path(&c.connection), None);
        assert_eq!(c.ack_deadline, Duration::from_secs(2));
        assert_eq!(c.retention, Duration::ZERO);
        assert_eq!(c.cleanup_interval, None);
        assert_eq!(c.prefetch, 1);
        for (k, v) in [
            ("ackDeadline", "0"),
            ("pollInterval", "x"),
            ("prefetch", "0"),
        ] {
            let md = Metadata::from_pairs([("connectionString", "a"), (k, v)]);
            let err = Config::from_metadata(&md).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
    }
}
