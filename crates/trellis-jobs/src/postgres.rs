//! `scheduler.postgresql`: the job store in a PostgreSQL database shared by the sidecars of
//! one or several apps, on any number of machines.
//!
//! One table (`tableName`, default `trellis_jobs`), created when the store opens (under an
//! advisory lock, so sidecars starting together do not race), with the embedded store's
//! columns. Leasing is one statement that takes due rows `FOR UPDATE SKIP LOCKED`, so
//! replicas asking at once get disjoint jobs without waiting for each other; settling is
//! one statement gated on the lease's owner and the job's version. Times are the
//! sidecars' clocks in milliseconds.
//!
//! Metadata: `connectionString` (required; keyword/value or `postgres://` URL, read as
//! Dapr's pgx reads it), `tableName`, `timeout` (per operation, default 20s), `maxConns`
//! (default 10, or the connection string's `pool_max_conns`).

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Row;

use crate::schedule::Timing;
use crate::store::{COLUMNS, JobStore, Settle, StoredJob, new_version, policy_of, policy_text};
use crate::{JobData, JobError, JobSpec, Metadata, Millis};

/// The table's name when the metadata names none.
pub const DEFAULT_TABLE: &str = "trellis_jobs";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_CONNS: usize = 10;

struct Sql {
    create: String,
    insert: String,
    upsert: String,
    get: String,
    delete: String,
    delete_prefix: String,
    list: String,
    lease: String,
    settle_next: String,
    settle_finish: String,
    next_due: String,
}

impl Sql {
    fn new(t: &str) -> Sql {
        let values = "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, 0, $13)";
        Sql {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                     app TEXT NOT NULL,
                     name TEXT NOT NULL,
                     schedule TEXT,
                     repeats BIGINT,
                     due_time TEXT,
                     ttl TEXT,
                     data_type TEXT,
                     data BYTEA,
                     policy TEXT NOT NULL,
                     expires_at BIGINT,
                     tick_at BIGINT NOT NULL,
                     due_at BIGINT NOT NULL,
                     count BIGINT NOT NULL,
                     attempts BIGINT NOT NULL,
                     version BIGINT NOT NULL,
                     lease_owner TEXT,
                     PRIMARY KEY (app, name));
                 CREATE INDEX IF NOT EXISTS {t}_due ON {t} (app, due_at);"
            ),
            insert: format!(
                "INSERT INTO {t} ({COLUMNS}) VALUES {values} ON CONFLICT (app, name) DO NOTHING"
            ),
            upsert: format!(
                "INSERT INTO {t} ({COLUMNS}) VALUES {values} ON CONFLICT (app, name) DO UPDATE SET \
                 schedule = excluded.schedule, repeats = excluded.repeats, due_time = excluded.due_time, \
                 ttl = excluded.ttl, data_type = excluded.data_type, data = excluded.data, \
                 policy = excluded.policy, expires_at = excluded.expires_at, tick_at = excluded.tick_at, \
                 due_at = excluded.due_at, count = 0, attempts = 0, version = excluded.version, \
                 lease_owner = NULL"
            ),
            get: format!("SELECT {COLUMNS} FROM {t} WHERE app = $1 AND name = $2"),
            delete: format!("DELETE FROM {t} WHERE app = $1 AND name = $2"),
            delete_prefix: format!(
                "DELETE FROM {t} WHERE app = $1 AND left(name, length($2)) = $2"
            ),
            list: format!("SELECT {COLUMNS} FROM {t} WHERE app = $1 ORDER BY name"),
            lease: format!(
                "UPDATE {t} SET lease_owner = $2, due_at = $4 WHERE (app, name) IN \
                 (SELECT app, name FROM {t} WHERE app = $1 AND due_at <= $3 ORDER BY due_at \
                  LIMIT $5 FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}"
            ),
            settle_next: format!(
                "UPDATE {t} SET tick_at = $5, due_at = $6, count = $7, attempts = $8, lease_owner = NULL \
                 WHERE app = $1 AND name = $2 AND lease_owner = $3 AND version = $4"
            ),
            settle_finish: format!(
                "DELETE FROM {t} WHERE app = $1 AND name = $2 AND lease_owner = $3 AND version = $4"
            ),
            next_due: format!("SELECT MIN(due_at) FROM {t} WHERE app = $1"),
        }
    }
}

