//! `workflowbackend.postgresql`: the workflow store in a PostgreSQL database shared by the
//! sidecars of one or several apps, on any number of machines.
//!
//! Four tables named from `tableName` (default `workflow`: `workflow_instances`,
//! `workflow_history`, `workflow_inbox`, `workflow_activities`), created when the store
//! opens (under an advisory lock, so sidecars starting together do not race). The rules
//! are the embedded store's: an append-only history of protobuf-encoded events (`BYTEA`),
//! an inbox whose events become visible at a time, each instance's `ready_at` kept by the
//! same rule, an activity queue, leases checked on every commit.
//!
//! What PostgreSQL adds: leasing takes rows `FOR UPDATE SKIP LOCKED`, so replicas asking
//! at once get disjoint instances and activities without waiting for each other; a lease
//! comes back with its history and inbox in the same statement; a turn's commit is one
//! transaction whose statements are pipelined, with batches (history, messages,
//! activities) sent as arrays. Turns' commits and activity results that arrive while
//! others are being written go to the database together (`batch.rs`): one transaction,
//! one round trip and one WAL flush for many, since per-transaction work is what bounds a
//! busy store. Times are the sidecars' clocks in milliseconds, as in the embedded store.
//!
//! Metadata: `connectionString` (required; keyword/value or `postgres://` URL, read as
//! Dapr's pgx reads it; TLS is not supported yet), `tableName`, `timeout` (per operation,
//! default 20s), `maxConns` (default 10, or the connection string's `pool_max_conns`).

mod batch;
mod ops;
mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use batch::{Answer, Batcher};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use trellis_proto::durabletask::HistoryEvent;

use crate::store::{
    ActivityLease, InstanceMeta, ListFilter, Message, NewInstance, Purged, TurnCommit,
    WorkflowLease, WorkflowStore,
};
use crate::{Metadata, Millis, Status, WorkflowError, now_ms};

pub use schema::Sql;

/// The table names' common prefix when the metadata names none.
pub const DEFAULT_TABLE: &str = "workflow";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_CONNS: usize = 10;
/// How often a turn that met another in a deadlock is tried again.
const ATTEMPTS: usize = 5;
/// Lanes and batch size of turn commits. Each lane holds a connection while it writes; a
/// batch's statements are pipelined in one transaction (`join_all` sends them in order
/// only up to 30 futures, hence the cap), and its row locks last until it commits.
const COMMIT_LANES: usize = 4;
const COMMIT_BATCH: usize = 16;
/// Lanes and batch size of activity results: one statement per batch.
const RESULT_LANES: usize = 2;
const RESULT_BATCH: usize = 64;

/// `workflowbackend.postgresql`. See the module docs.
pub struct PostgresWorkflowStore {
    db: Arc<Db>,
    /// Turns' commits that create no children, written in batches.
    commits: Batcher<(String, TurnCommit)>,
    /// Activity results, written in batches.
    results: Batcher<(i64, Message)>,
}

/// The pool and statements, shared by the store and its batches.
struct Db {
    pool: Pool,
    sql: Sql,
    table: String,
    timeout: Duration,
    replan: std::sync::Mutex<Replan>,
}

/// When the pooled connections' statements are next prepared again, and the step after
/// that. Generic plans are made when a statement is prepared, from what PostgreSQL knows of
/// the tables then; made while the tables were nearly empty and had no statistics (new or
/// emptied tables, before autovacuum's first analyze, or with autovacuum off), they scan
/// whole tables or the wrong index once the tables have grown: 50 workflows/s instead of
/// 600 in the bench. So plans are made again 0.5 s after the store opens, then at doubling
/// intervals up to once a minute, which follows a table's growth at the cost of preparing
/// a dozen statements per connection now and then.
#[derive(Debug)]
struct Replan {
    next: Instant,
    step: Duration,
}

const REPLAN_FIRST: Duration = Duration::from_millis(500);
const REPLAN_MAX: Duration = Duration::from_secs(60);

impl std::fmt::Debug for PostgresWorkflowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresWorkflowStore")
            .field("table", &self.db.table)
            .finish_non_exhaustive()
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> WorkflowError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => ops::db_err(e),
        deadpool_postgres::PoolError::Timeout(_) => {
            WorkflowError::Backend("timed out connecting to postgresql".into())
        }
        other => WorkflowError::Backend(format!("postgresql: {other}")),
    }
}

fn metadata_err(e: impl std::fmt::Display) -> WorkflowError {
    WorkflowError::Backend(e.to_string())
}

