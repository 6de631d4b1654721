//! SQLite plumbing shared by the embedded backends (the state store in `trellis-state`, the
//! broker in `trellis-pubsub`): each keeps one file that several `trellis` processes write
//! at once, and each writes through the same machinery.
//!
//! - [`writer`]: the group-commit writer thread, the one way an embedded backend writes
//!   (concurrent writers share one fsync; answers go out only after the commit).
//! - [`calls`]: closures as writer jobs, for stores with no batching of their own.
//! - [`inline`]: small reads on the caller's own thread, without a hop to another thread.
//! - [`open`] and [`open_writer`]: opening a backend's database, the same way for all.
//! - SQLite's own busy handler sleeps 1, 2, 5, 10 … up to 100 ms between tries. Against a
//!   process that commits back to back (group commits, each a few ms of fsync) such a
//!   waiter almost never finds the lock free and starves. [`wait_for_locks`] installs a
//!   handler that tries every 100 µs instead (with the embedded broker, bulk delivery
//!   while another process published went from ~7k to ~56k msgs/s, together with larger
//!   fetches; see docs/benchmarks.md).
//! - Two processes switching a new file's journal mode at once can get SQLITE_BUSY without
//!   the busy handler being asked; [`set_journal_mode`] retries.

pub mod calls;
pub mod inline;
mod open;
pub mod settings;
pub mod writer;

pub use settings::{StoreSettings, valid_table};

pub use open::{OpenError, in_memory, open, open_writer};

use std::cell::Cell;
use std::time::{Duration, Instant};

use rusqlite::Connection;

thread_local! {
    /// How long a connection used on this thread waits for another process's lock.
    static BUSY_BUDGET: Cell<Duration> = const { Cell::new(Duration::from_secs(5)) };
}

/// Makes `conn` wait up to `budget` for other processes' locks, in short steady tries.
/// The budget applies on this thread; a thread that uses the connection later calls
/// [`set_busy_budget`] (the handler is a plain function, so it cannot carry the value).
pub fn wait_for_locks(conn: &mut Connection, budget: Duration) -> rusqlite::Result<()> {
    set_busy_budget(budget);
    conn.busy_handler(Some(busy_wait))
}

/// The busy budget of connections used on this thread.
pub fn set_busy_budget(budget: Duration) {
    BUSY_BUDGET.set(budget);
}

fn busy_wait(tries: i32) -> bool {
    const STEP: Duration = Duration::from_micros(100);
    let waited = STEP.saturating_mul(u32::try_from(tries).unwrap_or(u32::MAX));
    if waited >= BUSY_BUDGET.get() {
        return false;
    }
    std::thread::sleep(STEP);
    true
}

/// Sets the journal mode and returns the mode SQLite reports, retrying SQLITE_BUSY (see
/// the crate docs) until `budget` runs out.
pub fn set_journal_mode(
    conn: &Connection,
    mode: &str,
    budget: Duration,
) -> rusqlite::Result<String> {
    let deadline = Instant::now() + budget;
    loop {
        match conn.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_the_tries() {
        set_busy_budget(Duration::from_micros(250));
        assert!(busy_wait(0));
        assert!(busy_wait(2));
        assert!(!busy_wait(3));
        set_busy_budget(Duration::from_secs(5));
    }
}
