//! The store's side of the group-commit writer (`trellis_sqlite::writer`, which owns the
//! thread, the batching, the transaction and the durability): how sets, deletes and
//! transactions apply, the ETag counter a batch shares, and the TTL clean-up.
//!
//! Every write is durable (the writer's default: each commit an fsync). A transaction of
//! several operations runs in a savepoint, so a failing operation undoes the ones before
//! it and nothing else in the batch; a single set or delete is one statement and needs
//! none.

use std::fmt;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use trellis_sqlite::writer::{Backend, WriteConnection};

use super::jobs::{Answer, Job};
use super::reader::read_job;
use super::schema::{Sql, random_start};
use super::{db_err, now_ms};
use crate::{Concurrency, DeleteRequest, Operation, SetRequest, StateError};

/// Rows deleted per transaction by the TTL clean-up, so it never holds the write lock long.
pub(super) const CLEANUP_CHUNK: usize = 1000;

/// The writer thread's view of the store.
pub(super) struct StoreWriter {
    sql: Arc<Sql>,
    /// The current batch's clock, so that all its TTL checks agree.
    now: i64,
    /// The ETag counter as the current batch advanced it, and as the batch found it.
    counter: i64,
    start: i64,
}

impl StoreWriter {
    pub(super) fn new(sql: Arc<Sql>) -> Self {
        StoreWriter {
            sql,
            now: 0,
            counter: 0,
            start: 0,
        }
    }

    fn read_counter(&self, conn: &Connection) -> Result<i64, rusqlite::Error> {
        let mut stmt = conn.prepare_cached(&self.sql.counter_get)?;
        let text: Option<String> = stmt
            .query_row([&self.sql.counter_key], |r| r.get(0))
            .optional()?;
        // A missing or mangled counter row (someone edited the table) restarts from a
        // random point rather than failing every write.
        Ok(text
            .and_then(|t| t.parse::<i64>().ok())
            .filter(|n| *n > 0)
            .unwrap_or_else(random_start))
    }

    fn write_counter(&self, conn: &Connection) -> Result<(), rusqlite::Error> {
        let mut stmt = conn.prepare_cached(&self.sql.counter_set)?;
        stmt.execute(params![self.sql.counter_key, self.counter.to_string()])?;
        Ok(())
    }

    /// One job's operations, in order, up to the first that fails.
    fn write(&mut self, conn: &Connection, ops: &[Operation]) -> Result<(), StateError> {
        let before = self.counter;
        let res = ops.iter().try_for_each(|op| match op {
            Operation::Upsert(req) => self.set(conn, req),
            Operation::Delete(req) => self.delete(conn, req),
        });
        if res.is_err() {
            // Its writes are undone (by its savepoint, or by SQLite for a single
            // statement), and so are the ETags it took.
            self.counter = before;
        }
        res
    }

    fn set(&mut self, conn: &Connection, req: &SetRequest) -> Result<(), StateError> {
        let now = self.now;
        let expected = req.etag.as_deref().map(parse_etag).transpose()?;
        self.counter += 1;
        let etag = self.counter;
        let expires_at = req
            .ttl
            .map(|ttl| now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        let value: &[u8] = &req.value;
        let changed = match (expected, req.concurrency) {
            (Some(expected), _) => {
                let mut stmt = conn.prepare_cached(&self.sql.update_etag).map_err(db_err)?;
                stmt.execute(params![
                    req.key,
                    value,
                    req.is_json,
                    etag,
                    req.content_type,
                    expires_at,
                    expected,
                    now
                ])
            }
            (None, Concurrency::FirstWrite) => {
                let mut stmt = conn
                    .prepare_cached(&self.sql.insert_first)
                    .map_err(db_err)?;
                stmt.execute(params![
                    req.key,
                    value,
                    req.is_json,
                    etag,
                    req.content_type,
                    expires_at,
                    now
                ])
            }
            (None, Concurrency::LastWrite) => {
                let mut stmt = conn.prepare_cached(&self.sql.upsert).map_err(db_err)?;
                stmt.execute(params![
                    req.key,
                    value,
                    req.is_json,
                    etag,
                    req.content_type,
                    expires_at
                ])
            }
        }
        .map_err(db_err)?;
        if changed == 0 {
            return Err(StateError::EtagMismatch);
        }
        Ok(())
    }

    fn delete(&self, conn: &Connection, req: &DeleteRequest) -> Result<(), StateError> {
        let now = self.now;
        match req.etag.as_deref().map(parse_etag).transpose()? {
            Some(expected) => {
                let mut stmt = conn.prepare_cached(&self.sql.delete_etag).map_err(db_err)?;
                let changed = stmt
                    .execute(params![req.key, expected, now])
                    .map_err(db_err)?;
                if changed == 0 {
                    return Err(StateError::EtagMismatch);
                }
            }
            None => {
                let mut stmt = conn.prepare_cached(&self.sql.delete).map_err(db_err)?;
                stmt.execute(params![req.key]).map_err(db_err)?;
            }
        }
        Ok(())
    }
}

impl Backend for StoreWriter {
    type Job = Job;
    type Answer = Answer;