/// Whether `name` can go into SQL as the start of a table (and index) name: letters,
/// digits and `_`, not starting with a digit, short enough for the suffixes to fit
/// PostgreSQL's 63-byte names.
fn valid_table(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl PostgresWorkflowStore {
    /// Connects, creates the tables when missing and returns the store.
    pub async fn open(metadata: &Metadata) -> Result<Self, WorkflowError> {
        let text = metadata
            .require(["connectionString", "url"])
            .map_err(metadata_err)?;
        let (mut config, pool_max) =
            trellis_core::postgres::parse_connection_string(text).map_err(metadata_err)?;
        let timeout = metadata
            .positive_duration("timeout", DEFAULT_TIMEOUT)
            .map_err(metadata_err)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        // Every statement here is prepared once per connection and run with arrays or
        // single keys; left to choose, PostgreSQL plans the larger ones anew on every run,
        // which cost more CPU than running them (3x the server's time per workflow). The
        // generic plans are made again as the tables grow (`Replan`).
        let options = config.get_options().unwrap_or_default();
        config.options(format!("{options} -c plan_cache_mode=force_generic_plan"));
        let table = metadata.get("tableName").unwrap_or(DEFAULT_TABLE);
        if !valid_table(table) {
            return Err(metadata_err(metadata.error(
                "tableName",
                Some(table),
                "is not a valid table name prefix (letters, digits and _, at most 40)",
            )));
        }
        let max_conns = trellis_core::postgres::max_conns(metadata, pool_max, DEFAULT_CONNS)
            .map_err(metadata_err)?;
        let pool = trellis_core::postgres::pool(config, max_conns, timeout)
            .map_err(|e| WorkflowError::Backend(format!("postgresql: {e}")))?;
        let db = Arc::new(Db {
            pool,
            sql: Sql::new(table),
            table: table.to_string(),
            timeout,
            replan: std::sync::Mutex::new(Replan {
                next: Instant::now() + REPLAN_FIRST,
                step: REPLAN_FIRST,
            }),
        });
        db.bounded(async {
            let mut client = db.pool.get().await.map_err(pool_error)?;
            let key = format!("trellis-workflow-migrate {}", db.table);
            trellis_core::postgres::create_under_lock(&mut client, &key, &db.sql.create_tables)
                .await
                .map_err(ops::db_err)
        })
        .await?;
        let commits = {
            let db = db.clone();
            Batcher::spawn(COMMIT_LANES, COMMIT_BATCH, move |turns| {
                let db = db.clone();
                Box::pin(async move { db.commit(turns).await })
            })
        };
        let results = {
            let db = db.clone();
            Batcher::spawn(RESULT_LANES, RESULT_BATCH, move |results| {
                let db = db.clone();
                Box::pin(async move { db.complete(results).await })
            })
        };
        Ok(PostgresWorkflowStore {
            db,
            commits,
            results,
        })
    }

    /// The tables' common prefix.
    pub fn table(&self) -> &str {
        &self.db.table
    }
}

impl Db {
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, WorkflowError>>,
    ) -> Result<T, WorkflowError> {
        trellis_core::postgres::bounded(self.timeout, op, WorkflowError::Backend).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, WorkflowError> {
        self.replan_when_due();
        self.pool.get().await.map_err(pool_error)
    }

    /// Drops every connection's prepared statements when [`Replan`] says so; each is
    /// prepared, and planned, again at its next use.
    fn replan_when_due(&self) {
        {
            let mut replan = self.replan.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            if now < replan.next {
                return;
            }
            replan.step = (replan.step * 2).min(REPLAN_MAX);
            replan.next = now + replan.step;
        }
        self.pool.manager().statement_caches.clear();
        tracing::debug!(
            table = self.table,
            "workflow store: statements will be planned again"
        );
    }

    /// Runs `op` on a pooled client within the timeout, again (up to [`ATTEMPTS`] times,
    /// each on a client of its own) when it failed only because it met another transaction
    /// in a deadlock: two turns sending each other messages, a purge and an activity
    /// result, lock the same rows in opposite orders.
    async fn retrying<T, F, Fut>(&self, what: &str, op: F) -> Result<T, WorkflowError>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<Result<T, WorkflowError>, tokio_postgres::Error>>,
    {
        self.bounded(async {
            let mut attempt = 1;
            loop {
                match op(self.client().await?).await {
                    Ok(result) => return result,
                    Err(e) if ops::retryable(&e) && attempt < ATTEMPTS => {
                        tracing::debug!(
                            attempt,
                            "workflow: {what} met another transaction, retrying: {e}"
                        );
                        attempt += 1;
                    }
                    Err(e) => return Err(ops::db_err(e)),
                }
            }
        })
        .await
    }

    /// A turn's commit that creates children: a transaction of its own (see
    /// [`ops::commit_with_children`]).
    async fn try_commit_with_children(
        &self,
        mut client: deadpool_postgres::Object,
        owner: &str,
        commit: &TurnCommit,
    ) -> Result<Result<(), WorkflowError>, tokio_postgres::Error> {
        let now = now_ms();
        let tx = client.transaction().await?;
        if !ops::commit_with_children(&tx, &self.sql, now, owner, commit).await? {
            return Ok(Err(WorkflowError::LeaseLost(commit.instance_id.clone())));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Commits turns without children (as `(owner, commit)`) in one transaction; each is
    /// answered `LeaseLost` when its lease was no longer held.
    async fn commit(&self, turns: &[(String, TurnCommit)]) -> Result<Vec<Answer>, WorkflowError> {
        let turns: Vec<(&str, &TurnCommit)> = turns.iter().map(|(o, t)| (o.as_str(), t)).collect();
        let turns = &turns;
        let held = self
            .retrying("a turn's commit", |client| async move {
                Ok(Ok(ops::commit_pipelined(
                    &client,
                    &self.sql,
                    now_ms(),
                    turns,
                )
                .await?))
            })
            .await?;
        Ok(held
            .into_iter()
            .zip(turns)
            .map(|(held, (_, t))| match held {
                true => Ok(()),
                false => Err(WorkflowError::LeaseLost(t.instance_id.clone())),
            })
            .collect())
    }

    /// Delivers activity results in one statement.
    async fn complete(&self, results: &[(i64, Message)]) -> Result<Vec<Answer>, WorkflowError> {
        self.retrying("an activity result", |client| async move {
            ops::complete_activities(&client, &self.sql, results).await?;
            Ok(Ok(()))
        })
        .await?;
        Ok(vec![Ok(()); results.len()])
    }
}

#[async_trait]
impl WorkflowStore for PostgresWorkflowStore {
    async fn create(&self, instance: NewInstance) -> Result<(), WorkflowError> {
        let instance = &instance;
        self.db
            .retrying("a start", |client| async move {
                Ok(
                    if ops::create(&client, &self.db.sql, now_ms(), instance).await? {
                        Ok(())
                    } else {
                        Err(WorkflowError::AlreadyExists(
                            instance.start.instance_id.clone(),
                        ))
                    },
                )
            })
            .await
    }

    async fn send(&self, message: Message) -> Result<(), WorkflowError> {
        let message = &message;
        self.db
            .retrying("an event", |client| async move {
                Ok(if ops::deliver(&client, &self.db.sql, message).await? {
                    Ok(())
                } else {
                    Err(WorkflowError::NotFound(message.instance_id.clone()))
                })
            })
            .await
    }

    async fn get(
        &self,
        app_id: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceMeta>, WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::get(&client, &self.db.sql, app_id, instance_id).await
            })
            .await
    }

    async fn history(
        &self,
        app_id: &str,
        instance_id: &str,
    ) -> Result<Vec<HistoryEvent>, WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::history(&client, &self.db.sql, app_id, instance_id).await
            })
            .await
    }

    async fn lease_workflows(
        &self,
        app_id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
        max: usize,
    ) -> Result<Vec<WorkflowLease>, WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::lease_workflows(&client, &self.db.sql, app_id, owner, now, until, max).await
            })
            .await
    }

    async fn commit_turn(&self, owner: &str, commit: TurnCommit) -> Result<(), WorkflowError> {
        if commit.new_instances.is_empty() {
            return self.commits.submit((owner.to_string(), commit)).await;
        }
        self.db
            .retrying("a turn's commit", |client| {
                self.db.try_commit_with_children(client, owner, &commit)
            })
            .await
    }

    async fn release_workflow(
        &self,
        app_id: &str,
        instance_id: &str,
        owner: &str,
    ) -> Result<(), WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::execute_one(
                    &client,
                    &self.db.sql.release_workflow,
                    &[&app_id, &instance_id, &owner],
                )
                .await
            })
            .await
    }

    async fn lease_activities(
        &self,
        app_id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
        max: usize,
    ) -> Result<Vec<ActivityLease>, WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::lease_activities(&client, &self.db.sql, app_id, owner, now, until, max).await
            })
            .await
    }

    async fn complete_activity(&self, id: i64, result: Message) -> Result<(), WorkflowError> {
        self.results.submit((id, result)).await
    }

    async fn release_activity(&self, id: i64, owner: &str) -> Result<(), WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::execute_one(&client, &self.db.sql.release_activity, &[&id, &owner]).await
            })
            .await
    }

    async fn renew(&self, app_id: &str, owner: &str, until: Millis) -> Result<(), WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::execute_one(&client, &self.db.sql.renew, &[&app_id, &owner, &until]).await
            })
            .await
    }

    async fn next_due(&self, app_id: &str, now: Millis) -> Result<Option<Millis>, WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::next_due(&client, &self.db.sql, app_id, now).await
            })
            .await
    }

    async fn purge(
        &self,
        app_id: &str,
        instance_id: &str,
        recursive: bool,
        force: bool,
    ) -> Result<Purged, WorkflowError> {
        self.db
            .bounded(async {
                let mut client = self.db.client().await?;
                let tx = client.transaction().await.map_err(ops::db_err)?;
                let purged =
                    ops::purge(&tx, &self.db.sql, app_id, instance_id, recursive, force).await?;
                tx.commit().await.map_err(ops::db_err)?;
                Ok(purged)
            })
            .await
    }

    async fn list(
        &self,
        app_id: &str,
        filter: &ListFilter,
    ) -> Result<Vec<InstanceMeta>, WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::list(&client, &self.db.sql, app_id, filter).await
            })
            .await
    }

    async fn purge_finished(
        &self,
        app_id: &str,
        status: Status,
        before: Millis,
    ) -> Result<u32, WorkflowError> {
        self.db
            .bounded(async {
                let client = self.db.client().await?;
                ops::purge_finished(&client, &self.db.sql, app_id, status, before).await
            })
            .await
    }
}
