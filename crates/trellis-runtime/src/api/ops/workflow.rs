//! Workflow operations with Dapr's validation and error codes, for the HTTP workflow API,
//! the `TaskHubSidecarService` the SDKs use, and the CLI's view of the same store.

use std::time::Duration;

use http::StatusCode;
use tonic::Code;
use trellis_workflow::engine::StartRequest;
use trellis_workflow::store::{Purged, is_terminal};
use trellis_workflow::{Engine, InstanceMeta, Status, WorkflowError};

use crate::api::ApiError;
use crate::runtime::Runtime;

/// The only workflow component name Dapr serves (`/v1.0/workflows/dapr/...`).
pub const COMPONENT: &str = "dapr";

/// How long terminate, suspend and resume wait for the instance to reach the state they
/// asked for, as Dapr's do, when a worker is connected to run the turn.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Which operation failed, for Dapr's per-operation error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Get,
    Terminate,
    RaiseEvent,
    Pause,
    Resume,
    Purge,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Start => "ERR_START_WORKFLOW",
            Op::Get => "ERR_GET_WORKFLOW",
            Op::Terminate => "ERR_TERMINATE_WORKFLOW",
            Op::RaiseEvent => "ERR_RAISE_EVENT_WORKFLOW",
            Op::Pause => "ERR_PAUSE_WORKFLOW",
            Op::Resume => "ERR_RESUME_WORKFLOW",
            Op::Purge => "ERR_PURGE_WORKFLOW",
        }
    }
}

/// A workflow error as Dapr reports it for `op`.
pub fn api_error(op: Op, e: WorkflowError) -> ApiError {
    match e {
        WorkflowError::NotFound(id) => ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_INSTANCE_ID_NOT_FOUND",
            format!("unable to find workflow with the provided instance id: {id}"),
        )
        .grpc(Code::NotFound),
        WorkflowError::InvalidId(msg) => {
            let code = if msg.contains("characters long") {
                "ERR_INSTANCE_ID_TOO_LONG"
            } else if msg.contains("is empty") {
                "ERR_INSTANCE_ID_PROVIDED_MISSING"
            } else {
                "ERR_INSTANCE_ID_INVALID"
            };
            ApiError::new(StatusCode::BAD_REQUEST, code, msg).grpc(Code::InvalidArgument)
        }
        WorkflowError::AlreadyExists(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, op.code(), e.to_string())
                .grpc(Code::AlreadyExists)
        }
        WorkflowError::Refused(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, op.code(), e.to_string())
                .grpc(Code::FailedPrecondition)
        }
        WorkflowError::LeaseLost(_) | WorkflowError::Backend(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, op.code(), e.to_string())
        }
    }
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message).grpc(Code::InvalidArgument)
}

/// The engine, after Dapr's check of the component name the HTTP and `Dapr` gRPC APIs
/// carry (`None` for the task-hub service, which names none).
pub async fn engine<'a>(
    rt: &'a Runtime,
    component: Option<&str>,
    op: Op,
) -> Result<&'a Engine, ApiError> {
    match component {
        Some("") => {
            return Err(bad_request(
                "ERR_WORKFLOW_COMPONENT_MISSING",
                "no workflow component was provided",
            ));
        }
        Some(c) if c != COMPONENT => {
            return Err(bad_request(
                "ERR_WORKFLOW_COMPONENT_NOT_FOUND",
                format!(
                    "unable to find workflow component {c:?}; the workflow engine is named {COMPONENT:?}"
                ),
            ));
        }
        _ => {}
    }
    let Some(workflows) = &rt.workflows else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            op.code(),
            "this Trellis build has no workflow backend",
        ));
    };
    workflows.engine().await.map_err(|e| api_error(op, e))
}

fn require_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(bad_request(
            "ERR_INSTANCE_ID_PROVIDED_MISSING",
            "no instance id was provided",
        ));
    }
    Ok(())
}

/// Starts an instance of `name`; returns its id.
pub async fn start(
    rt: &Runtime,
    component: Option<&str>,
    name: &str,
    req: StartRequest,
) -> Result<String, ApiError> {
    let engine = engine(rt, component, Op::Start).await?;
    if name.is_empty() {
        return Err(bad_request(
            "ERR_WORKFLOW_NAME_MISSING",
            "no workflow name was provided",
        ));
    }
    let req = StartRequest {
        name: name.to_string(),
        ..req
    };
    engine
        .start_instance(req)
        .await
        .map_err(|e| api_error(Op::Start, e))
}

/// The instance; 404 when there is none.
pub async fn get(
    rt: &Runtime,
    component: Option<&str>,
    id: &str,
) -> Result<InstanceMeta, ApiError> {
    let engine = engine(rt, component, Op::Get).await?;
    require_id(id)?;
    engine
        .get(id)
        .await
        .map_err(|e| api_error(Op::Get, e))?
        .ok_or_else(|| api_error(Op::Get, WorkflowError::NotFound(id.to_string())))
}

