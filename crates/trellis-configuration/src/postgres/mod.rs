//! `configuration.postgresql` (alias `configuration.postgres`): Dapr's PostgreSQL
//! configuration store, reading a table the user made and fills:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS configtable (
//!   KEY VARCHAR NOT NULL, VALUE VARCHAR NOT NULL, VERSION VARCHAR NOT NULL, METADATA JSON
//! );
//! ```
//!
//! As in Dapr, the table is not created here (opening fails, naming it, when it is
//! missing), and a key may have several rows: the one with the highest numeric version
//! wins (the first one read, when no version is a number). Metadata: `connectionString`
//! (read as Dapr's pgx reads it, through `trellis_core::postgres`), `table`, `timeout`
//! (default 20 s), `maxConns`, and `notifyChannel` (alias `pgNotifyChannel`).
//!
//! Subscribers hear of changes through `LISTEN` on the channel the component's
//! `notifyChannel` names or, as in Dapr, the subscribe request's metadata
//! `pgNotifyChannel`; the user's trigger sends a `NOTIFY` there for every changed row
//! (docs/configuration-stores.md has one). `listen.rs` keeps one listening connection per
//! channel, whatever the number of subscriptions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use crate::subscription::{Reader, Subscription};
use crate::{ConfigurationError, ConfigurationStore, Item, Metadata};

mod listen;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// PostgreSQL's longest identifier.
const MAX_IDENTIFIER: usize = 63;

/// `configuration.postgresql`. See the module docs.
pub struct PostgresConfigurationStore {
    shared: Arc<Shared>,
    table: String,
    /// The component's `notifyChannel`, which wins over the request's.
    notify_channel: Option<String>,
}

impl std::fmt::Debug for PostgresConfigurationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfigurationStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// What the store and its subscriptions share.
struct Shared {
    pool: Pool,
    /// For the listening connections, which are not pooled.
    config: tokio_postgres::Config,
    get: String,
    all: String,
    timeout: Duration,
    listeners: listen::Listeners,
}

fn pool_error(e: deadpool_postgres::PoolError) -> ConfigurationError {
    match e {
        deadpool_postgres::PoolError::Timeout(_) => {
            ConfigurationError::Backend("timed out connecting to postgresql".into())
        }
        other => ConfigurationError::backend(other),
    }
}

/// Table names as SQL takes them unquoted: lower-case letters, digits and `_`, optionally
/// `schema.table` (Dapr also refuses upper case).
fn valid_table(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    name.len() <= MAX_IDENTIFIER
        && match name.split_once('.') {
            Some((schema, table)) => part(schema) && part(table),
            None => part(name),
        }
}

/// Notify channels as Dapr allows them: lower-case letters, digits, `.`, `/` and `_`.
fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_IDENTIFIER
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '/' | '_'))
}

impl PostgresConfigurationStore {
    /// Connects and checks that the table exists.
    pub async fn open(metadata: &Metadata) -> Result<Self, ConfigurationError> {
        let text = metadata.require(["connectionString", "url"])?;
        let (mut config, pool_max) = trellis_core::postgres::parse_connection_string(text)
            .map_err(|e| ConfigurationError::InvalidRequest(e.to_string()))?;
        let timeout =
            metadata.positive_duration(["timeout", "timeoutInSeconds"], DEFAULT_TIMEOUT)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // A listening connection only reads; keepalives find a peer that vanished.
        config.keepalives_idle(Duration::from_secs(30));
        let table = metadata.require("table")?.to_string();
        if !valid_table(&table) {
            return Err(metadata
                .error(
                    "table",
                    Some(&table),
                    "is not a valid table name (lower-case letters, digits and _, optionally schema.table)",
                )
                .into());
        }
        let notify_channel = metadata
            .get(["notifyChannel", "pgNotifyChannel"])
            .map(str::to_string);
        if let Some(c) = &notify_channel
            && !valid_channel(c)
        {
            return Err(metadata
                .error(
                    "notifyChannel",
                    Some(c),
                    "is not a valid channel name (lower-case letters, digits, '.', '/' and '_', at most 63)",
                )
                .into());
        }
        let max_conns = trellis_core::postgres::max_conns(metadata, pool_max, 4)?;
        let pool = trellis_core::postgres::pool(config.clone(), max_conns, timeout)
            .map_err(ConfigurationError::backend)?;
        let columns = "key::text, value::text, version::text, metadata::text";
        let shared = Arc::new(Shared {
            pool,
            config,
            get: format!("SELECT {columns} FROM {table} WHERE key = ANY($1)"),
            all: format!("SELECT {columns} FROM {table}"),
            timeout,
            listeners: listen::Listeners::default(),
        });
        let exists: bool = shared
            .bounded(async {
                let client = shared.pool.get().await.map_err(pool_error)?;
                let row = client
                    .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                    .await
                    .map_err(ConfigurationError::backend)?;
                Ok(row.get(0))
            })
            .await?;
        if !exists {
            return Err(ConfigurationError::InvalidRequest(format!(
                "postgresql configuration table '{table}' does not exist: create it with the \
                 columns key, value, version and metadata (see docs/configuration-stores.md)"
            )));
        }
        Ok(PostgresConfigurationStore {
            shared,
            table,
            notify_channel,
        })
    }
}

