//! `workflowbackend.sqlite`: the embedded workflow store, one SQLite file (by default
//! `<data-dir>/workflows.db`) shared by every `trellis` process on the machine, so that
//! replicas of an app share instances and apps on one machine can start each other's
//! child workflows and activities.
//!
//! Every operation, reads included, is a job for the shared group-commit writer
//! ([`trellis_sqlite::writer`]): a turn's commit is one job, applied in a savepoint of a
//! transaction that carries the other jobs queued with it, so a busy engine pays one fsync
//! for many turns. Leases and their releases are not durable against a power cut (a lost
//! lease only repeats work); turns, starts, events and activity results are.

mod ops;
mod schema;

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use trellis_proto::durabletask::HistoryEvent;
use trellis_sqlite::StoreSettings;
use trellis_sqlite::calls::{CallFailed, Calls, Shared};
use trellis_sqlite::writer::Options;

use crate::store::{
    ActivityLease, InstanceMeta, ListFilter, Message, NewInstance, Purged, TurnCommit,
    WorkflowLease, WorkflowStore,
};
use crate::{Metadata, Millis, Status, WorkflowError, now_ms};

pub use schema::Sql;

/// The longest the writer lingers for more jobs after a commit (see
/// [`Options::gather_wait`]), as the embedded state store does.
const MAX_GATHER_WAIT: Duration = Duration::from_micros(500);

/// The table names' common prefix when the metadata names none.
pub const DEFAULT_TABLE: &str = "workflow";

/// What the store's operations share on the writer thread: the SQL, and the clock read
/// once per transaction.
struct WorkflowWriter {
    sql: Sql,
    now: Millis,
}

impl Shared for WorkflowWriter {
    fn begin(&mut self, _: &Connection) -> Result<(), String> {
        self.now = now_ms();
        Ok(())
    }
}

impl From<CallFailed> for WorkflowError {
    fn from(e: CallFailed) -> Self {
        WorkflowError::Backend(e.0)
    }
}

/// `workflowbackend.sqlite`. See the module docs.
#[derive(Debug)]
pub struct SqliteWorkflowStore {
    calls: Calls<WorkflowWriter, WorkflowError>,
    connection: String,
}

impl SqliteWorkflowStore {
    /// Opens (creating when missing) the database and tables `metadata` names and starts
    /// the writer thread, which stops when the store is dropped.
    pub async fn open(metadata: &Metadata) -> Result<Self, WorkflowError> {
        let cfg = StoreSettings::from_metadata(metadata, DEFAULT_TABLE)
            .map_err(|e| WorkflowError::Backend(e.to_string()))?;
        tokio::task::spawn_blocking(move || Self::open_blocking(cfg))
            .await
            .map_err(|e| WorkflowError::Backend(format!("sqlite open task failed: {e}")))?
    }

    fn open_blocking(cfg: StoreSettings) -> Result<Self, WorkflowError> {
        let conn = trellis_sqlite::open_writer(&cfg.connection, cfg.busy_timeout, 64, "WAL")
            .map_err(|e| WorkflowError::Backend(e.to_string()))?;
        let sql = Sql::new(&cfg.table);
        conn.execute_batch(&sql.create_tables())
            .map_err(ops::db_err)?;
        let writer = WorkflowWriter { sql, now: 0 };
        // A busy engine's callers (turn commits, activity results) come back right after
        // their answers: lingering a moment for them lets them share the next fsync.
        let options = Options {
            gather_wait: MAX_GATHER_WAIT,
            ..Options::new("trellis-workflow-writer", cfg.busy_timeout)
        };
        let calls = Calls::start(conn, writer, options, cfg.timeout)
            .map_err(|e| WorkflowError::Backend(e.to_string()))?;
        Ok(SqliteWorkflowStore {
            calls,
            connection: cfg.connection,
        })
    }

    /// The database this store writes to.
    pub fn connection(&self) -> &str {
        &self.connection
    }

    async fn call<T, F>(&self, durable: bool, f: F) -> Result<T, WorkflowError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Sql, Millis) -> Result<T, WorkflowError> + Send + 'static,
    {
        self.calls
            .call(durable, move |c, w: &mut WorkflowWriter| {
                f(c, &w.sql, w.now)
            })
            .await
    }
}

