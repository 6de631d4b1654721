//! The jobs API against in-process sidecars and the embedded job store: scheduling,
//! reading and deleting over HTTP and gRPC, delivery to an HTTP app (`POST /job/<name>`)
//! and to a gRPC app (`OnJobEvent`), the failure policy, and Dapr's errors for bad input
//! with nothing stored.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use trellis_proto::common as pbc;
use trellis_proto::runtime as pb;
use trellis_runtime::{AppChannelConfig, AppProtocol};
use trellis_test_support::{SubscriberApp, request};

use crate::grpc::{assert_status, client};
use crate::{grpc_sidecar, url};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_jobs_are_delivered_to_the_app_and_follow_daprs_api() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(None).await;
    let s = grpc_sidecar("jobs-http", dir.path(), Some(app.port()), |_| {}).await;

    // A one-shot job: delivered once with its data, then gone.
    let r = request(
        "POST",
        &url(&s, "/v1.0-alpha1/jobs/once"),
        &[],
        r#"{"dueTime": "0s", "data": {"order": 7}}"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let got = app.wait_for("/job/once", 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].content_type, "application/json");
    assert_eq!(got[0].json(), json!({"order": 7}));
    let gone = trellis_test_support::wait_until(WAIT, || {
        let u = url(&s, "/v1.0/jobs/once");
        async move { request("GET", &u, &[], "").await.status == 500 }
    })
    .await;
    assert!(gone, "a finished one-shot job is deleted");
    let r = request("GET", &url(&s, "/v1.0/jobs/once"), &[], "").await;
    assert_eq!(r.json()["errorCode"], "DAPR_SCHEDULER_GET_JOB");

    // A repeating job reads back as written, with Dapr's default failure policy.
    let body =
        r#"{"schedule": "@every 1h", "repeats": 3, "dueTime": "1h", "ttl": "3h", "data": "hello"}"#;
    let r = request("POST", &url(&s, "/v1.0/jobs/hourly"), &[], body).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0-alpha1/jobs/hourly"), &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"name": "hourly", "schedule": "@every 1h", "repeats": 3, "dueTime": "1h",
               "ttl": "3h", "data": "hello",
               "failurePolicy": {"constant": {"interval": "1s", "maxRetries": 3}}})
    );
    // Scheduling it again needs `overwrite`.
    let r = request("POST", &url(&s, "/v1.0/jobs/hourly"), &[], body).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "DAPR_SCHEDULER_SCHEDULE_JOB");
    let r = request(
        "POST",
        &url(&s, "/v1.0/jobs/hourly"),
        &[],
        r#"{"schedule": "0 0 9 * * mon", "overwrite": true, "failurePolicy": {"drop": {}}}"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("GET", &url(&s, "/v1.0/jobs/hourly"), &[], "").await;
    assert_eq!(r.json()["schedule"], "0 0 9 * * mon");
    assert_eq!(r.json()["failurePolicy"], json!({"drop": {}}));
    let r = request("DELETE", &url(&s, "/v1.0/jobs/hourly"), &[], "").await;
    assert_eq!(r.status, 204);
    let r = request("DELETE", &url(&s, "/v1.0/jobs/hourly"), &[], "").await;
    assert_eq!(r.status, 204, "deleting a missing job succeeds, as in Dapr");

    // The metadata API names the job store.
    let meta = request("GET", &url(&s, "/v1.0/metadata"), &[], "")
        .await
        .json();
    let components = meta["components"].as_array().cloned().unwrap_or_default();
    assert!(
        components.iter().any(|c| c["type"] == "scheduler.sqlite"),
        "{meta}"
    );
    assert!(
        meta["scheduler"]["connected_addresses"].is_array(),
        "{meta}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_trigger_is_retried_by_the_failure_policy() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(None).await;
    app.respond("/job/retried", &[(500, "no"), (500, "no"), (200, "")]);
    app.respond("/job/dropped", &[(500, "no"), (200, "")]);
    let s = grpc_sidecar("jobs-retry", dir.path(), Some(app.port()), |_| {}).await;
    let policy = |p: Value| json!({"dueTime": "0s", "failurePolicy": p}).to_string();
    let r = request(
        "POST",
        &url(&s, "/v1.0/jobs/retried"),
        &[],
        policy(json!({"constant": {"interval": "50ms", "maxRetries": 5}})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request(
        "POST",
        &url(&s, "/v1.0/jobs/dropped"),
        &[],
        policy(json!({"drop": {}})),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(app.wait_for("/job/retried", 3, WAIT).await.len(), 3);
    assert_eq!(app.wait_for("/job/dropped", 1, WAIT).await.len(), 1);
    // Nothing more comes: the retried job succeeded, the dropped one gave up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.received_on("/job/retried").len(), 3);
    assert_eq!(app.received_on("/job/dropped").len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_refused_with_daprs_errors_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("jobs-bad", dir.path(), None, |_| {}).await;
    let cases: &[(&str, &str, u16, &str, &str)] = &[
        (
            "%20",
            r#"{"dueTime":"1s"}"#,
            400,
            "DAPR_SCHEDULER_JOB_NAME_EMPTY",
            "Name is empty",
        ),
        (
            "a%2Fb",
            r#"{"dueTime":"1s"}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "invalid",
        ),
        (
            "j",
            "{not json",
            400,
            "ERR_MALFORMED_REQUEST",
            "failed deserializing",
        ),
        (
            "j",
            r#"{"name":"j","dueTime":"1s"}"#,
            400,
            "DAPR_SCHEDULER_JOB_NAME",
            "url only",
        ),
        (
            "j",
            r#"{"data":1}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_EMPTY",
            "Schedule is empty",
        ),
        (
            "j",
            r#"{"schedule":"* * * * *"}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "6 fields",
        ),
        (
            "j",
            r#"{"schedule":"0 61 * * * *"}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "minutes",
        ),
        (
            "j",
            r#"{"schedule":"0 0 0 * * 8"}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "day of week",
        ),
        (
            "j",
            r#"{"dueTime":"soon"}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "dueTime",
        ),
        (
            "j",
            r#"{"schedule":"@daily","ttl":"forever"}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "ttl",
        ),
        (
            "j",
            r#"{"dueTime":"1s","repeats":0}"#,
            400,
            "DAPR_SCHEDULER_SCHEDULE_JOB",
            "repeats",
        ),
        (
            "j",
            r#"{"dueTime":"1s","failurePolicy":{"constant":{"interval":"x"}}}"#,
            400,
            "ERR_MALFORMED_REQUEST",
            "interval",
        ),
    ];
    for (name, body, status, code, message) in cases {
        let r = request("POST", &url(&s, &format!("/v1.0/jobs/{name}")), &[], *body).await;
        assert_eq!(r.status, *status, "{name} {body}: {}", r.text());
        assert_eq!(r.json()["errorCode"], *code, "{name} {body}: {}", r.text());
        let text = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(text.contains(message), "{name} {body}: {text}");
    }
    let listed = client(&s)
        .await
        .list_jobs(pb::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing stored: {:?}", listed.jobs);
    s.stop().await;
}

fn job(name: &str, schedule: Option<&str>, due: Option<&str>) -> pb::Job {
    pb::Job {
        name: name.into(),
        schedule: schedule.map(str::to_string),
        due_time: due.map(str::to_string),
        data: Some(prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.StringValue".into(),
            value: b"\n\x05hello".to_vec(),
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_rpcs_schedule_list_and_delete_by_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("jobs-grpc", dir.path(), None, |_| {}).await;
    let mut c = client(&s).await;
    for name in ["batch-1", "batch-2", "other"] {
        c.schedule_job(pb::ScheduleJobRequest {
            job: Some(job(name, Some("@every 1h"), None)),
            overwrite: false,
        })
        .await
        .unwrap();
    }
    let got = c
        .get_job_alpha1(pb::GetJobRequest {
            name: "batch-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(
        got.data,
        job("x", None, None).data,
        "the Any comes back as sent"
    );
    assert_eq!(got.schedule.as_deref(), Some("@every 1h"));
    let policy = got.failure_policy.and_then(|p| p.policy);
    assert!(matches!(
        policy,
        Some(pbc::job_failure_policy::Policy::Constant(
            pbc::JobFailurePolicyConstant {
                max_retries: Some(3),
                ..
            }
        ))
    ));
    let err = c
        .schedule_job(pb::ScheduleJobRequest {
            job: Some(job("other", Some("@every 1h"), None)),
            overwrite: false,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::AlreadyExists, "DAPR_SCHEDULER_SCHEDULE_JOB");
    let err = c
        .schedule_job(pb::ScheduleJobRequest {
            job: None,
            overwrite: false,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "DAPR_SCHEDULER_EMPTY");
    let err = c
        .schedule_job(pb::ScheduleJobRequest {
            job: Some(job("x", None, None)),
            overwrite: false,
        })
        .await
        .unwrap_err();
    assert_status(&err, Code::InvalidArgument, "DAPR_SCHEDULER_SCHEDULE_EMPTY");
    c.delete_jobs_by_prefix(pb::DeleteJobsByPrefixRequest {
        name_prefix: Some("batch-".into()),
    })
    .await
    .unwrap();
    let names: Vec<String> = c
        .list_jobs_alpha1(pb::ListJobsRequestAlpha1 {})
        .await
        .unwrap()
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(names, ["other"]);
    c.delete_job(pb::DeleteJobRequest {
        name: "other".into(),
    })
    .await
    .unwrap();
    assert!(
        c.list_jobs(pb::ListJobsRequest {})
            .await
            .unwrap()
            .into_inner()
            .jobs
            .is_empty()
    );
    let meta = c
        .get_metadata(pb::GetMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        meta.scheduler.map(|s| s.connected_addresses),
        Some(vec!["jobstore (scheduler.sqlite)".to_string()])
    );
    s.stop().await;
}

/// A gRPC app that records the jobs it is sent.
#[derive(Clone, Default)]
struct JobApp(Arc<Mutex<Vec<pb::JobEventRequest>>>);

#[tonic::async_trait]
impl pb::app_callback_server::AppCallback for JobApp {
    async fn on_invoke(
        &self,
        _: tonic::Request<pbc::InvokeRequest>,
    ) -> Result<tonic::Response<pbc::InvokeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("no"))
    }
    async fn list_topic_subscriptions(
        &self,
        _: tonic::Request<()>,
    ) -> Result<tonic::Response<pb::ListTopicSubscriptionsResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
    async fn on_topic_event(
        &self,
        _: tonic::Request<pb::TopicEventRequest>,
    ) -> Result<tonic::Response<pb::TopicEventResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
    async fn on_bulk_topic_event(
        &self,
        _: tonic::Request<pb::TopicEventBulkRequest>,
    ) -> Result<tonic::Response<pb::TopicEventBulkResponse>, tonic::Status> {
        Ok(tonic::Response::new(Default::default()))
    }
    async fn on_job_event(
        &self,
        request: tonic::Request<pb::JobEventRequest>,
    ) -> Result<tonic::Response<pb::JobEventResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(pb::JobEventResponse {}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_app_gets_on_job_event_with_the_data_as_scheduled() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let app = JobApp::default();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::app_callback_server::AppCallbackServer::new(app.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let s = grpc_sidecar("jobs-grpc-app", dir.path(), None, |c| {
        c.app = Some(AppChannelConfig {
            host: "127.0.0.1".into(),
            port: addr.port(),
            protocol: AppProtocol::Grpc,
            health_check: None,
        });
    })
    .await;
    client(&s)
        .await
        .schedule_job(pb::ScheduleJobRequest {
            job: Some(job("ping", None, Some("0s"))),
            overwrite: false,
        })
        .await
        .unwrap();
    let arrived = trellis_test_support::wait_until(WAIT, || {
        let app = app.clone();
        async move { !app.0.lock().unwrap().is_empty() }
    })
    .await;
    assert!(arrived, "the job did not reach the grpc app");
    let got = app.0.lock().unwrap()[0].clone();
    assert_eq!(got.name, "ping");
    assert_eq!(got.method, "job/ping");
    assert_eq!(got.data, job("x", None, None).data);
    assert_eq!(
        got.content_type,
        "type.googleapis.com/google.protobuf.StringValue"
    );
    s.stop().await;
    server.abort();
}
