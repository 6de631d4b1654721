//! The read side: reader threads, each with its own connection, serving gets and queries
//! in batches (the writer thread serves them too, for an in-memory database).

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::config::invalid;
use super::jobs::{Answer, Job};
use super::schema::Sql;
use super::{MAX_BATCH, db_err, from_ms, now_ms};
use crate::query::{Query, QueryResponse, QueryResult, compare};
use crate::{Item, StateError};

/// A reader thread: takes whatever reads are queued and serves them in one read
/// transaction. The threads take turns on the shared receiver.
pub(super) fn reader_loop(
    conn: Connection,
    sql: Arc<Sql>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    busy_timeout: Duration,
) {
    trellis_sqlite::set_busy_budget(busy_timeout);
    loop {
        let batch = {
            let Ok(rx) = rx.lock() else { return };
            let Ok(first) = rx.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        let now = now_ms();
        // One snapshot for the batch saves taking a WAL read lock per get. It is no older
        // than the moment the batch was taken, so a read still sees every write that was
        // acknowledged before it was asked.
        let in_tx = batch.len() > 1 && conn.execute_batch("BEGIN").is_ok();
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            if job.abandoned() {
                continue;
            }
            answers.push(read_job(&conn, &sql, job, now));
        }
        if in_tx {
            let _ = conn.execute_batch("COMMIT");
        }
        for a in answers {
            a.send();
        }
    }
}

/// Reads, shared by reader threads and (for in-memory databases) the writer thread.
pub(super) fn read_job(conn: &Connection, sql: &Sql, job: Job, now: i64) -> Answer {
    match job {
        Job::Get { keys, reply } => {
            let res = get_many(conn, sql, &keys, now);
            Answer::Get(reply, res)
        }
        Job::Query {
            prefix,
            query,
            reply,
        } => {
            let res = run_query(conn, sql, &prefix, &query, now);
            Answer::Query(reply, res)
        }
        Job::Write { reply, .. } => Answer::Write(
            reply,
            Err(StateError::Backend(
                "internal error: a write reached a reader".into(),
            )),
        ),
    }
}

pub(super) fn get_many<K: AsRef<str>>(
    conn: &Connection,
    sql: &Sql,
    keys: &[K],
    now: i64,
) -> Result<Vec<Option<Item>>, StateError> {
    let mut stmt = conn.prepare_cached(&sql.get).map_err(db_err)?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let item = stmt
            .query_row(params![key.as_ref(), now], |row| {
                Ok(Item {
                    value: Bytes::from(row.get::<_, Vec<u8>>(0)?),
                    etag: row.get::<_, i64>(1)?.to_string(),
                    content_type: row.get(2)?,
                    expires_at: row.get::<_, Option<i64>>(3)?.map(from_ms),
                })
            })
            .optional()
            .map_err(db_err)?;
        out.push(item);
    }
    Ok(out)
}

fn run_query(
    conn: &Connection,
    sql: &Sql,
    prefix: &str,
    query: &Query,
    now: i64,
) -> Result<QueryResponse, StateError> {
    let offset = match &query.token {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| invalid(format!("invalid query token {t:?}")))?,
    };
    let mut stmt = conn.prepare_cached(&sql.scan).map_err(db_err)?;
    let mut rows = stmt.query(params![prefix, now]).map_err(db_err)?;
    let mut hits: Vec<(String, Vec<u8>, i64, Value)> = Vec::new();
    while let Some(row) = rows.next().map_err(db_err)? {
        let key: String = row.get(0).map_err(db_err)?;
        if !key.starts_with(prefix) {
            break;
        }
        let data: Vec<u8> = row.get(1).map_err(db_err)?;
        // `is_json` is the writer's word; a value that does not parse never matches.
        let Ok(value) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        if query.filter.as_ref().is_none_or(|f| f.matches(&value)) {
            let etag: i64 = row.get(2).map_err(db_err)?;
            hits.push((key, data, etag, value));
        }
    }
    if !query.sort.is_empty() {
        // Stable over key order, so equal sort values page deterministically.
        hits.sort_by(|a, b| compare(&a.3, &b.3, &query.sort));
    }
    let total = hits.len();
    let end = query
        .limit
        .map_or(total, |l| offset.saturating_add(l).min(total));
    let results = hits
        .into_iter()
        .skip(offset)
        .take(end.saturating_sub(offset))
        .map(|(key, data, etag, _)| QueryResult {
            key,
            data: Bytes::from(data),
            etag: Some(etag.to_string()),
        })
        .collect();
    let token = (query.limit.is_some() && end < total).then(|| end.to_string());
    Ok(QueryResponse { results, token })
}