/// `scheduler.postgresql`. See the module docs.
pub struct PostgresJobStore {
    pool: Pool,
    sql: Sql,
    table: String,
    timeout: Duration,
}

impl std::fmt::Debug for PostgresJobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJobStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

fn db_err(e: tokio_postgres::Error) -> JobError {
    JobError::Backend(format!("postgresql: {e}"))
}

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn job_of(r: &Row) -> Result<StoredJob, JobError> {
    let get = |e: tokio_postgres::Error| db_err(e);
    let data_type: Option<String> = r.try_get(6).map_err(get)?;
    let data: Option<Vec<u8>> = r.try_get(7).map_err(get)?;
    let policy: String = r.try_get(8).map_err(get)?;
    let repeats: Option<i64> = r.try_get(3).map_err(get)?;
    Ok(StoredJob {
        app: r.try_get(0).map_err(get)?,
        spec: JobSpec {
            name: r.try_get(1).map_err(get)?,
            schedule: r.try_get(2).map_err(get)?,
            repeats: repeats.map(u32_of),
            due_time: r.try_get(4).map_err(get)?,
            ttl: r.try_get(5).map_err(get)?,
            data: data_type.map(|type_url| JobData {
                type_url,
                value: data.unwrap_or_default(),
            }),
            failure_policy: policy_of(&policy),
        },
        expires: r.try_get(9).map_err(get)?,
        tick: r.try_get(10).map_err(get)?,
        due_at: r.try_get(11).map_err(get)?,
        count: u32_of(r.try_get(12).map_err(get)?),
        attempts: u32_of(r.try_get(13).map_err(get)?),
        version: r.try_get(14).map_err(get)?,
    })
}

impl PostgresJobStore {
    /// Connects, creates the table when missing and returns the store.
    pub async fn open(metadata: &Metadata) -> Result<Self, JobError> {
        let text = metadata.require(["connectionString", "url"])?;
        let (mut config, pool_max) = trellis_core::postgres::parse_connection_string(text)
            .map_err(|e| JobError::Invalid(e.to_string()))?;
        let timeout = metadata.positive_duration("timeout", DEFAULT_TIMEOUT)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let table = metadata.get("tableName").unwrap_or(DEFAULT_TABLE);
        if !valid_table(table) {
            return Err(metadata
                .error(
                    "tableName",
                    Some(table),
                    "is not a valid table name (letters, digits and _, at most 50)",
                )
                .into());
        }
        let default_conns = pool_max
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (1..=1024).contains(n))
            .unwrap_or(DEFAULT_CONNS);
        let max_conns = metadata.usize("maxConns", default_conns, 1..=1024)?;
        let pool = trellis_core::postgres::pool(config, max_conns, timeout)
            .map_err(|e| JobError::Backend(format!("postgresql: {e}")))?;
        let store = PostgresJobStore {
            pool,
            sql: Sql::new(table),
            table: table.to_string(),
            timeout,
        };
        store
            .bounded(async {
                let mut client = store.client().await?;
                let key = format!("trellis-jobs-migrate {}", store.table);
                trellis_core::postgres::create_under_lock(&mut client, &key, &store.sql.create)
                    .await
                    .map_err(db_err)
            })
            .await?;
        Ok(store)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, JobError>>,
    ) -> Result<T, JobError> {
        trellis_core::postgres::bounded(self.timeout, op, JobError::Backend).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, JobError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => db_err(e),
            other => JobError::Backend(format!("postgresql: {other}")),
        })
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, JobError> {
        self.bounded(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(db_err)?;
            client.execute(&statement, params).await.map_err(db_err)
        })
        .await
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, JobError> {
        self.bounded(async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await.map_err(db_err)?;
            client.query(&statement, params).await.map_err(db_err)
        })
        .await
    }
}

