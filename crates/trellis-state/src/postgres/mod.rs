//! Dapr's `state.postgresql` component, versions v1 and v2, on `tokio-postgres` with a
//! `deadpool` connection pool.
//!
//! The tables are Dapr's, so that a Trellis sidecar and a Dapr one can share a database:
//!
//! - **v1** (`tableName`, default `state`): `key text`, `value jsonb`, `isbinary boolean`
//!   (non-JSON bytes are kept as a JSON string of their base64, as Dapr does), `insertdate`,
//!   `updatedate`, `expiredate`. Dapr v1 uses the row's `xmin` as ETag, which two writes in
//!   one transaction share and which wraps around; Trellis adds an `etag uuid` column instead
//!   (regenerated on every write, never reused) and a `contenttype` column. Supports the query
//!   API, translated to SQL over the JSONB value.
//! - **v2** (`tablePrefix` + `state`): `key text`, `value bytea`, `etag uuid`, `created_at`,
//!   `updated_at`, `expires_at`, plus Trellis's `content_type`. No query API, as in Dapr.
//!
//! Missing tables, columns and the expiry index are created when the store is opened (unless
//! `createTables` is false), under an advisory lock so that sidecars starting together do not
//! race. Expired rows are never returned and are deleted every `cleanupInterval`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::query::{Query, QueryResponse, QueryResult};
use crate::remote::{self, AbortOnDrop};
use crate::{
    Capabilities, Concurrency, DeleteRequest, Item, Metadata, Operation, SetRequest, StateError,
    StateStore,
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_CLEANUP: Duration = Duration::from_secs(3600);

/// Which of Dapr's two table layouts (`spec.version` of the component).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A PostgreSQL-backed [`StateStore`].
pub struct PostgresStore {
    inner: Arc<Inner>,
    _cleanup: Option<AbortOnDrop>,
}

struct Inner {
    pool: Pool,
    version: Version,
    table: String,
    metadata_table: String,
    timeout: Duration,
    actor: bool,
    sql: Sql,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("version", &self.inner.version)
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

/// The statements, written once per store for its layout.
struct Sql {
    get: String,
    bulk_get: String,
    upsert: String,
    insert_first: String,
    update_etag: String,
    delete: String,
    delete_etag: String,
    cleanup: String,
    last_cleanup: String,
}

/// The column names that differ between v1 and v2.
struct Columns {
    /// SQL turning the `$2` bytes into the stored value.
    value_in: &'static str,
    /// SQL turning the stored value into bytes.
    value_out: &'static str,
    /// The `isbinary` column (v1 only).
    is_binary: Option<&'static str>,
    /// Further columns a write sets, with the SQL of their new value (v1 only).
    extra: &'static [(&'static str, &'static str)],
    expires: &'static str,
    updated: &'static str,
    content_type: &'static str,
}

impl Version {
    fn columns(self) -> Columns {
        match self {
            Version::V1 => Columns {
                value_in: "convert_from($2, 'UTF8')::jsonb",
                // jsonb re-serialises JSON (key order, spacing, number spelling); the text as
                // written is kept beside it whenever that would change it.
                value_out: "coalesce(rawvalue, convert_to(value::text, 'UTF8'))",
                is_binary: Some("isbinary"),
                extra: &[
                    ("isbinary", "$3"),
                    (
                        "rawvalue",
                        "CASE WHEN $3 OR convert_from($2, 'UTF8')::jsonb::text \
                         = convert_from($2, 'UTF8') THEN NULL ELSE $2 END",
                    ),
                ],
                expires: "expiredate",
                updated: "updatedate",
                content_type: "contenttype",
            },
            Version::V2 => Columns {
                value_in: "$2",
                value_out: "value",
                is_binary: None,
                extra: &[],
                expires: "expires_at",
                updated: "updated_at",
                content_type: "content_type",
            },
        }
    }
}

/// Parameter types of the write statements: key, value, is-binary, TTL in ms, content type,
/// ETag. Declared up front so that every statement takes the same list, used or not.
const WRITE_TYPES: [Type; 6] = [
    Type::TEXT,
    Type::BYTEA,
    Type::BOOL,
    Type::INT8,
    Type::TEXT,
    Type::UUID,
];

impl Sql {
    fn new(version: Version, table: &str, metadata_table: &str) -> Self {
        let c = version.columns();
        let live = format!("({exp} IS NULL OR {exp} >= now())", exp = c.expires);
        let is_binary_out = c.is_binary.unwrap_or("false");
        let select = format!(
            "SELECT key, {value}, {is_binary_out}, etag, {exp}, {ct} FROM {table}",
            value = c.value_out,
            exp = c.expires,
            ct = c.content_type,
        );
        let (mut extra_cols, mut extra_vals, mut extra_set, mut extra_excl) =
            (String::new(), String::new(), String::new(), String::new());
        for (col, expr) in c.extra {
            let _ = write!(extra_cols, ", {col}");
            let _ = write!(extra_vals, ", {expr}");
            let _ = write!(extra_set, ", {col} = {expr}");
            let _ = write!(extra_excl, ", {col} = EXCLUDED.{col}");
        }
        let expiry = "now() + $4 * interval '1 millisecond'";
        let insert = format!(
            "INSERT INTO {table} AS t (key, value{extra_cols}, etag, {exp}, {ct}) \
             VALUES ($1, {value_in}{extra_vals}, gen_random_uuid(), {expiry}, $5) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value{extra_excl}, \
             etag = EXCLUDED.etag, {exp} = EXCLUDED.{exp}, {ct} = EXCLUDED.{ct}, {upd} = now()",
            exp = c.expires,
            ct = c.content_type,
            upd = c.updated,
            value_in = c.value_in,
        );
        Sql {
            get: format!("{select} WHERE key = $1 AND {live}"),
            bulk_get: format!("{select} WHERE key = ANY($1) AND {live}"),
            // A first write may still replace a row that expired but was not cleaned up yet.
            insert_first: format!(
                "{insert} WHERE t.{exp} IS NOT NULL AND t.{exp} < now()",
                exp = c.expires
            ),
            upsert: insert,
            update_etag: format!(
                "UPDATE {table} SET value = {value_in}{extra_set}, etag = gen_random_uuid(), \
                 {exp} = {expiry}, {ct} = $5, {upd} = now() WHERE key = $1 AND etag = $6 AND {live}",
                value_in = c.value_in,
                exp = c.expires,
                ct = c.content_type,
                upd = c.updated,
            ),
            delete: format!("DELETE FROM {table} WHERE key = $1"),
            delete_etag: format!("DELETE FROM {table} WHERE key = $1 AND etag = $2 AND {live}"),
            cleanup: format!(
                "DELETE FROM {table} WHERE {exp} IS NOT NULL AND {exp} < now()",
                exp = c.expires
            ),
            // Only one of the sidecars sharing a table cleans it per interval: the one whose
            // update of the last-cleanup row goes through.
            last_cleanup: format!(
                "INSERT INTO {metadata_table} AS m (key, value) VALUES ($1, now()::text) \
                 ON CONFLICT (key) DO UPDATE SET value = now()::text \
                 WHERE (EXTRACT('epoch' FROM now() - m.value::timestamptz) * 1000)::bigint > $2"
            ),
        }
    }
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(e.to_string())
}

/// Pool errors carry the driver's error; report that text, as every backend error does.
fn pool_error(e: deadpool_postgres::PoolError) -> StateError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => backend(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            StateError::Backend("timed out connecting to postgresql".into())
        }
        other => backend(other),
    }
}

