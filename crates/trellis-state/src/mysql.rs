//! Dapr's `state.mysql` component on `mysql_async`, for MySQL and MariaDB.
//!
//! The table is Dapr's (`id`, `value JSON`, `isbinary`, `insertDate`, `updateDate`, `eTag`
//! as a UUID string, `expiredate`), so a Trellis and a Dapr sidecar can share it; non-JSON
//! bytes are kept as a JSON string of their base64 with `isbinary` set, as Dapr does. Trellis
//! adds a `contentType` column, and in tables it creates itself keys compare byte for byte
//! (binary, no-pad collation) and expiry times keep microseconds.
//!
//! The schema (`schemaName`) and tables are created when the store is opened unless
//! `createTables` is false. Every table name is qualified with the schema, so the connection
//! string needs no database. Expired rows are never returned and are deleted every
//! `cleanupInterval`.
//!
//! On MariaDB (this project's target) `JSON` is text, so values read back byte for byte;
//! MySQL's binary JSON type would re-serialise them.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Pool, Row, TxOpts, Value};

use crate::remote::{self, AbortOnDrop};
use crate::{
    Capabilities, Concurrency, DeleteRequest, Item, Metadata, Operation, SetRequest, StateError,
    StateStore,
};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_CLEANUP: Duration = Duration::from_secs(3600);
/// MySQL's error for a duplicate primary key: a first write found the key taken.
const ER_DUP_ENTRY: u16 = 1062;

/// A MySQL/MariaDB-backed [`StateStore`].
pub struct MysqlStore {
    inner: Arc<Inner>,
    _cleanup: Option<AbortOnDrop>,
}

struct Inner {
    pool: Pool,
    /// `` `schema`.`table` ``
    table: String,
    timeout: Duration,
    actor: bool,
    sql: Sql,
}

impl std::fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStore")
            .field("table", &self.inner.table)
            .finish_non_exhaustive()
    }
}

struct Sql {
    get: String,
    /// `get` without the key condition, for bulk reads to append an `IN (...)`.
    select_live: String,
    upsert: String,
    insert: String,
    delete_expired_key: String,
    update_etag: String,
    delete: String,
    delete_etag: String,
    cleanup: String,
}

const LIVE: &str = "(expiredate IS NULL OR expiredate > CURRENT_TIMESTAMP(6))";
/// A NULL TTL gives a NULL expiry: interval arithmetic with NULL is NULL.
const EXPIRY: &str = "CURRENT_TIMESTAMP(6) + INTERVAL ? MICROSECOND";

impl Sql {
    fn new(t: &str) -> Self {
        let select = format!(
            "SELECT id, value, isbinary, eTag, \
             CAST(UNIX_TIMESTAMP(expiredate) * 1000000 AS SIGNED), contentType FROM {t}"
        );
        let columns = "(id, value, isbinary, eTag, expiredate, contentType)";
        let values = format!("(?, ?, ?, ?, {EXPIRY}, ?)");
        Sql {
            get: format!("{select} WHERE id = ? AND {LIVE}"),
            select_live: format!("{select} WHERE {LIVE} AND id IN "),
            upsert: format!(
                "INSERT INTO {t} {columns} VALUES {values} ON DUPLICATE KEY UPDATE \
                 value = VALUES(value), isbinary = VALUES(isbinary), eTag = VALUES(eTag), \
                 expiredate = VALUES(expiredate), contentType = VALUES(contentType)"
            ),
            insert: format!("INSERT INTO {t} {columns} VALUES {values}"),
            delete_expired_key: format!(
                "DELETE FROM {t} WHERE id = ? AND expiredate IS NOT NULL \
                 AND expiredate <= CURRENT_TIMESTAMP(6)"
            ),
            update_etag: format!(
                "UPDATE {t} SET value = ?, isbinary = ?, eTag = ?, expiredate = {EXPIRY}, \
                 contentType = ? WHERE id = ? AND eTag = ? AND {LIVE}"
            ),
            delete: format!("DELETE FROM {t} WHERE id = ?"),
            delete_etag: format!("DELETE FROM {t} WHERE id = ? AND eTag = ? AND {LIVE}"),
            cleanup: format!(
                "DELETE FROM {t} WHERE expiredate IS NOT NULL \
                 AND expiredate <= CURRENT_TIMESTAMP(6)"
            ),
        }
    }
}

