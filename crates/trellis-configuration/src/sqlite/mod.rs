//! `configuration.sqlite`: the embedded configuration store, one SQLite file (by default
//! `<data-dir>/configuration.db`) shared by every `trellis` process on the machine.
//!
//! A table of key, value, version and metadata (a JSON object). The version is a number
//! from one counter for the whole table (in its metadata table), so that it grows on every
//! change of any item and a deleted and re-set key never gets an old version back. Apps
//! only read; `trellis config set` writes through [`SqliteConfigurationStore::set`].
//!
//! Writes are closures for the shared group-commit writer ([`trellis_sqlite::calls`], this
//! store's side in `writer.rs`). Reads run on the caller's thread, on a read-only
//! connection of their own ([`trellis_sqlite::inline`]): a few pages of a small table,
//! quicker to read than to hand to the writer thread and be woken with (an in-memory
//! database has only the writer's connection, and reads there). Subscribers hear of changes
//! through the version counter (`changes.rs`): at once for this process's own, within
//! `pollInterval` (default 10 ms) for other processes'.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use trellis_sqlite::StoreSettings;
use trellis_sqlite::calls::{CallFailed, Calls};
use trellis_sqlite::inline::{InlineReads, ReadFailed};
use trellis_sqlite::writer::Options;

use crate::subscription::{Reader, Subscription};
use crate::{ConfigurationError, ConfigurationStore, Item, Metadata};

mod changes;
mod writer;

pub use changes::DEFAULT_POLL_INTERVAL;
use writer::{COUNTER_KEY, ConfigWriter, db_err};

/// `configuration.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteConfigurationStore {
    shared: Arc<Shared>,
    /// Whether the poller thread runs (started by the first subscriber of a file).
    poller: Mutex<bool>,
    settings: StoreSettings,
    poll_interval: Duration,
}

/// What the store and its subscriptions share.
#[derive(Debug)]
struct Shared {
    calls: Calls<ConfigWriter, ConfigurationError>,
    /// Reads on the caller's thread; none for an in-memory database.
    reads: Option<InlineReads<ConfigWriter>>,
    /// Rung whenever the counter moved (see `changes.rs`).
    signal: Arc<watch::Sender<u64>>,
}

impl From<CallFailed> for ConfigurationError {
    fn from(e: CallFailed) -> Self {
        ConfigurationError::Backend(e.0)
    }
}

impl From<ReadFailed> for ConfigurationError {
    fn from(e: ReadFailed) -> Self {
        ConfigurationError::Backend(e.0)
    }
}

