//! The broker's clean-up, run by the writer thread every `cleanupInterval`: messages past
//! their TTL, and messages older than `retention` that every group of their topic is done
//! with. A message some group has not acknowledged is kept (until its TTL, if it has one),
//! also when that group never subscribes again.

use rusqlite::{Connection, params};
use trellis_sqlite::writer::WriteConnection;

use super::now_ms;

/// Rows deleted per clean-up transaction, so it never holds the write lock for long.
const CLEANUP_CHUNK: usize = 1000;
/// [`CLEANUP_CHUNK`] as SQL wants it.
const CLEANUP_LIMIT: i64 = CLEANUP_CHUNK as i64;

/// One round of clean-up, each chunk in its own transaction so that writers waiting
/// meanwhile (here or in other processes) are held up for one chunk at most. Returns
/// whether more may be left.
/// Deletions lost to a power cut are simply done again: no fsync for them.
pub(super) fn cleanup(db: &mut WriteConnection, retention: i64) -> bool {
    db.set_durable(false);
    let now = now_ms();
    let mut more = false;
    match db.transaction(|conn| {
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
    let topics = match topics(db.conn()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "sqlite pubsub: clean-up cannot list topics");
            return more;
        }
    };
    let cutoff = now.saturating_sub(retention);
    for topic in topics {
        match db.transaction(|conn| delete_done(conn, &topic, cutoff)) {
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

/// The distinct topics with messages, by skipping through the topic index.
fn topics(conn: &Connection) -> Result<Vec<String>, rusqlite::Error> {
    let mut stmt = conn.prepare(
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
