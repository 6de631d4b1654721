//! The baselines of the `state` bench: the bench process talking to the
//! backend itself, issuing what the trellis store issues for one save or one
//! get, with no sidecar in between.
//!
//! - Redis: the store's SET script by `EVALSHA` (keys as `{data, version}`
//!   hashes), and `MULTI HGETALL PTTL EXEC` for a get, on one multiplexed
//!   RESP3 connection shared by every client, as the store has.
//! - PostgreSQL: the store's v1 upsert and select as prepared statements, on
//!   one connection per client (the store goes through a pool instead).
//! - SQLite: `trellis_state::sqlite::SqliteStore` itself, in this process.
//!
//! The Redis path runs the store's own `SET_SCRIPT`. The SQL is a copy of what
//! `crates/trellis-state/src/postgres/` builds for a v1 table (the store assembles
//! it from its options, so it is not a constant to share); keep them in step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client as RedisClient, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, Script};
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, Statement};
use trellis_state::sqlite::SqliteStore;
use trellis_state::{Metadata, SetRequest, StateStore};

use crate::load::Client;

/// What a client does with each operation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Save,
    Get,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Save => "save",
            Op::Get => "get",
        }
    }
}

/// Keys as stored, and the value every save writes.
#[derive(Clone)]
pub struct Data {
    pub keys: Arc<Vec<String>>,
    pub value: Bytes,
}

impl Data {
    fn key(&self, seq: u64) -> &str {
        &self.keys[(seq % self.keys.len() as u64) as usize]
    }
}

// ---- Redis --------------------------------------------------------------------------------

/// Connects as the store does (RESP3, connection manager), within `limit`.
pub async fn redis_connect(host_port: &str, limit: Duration) -> Result<ConnectionManager> {
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse::<u16>().context("redis port")?),
        None => (host_port.to_owned(), 6379),
    };
    let info = ConnectionAddr::Tcp(host, port)
        .into_connection_info()?
        .set_redis_settings(
            redis::RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3),
        );
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(1);
    let client = RedisClient::open(info)?;
    let mut conn = tokio::time::timeout(limit, ConnectionManager::new_with_config(client, config))
        .await
        .context("timed out")??;
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    Ok(conn)
}

/// The server's `redis_version`, for the report.
pub async fn redis_version(conn: &mut ConnectionManager) -> String {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map_or_else(|| "unknown".into(), |v| v.trim().to_owned())
}

/// Deletes every key matching `pattern` (SCAN + DEL); returns how many.
pub async fn redis_delete_matching(conn: &mut ConnectionManager, pattern: &str) -> Result<u64> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("DEL")
                .arg(&keys)
                .query_async::<u64>(conn)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

pub struct RedisDirect {
    conn: ConnectionManager,
    script: Arc<Script>,
    data: Data,
    op: Op,
}

impl RedisDirect {
    /// Clients share `conn` (a multiplexed connection), like the store's callers.
    pub fn new(conn: &ConnectionManager, data: &Data, op: Op) -> Self {
        Self {
            conn: conn.clone(),
            script: Arc::new(Script::new(trellis_state::redis::SET_SCRIPT)),
            data: data.clone(),
            op,
        }
    }
}

impl Client for RedisDirect {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let key = self.data.key(seq);
        match self.op {
            Op::Save => {
                // etag "", data, first-write "0", ttl "0", no content type.
                let mut call = self.script.key(key);
                call.arg("")
                    .arg(&self.data.value[..])
                    .arg("0")
                    .arg("0")
                    .arg("0")
                    .arg("");
                let written: i64 = call.invoke_async(&mut self.conn).await?;
                if written != 1 {
                    bail!("set script returned {written}");
                }
            }
            Op::Get => {
                let (mut fields, _pttl): (HashMap<String, Vec<u8>>, i64) = redis::pipe()
                    .atomic()
                    .hgetall(key)
                    .pttl(key)
                    .query_async(&mut self.conn)
                    .await?;
                check_len(fields.remove("data").map(|d| d.len()), &self.data)?;
            }
        }
        Ok(())
    }
}

fn check_len(got: Option<usize>, data: &Data) -> Result<()> {
    match got {
        None => bail!("key not found"),
        Some(n) if n != data.value.len() => {
            bail!("value of {n} bytes, expected {}", data.value.len())
        }
        Some(_) => Ok(()),
    }
}

// ---- PostgreSQL ---------------------------------------------------------------------------

