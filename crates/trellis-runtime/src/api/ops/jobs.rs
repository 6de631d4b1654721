//! Job operations (schedule, get, delete, delete by prefix, list) with Dapr's checks and
//! error codes, for both the HTTP and the gRPC API; and the one way a due job becomes a
//! request to the app ([`trigger_request`]).
//!
//! A job's data travels as a protobuf `Any`: the gRPC API takes and gives it as it is; the
//! HTTP API's JSON becomes a `google.protobuf.Value` (as Dapr stores it), shown as JSON
//! again by `GET` and sent to an HTTP app as the JSON it was.

use http::{Request, StatusCode, header};
use prost::Message as _;
use tonic::Code;
use trellis_jobs::{JobData, JobError, JobSpec, Scheduler, StoredJob};

use crate::Body;
use crate::api::ApiError;
use crate::api::grpc::convert::{json_value, proto_value};
use crate::invoke::AppCall;
use crate::runtime::Runtime;

/// The type URL of the `google.protobuf.Value` the HTTP API stores JSON data as.
pub const VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.Value";

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

/// `Name is empty` and its kin, as Dapr's `apierrors.Empty`.
fn empty(what: &str, code: &'static str) -> ApiError {
    error(StatusCode::BAD_REQUEST, code, format!("{what} is empty")).grpc(Code::InvalidArgument)
}

/// The request carried no job at all (gRPC `ScheduleJob` without `job`).
pub fn no_job() -> ApiError {
    empty("Job", "DAPR_SCHEDULER_EMPTY")
}

/// A `name` in the HTTP body: Dapr takes it from the URL only.
pub fn name_in_body() -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        "DAPR_SCHEDULER_JOB_NAME",
        "Set the job name in the url only",
    )
    .grpc(Code::InvalidArgument)
}

async fn scheduler<'a>(rt: &'a Runtime, code: &'static str) -> Result<&'a Scheduler, ApiError> {
    let Some(jobs) = rt.jobs.as_ref() else {
        return Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            code,
            "this build of trellis has no job store",
        )
        .grpc(Code::Unimplemented));
    };
    jobs.scheduler().await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            code,
            format!("cannot open the job store: {e}"),
        )
        .grpc(Code::Internal)
    })
}

/// `ScheduleJob`: stores `spec` for this app (replacing a job of the name only with
/// `overwrite`). Nothing is stored when any field is wrong.
pub async fn schedule(rt: &Runtime, spec: JobSpec, overwrite: bool) -> Result<(), ApiError> {
    const CODE: &str = "DAPR_SCHEDULER_SCHEDULE_JOB";
    if spec.name.is_empty() {
        return Err(empty("Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY"));
    }
    if spec.schedule.is_none() && spec.due_time.is_none() {
        return Err(empty("Schedule", "DAPR_SCHEDULER_SCHEDULE_EMPTY"));
    }
    let scheduler = scheduler(rt, CODE).await?;
    scheduler.schedule(&spec, overwrite).await.map_err(|e| {
        let (status, grpc) = match &e {
            JobError::Invalid(_) => (StatusCode::BAD_REQUEST, Code::InvalidArgument),
            JobError::AlreadyExists(_) => (StatusCode::CONFLICT, Code::AlreadyExists),
            JobError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, Code::Internal),
        };
        error(status, CODE, format!("failed to schedule job due to: {e}")).grpc(grpc)
    })
}

/// `GetJob`: the job as it was scheduled. A missing job is Dapr's 500.
pub async fn get(rt: &Runtime, name: &str) -> Result<JobSpec, ApiError> {
    const CODE: &str = "DAPR_SCHEDULER_GET_JOB";
    if name.is_empty() {
        return Err(empty("Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY"));
    }
    let failed = |e: String| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            CODE,
            format!("failed to get job due to: {e}"),
        )
        .grpc(Code::Internal)
    };
    match scheduler(rt, CODE).await?.get(name).await {
        Ok(Some(job)) => Ok(job.spec),
        Ok(None) => Err(failed(format!("job not found: {name}"))),
        Err(e) => Err(failed(e.to_string())),
    }
}

fn delete_failed(e: JobError) -> ApiError {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "DAPR_SCHEDULER_DELETE_JOB",
        format!("failed to delete job due to: {e}"),
    )
    .grpc(Code::Internal)
}

