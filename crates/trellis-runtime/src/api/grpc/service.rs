//! The `Dapr` service: each RPC is a thin adapter from protobuf to an [`ops`] call.
//!
//! [`ops`]: crate::api::ops

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tonic::{Request, Response, Status};
use trellis_proto::common::{self as pbc, state_options};
use trellis_proto::runtime::{self as pb, dapr_server::Dapr};
use trellis_state::{Concurrency, Consistency};

use super::status::to_status;
use crate::api::ops::{
    lock as lock_ops, pubsub as pubsub_ops, secrets as secret_ops, state as state_ops,
};
use crate::runtime::Runtime;

pub struct DaprApi {
    rt: Arc<Runtime>,
}

impl DaprApi {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn concurrency(options: Option<&pbc::StateOptions>) -> Concurrency {
    match options.map(|o| o.concurrency()) {
        Some(state_options::StateConcurrency::ConcurrencyFirstWrite) => Concurrency::FirstWrite,
        _ => Concurrency::LastWrite,
    }
}

fn consistency(options: Option<&pbc::StateOptions>) -> Consistency {
    match options.map(|o| o.consistency()) {
        Some(state_options::StateConsistency::ConsistencyStrong) => Consistency::Strong,
        _ => Consistency::Eventual,
    }
}

/// A state item as the save operation takes it. gRPC carries bytes: JSON stays JSON (so
/// queries and the HTTP API see it as such), anything else is kept as the app's bytes.
fn save_item(item: pbc::StateItem) -> state_ops::SaveItem {
    let value = Bytes::from(item.value);
    let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_ok();
    state_ops::SaveItem {
        concurrency: concurrency(item.options.as_ref()),
        consistency: consistency(item.options.as_ref()),
        key: item.key,
        value,
        is_json,
        etag: item.etag.map(|e| e.value),
        metadata: item.metadata.into_iter().collect(),
    }
}

fn delete_item(item: pbc::StateItem) -> state_ops::DeleteItem {
    state_ops::DeleteItem {
        concurrency: concurrency(item.options.as_ref()),
        consistency: consistency(item.options.as_ref()),
        key: item.key,
        etag: item.etag.map(|e| e.value),
    }
}

fn expiry_metadata(item: &trellis_state::Item) -> std::collections::HashMap<String, String> {
    item.expires_at
        .map(|t| {
            let time = trellis_core::time::rfc3339(t, trellis_core::time::Precision::Seconds);
            ("ttlExpireTime".to_string(), time)
        })
        .into_iter()
        .collect()
}

/// The trace context of a call, from its metadata (the same W3C headers as on HTTP).
fn trace_header<'a, T>(req: &'a Request<T>, name: &str) -> Option<&'a str> {
    req.metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

#[tonic::async_trait]
impl Dapr for DaprApi {
    async fn invoke_service(
        &self,
        request: Request<pb::InvokeServiceRequest>,
    ) -> Reply<pbc::InvokeResponse> {
        super::invoke::invoke_service(&self.rt, request).await
    }