impl PostgresStore {
    /// Opens a `state.postgresql` v1 store (Dapr's default version).
    pub async fn open(metadata: &Metadata) -> Result<Self, StateError> {
        Self::open_version(metadata, Version::V1).await
    }

    /// Opens a `state.postgresql` v2 store.
    pub async fn open_v2(metadata: &Metadata) -> Result<Self, StateError> {
        Self::open_version(metadata, Version::V2).await
    }

    pub async fn open_version(metadata: &Metadata, version: Version) -> Result<Self, StateError> {
        let s = Settings::parse(metadata, version)?;
        let pool =
            trellis_core::postgres::pool(s.config, s.max_conns, s.timeout).map_err(backend)?;
        let inner = Arc::new(Inner {
            sql: Sql::new(version, &s.table, &s.metadata_table),
            pool,
            version,
            table: s.table,
            metadata_table: s.metadata_table,
            timeout: s.timeout,
            actor: s.actor,
        });
        if s.create_tables {
            remote::with_timeout(inner.timeout, inner.migrate()).await?;
        } else {
            inner.ping().await?;
        }
        let cleanup = s.cleanup.map(|every| {
            let weak = Arc::downgrade(&inner);
            AbortOnDrop(tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = inner.cleanup_if_due(every).await {
                        tracing::warn!(table = %inner.table, "postgresql state cleanup failed: {e}");
                    }
                }
            }))
        });
        Ok(PostgresStore {
            inner,
            _cleanup: cleanup,
        })
    }

    /// The state table's name.
    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// Deletes expired rows now; returns how many. The background task does this every
    /// `cleanupInterval`.
    pub async fn cleanup_expired(&self) -> Result<u64, StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let client = inner.pool.get().await.map_err(pool_error)?;
            client
                .execute(inner.sql.cleanup.as_str(), &[])
                .await
                .map_err(backend)
        })
        .await
    }
}

