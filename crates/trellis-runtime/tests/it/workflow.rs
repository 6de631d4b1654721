//! The `Dapr` service's workflow RPCs and the task-hub service on a sidecar with no worker:
//! what a client sees of an instance that waits for one, and the errors in Dapr's terms.

use tonic::Code;
use trellis_proto::durabletask::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use trellis_proto::durabletask::{
    GetInstanceRequest, PurgeInstancesRequest, purge_instances_request,
};
use trellis_proto::runtime as pb;

use crate::grpc::client;
use crate::grpc_sidecar;

fn start(id: &str, options: &[(&str, &str)]) -> pb::StartWorkflowRequest {
    pb::StartWorkflowRequest {
        instance_id: id.into(),
        workflow_component: "dapr".into(),
        workflow_name: "chain".into(),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        input: b"42".to_vec(),
        app_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dapr_workflow_rpcs_manage_an_instance_waiting_for_a_worker() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("grpcwf", dir.path(), None, |_| {}).await;
    let mut dapr = client(&s).await;

    let started = dapr
        .start_workflow_beta1(start("wf-1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.instance_id, "wf-1");
    let got = dapr
        .get_workflow_alpha1(pb::GetWorkflowRequest {
            instance_id: "wf-1".into(),
            workflow_component: "dapr".into(),
            app_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.workflow_name, "chain");
    assert_eq!(got.runtime_status, "PENDING", "no worker has taken it");
    assert_eq!(
        got.properties
            .get("dapr.workflow.input")
            .map(String::as_str),
        Some("42")
    );
    assert!(got.created_at.is_some());

    // The same instance through the task-hub service the SDKs use.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", s.grpc_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut hub = TaskHubSidecarServiceClient::new(channel);
    let state = hub
        .get_instance(GetInstanceRequest {
            instance_id: "wf-1".into(),
            get_inputs_and_outputs: true,
            router: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(state.exists);
    let state = state.workflow_state.unwrap();
    assert_eq!(
        state.workflow_status,
        trellis_proto::durabletask::OrchestrationStatus::Pending as i32
    );
    assert_eq!(state.input.as_deref(), Some("42"));
    let purge_running = hub
        .purge_instances(PurgeInstancesRequest {
            request: Some(purge_instances_request::Request::InstanceId("wf-1".into())),
            recursive: false,
            force: None,
            router: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        purge_running.code(),
        Code::FailedPrecondition,
        "{purge_running:?}"
    );

    dapr.raise_event_workflow_beta1(pb::RaiseEventWorkflowRequest {
        instance_id: "wf-1".into(),
        workflow_component: "dapr".into(),
        event_name: "go".into(),
        event_data: b"1".to_vec(),
        app_id: String::new(),
    })
    .await
    .unwrap();
    let forced = hub
        .purge_instances(PurgeInstancesRequest {
            request: Some(purge_instances_request::Request::InstanceId("wf-1".into())),
            recursive: true,
            force: Some(true),
            router: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forced.deleted_instance_count, 1);

    // Errors.
    let missing = dapr
        .terminate_workflow_beta1(pb::TerminateWorkflowRequest {
            instance_id: "wf-1".into(),
            workflow_component: "dapr".into(),
            app_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    let bad_time = dapr
        .start_workflow_beta1(start("wf-2", &[("dapr.workflow.start_time", "tomorrow")]))
        .await
        .unwrap_err();
    assert_eq!(bad_time.code(), Code::InvalidArgument, "{bad_time:?}");
    let mut other = start("wf-3", &[]);
    other.workflow_component = "temporal".into();
    let err = dapr.start_workflow_beta1(other).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("temporal"), "{err:?}");
    let err = dapr
        .start_workflow_beta1(start("bad id!", &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A scheduled start stays pending; its time is kept.
    dapr.start_workflow_beta1(start(
        "wf-4",
        &[("dapr.workflow.start_time", "2099-01-01T00:00:00Z")],
    ))
    .await
    .unwrap();
    let later = hub
        .get_instance(GetInstanceRequest {
            instance_id: "wf-4".into(),
            get_inputs_and_outputs: false,
            router: None,
        })
        .await
        .unwrap()
        .into_inner()
        .workflow_state
        .unwrap();
    assert_eq!(
        later.scheduled_start_timestamp.map(|t| t.seconds),
        Some(4_070_908_800)
    );
    assert_eq!(later.input, None, "payloads only when asked");
    s.stop().await;
}
