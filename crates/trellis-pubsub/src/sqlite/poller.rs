//! Waking subscribers: the [`Notifier`] this process's subscribers wait on (woken per topic
//! by this broker's writer after a commit, and all at once for what other processes did),
//! and the **poller thread** that notices other processes' commits, through the doorbell
//! file next to the broker's (inotify on Linux) and, in any case, every `pollInterval`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;

/// How often the poller looks for a first subscriber, to start watching the doorbell.
const FIRST_SUBSCRIBER_CHECK: Duration = Duration::from_millis(5);

/// Wakes subscribers: per topic for what this process did, and all of them for what other
/// processes did (the shared signal does not say which topic).
#[derive(Debug)]
pub(super) struct Notifier {
    all: watch::Sender<u64>,
    topics: Mutex<HashMap<Arc<str>, watch::Sender<u64>>>,
}

impl Notifier {
    pub(super) fn new() -> Self {
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
    pub(super) fn subscribe(
        &self,
        topic: &Arc<str>,
    ) -> (watch::Receiver<u64>, watch::Receiver<u64>) {
        let mut topics = self.topics();
        let sender = topics
            .entry(topic.clone())
            .or_insert_with(|| watch::channel(0).0);
        (sender.subscribe(), self.all.subscribe())
    }

    pub(super) fn wake(&self, topics: &[String]) {
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
pub(super) fn poller(
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
pub(super) fn bell_path(connection: &str) -> Option<std::path::PathBuf> {
    if connection.starts_with("file:") || trellis_sqlite::in_memory(connection) {
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