impl SqliteConfigurationStore {
    /// Opens (creating when missing) the database and tables `metadata` names and starts
    /// the writer thread, which stops when the store is dropped.
    pub async fn open(metadata: &Metadata) -> Result<Self, ConfigurationError> {
        let cfg = StoreSettings::from_metadata(metadata, "configuration")?;
        let poll_interval = metadata.positive_duration("pollInterval", DEFAULT_POLL_INTERVAL)?;
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg, poll_interval))
            .await
            .map_err(|e| ConfigurationError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(
        cfg: StoreSettings,
        poll_interval: Duration,
    ) -> Result<Self, ConfigurationError> {
        let conn = trellis_sqlite::open_writer(&cfg.connection, cfg.busy_timeout, 8, "WAL")
            .map_err(ConfigurationError::backend)?;
        let t = &cfg.table;
        // In one immediate transaction, so that processes starting at once do not trip
        // over each other.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {t} (
                 key TEXT NOT NULL PRIMARY KEY,
                 value TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 metadata TEXT NOT NULL DEFAULT '{{}}'
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS {t}_metadata (
                 key TEXT NOT NULL PRIMARY KEY,
                 value INTEGER NOT NULL
             );
             INSERT OR IGNORE INTO {t}_metadata (key, value) VALUES ('{COUNTER_KEY}', 0);
             COMMIT;"
        ))
        .map_err(db_err)?;
        let reads = InlineReads::open(&cfg.connection, cfg.busy_timeout, 4, ConfigWriter::new(t))
            .map_err(ConfigurationError::backend)?;
        let options = Options::new("trellis-configuration-writer", cfg.busy_timeout);
        let calls = Calls::start(conn, ConfigWriter::new(t), options, cfg.timeout)
            .map_err(ConfigurationError::backend)?;
        Ok(SqliteConfigurationStore {
            shared: Arc::new(Shared {
                calls,
                reads,
                signal: Arc::new(watch::channel(0).0),
            }),
            poller: Mutex::new(false),
            settings: cfg,
            poll_interval,
        })
    }

    /// Sets `key` to `value` with `metadata`; answers the item's new version, larger than
    /// every version the store handed out before.
    pub async fn set(
        &self,
        key: &str,
        value: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<u64, ConfigurationError> {
        if key.is_empty() {
            return Err(ConfigurationError::InvalidRequest("key is empty".into()));
        }
        let metadata = serde_json::to_string(metadata).map_err(ConfigurationError::backend)?;
        let (key, value) = (key.to_string(), value.to_string());
        let version = self
            .shared
            .calls
            .call(true, move |c, w| w.set(c, &key, &value, &metadata))
            .await?;
        self.shared.ring();
        Ok(version)
    }

    /// Removes `key`; answers whether it was there.
    pub async fn delete(&self, key: &str) -> Result<bool, ConfigurationError> {
        let key = key.to_string();
        let deleted = self
            .shared
            .calls
            .call(true, move |c, w| w.delete(c, &key))
            .await?;
        if deleted {
            self.shared.ring();
        }
        Ok(deleted)
    }

    /// Starts the poller for other processes' changes, once; an in-memory database has no
    /// other process to hear from.
    fn start_poller(&self) -> Result<(), ConfigurationError> {
        let mut started = self.poller.lock().unwrap_or_else(|p| p.into_inner());
        if *started || trellis_sqlite::in_memory(&self.settings.connection) {
            return Ok(());
        }
        let conn = trellis_sqlite::open(&self.settings.connection, self.settings.busy_timeout, 2)
            .map_err(ConfigurationError::backend)?;
        conn.execute_batch("PRAGMA query_only = 1")
            .map_err(db_err)?;
        let sql = format!(
            "SELECT value FROM {}_metadata WHERE key = '{COUNTER_KEY}'",
            self.settings.table
        );
        let signal = Arc::downgrade(&self.shared.signal);
        let interval = self.poll_interval;
        // Read here, before the subscriber's first read, not when the thread gets to run.
        let seen = changes::read_counter(&conn, &sql).ok();
        std::thread::Builder::new()
            .name("trellis-configuration-poller".into())
            .spawn(move || changes::poller(conn, sql, interval, signal, seen))
            .map_err(|e| ConfigurationError::Backend(format!("cannot start the poller: {e}")))?;
        *started = true;
        Ok(())
    }
}

impl Shared {
    /// Tells this process's subscribers at once about its own change.
    fn ring(&self) {
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[async_trait]
impl Reader for Shared {
    async fn read(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        if let Some(reads) = &self.reads {
            return reads.read(|c, w| w.get(c, keys));
        }
        let keys = keys.to_vec();
        self.calls.call(false, move |c, w| w.get(c, &keys)).await
    }
}

#[async_trait]
impl ConfigurationStore for SqliteConfigurationStore {
    async fn get(
        &self,
        keys: &[String],
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        self.shared.read(keys).await
    }

    async fn subscribe(
        &self,
        keys: &[String],
        _metadata: &BTreeMap<String, String>,
    ) -> Result<Subscription, ConfigurationError> {
        self.start_poller()?;
        // Watching before the first read, so that no change slips in between.
        let hints = changes::Changes(self.shared.signal.subscribe());
        Subscription::start(self.shared.clone(), keys, hints).await
    }
}
