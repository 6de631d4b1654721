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
//! activities) sent as arrays. Times are the sidecars' clocks in milliseconds, as in the
//! embedded store.
//!
//! Metadata: `connectionString` (required; keyword/value or `postgres://` URL, read as
//! Dapr's pgx reads it; TLS is not supported yet), `tableName`, `timeout` (per operation,
//! default 20s), `maxConns` (default 10, or the connection string's `pool_max_conns`).

mod ops;
mod schema;

use std::sync::Arc;
use std::time::Duration;

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

/// `workflowbackend.postgresql`. See the module docs.
pub struct PostgresWorkflowStore {
    pool: Pool,
    sql: Arc<Sql>,
    table: String,
    timeout: Duration,
}

impl std::fmt::Debug for PostgresWorkflowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresWorkflowStore")
            .field("table", &self.table)
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
        // which cost more CPU than running them (3x the server's time per workflow).
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
        let store = PostgresWorkflowStore {
            pool,
            sql: Arc::new(Sql::new(table)),
            table: table.to_string(),
            timeout,
        };
        store
            .bounded(async {
                let mut client = store.pool.get().await.map_err(pool_error)?;
                let key = format!("trellis-workflow-migrate {}", store.table);
                trellis_core::postgres::create_under_lock(
                    &mut client,
                    &key,
                    &store.sql.create_tables,
                )
                .await
                .map_err(ops::db_err)
            })
            .await?;
        Ok(store)
    }

    /// The tables' common prefix.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, WorkflowError>>,
    ) -> Result<T, WorkflowError> {
        trellis_core::postgres::bounded(self.timeout, op, WorkflowError::Backend).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, WorkflowError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `op` within the timeout, again (up to [`ATTEMPTS`] times) when it failed only
    /// because it met another transaction in a deadlock: two turns sending each other
    /// messages, a purge and an activity result, lock the same rows in opposite orders.
    async fn retrying<T, F, Fut>(&self, what: &str, op: F) -> Result<T, WorkflowError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Result<T, WorkflowError>, tokio_postgres::Error>>,
    {
        self.bounded(async {
            let mut attempt = 1;
            loop {
                match op().await {
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

    async fn try_commit(
        &self,
        owner: &str,
        commit: &TurnCommit,
    ) -> Result<Result<(), WorkflowError>, tokio_postgres::Error> {
        let mut client = match self.client().await {
            Ok(client) => client,
            Err(e) => return Ok(Err(e)),
        };
        let now = now_ms();
        if commit.new_instances.is_empty() {
            if !ops::commit_pipelined(&client, &self.sql, now, owner, commit).await? {
                return Ok(Err(WorkflowError::LeaseLost(commit.instance_id.clone())));
            }
            return Ok(Ok(()));
        }
        let tx = client.transaction().await?;
        if !ops::commit_with_children(&tx, &self.sql, now, owner, commit).await? {
            return Ok(Err(WorkflowError::LeaseLost(commit.instance_id.clone())));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }
}

#[async_trait]
impl WorkflowStore for PostgresWorkflowStore {
    async fn create(&self, instance: NewInstance) -> Result<(), WorkflowError> {
        self.retrying("a start", || async {
            let client = match self.client().await {
                Ok(client) => client,
                Err(e) => return Ok(Err(e)),
            };
            Ok(
                if ops::create(&client, &self.sql, now_ms(), &instance).await? {
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
        self.retrying("an event", || async {
            let client = match self.client().await {
                Ok(client) => client,
                Err(e) => return Ok(Err(e)),
            };
            Ok(if ops::deliver(&client, &self.sql, &message).await? {
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
        self.bounded(async {
            let client = self.client().await?;
            ops::get(&client, &self.sql, app_id, instance_id).await
        })
        .await
    }

    async fn history(
        &self,
        app_id: &str,
        instance_id: &str,
    ) -> Result<Vec<HistoryEvent>, WorkflowError> {
        self.bounded(async {
            let client = self.client().await?;
            ops::history(&client, &self.sql, app_id, instance_id).await
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
        self.bounded(async {
            let client = self.client().await?;
            ops::lease_workflows(&client, &self.sql, app_id, owner, now, until, max).await
        })
        .await
    }

    async fn commit_turn(&self, owner: &str, commit: TurnCommit) -> Result<(), WorkflowError> {
        self.retrying("a turn's commit", || self.try_commit(owner, &commit))
            .await
    }

    async fn release_workflow(
        &self,
        app_id: &str,
        instance_id: &str,
        owner: &str,
    ) -> Result<(), WorkflowError> {
        self.bounded(async {
            let client = self.client().await?;
            ops::execute_one(
                &client,
                &self.sql.release_workflow,
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
        self.bounded(async {
            let client = self.client().await?;
            ops::lease_activities(&client, &self.sql, app_id, owner, now, until, max).await
        })
        .await
    }

    async fn complete_activity(&self, id: i64, result: Message) -> Result<(), WorkflowError> {
        self.retrying("an activity result", || async {
            let client = match self.client().await {
                Ok(client) => client,
                Err(e) => return Ok(Err(e)),
            };
            ops::complete_activity(&client, &self.sql, id, &result).await?;
            Ok(Ok(()))
        })
        .await
    }

    async fn release_activity(&self, id: i64, owner: &str) -> Result<(), WorkflowError> {
        self.bounded(async {
            let client = self.client().await?;
            ops::execute_one(&client, &self.sql.release_activity, &[&id, &owner]).await
        })
        .await
    }

    async fn renew(&self, app_id: &str, owner: &str, until: Millis) -> Result<(), WorkflowError> {
        self.bounded(async {
            let client = self.client().await?;
            ops::execute_one(&client, &self.sql.renew, &[&app_id, &owner, &until]).await
        })
        .await
    }

    async fn next_due(&self, app_id: &str, now: Millis) -> Result<Option<Millis>, WorkflowError> {
        self.bounded(async {
            let client = self.client().await?;
            ops::next_due(&client, &self.sql, app_id, now).await
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
        self.bounded(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(ops::db_err)?;
            let purged = ops::purge(&tx, &self.sql, app_id, instance_id, recursive, force).await?;
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
        self.bounded(async {
            let client = self.client().await?;
            ops::list(&client, &self.sql, app_id, filter).await
        })
        .await
    }

    async fn purge_finished(
        &self,
        app_id: &str,
        status: Status,
        before: Millis,
    ) -> Result<u32, WorkflowError> {
        self.bounded(async {
            let client = self.client().await?;
            ops::purge_finished(&client, &self.sql, app_id, status, before).await
        })
        .await
    }
}
