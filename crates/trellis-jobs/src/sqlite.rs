//! `scheduler.sqlite`: the embedded job store, one SQLite file (by default
//! `<data-dir>/jobs.db`) shared by every `trellis` process on the machine, so that the
//! replicas of an app on one machine share its jobs.
//!
//! Every operation, reads included, is a closure run by the shared group-commit writer
//! ([`trellis_sqlite::calls`]): leasing checks and takes rows inside the writer's
//! `BEGIN IMMEDIATE` transaction, which holds SQLite's write lock, so two processes never
//! lease the same tick. Leases are not made durable against a power cut (a lost lease
//! only lets the tick fire again); schedules, deletions and settled ticks are.
//!
//! Metadata: `connectionString` (required; the built-in component passes the data dir's
//! file), `tableName` (default `jobs`), `busyTimeout`, `timeout`.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use trellis_sqlite::StoreSettings;
use trellis_sqlite::calls::{CallFailed, Calls, Shared};
use trellis_sqlite::writer::Options;

use crate::schedule::Timing;
use crate::store::{COLUMNS, JobStore, Settle, StoredJob, new_version, policy_of, policy_text};
use crate::{JobData, JobError, JobSpec, Metadata, Millis};

/// The table's name when the metadata names none.
pub const DEFAULT_TABLE: &str = "jobs";

impl From<CallFailed> for JobError {
    fn from(e: CallFailed) -> Self {
        JobError::Backend(e.0)
    }
}

/// The statements of one table, written once.
struct Sql {
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
        let values = "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, 0, ?13)";
        Sql {
            insert: format!(
                "INSERT INTO {t} ({COLUMNS}) VALUES {values} ON CONFLICT (app, name) DO NOTHING"
            ),
            upsert: format!("INSERT OR REPLACE INTO {t} ({COLUMNS}) VALUES {values}"),
            get: format!("SELECT {COLUMNS} FROM {t} WHERE app = ?1 AND name = ?2"),
            delete: format!("DELETE FROM {t} WHERE app = ?1 AND name = ?2"),
            delete_prefix: format!(
                "DELETE FROM {t} WHERE app = ?1 AND substr(name, 1, length(?2)) = ?2"
            ),
            list: format!("SELECT {COLUMNS} FROM {t} WHERE app = ?1 ORDER BY name"),
            lease: format!(
                "UPDATE {t} SET lease_owner = ?2, due_at = ?4 WHERE rowid IN \
                 (SELECT rowid FROM {t} WHERE app = ?1 AND due_at <= ?3 ORDER BY due_at LIMIT ?5) \
                 RETURNING {COLUMNS}"
            ),
            settle_next: format!(
                "UPDATE {t} SET tick_at = ?5, due_at = ?6, count = ?7, attempts = ?8, lease_owner = NULL \
                 WHERE app = ?1 AND name = ?2 AND lease_owner = ?3 AND version = ?4"
            ),
            settle_finish: format!(
                "DELETE FROM {t} WHERE app = ?1 AND name = ?2 AND lease_owner = ?3 AND version = ?4"
            ),
            next_due: format!("SELECT MIN(due_at) FROM {t} WHERE app = ?1"),
        }
    }
}

/// The writer's context: the statements.
struct Ctx {
    sql: Sql,
}

impl Shared for Ctx {}

fn db_err(e: rusqlite::Error) -> JobError {
    JobError::Backend(format!("sqlite: {e}"))
}

/// A row in [`COLUMNS`] order.
fn job_of(r: &Row<'_>) -> rusqlite::Result<StoredJob> {
    let data_type: Option<String> = r.get(6)?;
    let data: Option<Vec<u8>> = r.get(7)?;
    let policy: String = r.get(8)?;
    Ok(StoredJob {
        app: r.get(0)?,
        spec: JobSpec {
            name: r.get(1)?,
            schedule: r.get(2)?,
            repeats: r.get(3)?,
            due_time: r.get(4)?,
            ttl: r.get(5)?,
            data: data_type.map(|type_url| JobData {
                type_url,
                value: data.unwrap_or_default(),
            }),
            failure_policy: policy_of(&policy),
        },
        expires: r.get(9)?,
        tick: r.get(10)?,
        due_at: r.get(11)?,
        count: r.get(12)?,
        attempts: r.get(13)?,
        version: r.get(14)?,
    })
}

/// `scheduler.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteJobStore {
    queue: Calls<Ctx, JobError>,
    connection: String,
}

impl SqliteJobStore {
    /// Opens (creating when missing) the database and table `metadata` names and starts
    /// the writer thread, which stops when the store is dropped.
    pub async fn open(metadata: &Metadata) -> Result<Self, JobError> {
        let cfg = StoreSettings::from_metadata(metadata, DEFAULT_TABLE)?;
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(|e| JobError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(cfg: StoreSettings) -> Result<Self, JobError> {
        let conn = trellis_sqlite::open_writer(&cfg.connection, cfg.busy_timeout, 16, "WAL")
            .map_err(JobError::backend)?;
        let t = &cfg.table;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {t} (
                 app TEXT NOT NULL,
                 name TEXT NOT NULL,
                 schedule TEXT,
                 repeats INTEGER,
                 due_time TEXT,
                 ttl TEXT,
                 data_type TEXT,
                 data BLOB,
                 policy TEXT NOT NULL,
                 expires_at INTEGER,
                 tick_at INTEGER NOT NULL,
                 due_at INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 attempts INTEGER NOT NULL,
                 version INTEGER NOT NULL,
                 lease_owner TEXT,
                 PRIMARY KEY (app, name)
             );
             CREATE INDEX IF NOT EXISTS {t}_due ON {t} (app, due_at);
             COMMIT;"
        ))
        .map_err(db_err)?;
        let options = Options {
            // Triggers settle right after their answers: lingering a moment lets a burst of
            // them share one commit.
            gather_wait: std::time::Duration::from_micros(500),
            ..Options::new("trellis-jobs-writer", cfg.busy_timeout)
        };
        let queue = Calls::start(conn, Ctx { sql: Sql::new(t) }, options, cfg.timeout)
            .map_err(JobError::backend)?;
        Ok(SqliteJobStore {
            queue,
            connection: cfg.connection,
        })
    }