impl Inner {
    async fn ping(&self) -> Result<(), StateError> {
        remote::with_timeout(self.timeout, async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn cleanup_if_due(&self, every: Duration) -> Result<(), StateError> {
        remote::with_timeout(self.timeout, async {
            let client = self.pool.get().await.map_err(pool_error)?;
            // Slightly less than the interval, so that timer jitter does not skip a round.
            let threshold = i64::try_from(every.as_millis() * 95 / 100).unwrap_or(i64::MAX);
            let key = format!("last-cleanup-{}", self.table);
            let due = client
                .execute(self.sql.last_cleanup.as_str(), &[&key, &threshold])
                .await
                .map_err(backend)?;
            if due > 0 {
                let n = client
                    .execute(self.sql.cleanup.as_str(), &[])
                    .await
                    .map_err(backend)?;
                tracing::debug!(table = %self.table, rows = n, "deleted expired state");
            }
            Ok(())
        })
        .await
    }

    fn item_from_row(&self, row: &Row, offset: usize) -> Result<Item, StateError> {
        let value: Vec<u8> = row.try_get(offset).map_err(backend)?;
        let is_binary: bool = row.try_get(offset + 1).map_err(backend)?;
        let etag: uuid::Uuid = row.try_get(offset + 2).map_err(backend)?;
        let expires_at: Option<SystemTime> = row.try_get(offset + 3).map_err(backend)?;
        let content_type: Option<String> = row.try_get(offset + 4).map_err(backend)?;
        let value = if is_binary {
            remote::binary_from_json(&value)?
        } else {
            value
        };
        Ok(Item {
            value: Bytes::from(value),
            etag: etag.to_string(),
            expires_at,
            content_type,
        })
    }

    async fn do_set(
        &self,
        client: &impl GenericClient,
        req: &SetRequest,
    ) -> Result<(), StateError> {
        if req.key.is_empty() {
            return Err(StateError::InvalidRequest("key must not be empty".into()));
        }
        let etag = req.etag.as_deref().map(remote::uuid_etag).transpose()?;
        // v1 keeps JSON in a jsonb column; anything else (and JSON that jsonb refuses: it has
        // no room for NUL characters) goes in as base64, flagged binary.
        let as_json = self.version == Version::V2
            || (req.is_json && !req.value.windows(6).any(|w| w == b"\\u0000"));
        let stored: std::borrow::Cow<'_, [u8]> = if as_json {
            std::borrow::Cow::Borrowed(&req.value)
        } else {
            std::borrow::Cow::Owned(remote::binary_to_json(&req.value))
        };
        let is_binary = !as_json;
        let ttl = req.ttl.map(remote::ttl_millis);
        let content_type = req.content_type.as_deref();
        let sql = match (etag, req.concurrency) {
            (Some(_), _) => &self.sql.update_etag,
            (None, Concurrency::FirstWrite) => &self.sql.insert_first,
            (None, Concurrency::LastWrite) => &self.sql.upsert,
        };
        let statement = client
            .prepare_typed_cached(sql, &WRITE_TYPES)
            .await
            .map_err(backend)?;
        let stored: &[u8] = &stored;
        let params: [&(dyn ToSql + Sync); 6] =
            [&req.key, &stored, &is_binary, &ttl, &content_type, &etag];
        let rows = client.execute(&statement, &params).await.map_err(backend)?;
        if rows == 0 {
            return Err(StateError::EtagMismatch);
        }
        Ok(())
    }

    async fn do_delete(
        &self,
        client: &impl GenericClient,
        req: &DeleteRequest,
    ) -> Result<(), StateError> {
        if req.key.is_empty() {
            return Err(StateError::InvalidRequest("key must not be empty".into()));
        }
        match req.etag.as_deref().map(remote::uuid_etag).transpose()? {
            None => {
                let statement = client
                    .prepare_cached(&self.sql.delete)
                    .await
                    .map_err(backend)?;
                client
                    .execute(&statement, &[&req.key])
                    .await
                    .map_err(backend)?;
            }
            Some(etag) => {
                let statement = client
                    .prepare_cached(&self.sql.delete_etag)
                    .await
                    .map_err(backend)?;
                let rows = client
                    .execute(&statement, &[&req.key, &etag])
                    .await
                    .map_err(backend)?;
                if rows == 0 {
                    return Err(StateError::EtagMismatch);
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            etag: true,
            transactional: true,
            query: self.inner.version == Version::V1,
            ttl: true,
            actor: self.inner.actor,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let client = inner.pool.get().await.map_err(pool_error)?;
            let statement = client
                .prepare_cached(&inner.sql.get)
                .await
                .map_err(backend)?;
            let row = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(backend)?;
            row.map(|r| inner.item_from_row(&r, 1)).transpose()
        })
        .await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        let inner = &self.inner;
        let fetched = remote::with_timeout(inner.timeout, async {
            let client = inner.pool.get().await.map_err(pool_error)?;
            let statement = client
                .prepare_cached(&inner.sql.bulk_get)
                .await
                .map_err(backend)?;
            client.query(&statement, &[&keys]).await.map_err(backend)
        })
        .await;
        match fetched {
            Err(e) => {
                let text = e.to_string();
                keys.iter()
                    .map(|k| (k.clone(), Err(StateError::Backend(text.clone()))))
                    .collect()
            }
            Ok(rows) => {
                let mut found = std::collections::HashMap::with_capacity(rows.len());
                for row in &rows {
                    let key: Result<String, _> = row.try_get(0);
                    if let Ok(key) = key {
                        found.insert(key, inner.item_from_row(row, 1).map_err(|e| e.to_string()));
                    }
                }
                keys.iter()
                    .map(|k| {
                        // `get`, not `remove`: a key asked for twice is answered twice.
                        let result = match found.get(k) {
                            Some(Ok(item)) => Ok(Some(item.clone())),
                            Some(Err(text)) => Err(StateError::Backend(text.clone())),
                            None => Ok(None),
                        };
                        (k.clone(), result)
                    })
                    .collect()
            }
        }
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let client = inner.pool.get().await.map_err(pool_error)?;
            inner.do_set(&client, &req).await
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let client = inner.pool.get().await.map_err(pool_error)?;
            inner.do_delete(&client, &req).await
        })
        .await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let mut client = inner.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            for op in &ops {
                // An error drops `tx`, which rolls everything back.
                match op {
                    Operation::Upsert(req) => inner.do_set(&tx, req).await?,
                    Operation::Delete(req) => inner.do_delete(&tx, req).await?,
                }
            }
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn query(&self, key_prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        if self.inner.version != Version::V1 {
            return Err(StateError::NotSupported("the query API"));
        }
        let inner = &self.inner;
        let offset: i64 =
            match &query.token {
                None => 0,
                Some(t) => t.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    StateError::InvalidRequest(format!("invalid page token {t:?}"))
                })?,
            };
        let mut sql = SqlBuilder::default();
        let prefix = sql.param(key_prefix.to_string());
        let mut text = format!(
            "SELECT key, {value}, etag FROM {t} \
             WHERE left(key, char_length({prefix})) = {prefix} AND NOT isbinary \
             AND (expiredate IS NULL OR expiredate >= now())",
            t = inner.table,
            value = Version::V1.columns().value_out,
        );
        if let Some(filter) = &query.filter {
            let condition = sql.filter(filter)?;
            let _ = write!(text, " AND {condition}");
        }
        text.push_str(" ORDER BY ");
        for s in &query.sort {
            let path = sql.path(&s.key);
            let dir = if s.descending { "DESC" } else { "ASC" };
            let at = format!("(value #> {path})");
            let scalar = format!("(value #>> {path})");
            let _ = write!(
                text,
                // Mirrors `query::compare`: missing first, then by kind (null, bool, number,
                // string, array, object), then by value within the kind, strings bytewise.
                "{at} IS NOT NULL {dir}, \
                 CASE jsonb_typeof({at}) WHEN 'null' THEN 0 WHEN 'boolean' THEN 1 \
                 WHEN 'number' THEN 2 WHEN 'string' THEN 3 WHEN 'array' THEN 4 ELSE 5 END {dir}, \
                 CASE WHEN jsonb_typeof({at}) = 'boolean' THEN {scalar}::boolean END {dir}, \
                 CASE WHEN jsonb_typeof({at}) = 'number' THEN {scalar}::numeric END {dir}, \
                 CASE WHEN jsonb_typeof({at}) = 'string' THEN {scalar} COLLATE \"C\" END {dir}, "
            );
        }
        // The key makes the order total, so that pages neither repeat nor skip rows.
        text.push_str("key COLLATE \"C\"");
        let _ = write!(text, " OFFSET {}", sql.param(offset));
        if let Some(limit) = query.limit {
            // One more than asked tells whether another page follows.
            let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
            let _ = write!(text, " LIMIT {}", sql.param(fetch));
        }

        let rows = remote::with_timeout(inner.timeout, async {
            let client = inner.pool.get().await.map_err(pool_error)?;
            let params: Vec<&(dyn ToSql + Sync)> = sql
                .params
                .iter()
                .map(|p| &**p as &(dyn ToSql + Sync))
                .collect();
            client.query(&text, &params).await.map_err(backend)
        })
        .await?;

        let mut results = Vec::with_capacity(rows.len());
        for row in &rows {
            let etag: uuid::Uuid = row.try_get(2).map_err(backend)?;
            results.push(QueryResult {
                key: row.try_get(0).map_err(backend)?,
                data: Bytes::from(row.try_get::<_, Vec<u8>>(1).map_err(backend)?),
                etag: Some(etag.to_string()),
            });
        }
        let mut token = None;
        if let Some(limit) = query.limit.filter(|limit| results.len() > *limit) {
            results.truncate(limit);
            token = Some((offset + i64::try_from(limit).unwrap_or(i64::MAX)).to_string());
        }
        Ok(QueryResponse { results, token })
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.inner.ping().await
    }
}

mod schema;
mod settings;
mod sql_builder;

use settings::Settings;
use sql_builder::SqlBuilder;
