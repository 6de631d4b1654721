//! `configuration.redis`: Dapr's Redis configuration store. Each item is one string key,
//! named as the item is, holding `value||version` (the `||version` part is optional; a
//! value without it has an empty version), as Dapr reads it. The store only reads; items
//! are written with any Redis client (`SET orders.limit "10||1"`).
//!
//! Reading every item (an empty key list) walks the keyspace with `SCAN` and reads the
//! string keys it finds, as Dapr does; keys of other types are skipped.
//!
//! Subscribers hear of changes through Redis keyspace notifications (`keyspace.rs`), as
//! with Dapr: each subscription listens on `__keyspace@<redisDB>__:<key>` for its keys (or
//! the pattern `...:*` for every key) on a connection of its own, and the store turns the
//! notifications on (`notify-keyspace-events`) when the server allows it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use trellis_core::redis::RedisSettings;

use crate::subscription::{Reader, Subscription};
use crate::{ConfigurationError, ConfigurationStore, Item, Metadata};

mod keyspace;

/// `SCAN`'s page size when reading every item.
const SCAN_COUNT: usize = 1000;

/// `configuration.redis`. See the module docs.
pub struct RedisConfigurationStore {
    reads: Arc<Reads>,
    /// For the subscriptions' own connections.
    client: redis::Client,
    settings: RedisSettings,
}

/// What the store and its subscriptions share: reading items.
struct Reads {
    conn: ConnectionManager,
    host: String,
    /// The bound on one call: connecting plus answering.
    timeout: Duration,
}

impl std::fmt::Debug for RedisConfigurationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfigurationStore")
            .field("host", &self.reads.host)
            .finish_non_exhaustive()
    }
}

/// Splits a stored `value||version` as Dapr does: the value is what comes before the first
/// `||`, the version what comes between it and the next one (anything after is dropped).
pub fn parse_value(raw: &str) -> Item {
    let mut parts = raw.split("||");
    let value = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    Item::new(value, version)
}

impl RedisConfigurationStore {
    /// Connects to `redisHost`; fails when Redis does not answer.
    pub async fn open(metadata: &Metadata) -> Result<Self, ConfigurationError> {
        let settings = RedisSettings::from_metadata(metadata)?;
        let connected = settings
            .connect()
            .await
            .map_err(ConfigurationError::backend)?;
        Ok(RedisConfigurationStore {
            reads: Arc::new(Reads {
                conn: connected.conn,
                host: settings.address(),
                timeout: settings.dial_timeout + settings.read_timeout,
            }),
            client: connected.client,
            settings,
        })
    }
}

impl Reads {
    async fn fetch(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = if keys.is_empty() {
            let mut all = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .arg("TYPE")
                    .arg("string")
                    .query_async(&mut conn)
                    .await?;
                all.extend(page);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            all.sort();
            all.dedup();
            all
        } else {
            keys.to_vec()
        };
        let mut items = BTreeMap::new();
        if keys.is_empty() {
            return Ok(items);
        }
        // MGET answers nil for a missing key and for a key that is not a string.
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        for (key, value) in keys.into_iter().zip(values) {
            if let Some(raw) = value {
                items.insert(key, parse_value(&raw));
            }
        }
        Ok(items)
    }
}

#[async_trait]
impl ConfigurationStore for RedisConfigurationStore {
    async fn get(
        &self,
        keys: &[String],
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        self.reads.read(keys).await
    }

    async fn subscribe(
        &self,
        keys: &[String],
        _metadata: &BTreeMap<String, String>,
    ) -> Result<Subscription, ConfigurationError> {
        // Listening before the first read, so that no change slips in between.
        let hints =
            keyspace::Keyspace::start(&self.client, &self.reads.conn, &self.settings, keys).await?;
        Subscription::start(self.reads.clone(), keys, hints).await
    }
}

#[async_trait]
impl Reader for Reads {
    async fn read(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        let call = || self.fetch(keys);
        match tokio::time::timeout(self.timeout, trellis_core::redis::retry_refused(call)).await {
            Ok(res) => res.map_err(ConfigurationError::backend),
            Err(_) => Err(ConfigurationError::Backend(format!(
                "redis at {} did not answer within {:?}",
                self.host, self.timeout
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_value;
    use crate::Item;

    #[test]
    fn values_split_as_dapr_splits_them() {
        assert_eq!(parse_value("10||3"), Item::new("10", "3"));
        assert_eq!(parse_value("plain"), Item::new("plain", ""));
        assert_eq!(parse_value("a||b||7"), Item::new("a", "b"));
        assert_eq!(parse_value("a||"), Item::new("a", ""));
        assert_eq!(parse_value(""), Item::new("", ""));
    }
}