#[async_trait]
impl WorkflowStore for SqliteWorkflowStore {
    async fn create(&self, instance: NewInstance) -> Result<(), WorkflowError> {
        self.call(true, move |c, s, now| ops::create(c, s, now, &instance))
            .await
    }

    async fn send(&self, message: Message) -> Result<(), WorkflowError> {
        self.call(true, move |c, s, _| {
            if ops::deliver(c, s, &message)? {
                Ok(())
            } else {
                Err(WorkflowError::NotFound(message.instance_id.clone()))
            }
        })
        .await
    }

    async fn get(
        &self,
        app_id: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceMeta>, WorkflowError> {
        let (a, i) = (app_id.to_string(), instance_id.to_string());
        self.call(false, move |c, s, _| ops::get(c, s, &a, &i))
            .await
    }

    async fn history(
        &self,
        app_id: &str,
        instance_id: &str,
    ) -> Result<Vec<HistoryEvent>, WorkflowError> {
        let (a, i) = (app_id.to_string(), instance_id.to_string());
        self.call(false, move |c, s, _| ops::history(c, s, &a, &i))
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
        let (a, o) = (app_id.to_string(), owner.to_string());
        self.call(false, move |c, s, _| {
            ops::lease_workflows(c, s, &a, &o, now, until, max)
        })
        .await
    }

    async fn commit_turn(&self, owner: &str, commit: TurnCommit) -> Result<(), WorkflowError> {
        let o = owner.to_string();
        self.call(true, move |c, s, now| {
            ops::commit_turn(c, s, now, &o, &commit)
        })
        .await
    }

    async fn release_workflow(
        &self,
        app_id: &str,
        instance_id: &str,
        owner: &str,
    ) -> Result<(), WorkflowError> {
        let (a, i, o) = (
            app_id.to_string(),
            instance_id.to_string(),
            owner.to_string(),
        );
        self.call(false, move |c, s, _| {
            ops::release_workflow(c, s, &a, &i, &o)
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
        let (a, o) = (app_id.to_string(), owner.to_string());
        self.call(false, move |c, s, _| {
            ops::lease_activities(c, s, &a, &o, now, until, max)
        })
        .await
    }

    async fn complete_activity(&self, id: i64, result: Message) -> Result<(), WorkflowError> {
        self.call(true, move |c, s, _| {
            ops::complete_activity(c, s, id, &result)
        })
        .await
    }

    async fn release_activity(&self, id: i64, owner: &str) -> Result<(), WorkflowError> {
        let o = owner.to_string();
        self.call(false, move |c, s, _| ops::release_activity(c, s, id, &o))
            .await
    }

    async fn renew(&self, app_id: &str, owner: &str, until: Millis) -> Result<(), WorkflowError> {
        let (a, o) = (app_id.to_string(), owner.to_string());
        self.call(false, move |c, s, _| ops::renew(c, s, &a, &o, until))
            .await
    }

    async fn next_due(&self, app_id: &str, now: Millis) -> Result<Option<Millis>, WorkflowError> {
        let a = app_id.to_string();
        self.call(false, move |c, s, _| ops::next_due(c, s, &a, now))
            .await
    }

    async fn purge(
        &self,
        app_id: &str,
        instance_id: &str,
        recursive: bool,
        force: bool,
    ) -> Result<Purged, WorkflowError> {
        let (a, i) = (app_id.to_string(), instance_id.to_string());
        self.call(true, move |c, s, _| {
            ops::purge(c, s, &a, &i, recursive, force)
        })
        .await
    }

    async fn list(
        &self,
        app_id: &str,
        filter: &ListFilter,
    ) -> Result<Vec<InstanceMeta>, WorkflowError> {
        let (a, f) = (app_id.to_string(), filter.clone());
        self.call(false, move |c, s, _| ops::list(c, s, &a, &f))
            .await
    }

    async fn purge_finished(
        &self,
        app_id: &str,
        status: Status,
        before: Millis,
    ) -> Result<u32, WorkflowError> {
        let a = app_id.to_string();
        self.call(true, move |c, s, _| {
            ops::purge_finished(c, s, &a, status, before)
        })
        .await
    }
}
