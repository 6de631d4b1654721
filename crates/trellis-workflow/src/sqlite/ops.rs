//! The embedded store's operations, each run by the writer thread inside its transaction.

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, Row, params};
use trellis_proto::durabletask::{ActivityRequest, HistoryEvent, TaskFailureDetails};

use super::Sql;
use crate::events::{self, InboxKind};
use crate::store::{
    ActivityLease, ActivityTask, InboxItem, InstanceMeta, ListFilter, Message, NewInstance, Purged,
    TurnCommit, WorkflowLease, is_terminal,
};
use crate::{Millis, Status, WorkflowError};

pub fn db_err(e: rusqlite::Error) -> WorkflowError {
    WorkflowError::Backend(format!("sqlite: {e}"))
}

fn decode_err(e: prost::DecodeError) -> WorkflowError {
    WorkflowError::Backend(format!("sqlite: a stored event does not decode: {e}"))
}

const META_COLUMNS: &str = "app_id, instance_id, name, status, execution_id, created_at, \
     updated_at, completed_at, scheduled_start, input, output, custom_status, failure, \
     parent_app_id, parent_instance_id, history_len";

fn meta_of(row: &Row<'_>) -> rusqlite::Result<InstanceMeta> {
    let failure: Option<Vec<u8>> = row.get(12)?;
    Ok(InstanceMeta {
        app_id: row.get(0)?,
        instance_id: row.get(1)?,
        name: row.get(2)?,
        status: Status::try_from(row.get::<_, i32>(3)?).unwrap_or(Status::Running),
        execution_id: row.get(4)?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
        completed_at: row.get(7)?,
        scheduled_start: row.get(8)?,
        input: row.get(9)?,
        output: row.get(10)?,
        custom_status: row.get(11)?,
        failure: failure.and_then(|b| TaskFailureDetails::decode(b.as_slice()).ok()),
        parent_app_id: row.get(13)?,
        parent_instance_id: row.get(14)?,
        history_len: row.get::<_, i64>(15)?.try_into().unwrap_or(0),
    })
}

pub fn get(
    c: &Connection,
    s: &Sql,
    app: &str,
    id: &str,
) -> Result<Option<InstanceMeta>, WorkflowError> {
    c.prepare_cached(&format!(
        "SELECT {META_COLUMNS} FROM {} WHERE app_id = ?1 AND instance_id = ?2",
        s.instances
    ))
    .and_then(|mut st| st.query_row(params![app, id], meta_of).optional())
    .map_err(db_err)
}

pub fn history(
    c: &Connection,
    s: &Sql,
    app: &str,
    id: &str,
) -> Result<Vec<HistoryEvent>, WorkflowError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT event FROM {} WHERE app_id = ?1 AND instance_id = ?2 ORDER BY seq",
            s.history
        ))
        .map_err(db_err)?;
    let rows = st
        .query_map(params![app, id], |r| r.get::<_, Vec<u8>>(0))
        .map_err(db_err)?;
    let mut events = Vec::new();
    for row in rows {
        let bytes = row.map_err(db_err)?;
        events.push(HistoryEvent::decode(bytes.as_slice()).map_err(decode_err)?);
    }
    Ok(events)
}

fn inbox(
    c: &Connection,
    s: &Sql,
    app: &str,
    id: &str,
    now: Millis,
) -> Result<Vec<InboxItem>, WorkflowError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT id, execution_id, event FROM {} \
             WHERE app_id = ?1 AND instance_id = ?2 AND visible_at <= ?3 ORDER BY id",
            s.inbox
        ))
        .map_err(db_err)?;
    let rows = st
        .query_map(params![app, id, now], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(db_err)?;
    let mut items = Vec::new();
    for row in rows {
        let (id, execution_id, bytes) = row.map_err(db_err)?;
        items.push(InboxItem {
            id,
            execution_id,
            event: HistoryEvent::decode(bytes.as_slice()).map_err(decode_err)?,
        });
    }
    Ok(items)
}