/// `DeleteJob`: deleting a job that does not exist succeeds, as in Dapr.
pub async fn delete(rt: &Runtime, name: &str) -> Result<(), ApiError> {
    if name.is_empty() {
        return Err(empty("Name", "DAPR_SCHEDULER_JOB_NAME_EMPTY"));
    }
    let scheduler = scheduler(rt, "DAPR_SCHEDULER_DELETE_JOB").await?;
    scheduler.delete(name).await.map_err(delete_failed)?;
    Ok(())
}

/// `DeleteJobsByPrefix`: every job of this app whose name starts with `prefix` (every job
/// when it is empty).
pub async fn delete_prefix(rt: &Runtime, prefix: &str) -> Result<u64, ApiError> {
    let scheduler = scheduler(rt, "DAPR_SCHEDULER_DELETE_JOB").await?;
    scheduler.delete_prefix(prefix).await.map_err(delete_failed)
}

/// `ListJobs`: this app's jobs, by name.
pub async fn list(rt: &Runtime) -> Result<Vec<JobSpec>, ApiError> {
    const CODE: &str = "DAPR_SCHEDULER_LIST_JOBS";
    let jobs = scheduler(rt, CODE).await?.list().await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            CODE,
            format!("failed to list jobs due to: {e}"),
        )
        .grpc(Code::Internal)
    })?;
    Ok(jobs.into_iter().map(|j| j.spec).collect())
}

/// JSON data (the HTTP API's) as the `Any` it is stored as.
pub fn data_from_json(value: &serde_json::Value) -> JobData {
    JobData {
        type_url: VALUE_TYPE.to_string(),
        value: proto_value(value).encode_to_vec(),
    }
}

/// Stored data as JSON, as the HTTP API shows it and sends it to an HTTP app: a
/// `google.protobuf.Value` as the JSON it holds; other data as its bytes, when those are
/// JSON, else as Dapr's `{"@type", "value"}` with the bytes in base64.
pub fn data_json(data: &JobData) -> serde_json::Value {
    if data.type_url == VALUE_TYPE
        && let Ok(v) = prost_types::Value::decode(data.value.as_slice())
    {
        return json_value(&v);
    }
    if let Ok(v) = serde_json::from_slice(&data.value) {
        return v;
    }
    use base64::Engine as _;
    serde_json::json!({
        "@type": data.type_url,
        "value": base64::engine::general_purpose::STANDARD.encode(&data.value),
    })
}

/// The request a due job becomes: `POST /job/<name>` with the data as JSON (what an HTTP
/// app gets), tagged with the job and its raw data for a gRPC app's `OnJobEvent`.
pub fn trigger_request(job: &StoredJob) -> (String, Request<Body>) {
    let body = match &job.spec.data {
        Some(data) if data.type_url == VALUE_TYPE => {
            match prost_types::Value::decode(data.value.as_slice()) {
                // A `Value` without a kind is no data: an empty body, as in Dapr.
                Ok(v) if v.kind.is_none() => Vec::new(),
                Ok(v) => json_value(&v).to_string().into_bytes(),
                Err(_) => trim(&data.value).to_vec(),
            }
        }
        Some(data) => trim(&data.value).to_vec(),
        None => Vec::new(),
    };
    let path = format!("/job/{}", encode_path(&job.spec.name));
    let mut req = Request::post(&path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default();
    let data = job.spec.data.clone().unwrap_or_default();
    req.extensions_mut().insert(AppCall::JobEvent {
        name: job.spec.name.clone(),
        type_url: data.type_url,
        data: bytes::Bytes::from(data.value),
    });
    (path, req)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// A job name as a path segment (names hold letters, digits, `-_.:`, spaces and `|`).
fn encode_path(name: &str) -> String {
    name.replace(' ', "%20").replace('|', "%7C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_data_round_trips_through_a_protobuf_value() {
        for v in [
            json!(123),
            json!("x"),
            json!({"a": [1, 2.5, null, true]}),
            json!(null),
        ] {
            assert_eq!(data_json(&data_from_json(&v)), v);
        }
        let raw = JobData {
            type_url: "type.googleapis.com/google.protobuf.BytesValue".into(),
            value: vec![0xff, 0x00],
        };
        assert_eq!(data_json(&raw)["value"], "/wA=");
    }
}