    async fn get_secret(
        &self,
        request: Request<pb::GetSecretRequest>,
    ) -> Reply<pb::GetSecretResponse> {
        let req = request.into_inner();
        let metadata = req.metadata.into_iter().collect();
        let secret = secret_ops::get(&self.rt, &req.store_name, &req.key, metadata)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetSecretResponse {
            data: secret.into_iter().collect(),
        }))
    }

    async fn get_bulk_secret(
        &self,
        request: Request<pb::GetBulkSecretRequest>,
    ) -> Reply<pb::GetBulkSecretResponse> {
        let req = request.into_inner();
        let metadata = req.metadata.into_iter().collect();
        let all = secret_ops::bulk(&self.rt, &req.store_name, metadata)
            .await
            .map_err(to_status)?;
        let data = all
            .into_iter()
            .map(|(name, secret)| {
                let secrets = secret.into_iter().collect();
                (name, pb::SecretResponse { secrets })
            })
            .collect();
        Ok(Response::new(pb::GetBulkSecretResponse { data }))
    }

    async fn try_lock_alpha1(
        &self,
        request: Request<pb::TryLockRequest>,
    ) -> Reply<pb::TryLockResponse> {
        let req = request.into_inner();
        let got = lock_ops::try_lock(
            &self.rt,
            &req.store_name,
            &req.resource_id,
            &req.lock_owner,
            i64::from(req.expiry_in_seconds),
        )
        .await
        .map_err(to_status)?;
        let mut resp = Response::new(pb::TryLockResponse {
            success: got.acquired(),
        });
        // The fencing token, a Trellis extension, as response metadata.
        if let trellis_lock::TryLock::Acquired { fencing_token } = got {
            resp.metadata_mut().insert(
                lock_ops::FENCING_TOKEN_HEADER,
                tonic::metadata::MetadataValue::from(fencing_token),
            );
        }
        Ok(resp)
    }

    async fn unlock_alpha1(
        &self,
        request: Request<pb::UnlockRequest>,
    ) -> Reply<pb::UnlockResponse> {
        let req = request.into_inner();
        let status = lock_ops::unlock(&self.rt, &req.store_name, &req.resource_id, &req.lock_owner)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::UnlockResponse {
            status: lock_ops::status_code(status),
        }))
    }

    async fn get_configuration_alpha1(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> Reply<pb::GetConfigurationResponse> {
        self.get_configuration(request).await
    }

    async fn get_configuration(
        &self,
        request: Request<pb::GetConfigurationRequest>,
    ) -> Reply<pb::GetConfigurationResponse> {
        super::configuration::get(&self.rt, request.into_inner()).await
    }

    type SubscribeConfigurationAlpha1Stream = super::configuration::UpdateStream;

    async fn subscribe_configuration_alpha1(
        &self,
        request: Request<pb::SubscribeConfigurationRequest>,
    ) -> Reply<Self::SubscribeConfigurationAlpha1Stream> {
        super::configuration::subscribe(&self.rt, request.into_inner()).await
    }

    type SubscribeConfigurationStream = super::configuration::UpdateStream;

    async fn subscribe_configuration(
        &self,
        request: Request<pb::SubscribeConfigurationRequest>,
    ) -> Reply<Self::SubscribeConfigurationStream> {
        super::configuration::subscribe(&self.rt, request.into_inner()).await
    }

    async fn unsubscribe_configuration_alpha1(
        &self,
        request: Request<pb::UnsubscribeConfigurationRequest>,
    ) -> Reply<pb::UnsubscribeConfigurationResponse> {
        super::configuration::unsubscribe(&self.rt, request.into_inner())
    }

    async fn unsubscribe_configuration(
        &self,
        request: Request<pb::UnsubscribeConfigurationRequest>,
    ) -> Reply<pb::UnsubscribeConfigurationResponse> {
        super::configuration::unsubscribe(&self.rt, request.into_inner())
    }

    async fn get_state(
        &self,
        request: Request<pb::GetStateRequest>,
    ) -> Reply<pb::GetStateResponse> {
        let req = request.into_inner();
        let consistency = match req.consistency() {
            state_options::StateConsistency::ConsistencyStrong => Consistency::Strong,
            _ => Consistency::Eventual,
        };
        let metadata = req.metadata.into_iter().collect();
        let item = state_ops::get(&self.rt, &req.store_name, &req.key, consistency, metadata)
            .await
            .map_err(to_status)?;
        // A missing key is an empty response, as in Dapr (gRPC has no 204).
        let reply = match item {
            None => pb::GetStateResponse::default(),
            Some(item) => pb::GetStateResponse {
                metadata: expiry_metadata(&item),
                data: item.value.to_vec(),
                etag: item.etag,
            },
        };
        Ok(Response::new(reply))
    }

    async fn get_bulk_state(
        &self,
        request: Request<pb::GetBulkStateRequest>,
    ) -> Reply<pb::GetBulkStateResponse> {
        let req = request.into_inner();
        let results = state_ops::bulk_get(&self.rt, &req.store_name, req.keys)
            .await
            .map_err(to_status)?;
        let items = results
            .into_iter()
            .map(|(key, result)| match result {
                Ok(Some(item)) => pb::BulkStateItem {
                    key,
                    metadata: expiry_metadata(&item),
                    data: item.value.to_vec(),
                    etag: item.etag,
                    error: String::new(),
                },
                Ok(None) => pb::BulkStateItem {
                    key,
                    ..Default::default()
                },
                Err(error) => pb::BulkStateItem {
                    key,
                    error,
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::GetBulkStateResponse { items }))
    }

    async fn save_state(&self, request: Request<pb::SaveStateRequest>) -> Reply<()> {
        let req = request.into_inner();
        state_ops::store(&self.rt, &req.store_name).map_err(to_status)?;
        let items = req.states.into_iter().map(save_item).collect();
        state_ops::save(&self.rt, &req.store_name, items)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn query_state_alpha1(
        &self,
        request: Request<pb::QueryStateRequest>,
    ) -> Reply<pb::QueryStateResponse> {
        let req = request.into_inner();
        state_ops::store(&self.rt, &req.store_name).map_err(to_status)?;
        let document: serde_json::Value = serde_json::from_str(&req.query).map_err(|e| {
            to_status(state_ops::malformed(format!(
                "failed to parse the query as JSON: {e}"
            )))
        })?;
        let response = state_ops::query(&self.rt, &req.store_name, &document)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::QueryStateResponse {
            results: response
                .results
                .into_iter()
                .map(|r| pb::QueryStateItem {
                    key: r.key,
                    data: r.data.to_vec(),
                    etag: r.etag.unwrap_or_default(),
                    error: String::new(),
                })
                .collect(),
            token: response.token.unwrap_or_default(),
            metadata: Default::default(),
        }))
    }

    async fn delete_state(&self, request: Request<pb::DeleteStateRequest>) -> Reply<()> {
        let req = request.into_inner();
        let item = state_ops::DeleteItem {
            concurrency: concurrency(req.options.as_ref()),
            consistency: consistency(req.options.as_ref()),
            key: req.key,
            etag: req.etag.map(|e| e.value),
        };
        state_ops::delete(&self.rt, &req.store_name, item)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn delete_bulk_state(&self, request: Request<pb::DeleteBulkStateRequest>) -> Reply<()> {
        let req = request.into_inner();
        let items = req.states.into_iter().map(delete_item).collect();
        state_ops::bulk_delete(&self.rt, &req.store_name, items)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn execute_state_transaction(
        &self,
        request: Request<pb::ExecuteStateTransactionRequest>,
    ) -> Reply<()> {
        let req = request.into_inner();
        state_ops::store(&self.rt, &req.store_name).map_err(to_status)?;
        let ops = req
            .operations
            .into_iter()
            .map(|op| {
                let item = op.request.unwrap_or_default();
                match op.operation_type.as_str() {
                    "upsert" => Ok(state_ops::TxOp::Upsert(save_item(item))),
                    "delete" => Ok(state_ops::TxOp::Delete(delete_item(item))),
                    other => Err(state_ops::unsupported_operation(other)),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_status)?;
        state_ops::transact(&self.rt, &req.store_name, ops)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn publish_event(&self, request: Request<pb::PublishEventRequest>) -> Reply<()> {
        let traceparent = trace_header(&request, "traceparent").map(str::to_string);
        let tracestate = trace_header(&request, "tracestate").map(str::to_string);
        let req = request.into_inner();
        let publish = pubsub_ops::Publish {
            pubsub: &req.pubsub_name,
            topic: &req.topic,
            data: Bytes::from(req.data),
            content_type: Some(req.data_content_type.as_str()).filter(|c| !c.is_empty()),
            metadata: req.metadata.into_iter().collect(),
            traceparent: traceparent.as_deref(),
            tracestate: tracestate.as_deref(),
        };
        pubsub_ops::publish(&self.rt, publish)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn bulk_publish_event_alpha1(
        &self,
        request: Request<pb::BulkPublishRequest>,
    ) -> Reply<pb::BulkPublishResponse> {
        self.bulk_publish_event(request).await
    }

    async fn bulk_publish_event(
        &self,
        request: Request<pb::BulkPublishRequest>,
    ) -> Reply<pb::BulkPublishResponse> {
        let traceparent = trace_header(&request, "traceparent").map(str::to_string);
        let tracestate = trace_header(&request, "tracestate").map(str::to_string);
        let req = request.into_inner();
        let entries = req
            .entries
            .into_iter()
            .map(|e| pubsub_ops::BulkEntry {
                entry_id: e.entry_id,
                event: Bytes::from(e.event),
                content_type: e.content_type,
                metadata: e.metadata.into_iter().collect(),
            })
            .collect();
        let publish = pubsub_ops::Publish {
            pubsub: &req.pubsub_name,
            topic: &req.topic,
            metadata: req.metadata.into_iter().collect::<BTreeMap<_, _>>(),
            traceparent: traceparent.as_deref(),
            tracestate: tracestate.as_deref(),
            ..Default::default()
        };
        let outcome = pubsub_ops::bulk_publish(&self.rt, publish, entries)
            .await
            .map_err(to_status)?;
        // Entry failures are an answer, not an error, as in Dapr: the caller retries those.
        let failed_entries = match outcome {
            Ok(()) => Vec::new(),
            Err(failure) => failure
                .failed
                .into_iter()
                .map(|(entry_id, error)| pb::BulkPublishResponseFailedEntry { entry_id, error })
                .collect(),
        };
        Ok(Response::new(pb::BulkPublishResponse { failed_entries }))
    }

    type SubscribeTopicEventsAlpha1Stream = super::subscribe::EventStream;

    async fn subscribe_topic_events_alpha1(
        &self,
        request: Request<tonic::Streaming<pb::SubscribeTopicEventsRequestAlpha1>>,
    ) -> Reply<Self::SubscribeTopicEventsAlpha1Stream> {
        super::subscribe::subscribe(self.rt.clone(), request).await
    }

    async fn get_metadata(
        &self,
        _request: Request<pb::GetMetadataRequest>,
    ) -> Reply<pb::GetMetadataResponse> {
        Ok(Response::new(super::super::meta::grpc_metadata(&self.rt)))
    }

    async fn set_metadata(&self, request: Request<pb::SetMetadataRequest>) -> Reply<()> {
        let req = request.into_inner();
        self.rt.set_extended(req.key, req.value);
        Ok(Response::new(()))
    }

    async fn shutdown(&self, _request: Request<pb::ShutdownRequest>) -> Reply<()> {
        tracing::info!("shutdown requested through the grpc api");
        self.rt.request_shutdown();
        Ok(Response::new(()))
    }

    async fn start_workflow_alpha1(
        &self,
        request: Request<pb::StartWorkflowRequest>,
    ) -> Reply<pb::StartWorkflowResponse> {
        super::workflow::start(&self.rt, request.into_inner()).await
    }

    async fn get_workflow_alpha1(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Reply<pb::GetWorkflowResponse> {
        super::workflow::get(&self.rt, request.into_inner()).await
    }

    async fn purge_workflow_alpha1(&self, request: Request<pb::PurgeWorkflowRequest>) -> Reply<()> {
        super::workflow::purge(&self.rt, request.into_inner()).await
    }

    async fn terminate_workflow_alpha1(
        &self,
        request: Request<pb::TerminateWorkflowRequest>,
    ) -> Reply<()> {
        super::workflow::terminate(&self.rt, request.into_inner()).await
    }

    async fn pause_workflow_alpha1(&self, request: Request<pb::PauseWorkflowRequest>) -> Reply<()> {
        super::workflow::pause(&self.rt, request.into_inner()).await
    }

    async fn resume_workflow_alpha1(
        &self,
        request: Request<pb::ResumeWorkflowRequest>,
    ) -> Reply<()> {
        super::workflow::resume(&self.rt, request.into_inner()).await
    }

    async fn raise_event_workflow_alpha1(
        &self,
        request: Request<pb::RaiseEventWorkflowRequest>,
    ) -> Reply<()> {
        super::workflow::raise_event(&self.rt, request.into_inner()).await
    }

    async fn start_workflow_beta1(
        &self,
        request: Request<pb::StartWorkflowRequest>,
    ) -> Reply<pb::StartWorkflowResponse> {
        super::workflow::start(&self.rt, request.into_inner()).await
    }

    async fn get_workflow_beta1(
        &self,
        request: Request<pb::GetWorkflowRequest>,
    ) -> Reply<pb::GetWorkflowResponse> {
        super::workflow::get(&self.rt, request.into_inner()).await
    }

    async fn purge_workflow_beta1(&self, request: Request<pb::PurgeWorkflowRequest>) -> Reply<()> {
        super::workflow::purge(&self.rt, request.into_inner()).await
    }

    async fn terminate_workflow_beta1(
        &self,
        request: Request<pb::TerminateWorkflowRequest>,
    ) -> Reply<()> {
        super::workflow::terminate(&self.rt, request.into_inner()).await
    }

    async fn pause_workflow_beta1(&self, request: Request<pb::PauseWorkflowRequest>) -> Reply<()> {
        super::workflow::pause(&self.rt, request.into_inner()).await
    }

    async fn resume_workflow_beta1(
        &self,
        request: Request<pb::ResumeWorkflowRequest>,
    ) -> Reply<()> {
        super::workflow::resume(&self.rt, request.into_inner()).await
    }

    async fn raise_event_workflow_beta1(
        &self,
        request: Request<pb::RaiseEventWorkflowRequest>,
    ) -> Reply<()> {
        super::workflow::raise_event(&self.rt, request.into_inner()).await
    }

    async fn schedule_job_alpha1(
        &self,
        request: Request<pb::ScheduleJobRequest>,
    ) -> Reply<pb::ScheduleJobResponse> {
        super::jobs::schedule(&self.rt, request.into_inner()).await
    }

    async fn schedule_job(
        &self,
        request: Request<pb::ScheduleJobRequest>,
    ) -> Reply<pb::ScheduleJobResponse> {
        super::jobs::schedule(&self.rt, request.into_inner()).await
    }

    async fn get_job_alpha1(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Reply<pb::GetJobResponse> {
        super::jobs::get(&self.rt, request.into_inner()).await
    }

    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Reply<pb::GetJobResponse> {
        super::jobs::get(&self.rt, request.into_inner()).await
    }

    async fn delete_job_alpha1(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Reply<pb::DeleteJobResponse> {
        super::jobs::delete(&self.rt, request.into_inner()).await
    }

    async fn delete_job(
        &self,
        request: Request<pb::DeleteJobRequest>,
    ) -> Reply<pb::DeleteJobResponse> {
        super::jobs::delete(&self.rt, request.into_inner()).await
    }

    async fn delete_jobs_by_prefix_alpha1(
        &self,
        request: Request<pb::DeleteJobsByPrefixRequestAlpha1>,
    ) -> Reply<pb::DeleteJobsByPrefixResponseAlpha1> {
        super::jobs::delete_prefix(&self.rt, request.into_inner().name_prefix).await?;
        Ok(Response::new(pb::DeleteJobsByPrefixResponseAlpha1 {}))
    }

    async fn delete_jobs_by_prefix(
        &self,
        request: Request<pb::DeleteJobsByPrefixRequest>,
    ) -> Reply<pb::DeleteJobsByPrefixResponse> {
        super::jobs::delete_prefix(&self.rt, request.into_inner().name_prefix).await?;
        Ok(Response::new(pb::DeleteJobsByPrefixResponse {}))
    }

    async fn list_jobs_alpha1(
        &self,
        _request: Request<pb::ListJobsRequestAlpha1>,
    ) -> Reply<pb::ListJobsResponseAlpha1> {
        let jobs = super::jobs::list(&self.rt).await?;
        Ok(Response::new(pb::ListJobsResponseAlpha1 { jobs }))
    }

    async fn list_jobs(
        &self,
        _request: Request<pb::ListJobsRequest>,
    ) -> Reply<pb::ListJobsResponse> {
        let jobs = super::jobs::list(&self.rt).await?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }
}