fn refresh_ready(c: &Connection, s: &Sql, app: &str, id: &str) -> Result<(), WorkflowError> {
    c.prepare_cached(&s.refresh_ready())
        .and_then(|mut st| st.execute(params![app, id]))
        .map(|_| ())
        .map_err(db_err)
}

/// Deletes an instance and everything it owns.
fn delete_instance(c: &Connection, s: &Sql, app: &str, id: &str) -> Result<(), WorkflowError> {
    for (table, app_column) in [
        (&s.instances, "app_id"),
        (&s.history, "app_id"),
        (&s.inbox, "app_id"),
        (&s.activities, "workflow_app_id"),
    ] {
        c.prepare_cached(&format!(
            "DELETE FROM {table} WHERE {app_column} = ?1 AND instance_id = ?2"
        ))
        .and_then(|mut st| st.execute(params![app, id]))
        .map_err(db_err)?;
    }
    Ok(())
}

pub fn create(
    c: &Connection,
    s: &Sql,
    now: Millis,
    new: &NewInstance,
) -> Result<(), WorkflowError> {
    let start = &new.start;
    if let Some(existing) = get(c, s, &new.app_id, &start.instance_id)? {
        if !is_terminal(existing.status) {
            return Err(WorkflowError::AlreadyExists(start.instance_id.clone()));
        }
        delete_instance(c, s, &new.app_id, &start.instance_id)?;
    }
    let parent_instance = start
        .parent
        .as_ref()
        .and_then(|p| p.workflow_instance.as_ref())
        .map(|w| w.instance_id.clone());
    c.prepare_cached(&format!(
        "INSERT INTO {} (app_id, instance_id, name, status, execution_id, created_at, \
         updated_at, scheduled_start, input, parent_app_id, parent_instance_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10)",
        s.instances
    ))
    .and_then(|mut st| {
        st.execute(params![
            new.app_id,
            start.instance_id,
            start.name,
            Status::Pending as i32,
            start.execution_id,
            now,
            start.scheduled_start,
            start.input,
            new.parent_app_id,
            parent_instance,
        ])
    })
    .map_err(db_err)?;
    let visible_at = start.scheduled_start.unwrap_or(now).max(0);
    insert_inbox(
        c,
        s,
        &Message {
            app_id: new.app_id.clone(),
            instance_id: start.instance_id.clone(),
            execution_id: Some(start.execution_id.clone()),
            event: events::execution_started(now, start),
            visible_at,
        },
    )?;
    refresh_ready(c, s, &new.app_id, &start.instance_id)
}

fn insert_inbox(c: &Connection, s: &Sql, m: &Message) -> Result<(), WorkflowError> {
    c.prepare_cached(&format!(
        "INSERT INTO {} (app_id, instance_id, execution_id, kind, visible_at, event) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        s.inbox
    ))
    .and_then(|mut st| {
        st.execute(params![
            m.app_id,
            m.instance_id,
            m.execution_id,
            InboxKind::of(&m.event) as i32,
            m.visible_at,
            m.event.encode_to_vec(),
        ])
    })
    .map(|_| ())
    .map_err(db_err)
}

/// Puts `m` in its instance's inbox; false (and nothing written) when there is no such
/// instance.
pub fn deliver(c: &Connection, s: &Sql, m: &Message) -> Result<bool, WorkflowError> {
    let exists: bool = c
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE app_id = ?1 AND instance_id = ?2)",
            s.instances
        ))
        .and_then(|mut st| st.query_row(params![m.app_id, m.instance_id], |r| r.get(0)))
        .map_err(db_err)?;
    if !exists {
        return Ok(false);
    }
    insert_inbox(c, s, m)?;
    refresh_ready(c, s, &m.app_id, &m.instance_id)?;
    Ok(true)
}