pub async fn raise_event(
    rt: &Runtime,
    component: Option<&str>,
    id: &str,
    event: &str,
    data: Option<String>,
) -> Result<(), ApiError> {
    let engine = engine(rt, component, Op::RaiseEvent).await?;
    require_id(id)?;
    if event.is_empty() {
        return Err(bad_request(
            "ERR_WORKFLOW_EVENT_NAME_MISSING",
            "no event name was provided",
        ));
    }
    engine
        .raise_event(id, event, data)
        .await
        .map_err(|e| api_error(Op::RaiseEvent, e))
}

/// Terminates an instance (and, with `recursive`, its children), waiting a little for it
/// to end.
pub async fn terminate(
    rt: &Runtime,
    component: Option<&str>,
    id: &str,
    output: Option<String>,
    recursive: bool,
) -> Result<(), ApiError> {
    let engine = engine(rt, component, Op::Terminate).await?;
    require_id(id)?;
    engine
        .terminate(id, output, recursive)
        .await
        .map_err(|e| api_error(Op::Terminate, e))?;
    settle(engine, id, is_terminal).await;
    Ok(())
}

pub async fn pause(
    rt: &Runtime,
    component: Option<&str>,
    id: &str,
    reason: Option<String>,
) -> Result<(), ApiError> {
    let engine = engine(rt, component, Op::Pause).await?;
    require_id(id)?;
    engine
        .suspend(id, reason)
        .await
        .map_err(|e| api_error(Op::Pause, e))?;
    settle(engine, id, |s| s == Status::Suspended || is_terminal(s)).await;
    Ok(())
}

pub async fn resume(
    rt: &Runtime,
    component: Option<&str>,
    id: &str,
    reason: Option<String>,
) -> Result<(), ApiError> {
    let engine = engine(rt, component, Op::Resume).await?;
    require_id(id)?;
    engine
        .resume(id, reason)
        .await
        .map_err(|e| api_error(Op::Resume, e))?;
    settle(engine, id, |s| s != Status::Suspended).await;
    Ok(())
}

pub async fn purge(
    rt: &Runtime,
    component: Option<&str>,
    id: &str,
    recursive: bool,
    force: bool,
) -> Result<Purged, ApiError> {
    let engine = engine(rt, component, Op::Purge).await?;
    require_id(id)?;
    engine
        .purge(id, recursive, force)
        .await
        .map_err(|e| api_error(Op::Purge, e))
}

/// Waits (briefly) for the instance to reach a state, when a worker is there to run the
/// turn that gets it there.
async fn settle(engine: &Engine, id: &str, done: impl Fn(Status) -> bool) {
    if engine.stats().workers == 0 {
        return;
    }
    if let Err(e) = engine.wait(id, done, Some(SETTLE_WAIT)).await {
        tracing::debug!(instance = id, error = %e, "workflow: waiting for a state change failed");
    }
}

/// Dapr's `properties` of an instance (`dapr.workflow.input`, `.output`, `.custom_status`,
/// `.failure.*`), the ones it has, for both APIs' answers to a get.
pub fn properties(m: &InstanceMeta) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    let mut put = |key, value: Option<&String>| {
        if let Some(v) = value {
            out.push((key, v.clone()));
        }
    };
    put("dapr.workflow.input", m.input.as_ref());
    put("dapr.workflow.output", m.output.as_ref());
    put("dapr.workflow.custom_status", m.custom_status.as_ref());
    if let Some(f) = &m.failure {
        put("dapr.workflow.failure.error_type", Some(&f.error_type));
        put(
            "dapr.workflow.failure.error_message",
            Some(&f.error_message),
        );
        put("dapr.workflow.failure.stack_trace", f.stack_trace.as_ref());
    }
    out
}

/// A workflow input or event payload as the text it is kept as (`None` when empty); both
/// APIs carry bytes, and anything but UTF-8 is refused.
pub fn payload(bytes: Vec<u8>) -> Result<Option<String>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
            "the workflow input must be UTF-8 text (JSON, usually)",
        )
    })
}

/// Dapr's name of a status (`RUNNING`, ...); STALLED is `UNKNOWN`, as in Dapr.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Running => "RUNNING",
        Status::Completed => "COMPLETED",
        Status::ContinuedAsNew => "CONTINUED_AS_NEW",
        Status::Failed => "FAILED",
        Status::Canceled => "CANCELED",
        Status::Terminated => "TERMINATED",
        Status::Pending => "PENDING",
        Status::Suspended => "SUSPENDED",
        Status::Stalled => "UNKNOWN",
    }
}
