//! The broker's side of the group-commit writer (`trellis_sqlite::writer`, which owns the
//! thread, the batching, the transaction, the durability and the answers): how each job
//! applies, what a batch shares (the next message id, the topics where it made messages
//! available, the signal other processes poll) and what follows a commit (waking this
//! process's subscribers, ringing the doorbell for the others').
//!
//! Publishes and new groups must be durable when acknowledged (a group lost to a power cut
//! would be created anew later and miss what was published meanwhile), so a batch holding
//! one commits with an fsync; leases and settlements may be lost at the price of a
//! redelivery, so a batch of only those commits without one.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};
use trellis_sqlite::writer::{Backend, WriteConnection};

use super::cleanup::cleanup;
use super::config::Config;
use super::fetch::fetch;
use super::jobs::{Answer, Job};
use super::poller::{Notifier, bell_path};
use super::{db_err, ms, now_ms};
use crate::{PubSubError, PublishRequest};

/// The writer thread's view of the broker.
pub(super) struct BrokerWriter {
    ack_deadline: i64,
    retention: i64,
    notifier: Arc<Notifier>,
    /// The signal value this writer last committed, so the poller can tell its own
    /// commits from other processes'.
    local_signal: Arc<AtomicI64>,
    /// The doorbell other processes' pollers watch (see [`bell_path`]); `None` in memory.
    bell: Option<std::fs::File>,
    /// Leases whose fetch nobody received (the subscriber stopped waiting): given back in
    /// the next transaction instead of waiting for the ack deadline.
    orphans: Vec<Job>,
    /// The current batch's clock.
    now: i64,
    /// The next message id, once the batch needed it.
    next_id: Option<i64>,
    /// Topics where the batch made messages available, so their subscribers should look.
    touched: Vec<String>,
    /// The signal value the batch wrote, if it bumped it.
    signal: Option<i64>,
}

impl BrokerWriter {
    pub(super) fn new(cfg: &Config, notifier: Arc<Notifier>, local_signal: Arc<AtomicI64>) -> Self {
        BrokerWriter {
            ack_deadline: ms(cfg.ack_deadline),
            retention: ms(cfg.retention),
            notifier,
            local_signal,
            bell: bell_path(&cfg.connection).and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(p)
                    .ok()
            }),
            orphans: Vec::new(),
            now: 0,
            next_id: None,
            touched: Vec::new(),
            signal: None,
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

    /// Runs one job and returns its answer; adds the topics where it made messages
    /// available to `touched`.
    fn run_job(&mut self, conn: &Connection, job: Job) -> Answer {
        let (now, next_id, touched) = (self.now, &mut self.next_id, &mut self.touched);
        match job {
            Job::Publish { msgs, reply } => {
                let res = publish(conn, &msgs, next_id, now);
                for m in &msgs {
                    if touched.last() != Some(&m.topic) {
                        touched.push(m.topic.clone());
                    }
                }
                Answer::Unit(Some(reply), res)
            }
            Job::Subscribe {
                topic,
                group,
                replay,
                reply,
            } => {
                let res = subscribe(conn, &topic, &group, replay, next_id, now);
                Answer::Group(reply, res)
            }
            Job::Fetch {
                group,
                topic,
                max,
                reply,
            } => {
                let res = fetch(conn, group, &topic, max, now, self.ack_deadline);
                Answer::Fetch(group, topic, reply, res)
            }
            Job::Ack { group, msg, reply } => {
                let res = conn
                    .prepare_cached(
                        "DELETE FROM pubsub_inflight WHERE group_id = ?1 AND msg_id = ?2",
                    )
                    .and_then(|mut s| s.execute(params![group, msg]))
                    .map(drop)
                    .map_err(db_err);
                Answer::Unit(reply, res)
            }
            Job::Nack {
                group,
                topic,
                msg,
                attempt,
                after,
                reply,
            } => {
                let res = conn
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
                Answer::Unit(reply, res)
            }
            Job::Release {
                group,
                topic,
                items,
                reply,
            } => {
                let res = release(conn, group, &items, now);
                touched.push(topic.to_string());
                Answer::Unit(reply, res)
            }
            Job::Ping { reply } => Answer::Unit(Some(reply), Ok(())),
        }
    }
}

impl Backend for BrokerWriter {
    type Job = Job;
    type Answer = Answer;

    fn apply(&mut self, conn: &Connection, job: Job) -> Answer {
        let (next_id, touched) = (self.next_id, self.touched.len());
        let answer = self.run_job(conn, job);
        if answer.error().is_some() {
            // Its writes are undone, and so is what it added to the batch's bookkeeping.
            self.next_id = next_id;
            self.touched.truncate(touched);
        }
        answer
    }

