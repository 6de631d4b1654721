//! The embedded store's tables, and the rule that says when an instance is ready.

/// The four tables of one store, by name.
#[derive(Debug, Clone)]
pub struct Sql {
    /// One row per instance: what `GET` shows, its lease, and when its inbox next has
    /// something it can take (`ready_at`, kept by [`Sql::refresh_ready`]).
    pub instances: String,
    /// The append-only history: `(app, instance, seq) → event`.
    pub history: String,
    /// Events waiting for a turn, each visible from `visible_at`.
    pub inbox: String,
    /// Activities waiting for (or leased to) a worker of `app_id`.
    pub activities: String,
}

impl Sql {
    pub fn new(table: &str) -> Sql {
        Sql {
            instances: format!("{table}_instances"),
            history: format!("{table}_history"),
            inbox: format!("{table}_inbox"),
            activities: format!("{table}_activities"),
        }
    }

    /// The tables, in one immediate transaction so that processes starting at once do
    /// not trip over each other.
    pub fn create_tables(&self) -> String {
        let Sql {
            instances,
            history,
            inbox,
            activities,
        } = self;
        format!(
            "BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS {instances} (
                 app_id TEXT NOT NULL,
                 instance_id TEXT NOT NULL,
                 name TEXT NOT NULL,
                 status INTEGER NOT NULL,
                 execution_id TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 completed_at INTEGER,
                 scheduled_start INTEGER,
                 input TEXT,
                 output TEXT,
                 custom_status TEXT,
                 failure BLOB,
                 parent_app_id TEXT,
                 parent_instance_id TEXT,
                 history_len INTEGER NOT NULL DEFAULT 0,
                 ready_at INTEGER,
                 lease_owner TEXT,
                 lease_until INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (app_id, instance_id)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS {instances}_ready
                 ON {instances} (app_id, ready_at) WHERE ready_at IS NOT NULL;
             CREATE INDEX IF NOT EXISTS {instances}_created ON {instances} (app_id, created_at);
             CREATE TABLE IF NOT EXISTS {history} (
                 app_id TEXT NOT NULL,
                 instance_id TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 event BLOB NOT NULL,
                 PRIMARY KEY (app_id, instance_id, seq)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS {inbox} (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 app_id TEXT NOT NULL,
                 instance_id TEXT NOT NULL,
                 execution_id TEXT,
                 kind INTEGER NOT NULL,
                 visible_at INTEGER NOT NULL,
                 event BLOB NOT NULL
             );
             CREATE INDEX IF NOT EXISTS {inbox}_instance ON {inbox} (app_id, instance_id, id);
             CREATE TABLE IF NOT EXISTS {activities} (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 app_id TEXT NOT NULL,
                 workflow_app_id TEXT NOT NULL,
                 instance_id TEXT NOT NULL,
                 request BLOB NOT NULL,
                 lease_owner TEXT,
                 lease_until INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX IF NOT EXISTS {activities}_app ON {activities} (app_id, lease_until, id);
             CREATE INDEX IF NOT EXISTS {activities}_instance
                 ON {activities} (workflow_app_id, instance_id);
             COMMIT;"
        )
    }

    /// Sets an instance's `ready_at` to the earliest visible time of the inbox events it
    /// can take in its state: the SQL form of [`crate::events::InboxKind::runnable`]
    /// (kind 1 control, 2 start, 0 the rest; status 7 suspended; an instance has started
    /// once its history holds anything), plus: a finished instance (status 1, 3, 4, 5)
    /// takes everything, to drop it.
    pub fn refresh_ready(&self) -> String {
        let Sql {
            instances, inbox, ..
        } = self;
        format!(
            "UPDATE {instances} SET ready_at = (
                 SELECT min(i.visible_at) FROM {inbox} i
                 WHERE i.app_id = ?1 AND i.instance_id = ?2 AND (
                     i.kind = 1
                     OR {instances}.status IN (1, 3, 4, 5)
                     OR ({instances}.status != 7 AND (i.kind = 2 OR {instances}.history_len > 0))
                 )
             ) WHERE app_id = ?1 AND instance_id = ?2"
        )
    }
}
