//! The `Dapr` service's workflow RPCs (`*WorkflowAlpha1`, `*WorkflowBeta1`): thin adapters
//! over [`ops::workflow`], named by component (`dapr`) as the HTTP API is. Inputs and event
//! data arrive as bytes and are kept as the text they are.
//!
//! [`ops::workflow`]: crate::api::ops::workflow

use tonic::{Response, Status};
use trellis_proto::runtime as pb;
use trellis_workflow::engine::StartRequest;
use trellis_workflow::events::timestamp;

use super::status::to_status;
use crate::api::ApiError;
use crate::api::ops::workflow::{self as ops, status_name};
use crate::runtime::Runtime;

type Reply<T> = Result<Response<T>, Status>;

/// The option that schedules a start, an RFC 3339 time.
const START_TIME: &str = "dapr.workflow.start_time";

fn text(bytes: Vec<u8>) -> Result<Option<String>, Status> {
    if bytes.is_empty() {
        return Ok(None);
    }
    String::from_utf8(bytes).map(Some).map_err(|_| {
        to_status(ApiError::new(
            http::StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
            "the workflow input must be UTF-8 text (JSON, usually)",
        ))
    })
}

pub async fn start(
    rt: &Runtime,
    req: pb::StartWorkflowRequest,
) -> Reply<pb::StartWorkflowResponse> {
    let scheduled_start = match req.options.get(START_TIME) {
        Some(t) => Some(trellis_core::time::parse_rfc3339_ms(t).ok_or_else(|| {
            to_status(ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "ERR_START_WORKFLOW",
                format!("option {START_TIME} is not an RFC 3339 time: {t:?}"),
            ))
        })?),
        None => None,
    };
    let instance_id = ops::start(
        rt,
        Some(&req.workflow_component),
        &req.workflow_name,
        StartRequest {
            instance_id: Some(req.instance_id),
            input: text(req.input)?,
            scheduled_start,
            ..StartRequest::default()
        },
    )
    .await
    .map_err(to_status)?;
    Ok(Response::new(pb::StartWorkflowResponse { instance_id }))
}

pub async fn get(rt: &Runtime, req: pb::GetWorkflowRequest) -> Reply<pb::GetWorkflowResponse> {
    let m = ops::get(rt, Some(&req.workflow_component), &req.instance_id)
        .await
        .map_err(to_status)?;
    let mut properties = std::collections::HashMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            properties.insert(key.to_string(), v);
        }
    };
    put("dapr.workflow.input", m.input.clone());
    put("dapr.workflow.output", m.output.clone());
    put("dapr.workflow.custom_status", m.custom_status.clone());
    if let Some(f) = &m.failure {
        put(
            "dapr.workflow.failure.error_type",
            Some(f.error_type.clone()),
        );
        put(
            "dapr.workflow.failure.error_message",
            Some(f.error_message.clone()),
        );
        put("dapr.workflow.failure.stack_trace", f.stack_trace.clone());
    }
    Ok(Response::new(pb::GetWorkflowResponse {
        instance_id: m.instance_id,
        workflow_name: m.name,
        created_at: Some(timestamp(m.created_at)),
        last_updated_at: Some(timestamp(m.updated_at)),
        runtime_status: status_name(m.status).to_string(),
        properties,
    }))
}

pub async fn purge(rt: &Runtime, req: pb::PurgeWorkflowRequest) -> Reply<()> {
    ops::purge(
        rt,
        Some(&req.workflow_component),
        &req.instance_id,
        true,
        false,
    )
    .await
    .map_err(to_status)?;
    Ok(Response::new(()))
}

pub async fn terminate(rt: &Runtime, req: pb::TerminateWorkflowRequest) -> Reply<()> {
    ops::terminate(
        rt,
        Some(&req.workflow_component),
        &req.instance_id,
        None,
        true,
    )
    .await
    .map_err(to_status)?;
    Ok(Response::new(()))
}

pub async fn pause(rt: &Runtime, req: pb::PauseWorkflowRequest) -> Reply<()> {
    ops::pause(rt, Some(&req.workflow_component), &req.instance_id, None)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

pub async fn resume(rt: &Runtime, req: pb::ResumeWorkflowRequest) -> Reply<()> {
    ops::resume(rt, Some(&req.workflow_component), &req.instance_id, None)
        .await
        .map_err(to_status)?;
    Ok(Response::new(()))
}

pub async fn raise_event(rt: &Runtime, req: pb::RaiseEventWorkflowRequest) -> Reply<()> {
    let data = text(req.event_data)?;
    ops::raise_event(
        rt,
        Some(&req.workflow_component),
        &req.instance_id,
        &req.event_name,
        data,
    )
    .await
    .map_err(to_status)?;
    Ok(Response::new(()))
}
