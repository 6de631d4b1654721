//! `lock.postgresql`: leases in a PostgreSQL table (`resource_id` primary key, `owner`,
//! `expires_at`, `fencing_token`), through a `deadpool` connection pool.
//!
//! Each operation is one statement, so the database alone decides who holds a resource:
//! `try_lock` inserts the lease or, on conflict, takes it over only where the old one has
//! expired (`INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now()`), and
//! `unlock` deletes it only where it is the caller's and unexpired. Expiry is judged by
//! the server's clock, never the sidecars'. Fencing tokens come from a sequence, which
//! only grows.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;

use crate::{LockError, LockStore, Metadata, TryLock, UnlockStatus, expiry_ms, validate};

const DEFAULT_TABLE: &str = "trellis_locks";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// `lock.postgresql`. See the module docs.
pub struct PostgresLockStore {
    pool: Pool,
    lock: String,
    unlock: String,
    timeout: Duration,
}

impl std::fmt::Debug for PostgresLockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLockStore").finish_non_exhaustive()
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> LockError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => LockError::backend(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            LockError::Backend("timed out connecting to postgresql".into())
        }
        other => LockError::backend(other),
    }
}

impl PostgresLockStore {
    /// Connects, creates the table and its sequence when missing, and returns the store.
    ///
    /// Metadata: `connectionString` (keyword/value or `postgres://` URL, read as
    /// Dapr's pgx reads it; TLS is not supported yet), `tableName` (default `trellis_locks`), `timeout` (per operation,
    /// default 20s), `maxConns`.
    pub async fn open(metadata: &Metadata) -> Result<Self, LockError> {
        let text = metadata.require(["connectionString", "url"])?;
        let (mut config, pool_max) = trellis_core::postgres::parse_connection_string(text)
            .map_err(|e| LockError::InvalidRequest(e.to_string()))?;
        let timeout = metadata.positive_duration("timeout", DEFAULT_TIMEOUT)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let table = metadata.get("tableName").unwrap_or(DEFAULT_TABLE);
        if !crate::valid_table(table) {
            return Err(metadata
                .error(
                    "tableName",
                    Some(table),
                    "is not a valid table name (letters, digits and _, optionally schema.table)",
                )
                .into());
        }
        let max_conns = trellis_core::postgres::max_conns(metadata, pool_max, 4)?;
        let pool =
            trellis_core::postgres::pool(config, max_conns, timeout).map_err(LockError::backend)?;
        let store = PostgresLockStore {
            pool,
            lock: format!(
                "INSERT INTO {table} AS l (resource_id, owner, expires_at, fencing_token) \
                 VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond', \
                 nextval('{table}_fencing')) \
                 ON CONFLICT (resource_id) DO UPDATE SET owner = excluded.owner, \
                 expires_at = excluded.expires_at, fencing_token = excluded.fencing_token \
                 WHERE l.expires_at <= now() \
                 RETURNING l.fencing_token"
            ),
            // Both parts see the same snapshot: who held the lease, and whether it was
            // the caller's to delete.
            unlock: format!(
                "WITH holder AS (SELECT owner FROM {table} \
                     WHERE resource_id = $1 AND expires_at > now()), \
                 deleted AS (DELETE FROM {table} \
                     WHERE resource_id = $1 AND owner = $2 AND expires_at > now() RETURNING 1) \
                 SELECT (SELECT count(*) FROM deleted), (SELECT owner FROM holder)"
            ),
            timeout,
        };
        store.migrate(table).await?;
        Ok(store)
    }

    async fn migrate(&self, table: &str) -> Result<(), LockError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                 resource_id TEXT NOT NULL PRIMARY KEY,
                 owner TEXT NOT NULL,
                 expires_at TIMESTAMPTZ NOT NULL,
                 fencing_token BIGINT NOT NULL
             );
             CREATE SEQUENCE IF NOT EXISTS {table}_fencing;"
        );
        self.bounded(async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let key = format!("trellis-lock-migrate {table}");
            trellis_core::postgres::create_under_lock(&mut client, &key, &sql)
                .await
                .map_err(LockError::backend)
        })
        .await
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, LockError>>,
    ) -> Result<T, LockError> {
        trellis_core::postgres::bounded(self.timeout, op, LockError::Backend).await
    }
}

#[async_trait]
impl LockStore for PostgresLockStore {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        expiry: Duration,
    ) -> Result<TryLock, LockError> {
        validate(resource, owner, Some(expiry))?;
        // Milliseconds as a float, since `bigint * interval` does not exist.
        #[allow(clippy::cast_precision_loss)]
        let ms = expiry_ms(expiry) as f64;
        let row = self
            .bounded(async {
                let client = self.pool.get().await.map_err(pool_error)?;
                let stmt = client
                    .prepare_cached(&self.lock)
                    .await
                    .map_err(LockError::backend)?;
                client
                    .query_opt(&stmt, &[&resource, &owner, &ms])
                    .await
                    .map_err(LockError::backend)
            })
            .await?;
        Ok(match row {
            Some(row) => {
                let token: i64 = row.try_get(0).map_err(LockError::backend)?;
                TryLock::Acquired {
                    fencing_token: u64::try_from(token).unwrap_or(0),
                }
            }
            None => TryLock::Held,
        })
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        validate(resource, owner, None)?;
        let row = self
            .bounded(async {
                let client = self.pool.get().await.map_err(pool_error)?;
                let stmt = client
                    .prepare_cached(&self.unlock)
                    .await
                    .map_err(LockError::backend)?;
                client
                    .query_one(&stmt, &[&resource, &owner])
                    .await
                    .map_err(LockError::backend)
            })
            .await?;
        let deleted: i64 = row.try_get(0).map_err(LockError::backend)?;
        let holder: Option<String> = row.try_get(1).map_err(LockError::backend)?;
        Ok(if deleted > 0 {
            UnlockStatus::Success
        } else {
            match holder {
                // Held by the caller in the snapshot, yet not deleted: its lease ran out
                // and nobody holds it now.
                Some(h) if h != owner => UnlockStatus::LockBelongsToOthers,
                _ => UnlockStatus::LockDoesNotExist,
            }
        })
    }
}
