//! The PostgreSQL store's tables and statements, written once per store for its table
//! names. The layout is the embedded store's (`sqlite/schema.rs`): instances with
//! `ready_at` and a lease, an append-only history, an inbox with `visible_at`, `kind` and
//! `execution_id`, an activity queue; events are protobuf bytes. One column more:
//! `due`, generated as the later of `ready_at` and `lease_until`, is when an instance can
//! next be leased, so leasing and `next_due` read one index range and never step over
//! the instances other sidecars hold.
//!
//! Most operations are one statement: data-modifying `WITH` clauses do the several writes
//! of an operation in one round trip, batches arrive as arrays (`unnest`), and leasing
//! takes rows with `FOR UPDATE SKIP LOCKED` so sidecars sharing the database take disjoint
//! work without waiting for each other.

/// The instance columns `GET` shows, in `ops::meta_of`'s order.
pub const META_COLUMNS: &str = "app_id, instance_id, name, status, execution_id, created_at, \
     updated_at, completed_at, scheduled_start, input, output, custom_status, failure, \
     parent_app_id, parent_instance_id, history_len";

/// The SQL form of [`crate::events::InboxKind::runnable`], as the embedded store's
/// `refresh_ready` has it: whether inbox event `e` can be taken by instance `x` in its
/// state (kind 1 control, 2 start, 0 the rest; status 7 suspended; an instance has started
/// once its history holds anything; a finished instance, status 1, 3, 4 or 5, takes
/// everything, to drop it).
fn runnable(e: &str, x: &str) -> String {
    format!(
        "({e}.kind = 1 OR {x}.status IN (1, 3, 4, 5) \
         OR ({x}.status <> 7 AND ({e}.kind = 2 OR {x}.history_len > 0)))"
    )
}

/// The statements of one store.
#[derive(Debug, Clone)]
pub struct Sql {
    pub create_tables: String,
    pub get: String,
    pub history: String,
    /// Creates or replaces (when finished) an instance and queues its start event;
    /// returns a row unless an unfinished instance holds the id.
    pub create: String,
    /// Delivers a batch of messages to the instances that exist, lowering their
    /// `ready_at`; returns how many were delivered.
    pub deliver: String,
    /// [`Sql::deliver`] of a batch of activity results, each gated on deleting its
    /// activity (`$7`, an array beside the messages).
    pub complete_activities: String,
    pub lease_workflows: String,
    /// A turn's lease check, history append, consumed inbox, row update, messages and
    /// activities, all only when the lease was held; returns whether it was.
    pub commit: String,
    /// Empties a history for continue-as-new, when the lease is held.
    pub reset_history: String,
    /// Recomputes one instance's `ready_at` from its whole inbox.
    pub refresh_ready: String,
    pub release_workflow: String,
    pub lease_activities: String,
    pub release_activity: String,
    pub renew: String,
    pub next_due: String,
    pub delete_instance: String,
    pub list: String,
    pub purge_finished: String,
}

