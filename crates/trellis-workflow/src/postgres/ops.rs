//! The PostgreSQL store's operations: each takes a pooled client, most run one statement
//! of [`Sql`], a turn's commit is one transaction whose statements go out pipelined.

use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::{GenericClient, Transaction};
use prost::Message as _;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use trellis_proto::durabletask::{ActivityRequest, HistoryEvent, TaskFailureDetails};

use super::Sql;
use crate::events::{self, InboxKind};
use crate::store::{
    ActivityLease, ActivityTask, InboxItem, InstanceMeta, ListFilter, Message, NewInstance, Purged,
    TurnCommit, WorkflowLease,
};
use crate::{Millis, Status, WorkflowError};

pub fn db_err(e: tokio_postgres::Error) -> WorkflowError {
    // The driver's own text for a server error is just "db error"; the server's message
    // says what happened.
    match e.as_db_error() {
        Some(db) => WorkflowError::Backend(format!("postgresql: {}", db.message())),
        None => WorkflowError::Backend(format!("postgresql: {e}")),
    }
}

/// Whether a transaction failed only because it met another one (a deadlock between two
/// turns sending each other messages), so running it again will do.
pub fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    )
}

fn decode_err(e: prost::DecodeError) -> WorkflowError {
    WorkflowError::Backend(format!("postgresql: a stored event does not decode: {e}"))
}

fn decode_event(bytes: &[u8]) -> Result<HistoryEvent, WorkflowError> {
    HistoryEvent::decode(bytes).map_err(decode_err)
}

/// An instance from a row that starts with [`super::schema::META_COLUMNS`].
fn meta_of(row: &Row) -> Result<InstanceMeta, tokio_postgres::Error> {
    let failure: Option<Vec<u8>> = row.try_get(12)?;
    Ok(InstanceMeta {
        app_id: row.try_get(0)?,
        instance_id: row.try_get(1)?,
        name: row.try_get(2)?,
        status: Status::try_from(row.try_get::<_, i32>(3)?).unwrap_or(Status::Running),
        execution_id: row.try_get(4)?,
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
        completed_at: row.try_get(7)?,
        scheduled_start: row.try_get(8)?,
        input: row.try_get(9)?,
        output: row.try_get(10)?,
        custom_status: row.try_get(11)?,
        failure: failure.and_then(|b| TaskFailureDetails::decode(b.as_slice()).ok()),
        parent_app_id: row.try_get(13)?,
        parent_instance_id: row.try_get(14)?,
        history_len: row.try_get::<_, i64>(15)?.try_into().unwrap_or(0),
    })
}

async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query(&st, params).await
}

async fn count(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<i64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.query_one(&st, params).await?.try_get(0)
}

async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let st = c.prepare_cached(sql).await?;
    c.execute(&st, params).await
}

pub async fn get(
    c: &impl GenericClient,
    s: &Sql,
    app: &str,
    id: &str,
) -> Result<Option<InstanceMeta>, WorkflowError> {
    let rows = query(c, &s.get, &[&app, &id]).await.map_err(db_err)?;
    rows.first().map(meta_of).transpose().map_err(db_err)
}

pub async fn history(
    c: &impl GenericClient,
    s: &Sql,
    app: &str,
    id: &str,
) -> Result<Vec<HistoryEvent>, WorkflowError> {
    let rows = query(c, &s.history, &[&app, &id]).await.map_err(db_err)?;
    rows.iter()
        .map(|r| decode_event(r.try_get::<_, &[u8]>(0).map_err(db_err)?))
        .collect()
}