/// Where to connect, from Dapr's Go DSN or a `mysql://` URL.
#[derive(Debug, PartialEq)]
struct Dsn {
    user: Option<String>,
    password: Option<String>,
    address: Address,
}

#[derive(Debug, PartialEq)]
enum Address {
    Tcp(String, u16),
    Unix(String),
}

fn invalid_dsn(why: impl std::fmt::Display) -> StateError {
    StateError::InvalidRequest(format!("metadata connectionString: {why}"))
}

/// Parses `[user[:password]@][net[(addr)]]/dbname[?param=value&...]` as Go's MySQL driver
/// does (the last `/` ends the address, the last `@` before it ends the credentials), or a
/// `mysql://user:password@host:port/db` URL.
fn parse_dsn(text: &str) -> Result<Dsn, StateError> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("mysql://") {
        return parse_url(rest);
    }
    let slash = text
        .rfind('/')
        .ok_or_else(|| invalid_dsn("expected user:password@tcp(host:port)/ (no / found)"))?;
    let (head, tail) = (&text[..slash], &text[slash + 1..]);
    let (credentials, net) = match head.rfind('@') {
        Some(at) => (Some(&head[..at]), &head[at + 1..]),
        None => (None, head),
    };
    let (user, password) = match credentials {
        None => (None, None),
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
            None => (Some(c.to_string()), None),
        },
    };
    let (protocol, addr) = match net.split_once('(') {
        Some((protocol, rest)) => {
            let addr = rest
                .strip_suffix(')')
                .ok_or_else(|| invalid_dsn(format!("unclosed ( in {net:?}")))?;
            (protocol, addr)
        }
        None => (net, ""),
    };
    let address = match protocol {
        "" | "tcp" => tcp_address(addr)?,
        "unix" => Address::Unix(if addr.is_empty() {
            "/tmp/mysql.sock".to_string()
        } else {
            addr.to_string()
        }),
        other => return Err(invalid_dsn(format!("unsupported network {other:?}"))),
    };
    if let Some((_, query)) = tail.split_once('?') {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "tls" if !matches!(value, "false" | "preferred" | "") => {
                    return Err(invalid_dsn(format!(
                        "tls={value}: tls connections to mysql are not supported yet"
                    )));
                }
                // The Go driver's other settings (allowNativePasswords, parseTime, charset,
                // loc, its dial and read timeouts...) describe its own behaviour; every
                // operation here is bounded by `timeoutInSeconds` instead.
                _ => {}
            }
        }
    }
    Ok(Dsn {
        user,
        password,
        address,
    })
}

fn tcp_address(addr: &str) -> Result<Address, StateError> {
    if addr.is_empty() {
        return Ok(Address::Tcp("127.0.0.1".into(), 3306));
    }
    // `[::1]:3306`, `host:3306` or a bare host.
    let (host, port) = match addr.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') && !port.contains(']') => (
            host,
            port.parse::<u16>()
                .map_err(|_| invalid_dsn(format!("bad port in {addr:?}")))?,
        ),
        _ => (addr, 3306),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(Address::Tcp(host.to_string(), port))
}