impl Sql {
    pub fn new(table: &str) -> Sql {
        let i = format!("{table}_instances");
        let h = format!("{table}_history");
        let b = format!("{table}_inbox");
        let a = format!("{table}_activities");
        // The common table expressions that deliver the messages in parameters `$p..$p+5`
        // (apps, instances, executions, kinds, visible times, events): into the inbox of
        // the instances that exist, when `gate` holds, lowering their `ready_at` where the
        // new event is runnable, except for rows `skip` excludes. `ins` names what went in.
        // The instance rows are locked first in key order (`lk`), the order a batch of
        // commits takes them in, so a batch of results and a batch of commits touching the
        // same instances cannot deadlock.
        let deliver = |gate: &str, p: usize, skip: &str| {
            format!(
                "m AS (SELECT * FROM unnest(${p}::text[], ${}::text[], ${}::text[], ${}::int[], \
                     ${}::bigint[], ${}::bytea[]) WITH ORDINALITY \
                     AS m(app_id, instance_id, execution_id, kind, visible_at, event, n)), \
                 ins AS (INSERT INTO {b} (app_id, instance_id, execution_id, kind, visible_at, event) \
                     SELECT m.app_id, m.instance_id, m.execution_id, m.kind, m.visible_at, m.event \
                     FROM m WHERE {gate} EXISTS (SELECT 1 FROM {i} x \
                         WHERE x.app_id = m.app_id AND x.instance_id = m.instance_id) \
                     ORDER BY m.n \
                     RETURNING app_id, instance_id, kind, visible_at), \
                 lk AS MATERIALIZED (SELECT x.app_id, x.instance_id FROM {i} x \
                     WHERE (x.app_id, x.instance_id) IN (SELECT app_id, instance_id FROM ins) {skip} \
                     ORDER BY x.app_id, x.instance_id FOR UPDATE), \
                 up AS (UPDATE {i} x SET ready_at = LEAST(x.ready_at, \
                         (SELECT min(e.visible_at) FROM ins e \
                          WHERE e.app_id = x.app_id AND e.instance_id = x.instance_id \
                          AND {runnable})) \
                     FROM lk WHERE x.app_id = lk.app_id AND x.instance_id = lk.instance_id \
                     RETURNING 1)",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5,
                runnable = runnable("e", "x"),
            )
        };
        Sql {
            create_tables: format!(
                "CREATE TABLE IF NOT EXISTS {i} (
                     app_id TEXT NOT NULL,
                     instance_id TEXT NOT NULL,
                     name TEXT NOT NULL,
                     status INT NOT NULL,
                     execution_id TEXT NOT NULL,
                     created_at BIGINT NOT NULL,
                     updated_at BIGINT NOT NULL,
                     completed_at BIGINT,
                     scheduled_start BIGINT,
                     input TEXT,
                     output TEXT,
                     custom_status TEXT,
                     failure BYTEA,
                     parent_app_id TEXT,
                     parent_instance_id TEXT,
                     history_len BIGINT NOT NULL DEFAULT 0,
                     ready_at BIGINT,
                     lease_owner TEXT,
                     lease_until BIGINT NOT NULL DEFAULT 0,
                     due BIGINT GENERATED ALWAYS AS (GREATEST(ready_at, lease_until)) STORED,
                     PRIMARY KEY (app_id, instance_id)
                 );
                 CREATE INDEX IF NOT EXISTS {i}_due ON {i} (app_id, due)
                     WHERE ready_at IS NOT NULL;
                 CREATE INDEX IF NOT EXISTS {i}_created ON {i} (app_id, created_at);
                 CREATE TABLE IF NOT EXISTS {h} (
                     app_id TEXT NOT NULL,
                     instance_id TEXT NOT NULL,
                     seq BIGINT NOT NULL,
                     event BYTEA NOT NULL,
                     PRIMARY KEY (app_id, instance_id, seq)
                 );
                 CREATE TABLE IF NOT EXISTS {b} (
                     id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     app_id TEXT NOT NULL,
                     instance_id TEXT NOT NULL,
                     execution_id TEXT,
                     kind INT NOT NULL,
                     visible_at BIGINT NOT NULL,
                     event BYTEA NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS {b}_instance ON {b} (app_id, instance_id, id);
                 CREATE TABLE IF NOT EXISTS {a} (
                     id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     app_id TEXT NOT NULL,
                     workflow_app_id TEXT NOT NULL,
                     instance_id TEXT NOT NULL,
                     request BYTEA NOT NULL,
                     lease_owner TEXT,
                     lease_until BIGINT NOT NULL DEFAULT 0
                 );
                 CREATE INDEX IF NOT EXISTS {a}_app ON {a} (app_id, lease_until, id);
                 CREATE INDEX IF NOT EXISTS {a}_instance ON {a} (workflow_app_id, instance_id);"
            ),
            get: format!("SELECT {META_COLUMNS} FROM {i} WHERE app_id = $1 AND instance_id = $2"),
            history: format!(
                "SELECT event FROM {h} WHERE app_id = $1 AND instance_id = $2 ORDER BY seq"
            ),
            // A finished instance under the id is replaced: its row rewritten, what it
            // owned deleted (the deletes see the statement's snapshot, so the new start
            // event is not among them). The start is runnable at once, so `ready_at` is
            // its visible time.
            create: format!(
                "WITH up AS (INSERT INTO {i} AS x (app_id, instance_id, name, status, execution_id, \
                     created_at, updated_at, scheduled_start, input, parent_app_id, \
                     parent_instance_id, ready_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (app_id, instance_id) DO UPDATE SET name = excluded.name, \
                         status = excluded.status, execution_id = excluded.execution_id, \
                         created_at = excluded.created_at, updated_at = excluded.updated_at, \
                         completed_at = NULL, scheduled_start = excluded.scheduled_start, \
                         input = excluded.input, output = NULL, custom_status = NULL, \
                         failure = NULL, parent_app_id = excluded.parent_app_id, \
                         parent_instance_id = excluded.parent_instance_id, history_len = 0, \
                         ready_at = excluded.ready_at, lease_owner = NULL, lease_until = 0 \
                     WHERE x.status IN (1, 3, 4, 5) \
                     RETURNING 1), \
                 dh AS (DELETE FROM {h} WHERE app_id = $1 AND instance_id = $2 \
                     AND EXISTS (SELECT 1 FROM up)), \
                 db AS (DELETE FROM {b} WHERE app_id = $1 AND instance_id = $2 \
                     AND EXISTS (SELECT 1 FROM up)), \
                 da AS (DELETE FROM {a} WHERE workflow_app_id = $1 AND instance_id = $2 \
                     AND EXISTS (SELECT 1 FROM up)), \
                 ev AS (INSERT INTO {b} (app_id, instance_id, execution_id, kind, visible_at, event) \
                     SELECT $1, $2, $5, $12, $11, $13 FROM up) \
                 SELECT count(*) FROM up"
            ),
            deliver: format!("WITH {} SELECT count(*) FROM ins", deliver("", 1, "")),
            complete_activities: format!(
                "WITH d AS (DELETE FROM {a} WHERE id = ANY($7::bigint[]) RETURNING id), {} \
                 SELECT count(*) FROM ins",
                deliver("($7::bigint[])[m.n::int] IN (SELECT id FROM d) AND", 1, "")
            ),
            // The leased rows with their histories and visible inboxes, in one round trip.
            lease_workflows: format!(
                "WITH c AS (SELECT app_id, instance_id FROM {i} \
                     WHERE app_id = $1 AND ready_at IS NOT NULL AND due <= $2 \
                     ORDER BY due LIMIT $3 FOR UPDATE SKIP LOCKED), \
                 l AS (UPDATE {i} x SET lease_owner = $4, lease_until = $5 FROM c \
                     WHERE x.app_id = c.app_id AND x.instance_id = c.instance_id \
                     RETURNING x.*) \
                 SELECT {META_COLUMNS}, hs.events, ib.ids, ib.executions, ib.events \
                 FROM l \
                 LEFT JOIN LATERAL (SELECT array_agg(hh.event ORDER BY hh.seq) AS events \
                     FROM {h} hh WHERE hh.app_id = l.app_id AND hh.instance_id = l.instance_id \
                 ) hs ON true \
                 LEFT JOIN LATERAL (SELECT array_agg(e.id ORDER BY e.id) AS ids, \
                     array_agg(e.execution_id ORDER BY e.id) AS executions, \
                     array_agg(e.event ORDER BY e.id) AS events \
                     FROM {b} e WHERE e.app_id = l.app_id AND e.instance_id = l.instance_id \
                     AND e.visible_at <= $2 \
                 ) ib ON true \
                 ORDER BY l.ready_at"
            ),
            // `$4` is the number of events the turn appends, `$5` whether it resets the
            // history first; the row's old length is what the new events follow.
            commit: format!(
                "WITH u AS (UPDATE {i} SET updated_at = $6, \
                     history_len = CASE WHEN $5 THEN 0 ELSE history_len END + $4, \
                     lease_owner = NULL, lease_until = 0, \
                     status = coalesce($7, status), \
                     execution_id = coalesce($8, execution_id), \
                     input = CASE WHEN $9 THEN $10 ELSE input END, \
                     output = CASE WHEN $11 THEN $12 ELSE output END, \
                     custom_status = CASE WHEN $13 THEN $14 ELSE custom_status END, \
                     failure = CASE WHEN $15 THEN $16 ELSE failure END, \
                     completed_at = CASE WHEN $17 THEN $18 ELSE completed_at END \
                     WHERE app_id = $1 AND instance_id = $2 AND lease_owner = $3 \
                     RETURNING history_len - $4 AS base), \
                 ap AS (INSERT INTO {h} (app_id, instance_id, seq, event) \
                     SELECT $1, $2, u.base + e.n - 1, e.event \
                     FROM u, unnest($19::bytea[]) WITH ORDINALITY AS e(event, n)), \
                 co AS (DELETE FROM {b} WHERE id = ANY($20::bigint[]) \
                     AND app_id = $1 AND instance_id = $2 AND EXISTS (SELECT 1 FROM u)), \
                 {messages}, \
                 ac AS (INSERT INTO {a} (app_id, workflow_app_id, instance_id, request) \
                     SELECT * FROM unnest($27::text[], $28::text[], $29::text[], $30::bytea[]) \
                     WHERE EXISTS (SELECT 1 FROM u)) \
                 SELECT count(*) FROM u",
                // The instance's own `ready_at` is the refresh's, after this statement:
                // a row is updated once per statement.
                messages = deliver(
                    "EXISTS (SELECT 1 FROM u) AND",
                    21,
                    "AND NOT (x.app_id = $1 AND x.instance_id = $2)"
                ),
            ),
            reset_history: format!(
                "DELETE FROM {h} WHERE app_id = $1 AND instance_id = $2 AND EXISTS \
                 (SELECT 1 FROM {i} WHERE app_id = $1 AND instance_id = $2 AND lease_owner = $3)"
            ),
            refresh_ready: format!(
                "UPDATE {i} x SET ready_at = (SELECT min(e.visible_at) FROM {b} e \
                     WHERE e.app_id = $1 AND e.instance_id = $2 AND {runnable}) \
                 WHERE x.app_id = $1 AND x.instance_id = $2",
                runnable = runnable("e", "x"),
            ),
            release_workflow: format!(
                "UPDATE {i} SET lease_owner = NULL, lease_until = 0 \
                 WHERE app_id = $1 AND instance_id = $2 AND lease_owner = $3"
            ),
            lease_activities: format!(
                "WITH c AS (SELECT id FROM {a} WHERE app_id = $1 AND lease_until <= $2 \
                     ORDER BY lease_until, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE {a} x SET lease_owner = $4, lease_until = $5 FROM c WHERE x.id = c.id \
                 RETURNING x.id, x.app_id, x.workflow_app_id, x.request"
            ),
            release_activity: format!(
                "UPDATE {a} SET lease_owner = NULL, lease_until = 0 WHERE id = $1 AND lease_owner = $2"
            ),
            // Rows another transaction holds are skipped, not waited for: that is a commit
            // giving the lease up, or a result landing, and the next renewal (a third of a
            // lease later) takes them. Waiting, one statement over every leased row would
            // deadlock with a batch of commits holding some of them.
            renew: format!(
                "WITH a AS (UPDATE {a} x SET lease_until = $3 \
                     FROM (SELECT id FROM {a} \
                         WHERE app_id = $1 AND lease_owner = $2 AND lease_until > 0 \
                         FOR UPDATE SKIP LOCKED) c \
                     WHERE x.id = c.id RETURNING 1) \
                 UPDATE {i} x SET lease_until = $3 \
                 FROM (SELECT app_id, instance_id FROM {i} \
                     WHERE app_id = $1 AND lease_owner = $2 AND lease_until > 0 \
                     FOR UPDATE SKIP LOCKED) c \
                 WHERE x.app_id = c.app_id AND x.instance_id = c.instance_id"
            ),
            next_due: format!(
                "SELECT LEAST( \
                     (SELECT min(due) FROM {i} \
                      WHERE app_id = $1 AND ready_at IS NOT NULL AND due > $2), \
                     (SELECT min(lease_until) FROM {a} WHERE app_id = $1 AND lease_until > $2))"
            ),
            delete_instance: format!(
                "WITH dh AS (DELETE FROM {h} WHERE app_id = $1 AND instance_id = $2), \
                 db AS (DELETE FROM {b} WHERE app_id = $1 AND instance_id = $2), \
                 da AS (DELETE FROM {a} WHERE workflow_app_id = $1 AND instance_id = $2) \
                 DELETE FROM {i} WHERE app_id = $1 AND instance_id = $2"
            ),
            list: format!(
                "SELECT {META_COLUMNS} FROM {i} WHERE app_id = $1 \
                 AND ($2::int IS NULL OR status = $2) ORDER BY created_at DESC LIMIT $3"
            ),
            purge_finished: format!(
                "WITH v AS (SELECT instance_id FROM {i} \
                     WHERE app_id = $1 AND status = $2 AND completed_at < $3 LIMIT 1000), \
                 dh AS (DELETE FROM {h} h USING v WHERE h.app_id = $1 AND h.instance_id = v.instance_id), \
                 db AS (DELETE FROM {b} b USING v WHERE b.app_id = $1 AND b.instance_id = v.instance_id), \
                 da AS (DELETE FROM {a} a USING v \
                     WHERE a.workflow_app_id = $1 AND a.instance_id = v.instance_id) \
                 DELETE FROM {i} x USING v WHERE x.app_id = $1 AND x.instance_id = v.instance_id"
            ),
        }
    }
}