    fn apply(&mut self, conn: &Connection, job: Job) -> Answer {
        match job {
            Job::Write { ops, reply, .. } => Answer::Write(reply, self.write(conn, &ops)),
            // An in-memory database has no reader threads: its reads queue here.
            read => read_job(conn, &self.sql, read, self.now),
        }
    }

    fn error<'a>(&self, answer: &'a Answer) -> Option<&'a dyn fmt::Display> {
        answer.error().map(|e| e as &dyn fmt::Display)
    }

    fn send(&mut self, answer: Answer, failure: Option<&str>) {
        match failure {
            None => answer.send(),
            Some(msg) => answer.fail(msg).send(),
        }
    }

    fn reject(&mut self, job: Job, reason: &str) {
        job.fail(reason);
    }

    fn needs_savepoint(&self, job: &Job) -> bool {
        // A single statement is atomic by itself.
        matches!(job, Job::Write { ops, atomic: true, .. } if ops.len() > 1)
    }

    fn abandoned(&self, job: &Job) -> bool {
        job.abandoned()
    }

    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
        self.now = now_ms();
        self.counter = self
            .read_counter(conn)
            .map_err(|e| format!("sqlite: cannot read the etag counter: {e}"))?;
        self.start = self.counter;
        Ok(())
    }

    fn finish(&mut self, conn: &Connection) -> Result<(), String> {
        if self.counter != self.start {
            self.write_counter(conn)
                .map_err(|e| format!("sqlite: cannot save the etag counter: {e}"))?;
        }
        Ok(())
    }

    /// Deletes one chunk of expired rows in its own transaction, so writers waiting
    /// meanwhile (in this process or others) are held up for one chunk at most.
    fn periodic(&mut self, db: &mut WriteConnection) -> bool {
        match db.transaction(|conn| conn.execute(&self.sql.cleanup, [now_ms()])) {
            Ok(n) => {
                if n > 0 {
                    tracing::debug!(rows = n, "sqlite state store: deleted expired rows");
                }
                n == CLEANUP_CHUNK
            }
            Err(e) => {
                tracing::warn!(error = %e, "sqlite state store: expired row clean-up failed");
                false
            }
        }
    }
}

/// Our ETags are the decimal text of a positive counter; anything else cannot be ours.
fn parse_etag(etag: &str) -> Result<i64, StateError> {
    match etag.parse::<i64>() {
        Ok(n) if n > 0 && n.to_string() == etag => Ok(n),
        _ => Err(StateError::InvalidEtag(etag.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(parse_etag("42").unwrap(), 42);
        for bad in [
            "",
            "0",
            "-1",
            "042",
            "+42",
            "4 2",
            "x",
            "99999999999999999999",
        ] {
            assert!(
                matches!(parse_etag(bad), Err(StateError::InvalidEtag(_))),
                "{bad:?}"
            );
        }
    }
}