impl Shared {
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, ConfigurationError>>,
    ) -> Result<T, ConfigurationError> {
        trellis_core::postgres::bounded(self.timeout, op, ConfigurationError::Backend).await
    }
}

/// A stored metadata object as Dapr's string map (other JSON values as their text).
fn metadata_map(text: Option<&str>) -> BTreeMap<String, String> {
    let Some(Ok(serde_json::Value::Object(map))) = text.map(serde_json::from_str) else {
        return BTreeMap::new();
    };
    map.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect()
}

/// Dapr's rule for a key with several rows: the highest numeric version wins; a row whose
/// version is no number counts as -1, and the first row read wins a tie.
fn newest(rows: Vec<(String, Item)>) -> BTreeMap<String, Item> {
    let number = |v: &str| v.parse::<i64>().unwrap_or(-1);
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    for (key, item) in rows {
        match items.get(&key) {
            Some(old) if number(&item.version) <= number(&old.version) => {}
            _ => {
                items.insert(key, item);
            }
        }
    }
    items
}

#[async_trait]
impl Reader for Shared {
    async fn read(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = if keys.is_empty() {
                client.query(&self.all, &[]).await
            } else {
                client.query(&self.get, &[&keys]).await
            }
            .map_err(ConfigurationError::backend)?;
            let rows = rows
                .iter()
                .map(|r| {
                    let key: Option<String> = r.get(0);
                    let value: Option<String> = r.get(1);
                    let version: Option<String> = r.get(2);
                    let metadata: Option<String> = r.get(3);
                    let mut item =
                        Item::new(value.unwrap_or_default(), version.unwrap_or_default());
                    item.metadata = metadata_map(metadata.as_deref());
                    (key.unwrap_or_default(), item)
                })
                .collect();
            Ok(newest(rows))
        })
        .await
    }
}

#[async_trait]
impl ConfigurationStore for PostgresConfigurationStore {
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
        metadata: &BTreeMap<String, String>,
    ) -> Result<Subscription, ConfigurationError> {
        let requested = metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("pgNotifyChannel"))
            .map(|(_, v)| v.as_str());
        let Some(channel) = self.notify_channel.as_deref().or(requested) else {
            return Err(ConfigurationError::InvalidRequest(format!(
                "unable to subscribe to \"{}\": set notifyChannel in the component's metadata \
                 or pgNotifyChannel in the request's",
                self.table
            )));
        };
        if !valid_channel(channel) {
            return Err(ConfigurationError::InvalidRequest(format!(
                "invalid notify channel name {channel:?}: lower-case letters, digits, '.', '/' \
                 and '_', at most {MAX_IDENTIFIER}"
            )));
        }
        // Listening before the first read, so that no change slips in between.
        let hints = listen::subscribe(
            &self.shared,
            channel,
            &self.shared.config,
            self.shared.timeout,
        )
        .await?;
        Subscription::start(self.shared.clone(), keys, hints).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_newest_rows() {
        assert!(valid_table("configtable") && valid_table("app.config_1"));
        assert!(!valid_table("Config") && !valid_table("x; drop") && !valid_table("a.b.c"));
        assert!(valid_channel("config") && valid_channel("a.b/c_1"));
        assert!(!valid_channel("") && !valid_channel("Config") && !valid_channel("a b"));
        let rows = vec![
            ("a".to_string(), Item::new("old", "1")),
            ("a".to_string(), Item::new("new", "2")),
            ("a".to_string(), Item::new("text", "v3")),
            ("b".to_string(), Item::new("first", "x")),
            ("b".to_string(), Item::new("second", "y")),
        ];
        let items = newest(rows);
        assert_eq!(items["a"].value, "new");
        assert_eq!(items["b"].value, "first");
        assert_eq!(
            metadata_map(Some(r#"{"team":"ops","n":1}"#)),
            BTreeMap::from([("team".into(), "ops".into()), ("n".into(), "1".into())])
        );
        assert!(metadata_map(None).is_empty() && metadata_map(Some("[1]")).is_empty());
    }
}