/// Connects once (for setup, clean-up and the reachability check).
pub async fn pg_connect(conn_str: &str, limit: Duration) -> Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = conn_str.parse().context("connection string")?;
    config.connect_timeout(limit);
    let (client, conn) = tokio::time::timeout(limit, config.connect(NoTls))
        .await
        .context("timed out")??;
    tokio::spawn(async move {
        // Ends when the client is dropped; errors surface on the next query.
        let _ = conn.await;
    });
    Ok(client)
}

/// The v1 table, trigger and expiry index the store's `migrate` creates for
/// a new table (the trigger function gets a per-table name here, so the
/// bench never replaces the store's shared one).
pub fn pg_create_v1(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
            key text NOT NULL PRIMARY KEY,
            value jsonb NOT NULL,
            isbinary boolean NOT NULL,
            insertdate timestamp with time zone NOT NULL DEFAULT now(),
            updatedate timestamp with time zone NULL,
            expiredate timestamp with time zone NULL,
            etag uuid NOT NULL DEFAULT gen_random_uuid(),
            contenttype text NULL,
            rawvalue bytea NULL
        );
        CREATE FUNCTION {table}_touch() RETURNS trigger AS $$
         BEGIN
           IF NEW.etag IS NOT DISTINCT FROM OLD.etag THEN
             NEW.etag := gen_random_uuid();
           END IF;
           IF NEW.rawvalue IS NOT DISTINCT FROM OLD.rawvalue
              AND NEW.value IS DISTINCT FROM OLD.value THEN
             NEW.rawvalue := NULL;
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql;
        CREATE TRIGGER trellis_state_touch BEFORE UPDATE ON {table}
         FOR EACH ROW EXECUTE FUNCTION {table}_touch();
        CREATE INDEX {table}_expiredate_idx ON {table} (expiredate);"
    )
}

/// Drops what [`pg_create_v1`] made (and the sidecar's table of the same run).
pub fn pg_drop(tables: &[&str], direct_table: &str) -> String {
    let mut sql = String::new();
    for t in tables {
        sql.push_str(&format!("DROP TABLE IF EXISTS {t};"));
    }
    sql.push_str(&format!("DROP FUNCTION IF EXISTS {direct_table}_touch();"));
    sql
}

/// The store's v1 `upsert` (last-write save without ETag).
fn pg_upsert(table: &str) -> String {
    format!(
        "INSERT INTO {table} AS t (key, value, isbinary, rawvalue, etag, expiredate, contenttype) \
         VALUES ($1, convert_from($2, 'UTF8')::jsonb, $3, \
         CASE WHEN $3 OR convert_from($2, 'UTF8')::jsonb::text = convert_from($2, 'UTF8') THEN NULL ELSE $2 END, \
         gen_random_uuid(), now() + $4 * interval '1 millisecond', $5) \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, isbinary = EXCLUDED.isbinary, \
         rawvalue = EXCLUDED.rawvalue, etag = EXCLUDED.etag, expiredate = EXCLUDED.expiredate, \
         contenttype = EXCLUDED.contenttype, updatedate = now()"
    )
}

/// The store's v1 `get`.
fn pg_get(table: &str) -> String {
    format!(
        "SELECT key, coalesce(rawvalue, convert_to(value::text, 'UTF8')), isbinary, etag, \
         expiredate, contenttype FROM {table} \
         WHERE key = $1 AND (expiredate IS NULL OR expiredate >= now())"
    )
}

pub struct PgDirect {
    client: tokio_postgres::Client,
    statement: Statement,
    data: Data,
    op: Op,
}

impl PgDirect {
    /// One connection of its own, with the statement prepared up front (the
    /// store prepares once per pooled connection and caches it).
    pub async fn connect(conn_str: &str, table: &str, data: &Data, op: Op) -> Result<Self> {
        let client = pg_connect(conn_str, Duration::from_secs(5)).await?;
        let statement = match op {
            // The store declares a sixth parameter (the ETag, unused by this
            // statement); leaving it out changes nothing on the server.
            Op::Save => {
                client
                    .prepare_typed(
                        &pg_upsert(table),
                        &[Type::TEXT, Type::BYTEA, Type::BOOL, Type::INT8, Type::TEXT],
                    )
                    .await?
            }
            Op::Get => client.prepare(&pg_get(table)).await?,
        };
        Ok(Self {
            client,
            statement,
            data: data.clone(),
            op,
        })
    }
}

