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
            input: ops::payload(req.input).map_err(to_status)?,
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
    let properties = ops::properties(&m)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
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
    let data = ops::payload(req.event_data).map_err(to_status)?;
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