    fn error<'a>(&self, answer: &'a Answer) -> Option<&'a dyn fmt::Display> {
        answer.error().map(|e| e as &dyn fmt::Display)
    }

    fn send(&mut self, answer: Answer, failure: Option<&str>) {
        fn settle<T>(failure: Option<&str>, res: Result<T, PubSubError>) -> Result<T, PubSubError> {
            match failure {
                Some(msg) => Err(PubSubError::Backend(msg.to_string())),
                None => res,
            }
        }
        match answer {
            Answer::Unit(reply, res) => {
                if let Some(reply) = reply {
                    let _ = reply.send(settle(failure, res));
                }
            }
            Answer::Group(reply, res) => {
                let _ = reply.send(settle(failure, res));
            }
            Answer::Fetch(group, topic, reply, res) => {
                if let Err(Ok(fetched)) = reply.send(settle(failure, res))
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

    fn reject(&mut self, job: Job, reason: &str) {
        job.fail(reason);
    }

    fn durable(&self, job: &Job) -> bool {
        matches!(job, Job::Publish { .. } | Job::Subscribe { .. })
    }

    fn needs_savepoint(&self, job: &Job) -> bool {
        !job.single_statement()
    }

    fn abandoned(&self, job: &Job) -> bool {
        job.abandoned()
    }

    fn weight(&self, job: &Job) -> usize {
        job.messages()
    }

    fn begin(&mut self, _conn: &Connection) -> Result<(), String> {
        self.now = now_ms();
        self.next_id = None;
        self.touched.clear();
        self.signal = None;
        Ok(())
    }

    fn finish(&mut self, conn: &Connection) -> Result<(), String> {
        if let Some(id) = self.next_id {
            set_meta(conn, "next_id", id)
                .map_err(|e| format!("sqlite: cannot save the next message id: {e}"))?;
        }
        if !self.touched.is_empty() {
            let v = bump_signal(conn).map_err(|e| format!("sqlite: cannot signal: {e}"))?;
            self.signal = Some(v);
        }
        Ok(())
    }

    fn after(&mut self, committed: bool) {
        if !committed {
            return;
        }
        if let Some(v) = self.signal {
            self.local_signal.store(v, Ordering::Relaxed);
            // After the answers: the ring is for other processes, not on a publisher's path.
            self.ring();
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        self.notifier.wake(&self.touched);
    }

    fn follow_ups(&mut self, batch: &mut Vec<Job>) {
        batch.append(&mut self.orphans);
    }

    fn periodic(&mut self, db: &mut WriteConnection) -> bool {
        cleanup(db, self.retention)
    }
}

fn next_message_id(conn: &Connection, cached: &mut Option<i64>) -> Result<i64, PubSubError> {
    if let Some(id) = *cached {
        return Ok(id);
    }
    let id = conn
        .prepare_cached("SELECT value FROM pubsub_meta WHERE key = 'next_id'")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)).optional())
        .map_err(db_err)?
        .unwrap_or(1);
    // Never below what the table holds, even if someone reset the counter row.
    let max: Option<i64> = conn
        .query_row("SELECT max(id) FROM pubsub_messages", [], |r| r.get(0))
        .map_err(db_err)?;
    let id = id.max(max.unwrap_or(0) + 1);
    *cached = Some(id);
    Ok(id)
}

fn set_meta(conn: &Connection, key: &str, value: i64) -> Result<(), rusqlite::Error> {
    conn.prepare_cached("UPDATE pubsub_meta SET value = ?2 WHERE key = ?1")?
        .execute(params![key, value])
        .map(drop)
}

fn bump_signal(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.prepare_cached(
        "UPDATE pubsub_meta SET value = value + 1 WHERE key = 'signal' RETURNING value",
    )?
    .query_row([], |r| r.get(0))
}

fn publish(
    conn: &Connection,
    msgs: &[PublishRequest],
    next_id: &mut Option<i64>,
    now: i64,
) -> Result<(), PubSubError> {
    let mut id = next_message_id(conn, next_id)?;
    let mut stmt = conn
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
    conn: &Connection,
    topic: &str,
    group: &str,
    replay: bool,
    next_id: &mut Option<i64>,
    now: i64,
) -> Result<i64, PubSubError> {
    let existing = conn
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
        next_message_id(conn, next_id)? - 1
    };
    conn.prepare_cached(
        "INSERT INTO pubsub_groups (topic, grp, frontier, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![topic, group, frontier, now]))
    .map_err(db_err)?;
    Ok(conn.last_insert_rowid())
}

fn release(
    conn: &Connection,
    group: i64,
    items: &[(i64, u32)],
    now: i64,
) -> Result<(), PubSubError> {
    let mut stmt = conn
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