impl Client for PgDirect {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let key = self.data.key(seq);
        match self.op {
            Op::Save => {
                let value: &[u8] = &self.data.value;
                let rows = self
                    .client
                    .execute(
                        &self.statement,
                        &[&key, &value, &false, &None::<i64>, &None::<&str>],
                    )
                    .await?;
                if rows != 1 {
                    bail!("upsert changed {rows} rows");
                }
            }
            Op::Get => {
                let row = self.client.query_opt(&self.statement, &[&key]).await?;
                let len = match row {
                    None => None,
                    Some(row) => {
                        let value: Vec<u8> = row.try_get(1)?;
                        let _binary: bool = row.try_get(2)?;
                        let _expires: Option<SystemTime> = row.try_get(4)?;
                        let _content_type: Option<String> = row.try_get(5)?;
                        Some(value.len())
                    }
                };
                check_len(len, &self.data)?;
            }
        }
        Ok(())
    }
}

// ---- SQLite (the embedded store, in process) ----------------------------------------------

/// Opens the embedded store on `path` with the metadata the sidecar gives
/// its built-in `statestore` (just the file), i.e. its defaults.
pub async fn sqlite_open(path: &std::path::Path) -> Result<Arc<SqliteStore>> {
    let md = Metadata::from_pairs([("connectionString", path.display().to_string())]);
    let store = SqliteStore::open(&md)
        .await
        .context("opening the sqlite store")?;
    Ok(Arc::new(store))
}

pub struct SqliteDirect {
    store: Arc<SqliteStore>,
    data: Data,
    op: Op,
}

impl SqliteDirect {
    pub fn new(store: &Arc<SqliteStore>, data: &Data, op: Op) -> Self {
        Self {
            store: Arc::clone(store),
            data: data.clone(),
            op,
        }
    }
}

impl Client for SqliteDirect {
    async fn call(&mut self, seq: u64) -> Result<()> {
        let key = self.data.key(seq);
        match self.op {
            Op::Save => {
                self.store
                    .set(SetRequest::new(key, self.data.value.clone()))
                    .await?;
            }
            Op::Get => {
                let item = self.store.get(key).await?;
                check_len(item.map(|i| i.value.len()), &self.data)?;
            }
        }
        Ok(())
    }
}

// ---- dispatch -----------------------------------------------------------------------------

/// A backend reached directly, from which each phase takes fresh clients.
pub enum Backend {
    /// One multiplexed connection, cloned into every client.
    Redis(ConnectionManager),
    /// One new connection per client.
    Postgres { conn_str: String, table: String },
    /// The store, shared by every client.
    Sqlite(Arc<SqliteStore>),
}

impl Backend {
    /// Which incarnation of the server this is (Redis `run_id`, PostgreSQL
    /// postmaster start time): other work on a shared machine (tests that
    /// stop and start the servers) can restart it under a running bench, and
    /// a restart empties Redis and breaks connections.
    pub async fn incarnation(&self) -> Option<String> {
        match self {
            Backend::Redis(conn) => {
                let mut conn = conn.clone();
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                info.lines()
                    .find_map(|l| l.strip_prefix("run_id:"))
                    .map(|v| v.trim().to_owned())
            }
            Backend::Postgres { conn_str, .. } => {
                let client = pg_connect(conn_str, Duration::from_secs(3)).await.ok()?;
                let row = client
                    .query_one("SELECT pg_postmaster_start_time()::text", &[])
                    .await
                    .ok()?;
                row.try_get(0).ok()
            }
            Backend::Sqlite(_) => None,
        }
    }

    pub async fn clients(&self, data: &Data, op: Op, n: usize) -> Result<Vec<Direct>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(match self {
                Backend::Redis(conn) => Direct::Redis(RedisDirect::new(conn, data, op)),
                Backend::Postgres { conn_str, table } => {
                    Direct::Postgres(PgDirect::connect(conn_str, table, data, op).await?)
                }
                Backend::Sqlite(store) => Direct::Sqlite(SqliteDirect::new(store, data, op)),
            });
        }
        Ok(out)
    }
}

pub enum Direct {
    Redis(RedisDirect),
    Postgres(PgDirect),
    Sqlite(SqliteDirect),
}

impl Client for Direct {
    async fn call(&mut self, seq: u64) -> Result<()> {
        match self {
            Direct::Redis(c) => c.call(seq).await,
            Direct::Postgres(c) => c.call(seq).await,
            Direct::Sqlite(c) => c.call(seq).await,
        }
    }
}