    /// The database this store writes to.
    pub fn connection(&self) -> &str {
        &self.connection
    }
}

fn put(
    conn: &Connection,
    sql: &Sql,
    app: &str,
    spec: &JobSpec,
    timing: Timing,
    overwrite: bool,
) -> Result<(), JobError> {
    let statement = if overwrite { &sql.upsert } else { &sql.insert };
    let changed = conn
        .prepare_cached(statement)
        .and_then(|mut s| {
            s.execute(params![
                app,
                spec.name,
                spec.schedule,
                spec.repeats,
                spec.due_time,
                spec.ttl,
                spec.data.as_ref().map(|d| d.type_url.as_str()),
                spec.data.as_ref().map(|d| d.value.as_slice()),
                policy_text(&spec.failure_policy),
                timing.expires,
                timing.first,
                timing.first,
                new_version(),
            ])
        })
        .map_err(db_err)?;
    if changed == 0 {
        return Err(JobError::AlreadyExists(spec.name.clone()));
    }
    Ok(())
}

#[async_trait]
impl JobStore for SqliteJobStore {
    async fn put(
        &self,
        app: &str,
        spec: &JobSpec,
        timing: Timing,
        overwrite: bool,
    ) -> Result<(), JobError> {
        let (app, spec) = (app.to_string(), spec.clone());
        self.queue
            .call(true, move |c, x: &mut Ctx| {
                put(c, &x.sql, &app, &spec, timing, overwrite)
            })
            .await
    }

    async fn get(&self, app: &str, name: &str) -> Result<Option<StoredJob>, JobError> {
        let (app, name) = (app.to_string(), name.to_string());
        self.queue
            .call(false, move |c, x: &mut Ctx| {
                c.prepare_cached(&x.sql.get)
                    .and_then(|mut s| s.query_row(params![app, name], job_of).optional())
                    .map_err(db_err)
            })
            .await
    }

    async fn delete(&self, app: &str, name: &str) -> Result<bool, JobError> {
        let (app, name) = (app.to_string(), name.to_string());
        self.queue
            .call(true, move |c, x: &mut Ctx| {
                c.prepare_cached(&x.sql.delete)
                    .and_then(|mut s| s.execute(params![app, name]))
                    .map(|n| n > 0)
                    .map_err(db_err)
            })
            .await
    }

    async fn delete_prefix(&self, app: &str, prefix: &str) -> Result<u64, JobError> {
        let (app, prefix) = (app.to_string(), prefix.to_string());
        self.queue
            .call(true, move |c, x: &mut Ctx| {
                c.prepare_cached(&x.sql.delete_prefix)
                    .and_then(|mut s| s.execute(params![app, prefix]))
                    .map(|n| n as u64)
                    .map_err(db_err)
            })
            .await
    }

    async fn list(&self, app: &str) -> Result<Vec<StoredJob>, JobError> {
        let app = app.to_string();
        self.queue
            .call(false, move |c, x: &mut Ctx| {
                let mut s = c.prepare_cached(&x.sql.list).map_err(db_err)?;
                let rows = s.query_map(params![app], job_of).map_err(db_err)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
            })
            .await
    }

    async fn lease_due(
        &self,
        app: &str,
        owner: &str,
        now: Millis,
        until: Millis,
        max: usize,
    ) -> Result<Vec<StoredJob>, JobError> {
        let (app, owner) = (app.to_string(), owner.to_string());
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.queue
            .call(false, move |c, x: &mut Ctx| {
                let mut s = c.prepare_cached(&x.sql.lease).map_err(db_err)?;
                let rows = s
                    .query_map(params![app, owner, now, until, max], job_of)
                    .map_err(db_err)?;
                let mut jobs = rows.collect::<Result<Vec<_>, _>>().map_err(db_err)?;
                jobs.sort_by_key(|j| j.tick);
                Ok(jobs)
            })
            .await
    }

    async fn settle(
        &self,
        app: &str,
        name: &str,
        owner: &str,
        version: i64,
        outcome: Settle,
    ) -> Result<bool, JobError> {
        let (app, name, owner) = (app.to_string(), name.to_string(), owner.to_string());
        self.queue
            .call(true, move |c, x: &mut Ctx| {
                let changed = match outcome {
                    Settle::Next {
                        tick,
                        due_at,
                        count,
                        attempts,
                    } => c.prepare_cached(&x.sql.settle_next).and_then(|mut s| {
                        s.execute(params![
                            app, name, owner, version, tick, due_at, count, attempts
                        ])
                    }),
                    Settle::Finish => c
                        .prepare_cached(&x.sql.settle_finish)
                        .and_then(|mut s| s.execute(params![app, name, owner, version])),
                }
                .map_err(db_err)?;
                Ok(changed > 0)
            })
            .await
    }

    async fn next_due(&self, app: &str) -> Result<Option<Millis>, JobError> {
        let app = app.to_string();
        self.queue
            .call(false, move |c, x: &mut Ctx| {
                c.prepare_cached(&x.sql.next_due)
                    .and_then(|mut s| s.query_row(params![app], |r| r.get(0)))
                    .map_err(db_err)
            })
            .await
    }
}