fn parse_url(rest: &str) -> Result<Dsn, StateError> {
    let rest = rest.split(['/', '?']).next().unwrap_or_default();
    let (credentials, hostport) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let decode = |s: &str| percent_decode(s).map_err(invalid_dsn);
    let (user, password) = match credentials {
        None => (None, None),
        Some(c) => match c.split_once(':') {
            Some((u, p)) => (Some(decode(u)?), Some(decode(p)?)),
            None => (Some(decode(c)?), None),
        },
    };
    Ok(Dsn {
        user,
        password,
        address: tcp_address(hostport)?,
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not utf-8 once decoded"))
}

struct Settings {
    dsn: Dsn,
    schema: String,
    table: String,
    metadata_table: String,
    timeout: Duration,
    cleanup: Option<Duration>,
    actor: bool,
    create_tables: bool,
}

impl Settings {
    fn parse(md: &Metadata) -> Result<Self, StateError> {
        let conn = md.get(["connectionString"]).ok_or_else(|| {
            StateError::InvalidRequest("metadata connectionString is required".into())
        })?;
        let dsn = parse_dsn(conn)?;
        if md.get(["pemPath", "pemContents"]).is_some() {
            return Err(StateError::InvalidRequest(
                "metadata pemPath: tls connections to mysql are not supported yet".into(),
            ));
        }
        let name = |key: &str, default: &str| -> Result<String, StateError> {
            let value = md.get([key]).unwrap_or(default);
            if remote::valid_identifier(value, false) {
                Ok(value.to_string())
            } else {
                Err(StateError::InvalidRequest(format!(
                    "metadata {key}: {value:?} is not valid (letters, digits and _)"
                )))
            }
        };
        let timeout = md
            .signed_duration(["timeoutInSeconds", "timeout"])?
            .and_then(|t| t.positive())
            .unwrap_or(DEFAULT_TIMEOUT);
        let cleanup = match md.signed_duration(["cleanupInterval", "cleanupIntervalInSeconds"])? {
            None => Some(DEFAULT_CLEANUP),
            Some(c) => c.positive(),
        };
        Ok(Settings {
            dsn,
            schema: name("schemaName", "dapr_state_store")?,
            table: name("tableName", "state")?,
            metadata_table: name("metadataTableName", "dapr_metadata")?,
            timeout,
            cleanup,
            actor: md.bool("actorStateStore", false)?,
            create_tables: md.bool("createTables", true)?,
        })
    }
}

fn backend(e: impl std::fmt::Display) -> StateError {
    StateError::Backend(e.to_string())
}

/// Where a statement runs: a pooled connection or a transaction on one.
trait Session: Queryable + Send {
    fn affected(&self) -> u64;
}

impl Session for Conn {
    fn affected(&self) -> u64 {
        self.affected_rows()
    }
}

impl Session for mysql_async::Transaction<'_> {
    fn affected(&self) -> u64 {
        (**self).affected_rows()
    }
}

impl MysqlStore {
    /// Opens a `state.mysql` store, creating its schema and tables if needed.
    pub async fn open(metadata: &Metadata) -> Result<Self, StateError> {
        let s = Settings::parse(metadata)?;
        let mut opts = OptsBuilder::default()
            .user(s.dsn.user.clone())
            .pass(s.dsn.password.clone())
            // Keep to the address configured: by default the driver switches a loopback
            // TCP connection to the server's unix socket.
            .prefer_socket(false)
            // Expiry times are compared with CURRENT_TIMESTAMP: a fixed zone keeps daylight
            // saving changes out of that. (`setup`, not `init`: the pool resets sessions,
            // and only `setup` runs again after a reset.)
            .setup(vec![
                "SET time_zone = '+00:00'",
                // Every write is conditioned on its own row; repeatable read would add gap
                // locks (and deadlocks between transactions writing new keys) for nothing.
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            ]);
        opts = match &s.dsn.address {
            Address::Tcp(host, port) => opts.ip_or_hostname(host.clone()).tcp_port(*port),
            Address::Unix(path) => opts.socket(Some(path.clone())),
        };
        let pool = Pool::new(opts);
        let inner = Arc::new(Inner {
            table: format!("`{}`.`{}`", s.schema, s.table),
            sql: Sql::new(&format!("`{}`.`{}`", s.schema, s.table)),
            pool,
            timeout: s.timeout,
            actor: s.actor,
        });
        if s.create_tables {
            remote::with_timeout(inner.timeout, inner.migrate(&s)).await?;
        } else {
            inner.ping().await?;
        }
        let cleanup = s.cleanup.map(|every| {
            let weak = Arc::downgrade(&inner);
            AbortOnDrop(tokio::spawn(async move {
                let start = tokio::time::Instant::now() + every;
                let mut ticker = tokio::time::interval_at(start, every);
                loop {
                    ticker.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = inner.cleanup().await {
                        tracing::warn!(table = %inner.table, "mysql state cleanup failed: {e}");
                    }
                }
            }))
        });
        Ok(MysqlStore {
            inner,
            _cleanup: cleanup,
        })
    }

    /// Deletes expired rows now; returns how many. The background task does this every
    /// `cleanupInterval`.
    pub async fn cleanup_expired(&self) -> Result<u64, StateError> {
        self.inner.cleanup().await
    }
}

impl Inner {
    async fn conn(&self) -> Result<Conn, StateError> {
        self.pool.get_conn().await.map_err(backend)
    }

    async fn ping(&self) -> Result<(), StateError> {
        remote::with_timeout(self.timeout, async {
            self.conn().await?.ping().await.map_err(backend)
        })
        .await
    }

    async fn cleanup(&self) -> Result<u64, StateError> {
        remote::with_timeout(self.timeout, async {
            let mut conn = self.conn().await?;
            conn.query_drop(&self.sql.cleanup).await.map_err(backend)?;
            Ok(conn.affected_rows())
        })
        .await
    }

    async fn migrate(&self, s: &Settings) -> Result<(), StateError> {
        let mut conn = self.conn().await?;
        // One migration at a time, so that concurrent sidecars do not race on ALTER TABLE.
        let locked: Option<i64> = conn
            .query_first("SELECT GET_LOCK('trellis-state-migrate', 30)")
            .await
            .map_err(backend)?;
        if locked != Some(1) {
            return Err(StateError::Backend(
                "timed out waiting for another process to create the state tables".into(),
            ));
        }
        let result = self.migrate_locked(&mut conn, s).await;
        let _ = conn
            .query_drop("DO RELEASE_LOCK('trellis-state-migrate')")
            .await;
        result
    }

    async fn migrate_locked(&self, conn: &mut Conn, s: &Settings) -> Result<(), StateError> {
        let version: String = conn
            .query_first("SELECT VERSION()")
            .await
            .map_err(backend)?
            .unwrap_or_default();
        // Keys must compare byte for byte: a PAD SPACE collation would take `a` and `a ` for
        // the same key, a case-insensitive one `a` and `A`.
        let collation = if version.contains("MariaDB") {
            "utf8mb4_nopad_bin"
        } else if version.starts_with('5') {
            "utf8mb4_bin"
        } else {
            "utf8mb4_0900_bin"
        };
        let (schema, table) = (&s.schema, &s.table);
        conn.query_drop(format!(
            "CREATE DATABASE IF NOT EXISTS `{schema}` CHARACTER SET utf8mb4"
        ))
        .await
        .map_err(backend)?;
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS `{schema}`.`{table}` (
                id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL PRIMARY KEY,
                value JSON NOT NULL,
                isbinary BOOLEAN NOT NULL,
                insertDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
                updateDate TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
                eTag VARCHAR(36) NOT NULL,
                expiredate TIMESTAMP(6) NULL,
                contentType VARCHAR(255) NULL,
                INDEX expiredate_idx (expiredate)
            ) CHARACTER SET utf8mb4"
        ))
        .await
        .map_err(backend)?;
        // Tables Dapr created before it had TTLs lack `expiredate`; none of Dapr's have
        // `contentType`.
        let columns: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.columns \
                 WHERE table_schema = ? AND table_name = ?",
                (schema, table),
            )
            .await
            .map_err(backend)?;
        let has = |c: &str| columns.iter().any(|have| have.eq_ignore_ascii_case(c));
        if !has("expiredate") {
            conn.query_drop(format!(
                "ALTER TABLE `{schema}`.`{table}` ADD COLUMN expiredate TIMESTAMP(6) NULL, \
                 ADD INDEX expiredate_idx (expiredate)"
            ))
            .await
            .map_err(backend)?;
        }
        if !has("contentType") {
            conn.query_drop(format!(
                "ALTER TABLE `{schema}`.`{table}` ADD COLUMN contentType VARCHAR(255) NULL"
            ))
            .await
            .map_err(backend)?;
        }
        // Dapr keeps its last-cleanup time here; created so that a Dapr sidecar finds it.
        conn.query_drop(format!(
            "CREATE TABLE IF NOT EXISTS `{schema}`.`{}` \
             (id VARCHAR(255) NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
            s.metadata_table
        ))
        .await
        .map_err(backend)?;
        Ok(())
    }

    fn item_from_row(row: Row) -> Result<(String, Item), StateError> {
        type Columns = (String, Vec<u8>, bool, String, Option<i64>, Option<String>);
        let (key, value, is_binary, etag, expires_micros, content_type): Columns =
            mysql_async::from_row_opt(row).map_err(|e| backend(format!("unexpected row: {e}")))?;
        let value = if is_binary {
            remote::binary_from_json(&value)?
        } else {
            value
        };
        let expires_at = expires_micros
            .and_then(|us| u64::try_from(us).ok())
            .map(|us| UNIX_EPOCH + Duration::from_micros(us));
        Ok((
            key,
            Item {
                value: Bytes::from(value),
                etag,
                expires_at,
                content_type,
            },
        ))
    }

    async fn do_set(&self, q: &mut impl Session, req: &SetRequest) -> Result<(), StateError> {
        if req.key.is_empty() {
            return Err(StateError::InvalidRequest("key must not be empty".into()));
        }
        if let Some(etag) = &req.etag {
            remote::uuid_etag(etag)?;
        }
        let (stored, is_binary) = if req.is_json {
            (req.value.to_vec(), false)
        } else {
            (remote::binary_to_json(&req.value), true)
        };
        let new_etag = uuid::Uuid::new_v4().to_string();
        // Microseconds for `INTERVAL ? MICROSECOND`.
        let ttl: Option<i64> = req.ttl.map(|t| remote::ttl_millis(t).saturating_mul(1000));
        let content_type = req.content_type.clone();
        match (&req.etag, req.concurrency) {
            (Some(etag), _) => {
                let params: Vec<Value> = vec![
                    stored.into(),
                    is_binary.into(),
                    new_etag.into(),
                    ttl.into(),
                    content_type.into(),
                    req.key.as_str().into(),
                    etag.as_str().into(),
                ];
                q.exec_drop(&self.sql.update_etag, params)
                    .await
                    .map_err(backend)?;
                if q.affected() == 0 {
                    return Err(StateError::EtagMismatch);
                }
            }
            (None, concurrency) => {
                let params: Vec<Value> = vec![
                    req.key.as_str().into(),
                    stored.into(),
                    is_binary.into(),
                    new_etag.into(),
                    ttl.into(),
                    content_type.into(),
                ];
                if concurrency == Concurrency::LastWrite {
                    q.exec_drop(&self.sql.upsert, params)
                        .await
                        .map_err(backend)?;
                } else {
                    // A first write may take the place of a row that expired but was not
                    // cleaned up yet; a live row makes the insert fail.
                    q.exec_drop(&self.sql.delete_expired_key, (req.key.as_str(),))
                        .await
                        .map_err(backend)?;
                    match q.exec_drop(&self.sql.insert, params).await {
                        Ok(()) => {}
                        Err(mysql_async::Error::Server(e)) if e.code == ER_DUP_ENTRY => {
                            return Err(StateError::EtagMismatch);
                        }
                        Err(e) => return Err(backend(e)),
                    }
                }
            }
        }
        Ok(())
    }

    async fn do_delete(&self, q: &mut impl Session, req: &DeleteRequest) -> Result<(), StateError> {
        if req.key.is_empty() {
            return Err(StateError::InvalidRequest("key must not be empty".into()));
        }
        match &req.etag {
            None => q
                .exec_drop(&self.sql.delete, (req.key.as_str(),))
                .await
                .map_err(backend),
            Some(etag) => {
                remote::uuid_etag(etag)?;
                q.exec_drop(&self.sql.delete_etag, (req.key.as_str(), etag.as_str()))
                    .await
                    .map_err(backend)?;
                if q.affected() == 0 {
                    return Err(StateError::EtagMismatch);
                }
                Ok(())
            }
        }
    }
}