/// Letters, digits and `_`, not starting with a digit, short enough for the index name.
fn valid_table(name: &str) -> bool {
    name.len() <= 50
        && !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[async_trait]
impl JobStore for PostgresJobStore {
    async fn put(
        &self,
        app: &str,
        spec: &JobSpec,
        timing: Timing,
        overwrite: bool,
    ) -> Result<(), JobError> {
        let statement = if overwrite {
            &self.sql.upsert
        } else {
            &self.sql.insert
        };
        let repeats = spec.repeats.map(i64::from);
        let policy = policy_text(&spec.failure_policy);
        let changed = self
            .execute(
                statement,
                &[
                    &app,
                    &spec.name,
                    &spec.schedule,
                    &repeats,
                    &spec.due_time,
                    &spec.ttl,
                    &spec.data.as_ref().map(|d| d.type_url.as_str()),
                    &spec.data.as_ref().map(|d| d.value.as_slice()),
                    &policy,
                    &timing.expires,
                    &timing.first,
                    &timing.first,
                    &new_version(),
                ],
            )
            .await?;
        if changed == 0 {
            return Err(JobError::AlreadyExists(spec.name.clone()));
        }
        Ok(())
    }

    async fn get(&self, app: &str, name: &str) -> Result<Option<StoredJob>, JobError> {
        let rows = self.query(&self.sql.get, &[&app, &name]).await?;
        rows.first().map(job_of).transpose()
    }

    async fn delete(&self, app: &str, name: &str) -> Result<bool, JobError> {
        Ok(self.execute(&self.sql.delete, &[&app, &name]).await? > 0)
    }

    async fn delete_prefix(&self, app: &str, prefix: &str) -> Result<u64, JobError> {
        self.execute(&self.sql.delete_prefix, &[&app, &prefix])
            .await
    }

    async fn list(&self, app: &str) -> Result<Vec<StoredJob>, JobError> {
        let rows = self.query(&self.sql.list, &[&app]).await?;
        rows.iter().map(job_of).collect()
    }

    async fn lease_due(
        &self,
        app: &str,
        owner: &str,
        now: Millis,
        until: Millis,
        max: usize,
    ) -> Result<Vec<StoredJob>, JobError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = self
            .query(&self.sql.lease, &[&app, &owner, &now, &until, &max])
            .await?;
        let mut jobs = rows.iter().map(job_of).collect::<Result<Vec<_>, _>>()?;
        jobs.sort_by_key(|j| j.tick);
        Ok(jobs)
    }

    async fn settle(
        &self,
        app: &str,
        name: &str,
        owner: &str,
        version: i64,
        outcome: Settle,
    ) -> Result<bool, JobError> {
        let changed = match outcome {
            Settle::Next {
                tick,
                due_at,
                count,
                attempts,
            } => {
                let (count, attempts) = (i64::from(count), i64::from(attempts));
                self.execute(
                    &self.sql.settle_next,
                    &[
                        &app, &name, &owner, &version, &tick, &due_at, &count, &attempts,
                    ],
                )
                .await?
            }
            Settle::Finish => {
                self.execute(&self.sql.settle_finish, &[&app, &name, &owner, &version])
                    .await?
            }
        };
        Ok(changed > 0)
    }

    async fn next_due(&self, app: &str) -> Result<Option<Millis>, JobError> {
        let rows = self.query(&self.sql.next_due, &[&app]).await?;
        match rows.first() {
            Some(r) => r.try_get(0).map_err(db_err),
            None => Ok(None),
        }
    }
}
