//! Hearing of changes for the embedded store's subscribers. Every change of any item moves
//! the table's version counter, so a change is a counter that differs from the last one
//! seen: this process's own `set`s and `delete`s say so at once, and the **poller thread**
//! notices other processes' (`trellis config set` is one) by reading the counter every
//! `pollInterval` on a connection of its own, for as long as anyone is subscribed. A read
//! of one row in WAL mode never waits for a writer, so polling costs next to nothing.

use std::sync::Weak;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::watch;

use crate::subscription::{Hint, Watch};

/// The default `pollInterval`: how soon another process's change reaches a subscriber.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// One subscriber's view of the change signal.
pub(super) struct Changes(pub(super) watch::Receiver<u64>);

#[async_trait]
impl Watch for Changes {
    async fn next(&mut self) -> Option<Hint> {
        // The counter does not say which items changed.
        self.0.changed().await.ok().map(|()| Hint::Everything)
    }
}

/// The counter as `conn` reads it now (an error before the first change).
pub(super) fn read_counter(conn: &Connection, counter_sql: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached(counter_sql)
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
}

/// Rings `signal` when the counter the poller reads moves from `seen`, which the caller read
/// before its subscriber's first read: a counter first read by the poller thread, whenever
/// that thread got to run, could already include a change that first read missed. Ends
/// when the store is gone (`signal` cannot be upgraded any more).
pub(super) fn poller(
    conn: Connection,
    counter_sql: String,
    interval: Duration,
    signal: Weak<watch::Sender<u64>>,
    mut seen: Option<i64>,
) {
    loop {
        std::thread::sleep(interval);
        let Some(signal) = signal.upgrade() else {
            return;
        };
        if signal.receiver_count() == 0 {
            continue;
        }
        match read_counter(&conn, &counter_sql) {
            Ok(v) => {
                if seen != Some(v) {
                    seen = Some(v);
                    signal.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
            Err(e) => tracing::debug!(error = %e, "sqlite configuration: poll failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A change made between the caller's read of the counter and the poller's first poll
    /// is heard.
    #[test]
    fn a_change_before_the_first_poll_is_heard() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE m (value INTEGER); INSERT INTO m VALUES (1);")
            .unwrap();
        let seen = read_counter(&conn, "SELECT value FROM m").ok();
        assert_eq!(seen, Some(1));
        conn.execute_batch("UPDATE m SET value = 2").unwrap();
        let signal = Arc::new(watch::channel(0u64).0);
        let mut heard = signal.subscribe();
        let weak = Arc::downgrade(&signal);
        let poller = std::thread::spawn(move || {
            poller(
                conn,
                "SELECT value FROM m".into(),
                Duration::from_millis(1),
                weak,
                seen,
            )
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), heard.changed())
                .await
                .expect("the change must be heard")
                .unwrap();
        });
        drop((signal, heard));
        poller.join().unwrap();
    }
}
