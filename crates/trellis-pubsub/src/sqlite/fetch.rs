//! Fetching: how a subscriber leases its group's messages in one write transaction. First
//! the group's in-flight rows whose `visible_at` has passed (redeliveries, attempt + 1),
//! then new messages above the group's frontier, in id order; both are leased
//! (`visible_at = now + ackDeadline`) before the transaction commits, so no two
//! subscribers of a group, in any process, hold the same message at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::db_err;
use super::jobs::{Fetched, Leased};
use crate::PubSubError;

/// Leases up to `max` of `group`'s messages for `ack_deadline` ms from `now`.
pub(super) fn fetch(
    conn: &Connection,
    group: i64,
    topic: &Arc<str>,
    max: usize,
    now: i64,
    ack_deadline: i64,
) -> Result<Fetched, PubSubError> {
    let lease_until = now.saturating_add(ack_deadline);
    let mut out = Fetched::default();
    let mut due = Vec::new();
    {
        // A group's in-flight rows are few (its subscribers' leases and pending nacks),
        // so one pass over them finds both the due ones and the next to come due.
        let mut stmt = conn
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
        let mut get = conn
            .prepare_cached(
                "SELECT data, content_type, metadata, published_at, expires_at \
                     FROM pubsub_messages WHERE id = ?1",
            )
            .map_err(db_err)?;
        let mut gone = conn
            .prepare_cached("DELETE FROM pubsub_inflight WHERE group_id = ?1 AND msg_id = ?2")
            .map_err(db_err)?;
        let mut lease = conn
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
    let frontier: i64 = conn
        .prepare_cached("SELECT frontier FROM pubsub_groups WHERE id = ?1")
        .and_then(|mut s| s.query_row([group], |r| r.get(0)).optional())
        .map_err(db_err)?
        .ok_or_else(|| PubSubError::Backend("sqlite: the consumer group was deleted".into()))?;
    let mut last = frontier;
    let mut scanned = 0;
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, data, content_type, metadata, published_at, expires_at \
                     FROM pubsub_messages WHERE topic = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .map_err(db_err)?;
        let mut insert = conn
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
        conn.prepare_cached("UPDATE pubsub_groups SET frontier = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![group, last]))
            .map_err(db_err)?;
    }
    if scanned == room {
        // There may be more; the subscriber should come back at once.
        out.next_visible = Some(now);
    }
    Ok(out)
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