/// Creates (or replaces a finished) instance; false when an unfinished one holds the id.
pub async fn create(
    c: &impl GenericClient,
    s: &Sql,
    now: Millis,
    new: &NewInstance,
) -> Result<bool, tokio_postgres::Error> {
    let start = &new.start;
    let parent_instance = start
        .parent
        .as_ref()
        .and_then(|p| p.workflow_instance.as_ref())
        .map(|w| w.instance_id.clone());
    let visible_at = start.scheduled_start.unwrap_or(now).max(0);
    let event = events::execution_started(now, start);
    let made = count(
        c,
        &s.create,
        &[
            &new.app_id,
            &start.instance_id,
            &start.name,
            &(Status::Pending as i32),
            &start.execution_id,
            &now,
            &start.scheduled_start,
            &start.input,
            &new.parent_app_id,
            &parent_instance,
            &visible_at,
            &(InboxKind::of(&event) as i32),
            &event.encode_to_vec(),
        ],
    )
    .await?;
    Ok(made > 0)
}

/// The columns of a batch of messages, as [`Sql::deliver`] takes them.
struct Batch {
    apps: Vec<String>,
    ids: Vec<String>,
    executions: Vec<Option<String>>,
    kinds: Vec<i32>,
    visible: Vec<i64>,
    events: Vec<Vec<u8>>,
}

impl Batch {
    fn of<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Batch {
        let mut b = Batch {
            apps: Vec::new(),
            ids: Vec::new(),
            executions: Vec::new(),
            kinds: Vec::new(),
            visible: Vec::new(),
            events: Vec::new(),
        };
        for m in messages {
            b.apps.push(m.app_id.clone());
            b.ids.push(m.instance_id.clone());
            b.executions.push(m.execution_id.clone());
            b.kinds.push(InboxKind::of(&m.event) as i32);
            b.visible.push(m.visible_at);
            b.events.push(m.event.encode_to_vec());
        }
        b
    }
}

/// Delivers `messages` to the instances that exist; how many were.
async fn deliver_batch(
    c: &impl GenericClient,
    s: &Sql,
    messages: &[Message],
) -> Result<i64, tokio_postgres::Error> {
    if messages.is_empty() {
        return Ok(0);
    }
    let b = Batch::of(messages);
    count(
        c,
        &s.deliver,
        &[
            &b.apps,
            &b.ids,
            &b.executions,
            &b.kinds,
            &b.visible,
            &b.events,
        ],
    )
    .await
}

/// Puts `m` in its instance's inbox; false when there is no such instance.
pub async fn deliver(
    c: &impl GenericClient,
    s: &Sql,
    m: &Message,
) -> Result<bool, tokio_postgres::Error> {
    Ok(deliver_batch(c, s, std::slice::from_ref(m)).await? > 0)
}

pub async fn lease_workflows(
    c: &impl GenericClient,
    s: &Sql,
    app: &str,
    owner: &str,
    now: Millis,
    until: Millis,
    max: usize,
) -> Result<Vec<WorkflowLease>, WorkflowError> {
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    let rows = query(c, &s.lease_workflows, &[&app, &now, &max, &owner, &until])
        .await
        .map_err(db_err)?;
    let mut leases = Vec::with_capacity(rows.len());
    for row in &rows {
        let meta = meta_of(row).map_err(db_err)?;
        let past: Option<Vec<&[u8]>> = row.try_get(16).map_err(db_err)?;
        let ids: Option<Vec<i64>> = row.try_get(17).map_err(db_err)?;
        let executions: Option<Vec<Option<String>>> = row.try_get(18).map_err(db_err)?;
        let inbox: Option<Vec<&[u8]>> = row.try_get(19).map_err(db_err)?;
        let history = past
            .unwrap_or_default()
            .into_iter()
            .map(decode_event)
            .collect::<Result<_, _>>()?;
        let inbox = ids
            .unwrap_or_default()
            .into_iter()
            .zip(executions.unwrap_or_default())
            .zip(inbox.unwrap_or_default())
            .map(|((id, execution_id), bytes)| {
                Ok(InboxItem {
                    id,
                    execution_id,
                    event: decode_event(bytes)?,
                })
            })
            .collect::<Result<_, WorkflowError>>()?;
        leases.push(WorkflowLease {
            meta,
            history,
            inbox,
        });
    }
    Ok(leases)
}