#[async_trait]
impl StateStore for MysqlStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            etag: true,
            transactional: true,
            query: false,
            ttl: true,
            actor: self.inner.actor,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let mut conn = inner.conn().await?;
            let row: Option<Row> = conn
                .exec_first(&inner.sql.get, (key,))
                .await
                .map_err(backend)?;
            row.map(|r| Inner::item_from_row(r).map(|(_, item)| item))
                .transpose()
        })
        .await
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        if keys.is_empty() {
            return Vec::new();
        }
        let inner = &self.inner;
        let fetched = remote::with_timeout(inner.timeout, async {
            let mut conn = inner.conn().await?;
            let marks = vec!["?"; keys.len()].join(", ");
            let sql = format!("{}({marks})", inner.sql.select_live);
            let rows: Vec<Row> = conn.exec(sql, keys.to_vec()).await.map_err(backend)?;
            Ok(rows)
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
                let mut broken = None;
                for row in rows {
                    match Inner::item_from_row(row) {
                        Ok((key, item)) => {
                            found.insert(key, item);
                        }
                        Err(e) => broken = Some(e.to_string()),
                    }
                }
                keys.iter()
                    .map(|k| {
                        // `get`, not `remove`: a key asked for twice is answered twice.
                        let result = match (found.get(k), &broken) {
                            (Some(item), _) => Ok(Some(item.clone())),
                            // A row that could not be read is reported for every key that
                            // is not otherwise accounted for, rather than as missing.
                            (None, Some(text)) => Err(StateError::Backend(text.clone())),
                            (None, None) => Ok(None),
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
            let mut conn = inner.conn().await?;
            inner.do_set(&mut conn, &req).await
        })
        .await
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let mut conn = inner.conn().await?;
            inner.do_delete(&mut conn, &req).await
        })
        .await
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        let inner = &self.inner;
        remote::with_timeout(inner.timeout, async {
            let mut tx = inner
                .pool
                .start_transaction(TxOpts::default())
                .await
                .map_err(backend)?;
            for op in &ops {
                // An error drops `tx` uncommitted, which rolls everything back.
                match op {
                    Operation::Upsert(req) => inner.do_set(&mut tx, req).await?,
                    Operation::Delete(req) => inner.do_delete(&mut tx, req).await?,
                }
            }
            tx.commit().await.map_err(backend)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_dsns() {
        let d = parse_dsn("root:p@ss:w@rd@tcp(db.local:3307)/?allowNativePasswords=true").unwrap();
        assert_eq!(d.user.as_deref(), Some("root"));
        assert_eq!(d.password.as_deref(), Some("p@ss:w@rd"));
        assert_eq!(d.address, Address::Tcp("db.local".into(), 3307));

        let d = parse_dsn("u@tcp([::1]:3306)/db?timeout=5s&parseTime=true").unwrap();
        assert_eq!(d.address, Address::Tcp("::1".into(), 3306));
        assert_eq!(d.password, None);

        let d = parse_dsn("/").unwrap();
        assert_eq!(d.address, Address::Tcp("127.0.0.1".into(), 3306));
        assert_eq!(d.user, None);

        let d = parse_dsn("u:p@unix(/run/mysqld/mysqld.sock)/").unwrap();
        assert_eq!(d.address, Address::Unix("/run/mysqld/mysqld.sock".into()));

        assert!(parse_dsn("root@tcp(h:3306)/?tls=true").is_err());
        assert!(parse_dsn("root@tcp(h:3306/").is_err());
        assert!(parse_dsn("root@tcp(h:port)/").is_err());
        assert!(parse_dsn("root@tcp(h:3306)").is_err());
        assert!(parse_dsn("root@udp(h:3306)/").is_err());
    }

    #[test]
    fn urls() {
        let d = parse_dsn("mysql://us%40er:p%2Fw@127.0.0.1:3306/test?x=y").unwrap();
        assert_eq!(d.user.as_deref(), Some("us@er"));
        assert_eq!(d.password.as_deref(), Some("p/w"));
        assert_eq!(d.address, Address::Tcp("127.0.0.1".into(), 3306));
        let d = parse_dsn("mysql://localhost").unwrap();
        assert_eq!(d.address, Address::Tcp("localhost".into(), 3306));
    }

    #[test]
    fn settings() {
        let md = |pairs: &[(&str, &str)]| Metadata::from_pairs(pairs.iter().copied());
        let s = Settings::parse(&md(&[("connectionString", "root@tcp(h:1)/")])).unwrap();
        assert_eq!(
            (s.schema.as_str(), s.table.as_str()),
            ("dapr_state_store", "state")
        );
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.cleanup, Some(DEFAULT_CLEANUP));
        let s = Settings::parse(&md(&[
            ("connectionString", "root@tcp(h:1)/"),
            ("timeoutInSeconds", "3"),
            ("cleanupIntervalInSeconds", "0"),
        ]))
        .unwrap();
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(s.cleanup, None);
        for bad in [
            vec![],
            vec![("connectionString", "root@tcp(h:1)/"), ("tableName", "a.b")],
            vec![
                ("connectionString", "root@tcp(h:1)/"),
                ("schemaName", "x`y"),
            ],
            vec![
                ("connectionString", "root@tcp(h:1)/"),
                ("pemPath", "/x.pem"),
            ],
        ] {
            assert!(Settings::parse(&md(&bad)).is_err(), "{bad:?}");
        }
    }
}
