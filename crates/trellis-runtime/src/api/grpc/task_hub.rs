//! The durabletask `TaskHubSidecarService` the Dapr workflow SDKs connect to: the client
//! RPCs are thin adapters over [`ops::workflow`], the worker RPCs over the engine's
//! dispatcher (a `GetWorkItems` stream is one connected worker).
//!
//! [`ops::workflow`]: crate::api::ops::workflow

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status};
use trellis_proto::durabletask::task_hub_sidecar_service_server::TaskHubSidecarService;
use trellis_proto::durabletask::{self as pb, purge_instances_request};
use trellis_workflow::engine::StartRequest;
use trellis_workflow::events::{millis, timestamp};
use trellis_workflow::store::{InstanceMeta, ListFilter, is_terminal};
use trellis_workflow::{Status as WfStatus, WorkflowError};

use super::status::to_status;
use crate::api::ops::workflow::{self as ops, Op, api_error};
use crate::runtime::Runtime;

pub struct TaskHub {
    rt: Arc<Runtime>,
}

impl TaskHub {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn fail(op: Op, e: WorkflowError) -> Status {
    to_status(api_error(op, e))
}

/// The instance as the protocol's `WorkflowState`; inputs and outputs only when asked.
fn state(m: InstanceMeta, payloads: bool) -> pb::WorkflowState {
    let payload = |v: Option<String>| if payloads { v } else { None };
    pb::WorkflowState {
        instance_id: m.instance_id,
        name: m.name,
        version: None,
        workflow_status: m.status as i32,
        scheduled_start_timestamp: m.scheduled_start.map(timestamp),
        created_timestamp: Some(timestamp(m.created_at)),
        last_updated_timestamp: Some(timestamp(m.updated_at)),
        input: payload(m.input),
        output: payload(m.output),
        custom_status: payload(m.custom_status),
        failure_details: m.failure,
        execution_id: Some(m.execution_id),
        completed_timestamp: m.completed_at.map(timestamp),
        parent_instance_id: m.parent_instance_id,
        tags: Default::default(),
        parent_app_id: m.parent_app_id,
        started_at: None,
    }
}

fn instance_response(meta: Option<InstanceMeta>, payloads: bool) -> pb::GetInstanceResponse {
    match meta {
        Some(m) => pb::GetInstanceResponse {
            exists: true,
            workflow_state: Some(state(m, payloads)),
        },
        None => pb::GetInstanceResponse {
            exists: false,
            workflow_state: None,
        },
    }
}

impl TaskHub {
    async fn wait(
        &self,
        req: pb::GetInstanceRequest,
        done: fn(WfStatus) -> bool,
    ) -> Reply<pb::GetInstanceResponse> {
        let engine = ops::engine(&self.rt, None, Op::Get)
            .await
            .map_err(to_status)?;
        // No deadline of our own: the client's ends the call, which drops this wait.
        let meta = engine
            .wait(&req.instance_id, done, None)
            .await
            .map_err(|e| fail(Op::Get, e))?;
        Ok(Response::new(instance_response(
            meta,
            req.get_inputs_and_outputs,
        )))
    }
}

pub type WorkItems = Pin<Box<dyn Stream<Item = Result<pb::WorkItem, Status>> + Send>>;

#[tonic::async_trait]
impl TaskHubSidecarService for TaskHub {
    async fn hello(&self, _: Request<()>) -> Reply<()> {
        Ok(Response::new(()))
    }

    async fn start_instance(
        &self,
        req: Request<pb::CreateInstanceRequest>,
    ) -> Reply<pb::CreateInstanceResponse> {
        let req = req.into_inner();
        let id = ops::start(
            &self.rt,
            None,
            &req.name,
            StartRequest {
                instance_id: Some(req.instance_id),
                name: String::new(),
                input: req.input,
                scheduled_start: req.scheduled_start_timestamp.as_ref().map(millis),
                tags: req.tags,
            },
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(pb::CreateInstanceResponse {
            instance_id: id,
        }))
    }

    async fn get_instance(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Reply<pb::GetInstanceResponse> {
        let req = req.into_inner();
        let engine = ops::engine(&self.rt, None, Op::Get)
            .await
            .map_err(to_status)?;
        let meta = engine
            .get(&req.instance_id)
            .await
            .map_err(|e| fail(Op::Get, e))?;
        Ok(Response::new(instance_response(
            meta,
            req.get_inputs_and_outputs,
        )))
    }

    async fn wait_for_instance_start(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Reply<pb::GetInstanceResponse> {
        self.wait(req.into_inner(), |s| s != WfStatus::Pending)
            .await
    }

    async fn wait_for_instance_completion(
        &self,
        req: Request<pb::GetInstanceRequest>,
    ) -> Reply<pb::GetInstanceResponse> {
        self.wait(req.into_inner(), |s| {
            is_terminal(s) || s == WfStatus::Stalled
        })
        .await
    }

    async fn raise_event(
        &self,
        req: Request<pb::RaiseEventRequest>,
    ) -> Reply<pb::RaiseEventResponse> {
        let req = req.into_inner();
        ops::raise_event(&self.rt, None, &req.instance_id, &req.name, req.input)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RaiseEventResponse {}))
    }