/// A turn's commit as [`Sql::commit`]'s parameters.
struct CommitArgs<'a> {
    app: &'a str,
    id: &'a str,
    owner: &'a str,
    appended: i64,
    reset: bool,
    now: Millis,
    status: Option<i32>,
    execution_id: Option<&'a str>,
    input: (bool, Option<&'a str>),
    output: (bool, Option<&'a str>),
    custom: (bool, Option<&'a str>),
    failure: (bool, Option<Vec<u8>>),
    completed: (bool, Option<Millis>),
    append: Vec<Vec<u8>>,
    consumed: &'a [i64],
    messages: Batch,
    activities: [Vec<String>; 3],
    requests: Vec<Vec<u8>>,
}

fn set_str(field: &Option<Option<String>>) -> (bool, Option<&str>) {
    (field.is_some(), field.as_ref().and_then(|v| v.as_deref()))
}

impl<'a> CommitArgs<'a> {
    /// `with_messages` false leaves the messages out, for the caller to deliver after the
    /// children they may be addressed to exist.
    fn new(owner: &'a str, t: &'a TurnCommit, now: Millis, with_messages: bool) -> Self {
        let u = &t.update;
        let tasks = &t.activities;
        CommitArgs {
            app: &t.app_id,
            id: &t.instance_id,
            owner,
            appended: i64::try_from(t.append.len()).unwrap_or(i64::MAX),
            reset: t.reset_history,
            now,
            status: u.status.map(|s| s as i32),
            execution_id: u.execution_id.as_deref(),
            input: set_str(&u.input),
            output: set_str(&u.output),
            custom: set_str(&u.custom_status),
            failure: (
                u.failure.is_some(),
                u.failure
                    .as_ref()
                    .and_then(|f| f.as_ref().map(prost::Message::encode_to_vec)),
            ),
            completed: (u.completed_at.is_some(), u.completed_at.flatten()),
            append: t.append.iter().map(|e| e.encode_to_vec()).collect(),
            consumed: &t.consumed,
            messages: Batch::of(if with_messages { &t.messages[..] } else { &[] }),
            activities: [
                tasks.iter().map(|t| t.app_id.clone()).collect(),
                tasks.iter().map(|t| t.workflow_app_id.clone()).collect(),
                tasks
                    .iter()
                    .map(|t| {
                        t.request
                            .workflow_instance
                            .as_ref()
                            .map(|w| w.instance_id.clone())
                            .unwrap_or_default()
                    })
                    .collect(),
            ],
            requests: tasks.iter().map(|t| t.request.encode_to_vec()).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 30] {
        let m = &self.messages;
        [
            &self.app,
            &self.id,
            &self.owner,
            &self.appended,
            &self.reset,
            &self.now,
            &self.status,
            &self.execution_id,
            &self.input.0,
            &self.input.1,
            &self.output.0,
            &self.output.1,
            &self.custom.0,
            &self.custom.1,
            &self.failure.0,
            &self.failure.1,
            &self.completed.0,
            &self.completed.1,
            &self.append,
            &self.consumed,
            &m.apps,
            &m.ids,
            &m.executions,
            &m.kinds,
            &m.visible,
            &m.events,
            &self.activities[0],
            &self.activities[1],
            &self.activities[2],
            &self.requests,
        ]
    }
}

/// Turns' commits that create no children, in one transaction and one round trip:
/// `BEGIN`, then for each turn (as `(owner, commit)`) its commit statement (which writes
/// nothing unless the lease is held) and its instance's new `ready_at`, then `COMMIT`,
/// all sent together. A failed statement turns the `COMMIT` into a rollback, and
/// everything is sent before the first answer is awaited, so a caller that stops waiting
/// leaves no transaction open on the connection. Returns, per turn, whether the lease was
/// held.
pub async fn commit_pipelined(
    c: &deadpool_postgres::Object,
    s: &Sql,
    now: Millis,
    turns: &[(&str, &TurnCommit)],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let (reset, commit, refresh) = tokio::try_join!(
        c.prepare_cached(&s.reset_history),
        c.prepare_cached(&s.commit),
        c.prepare_cached(&s.refresh_ready),
    )?;
    // Instance rows are locked in key order, as every statement that locks several takes
    // them, so two transactions never wait on each other in a circle (a deadlock costs
    // `deadlock_timeout`, a second by default, of everyone queued behind it).
    let mut order: Vec<usize> = (0..turns.len()).collect();
    order.sort_by(|&x, &y| {
        let (a, b) = (turns[x].1, turns[y].1);
        (&a.app_id, &a.instance_id).cmp(&(&b.app_id, &b.instance_id))
    });
    let args: Vec<CommitArgs<'_>> = order
        .iter()
        .map(|&k| CommitArgs::new(turns[k].0, turns[k].1, now, true))
        .collect();
    let statements = args.iter().map(|args| {
        let (reset, commit, refresh) = (&reset, &commit, &refresh);
        async move {
            let params = args.params();
            let reset_params: [&(dyn ToSql + Sync); 3] = [&args.app, &args.id, &args.owner];
            let refresh_params: [&(dyn ToSql + Sync); 2] = [&args.app, &args.id];
            let reset = async {
                if args.reset {
                    c.execute(reset, &reset_params).await?;
                }
                Ok::<_, tokio_postgres::Error>(())
            };
            let (reset, held, refresh) = tokio::join!(
                biased;
                reset,
                c.query_one(commit, &params),
                c.execute(refresh, &refresh_params),
            );
            reset?;
            let held: i64 = held?.try_get(0)?;
            refresh?;
            Ok::<_, tokio_postgres::Error>(held > 0)
        }
    });
    // Each call sends its message the first time it is polled; `biased` and `join_all`
    // poll them in this order.
    let (begin, held, end) = tokio::join!(
        biased;
        c.batch_execute("BEGIN"),
        futures_util::future::join_all(statements),
        c.batch_execute("COMMIT"),
    );
    begin?;
    let mut answers = vec![false; turns.len()];
    for (k, held) in order.into_iter().zip(held) {
        answers[k] = held?;
    }
    end?;
    Ok(answers)
}

/// A turn's commit that creates children, in the open transaction `tx`: the commit
/// statement, then (when the lease was held) the children, the messages (which may be
/// addressed to them) and the new `ready_at`. Returns whether the lease was held (the
/// caller rolls back when it was not).
pub async fn commit_with_children(
    tx: &Transaction<'_>,
    s: &Sql,
    now: Millis,
    owner: &str,
    t: &TurnCommit,
) -> Result<bool, tokio_postgres::Error> {
    let (app, id) = (t.app_id.as_str(), t.instance_id.as_str());
    if t.reset_history {
        execute(tx, &s.reset_history, &[&app, &id, &owner]).await?;
    }
    let args = CommitArgs::new(owner, t, now, false);
    if count(tx, &s.commit, &args.params()).await? == 0 {
        return Ok(false);
    }
    for new in &t.new_instances {
        if !create(tx, s, now, new).await? {
            tracing::warn!(
                instance = id,
                child = new.start.instance_id,
                "workflow: child instance already exists"
            );
        }
    }
    let delivered = deliver_batch(tx, s, &t.messages).await?;
    if usize::try_from(delivered).unwrap_or(0) < t.messages.len() {
        tracing::debug!(from = id, "workflow: messages to missing instances dropped");
    }
    execute(tx, &s.refresh_ready, &[&app, &id]).await?;
    Ok(true)
}

pub async fn lease_activities(
    c: &impl GenericClient,
    s: &Sql,
    app: &str,
    owner: &str,
    now: Millis,
    until: Millis,
    max: usize,
) -> Result<Vec<ActivityLease>, WorkflowError> {
    let max = i64::try_from(max).unwrap_or(i64::MAX);
    let rows = query(c, &s.lease_activities, &[&app, &now, &max, &owner, &until])
        .await
        .map_err(db_err)?;
    let mut leases = rows
        .iter()
        .map(|r| {
            let request: &[u8] = r.try_get(3).map_err(db_err)?;
            Ok(ActivityLease {
                id: r.try_get(0).map_err(db_err)?,
                task: ActivityTask {
                    app_id: r.try_get(1).map_err(db_err)?,
                    workflow_app_id: r.try_get(2).map_err(db_err)?,
                    request: ActivityRequest::decode(request).map_err(decode_err)?,
                },
            })
        })
        .collect::<Result<Vec<_>, WorkflowError>>()?;
    leases.sort_by_key(|l| l.id);
    Ok(leases)
}

/// Delivers activity results, each only if its activity was still queued (deleting it);
/// `results` pairs an activity's id with its result.
pub async fn complete_activities(
    c: &impl GenericClient,
    s: &Sql,
    results: &[(i64, Message)],
) -> Result<(), tokio_postgres::Error> {
    let b = Batch::of(results.iter().map(|(_, m)| m));
    let ids: Vec<i64> = results.iter().map(|(id, _)| *id).collect();
    count(
        c,
        &s.complete_activities,
        &[
            &b.apps,
            &b.ids,
            &b.executions,
            &b.kinds,
            &b.visible,
            &b.events,
            &ids,
        ],
    )
    .await
    .map(|_| ())
}

pub async fn execute_one(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), WorkflowError> {
    execute(c, sql, params).await.map(|_| ()).map_err(db_err)
}

pub async fn next_due(
    c: &impl GenericClient,
    s: &Sql,
    app: &str,
    now: Millis,
) -> Result<Option<Millis>, WorkflowError> {
    let rows = query(c, &s.next_due, &[&app, &now]).await.map_err(db_err)?;
    match rows.first() {
        Some(r) => r.try_get(0).map_err(db_err),
        None => Ok(None),
    }
}

/// Purges `id` (and with `recursive` its children) in the open transaction `tx`.
pub fn purge<'a>(
    tx: &'a Transaction<'a>,
    s: &'a Sql,
    app: &'a str,
    id: &'a str,
    recursive: bool,
    force: bool,
) -> Pin<Box<dyn Future<Output = Result<Purged, WorkflowError>> + Send + 'a>> {
    Box::pin(async move {
        let Some(meta) = get(tx, s, app, id).await? else {
            return Err(WorkflowError::NotFound(id.to_string()));
        };
        crate::store::check_purgeable(id, meta.status, force)?;
        let mut purged = Purged::default();
        if recursive {
            let children = crate::store::child_instances(app, &history(tx, s, app, id).await?);
            for (child_app, child) in children {
                match purge(tx, s, &child_app, &child, true, force).await {
                    Ok(p) => purged.instances += p.instances,
                    Err(WorkflowError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        execute_one(tx, &s.delete_instance, &[&app, &id]).await?;
        purged.instances += 1;
        Ok(purged)
    })
}

pub async fn list(
    c: &impl GenericClient,
    s: &Sql,
    app: &str,
    f: &ListFilter,
) -> Result<Vec<InstanceMeta>, WorkflowError> {
    let status = f.status.map(|s| s as i32);
    let limit = f.limit.map(i64::from);
    let rows = query(c, &s.list, &[&app, &status, &limit])
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(meta_of)
        .collect::<Result<_, _>>()
        .map_err(db_err)
}

pub async fn purge_finished(
    c: &impl GenericClient,
    s: &Sql,
    app: &str,
    status: Status,
    before: Millis,
) -> Result<u32, WorkflowError> {
    let n = execute(c, &s.purge_finished, &[&app, &(status as i32), &before])
        .await
        .map_err(db_err)?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}