pub fn lease_workflows(
    c: &Connection,
    s: &Sql,
    app: &str,
    owner: &str,
    now: Millis,
    until: Millis,
    max: usize,
) -> Result<Vec<WorkflowLease>, WorkflowError> {
    let ids: Vec<String> = {
        let mut st = c
            .prepare_cached(&format!(
                "SELECT instance_id FROM {} WHERE app_id = ?1 AND ready_at <= ?2 \
                 AND lease_until <= ?2 ORDER BY ready_at LIMIT ?3",
                s.instances
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![app, now, max as i64], |r| r.get(0))
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    let mut leases = Vec::with_capacity(ids.len());
    for id in ids {
        c.prepare_cached(&format!(
            "UPDATE {} SET lease_owner = ?3, lease_until = ?4 WHERE app_id = ?1 AND instance_id = ?2",
            s.instances
        ))
        .and_then(|mut st| st.execute(params![app, id, owner, until]))
        .map_err(db_err)?;
        let Some(meta) = get(c, s, app, &id)? else {
            continue;
        };
        leases.push(WorkflowLease {
            history: history(c, s, app, &id)?,
            inbox: inbox(c, s, app, &id, now)?,
            meta,
        });
    }
    Ok(leases)
}

pub fn commit_turn(
    c: &Connection,
    s: &Sql,
    now: Millis,
    owner: &str,
    t: &TurnCommit,
) -> Result<(), WorkflowError> {
    let (app, id) = (t.app_id.as_str(), t.instance_id.as_str());
    let held: Option<(Option<String>, i64)> = c
        .prepare_cached(&format!(
            "SELECT lease_owner, history_len FROM {} WHERE app_id = ?1 AND instance_id = ?2",
            s.instances
        ))
        .and_then(|mut st| {
            st.query_row(params![app, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(db_err)?;
    let mut len = match held {
        Some((Some(o), len)) if o == owner => len,
        _ => return Err(WorkflowError::LeaseLost(id.to_string())),
    };
    if t.reset_history {
        c.prepare_cached(&format!(
            "DELETE FROM {} WHERE app_id = ?1 AND instance_id = ?2",
            s.history
        ))
        .and_then(|mut st| st.execute(params![app, id]))
        .map_err(db_err)?;
        len = 0;
    }
    {
        let mut st = c
            .prepare_cached(&format!(
                "INSERT INTO {} (app_id, instance_id, seq, event) VALUES (?1, ?2, ?3, ?4)",
                s.history
            ))
            .map_err(db_err)?;
        for event in &t.append {
            st.execute(params![app, id, len, event.encode_to_vec()])
                .map_err(db_err)?;
            len += 1;
        }
    }
    {
        let mut st = c
            .prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", s.inbox))
            .map_err(db_err)?;
        for taken in &t.consumed {
            st.execute([taken]).map_err(db_err)?;
        }
    }
    update_meta(c, s, now, t, len)?;
    for new in &t.new_instances {
        match create(c, s, now, new) {
            Err(WorkflowError::AlreadyExists(child)) => {
                tracing::warn!(
                    instance = id,
                    child,
                    "workflow: child instance already exists"
                );
            }
            other => other?,
        }
    }
    for m in &t.messages {
        if !deliver(c, s, m)? {
            tracing::debug!(
                from = id,
                to = m.instance_id,
                event = events::event_name(&m.event),
                "workflow: message to a missing instance dropped"
            );
        }
    }
    for task in &t.activities {
        insert_activity(c, s, task)?;
    }
    refresh_ready(c, s, app, id)
}

fn update_meta(
    c: &Connection,
    s: &Sql,
    now: Millis,
    t: &TurnCommit,
    len: i64,
) -> Result<(), WorkflowError> {
    let u = &t.update;
    // Each optional column is set only when the update says so (flag ?N = 1).
    let failure = u
        .failure
        .as_ref()
        .map(|f| f.as_ref().map(prost::Message::encode_to_vec));
    c.prepare_cached(&format!(
        "UPDATE {} SET updated_at = ?3, history_len = ?4, lease_owner = NULL, lease_until = 0, \
             status = coalesce(?5, status), \
             execution_id = coalesce(?6, execution_id), \
             input = CASE WHEN ?7 THEN ?8 ELSE input END, \
             output = CASE WHEN ?9 THEN ?10 ELSE output END, \
             custom_status = CASE WHEN ?11 THEN ?12 ELSE custom_status END, \
             failure = CASE WHEN ?13 THEN ?14 ELSE failure END, \
             completed_at = CASE WHEN ?15 THEN ?16 ELSE completed_at END \
         WHERE app_id = ?1 AND instance_id = ?2",
        s.instances
    ))
    .and_then(|mut st| {
        st.execute(params![
            t.app_id,
            t.instance_id,
            now,
            len,
            u.status.map(|s| s as i32),
            u.execution_id,
            u.input.is_some(),
            u.input.clone().flatten(),
            u.output.is_some(),
            u.output.clone().flatten(),
            u.custom_status.is_some(),
            u.custom_status.clone().flatten(),
            failure.is_some(),
            failure.flatten(),
            u.completed_at.is_some(),
            u.completed_at.flatten(),
        ])
    })
    .map(|_| ())
    .map_err(db_err)
}

fn insert_activity(c: &Connection, s: &Sql, task: &ActivityTask) -> Result<(), WorkflowError> {
    let instance = task
        .request
        .workflow_instance
        .as_ref()
        .map(|w| w.instance_id.clone())
        .unwrap_or_default();
    c.prepare_cached(&format!(
        "INSERT INTO {} (app_id, workflow_app_id, instance_id, request) VALUES (?1, ?2, ?3, ?4)",
        s.activities
    ))
    .and_then(|mut st| {
        st.execute(params![
            task.app_id,
            task.workflow_app_id,
            instance,
            task.request.encode_to_vec()
        ])
    })
    .map(|_| ())
    .map_err(db_err)
}

pub fn release_workflow(
    c: &Connection,
    s: &Sql,
    app: &str,
    id: &str,
    owner: &str,
) -> Result<(), WorkflowError> {
    c.prepare_cached(&format!(
        "UPDATE {} SET lease_owner = NULL, lease_until = 0 \
         WHERE app_id = ?1 AND instance_id = ?2 AND lease_owner = ?3",
        s.instances
    ))
    .and_then(|mut st| st.execute(params![app, id, owner]))
    .map(|_| ())
    .map_err(db_err)
}

pub fn lease_activities(
    c: &Connection,
    s: &Sql,
    app: &str,
    owner: &str,
    now: Millis,
    until: Millis,
    max: usize,
) -> Result<Vec<ActivityLease>, WorkflowError> {
    let rows: Vec<(i64, String, String, Vec<u8>)> = {
        let mut st = c
            .prepare_cached(&format!(
                "SELECT id, app_id, workflow_app_id, request FROM {} \
                 WHERE app_id = ?1 AND lease_until <= ?2 ORDER BY id LIMIT ?3",
                s.activities
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![app, now, max as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    let mut leases = Vec::with_capacity(rows.len());
    let mut st = c
        .prepare_cached(&format!(
            "UPDATE {} SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1",
            s.activities
        ))
        .map_err(db_err)?;
    for (id, app_id, workflow_app_id, request) in rows {
        st.execute(params![id, owner, until]).map_err(db_err)?;
        leases.push(ActivityLease {
            id,
            task: ActivityTask {
                app_id,
                workflow_app_id,
                request: ActivityRequest::decode(request.as_slice()).map_err(decode_err)?,
            },
        });
    }
    Ok(leases)
}

pub fn complete_activity(
    c: &Connection,
    s: &Sql,
    id: i64,
    result: &Message,
) -> Result<(), WorkflowError> {
    let deleted = c
        .prepare_cached(&format!("DELETE FROM {} WHERE id = ?1", s.activities))
        .and_then(|mut st| st.execute([id]))
        .map_err(db_err)?;
    if deleted > 0 {
        deliver(c, s, result)?;
    }
    Ok(())
}

pub fn release_activity(
    c: &Connection,
    s: &Sql,
    id: i64,
    owner: &str,
) -> Result<(), WorkflowError> {
    c.prepare_cached(&format!(
        "UPDATE {} SET lease_owner = NULL, lease_until = 0 WHERE id = ?1 AND lease_owner = ?2",
        s.activities
    ))
    .and_then(|mut st| st.execute(params![id, owner]))
    .map(|_| ())
    .map_err(db_err)
}

pub fn renew(
    c: &Connection,
    s: &Sql,
    app: &str,
    owner: &str,
    until: Millis,
) -> Result<(), WorkflowError> {
    for table in [&s.instances, &s.activities] {
        c.prepare_cached(&format!(
            "UPDATE {table} SET lease_until = ?3 WHERE app_id = ?1 AND lease_owner = ?2 AND lease_until > 0"
        ))
        .and_then(|mut st| st.execute(params![app, owner, until]))
        .map_err(db_err)?;
    }
    Ok(())
}

pub fn next_due(
    c: &Connection,
    s: &Sql,
    app: &str,
    now: Millis,
) -> Result<Option<Millis>, WorkflowError> {
    c.prepare_cached(&format!(
        "SELECT min(due) FROM (
             SELECT max(ready_at, lease_until) AS due FROM {} WHERE app_id = ?1 AND ready_at IS NOT NULL
             UNION ALL
             SELECT lease_until AS due FROM {} WHERE app_id = ?1
         ) WHERE due > ?2",
        s.instances, s.activities
    ))
    .and_then(|mut st| st.query_row(params![app, now], |r| r.get(0)))
    .map_err(db_err)
}

pub fn purge(
    c: &Connection,
    s: &Sql,
    app: &str,
    id: &str,
    recursive: bool,
    force: bool,
) -> Result<Purged, WorkflowError> {
    let Some(meta) = get(c, s, app, id)? else {
        return Err(WorkflowError::NotFound(id.to_string()));
    };
    crate::store::check_purgeable(id, meta.status, force)?;
    let mut purged = Purged::default();
    if recursive {
        for (child_app, child) in crate::store::child_instances(app, &history(c, s, app, id)?) {
            match purge(c, s, &child_app, &child, true, force) {
                Ok(p) => purged.instances += p.instances,
                Err(WorkflowError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    delete_instance(c, s, app, id)?;
    purged.instances += 1;
    Ok(purged)
}

pub fn list(
    c: &Connection,
    s: &Sql,
    app: &str,
    f: &ListFilter,
) -> Result<Vec<InstanceMeta>, WorkflowError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {META_COLUMNS} FROM {} WHERE app_id = ?1 AND (?2 IS NULL OR status = ?2) \
             ORDER BY created_at DESC LIMIT ?3",
            s.instances
        ))
        .map_err(db_err)?;
    let rows = st
        .query_map(
            params![
                app,
                f.status.map(|s| s as i32),
                f.limit.map_or(-1, i64::from)
            ],
            meta_of,
        )
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

pub fn purge_finished(
    c: &Connection,
    s: &Sql,
    app: &str,
    status: Status,
    before: Millis,
) -> Result<u32, WorkflowError> {
    let ids: Vec<String> = {
        let mut st = c
            .prepare_cached(&format!(
                "SELECT instance_id FROM {} WHERE app_id = ?1 AND status = ?2 AND completed_at < ?3 LIMIT ?4",
                s.instances
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(
                params![app, status as i32, before, crate::store::PURGE_SLICE],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    for id in &ids {
        delete_instance(c, s, app, id)?;
    }
    Ok(u32::try_from(ids.len()).unwrap_or(u32::MAX))
}