    async fn terminate_instance(
        &self,
        req: Request<pb::TerminateRequest>,
    ) -> Reply<pb::TerminateResponse> {
        let req = req.into_inner();
        ops::terminate(&self.rt, None, &req.instance_id, req.output, req.recursive)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::TerminateResponse {}))
    }

    async fn suspend_instance(
        &self,
        req: Request<pb::SuspendRequest>,
    ) -> Reply<pb::SuspendResponse> {
        let req = req.into_inner();
        ops::pause(&self.rt, None, &req.instance_id, req.reason)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SuspendResponse {}))
    }

    async fn resume_instance(&self, req: Request<pb::ResumeRequest>) -> Reply<pb::ResumeResponse> {
        let req = req.into_inner();
        ops::resume(&self.rt, None, &req.instance_id, req.reason)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ResumeResponse {}))
    }

    async fn purge_instances(
        &self,
        req: Request<pb::PurgeInstancesRequest>,
    ) -> Reply<pb::PurgeInstancesResponse> {
        let req = req.into_inner();
        let Some(purge_instances_request::Request::InstanceId(id)) = req.request else {
            return Err(Status::invalid_argument(
                "purging by filter is not supported; name the instance id",
            ));
        };
        let purged = ops::purge(
            &self.rt,
            None,
            &id,
            req.recursive,
            req.force.unwrap_or(false),
        )
        .await
        .map_err(to_status)?;
        Ok(Response::new(pb::PurgeInstancesResponse {
            deleted_instance_count: i32::try_from(purged.instances).unwrap_or(i32::MAX),
            is_complete: Some(true),
        }))
    }

    type GetWorkItemsStream = WorkItems;

    async fn get_work_items(&self, req: Request<pb::GetWorkItemsRequest>) -> Reply<WorkItems> {
        let engine = ops::engine(&self.rt, None, Op::Start)
            .await
            .map_err(to_status)?;
        let stateful = req
            .get_ref()
            .capabilities
            .contains(&(pb::WorkerCapability::StatefulHistory as i32));
        let conn = if stateful {
            engine.connect_stateful_worker()
        } else {
            engine.connect_worker()
        };
        // The connection moves into the stream: when the worker goes away tonic drops the
        // stream, and with it the connection, which gives its work back. The stream ends
        // when the sidecar stops, so that its graceful shutdown does not wait for workers
        // (the SDKs reconnect, to this sidecar's successor or another replica).
        let stopping = self.rt.stopping();
        let items =
            futures_util::stream::unfold((conn, stopping), |(mut conn, mut stopping)| async move {
                let item = tokio::select! {
                    item = conn.next() => item,
                    _ = stopping.wait_for(|s| *s) => None,
                };
                item.map(|item| (Ok(item), (conn, stopping)))
            });
        Ok(Response::new(Box::pin(items)))
    }

    async fn complete_activity_task(
        &self,
        req: Request<pb::ActivityResponse>,
    ) -> Reply<pb::CompleteTaskResponse> {
        let engine = ops::engine(&self.rt, None, Op::Start)
            .await
            .map_err(to_status)?;
        engine
            .complete_activity(req.into_inner())
            .await
            .map_err(|e| fail(Op::Start, e))?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn complete_orchestrator_task(
        &self,
        req: Request<pb::WorkflowResponse>,
    ) -> Reply<pb::CompleteTaskResponse> {
        self.complete_workflow_task(req).await
    }

    async fn complete_workflow_task(
        &self,
        req: Request<pb::WorkflowResponse>,
    ) -> Reply<pb::CompleteTaskResponse> {
        let engine = ops::engine(&self.rt, None, Op::Start)
            .await
            .map_err(to_status)?;
        engine
            .complete_workflow(req.into_inner())
            .await
            .map_err(|e| fail(Op::Start, e))?;
        Ok(Response::new(pb::CompleteTaskResponse {}))
    }

    async fn rerun_workflow_from_event(
        &self,
        _: Request<pb::RerunWorkflowFromEventRequest>,
    ) -> Reply<pb::RerunWorkflowFromEventResponse> {
        Err(Status::unimplemented(
            "RerunWorkflowFromEvent is not supported by Trellis yet",
        ))
    }

    async fn list_instance_i_ds(
        &self,
        req: Request<pb::ListInstanceIDsRequest>,
    ) -> Reply<pb::ListInstanceIDsResponse> {
        let req = req.into_inner();
        let engine = ops::engine(&self.rt, None, Op::Get)
            .await
            .map_err(to_status)?;
        let filter = ListFilter {
            status: None,
            limit: req.page_size,
        };
        let instances = engine.list(&filter).await.map_err(|e| fail(Op::Get, e))?;
        Ok(Response::new(pb::ListInstanceIDsResponse {
            instance_ids: instances.into_iter().map(|m| m.instance_id).collect(),
            continuation_token: None,
        }))
    }

    async fn get_instance_history(
        &self,
        req: Request<pb::GetInstanceHistoryRequest>,
    ) -> Reply<pb::GetInstanceHistoryResponse> {
        let engine = ops::engine(&self.rt, None, Op::Get)
            .await
            .map_err(to_status)?;
        let id = req.into_inner().instance_id;
        let events = engine.history(&id).await.map_err(|e| fail(Op::Get, e))?;
        if events.is_empty()
            && engine
                .get(&id)
                .await
                .map_err(|e| fail(Op::Get, e))?
                .is_none()
        {
            return Err(fail(Op::Get, WorkflowError::NotFound(id)));
        }
        Ok(Response::new(pb::GetInstanceHistoryResponse { events }))
    }
}
