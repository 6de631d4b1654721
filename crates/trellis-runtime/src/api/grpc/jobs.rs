//! The `Dapr` service's jobs RPCs (`ScheduleJob`, `GetJob`, `DeleteJob`,
//! `DeleteJobsByPrefix`, `ListJobs`, and their `*Alpha1` names): thin adapters over
//! [`ops::jobs`]. A job's data is kept as the `Any` it arrived as.
//!
//! [`ops::jobs`]: crate::api::ops::jobs

use std::time::Duration;

use tonic::{Response, Status};
use trellis_jobs::{FailurePolicy, JobData, JobSpec};
use trellis_proto::common as pbc;
use trellis_proto::runtime as pb;

use super::status::to_status;
use crate::api::ops::jobs as ops;
use crate::runtime::Runtime;

type Reply<T> = Result<Response<T>, Status>;

fn policy_of(p: Option<pbc::JobFailurePolicy>) -> FailurePolicy {
    use pbc::job_failure_policy::Policy;
    match p.and_then(|p| p.policy) {
        None => FailurePolicy::default(),
        Some(Policy::Drop(_)) => FailurePolicy::Drop,
        Some(Policy::Constant(c)) => FailurePolicy::Constant {
            interval: c
                .interval
                .and_then(|d| {
                    let secs = u64::try_from(d.seconds).ok()?;
                    let nanos = u32::try_from(d.nanos).ok()?;
                    Some(Duration::new(secs, nanos))
                })
                .unwrap_or_default(),
            max_retries: c.max_retries,
        },
    }
}

fn policy_pb(p: FailurePolicy) -> pbc::JobFailurePolicy {
    use pbc::job_failure_policy::Policy;
    pbc::JobFailurePolicy {
        policy: Some(match p {
            FailurePolicy::Drop => Policy::Drop(pbc::JobFailurePolicyDrop {}),
            FailurePolicy::Constant {
                interval,
                max_retries,
            } => Policy::Constant(pbc::JobFailurePolicyConstant {
                interval: Some(prost_types::Duration {
                    seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
                }),
                max_retries,
            }),
        }),
    }
}

fn job_pb(spec: JobSpec) -> pb::Job {
    pb::Job {
        name: spec.name,
        schedule: spec.schedule,
        repeats: spec.repeats,
        due_time: spec.due_time,
        ttl: spec.ttl,
        data: spec.data.map(|d| prost_types::Any {
            type_url: d.type_url,
            value: d.value,
        }),
        failure_policy: Some(policy_pb(spec.failure_policy)),
    }
}

pub async fn schedule(rt: &Runtime, req: pb::ScheduleJobRequest) -> Reply<pb::ScheduleJobResponse> {
    let job = req.job.ok_or_else(|| to_status(ops::no_job()))?;
    let spec = JobSpec {
        name: job.name,
        schedule: job.schedule,
        repeats: job.repeats,
        due_time: job.due_time,
        ttl: job.ttl,
        data: job.data.map(|a| JobData {
            type_url: a.type_url,
            value: a.value,
        }),
        failure_policy: policy_of(job.failure_policy),
    };
    ops::schedule(rt, spec, req.overwrite)
        .await
        .map_err(to_status)?;
    Ok(Response::new(pb::ScheduleJobResponse {}))
}

pub async fn get(rt: &Runtime, req: pb::GetJobRequest) -> Reply<pb::GetJobResponse> {
    let spec = ops::get(rt, &req.name).await.map_err(to_status)?;
    Ok(Response::new(pb::GetJobResponse {
        job: Some(job_pb(spec)),
    }))
}

pub async fn delete(rt: &Runtime, req: pb::DeleteJobRequest) -> Reply<pb::DeleteJobResponse> {
    ops::delete(rt, &req.name).await.map_err(to_status)?;
    Ok(Response::new(pb::DeleteJobResponse {}))
}

pub async fn delete_prefix(rt: &Runtime, prefix: Option<String>) -> Result<(), Status> {
    ops::delete_prefix(rt, prefix.as_deref().unwrap_or_default())
        .await
        .map_err(to_status)?;
    Ok(())
}

pub async fn list(rt: &Runtime) -> Result<Vec<pb::Job>, Status> {
    let jobs = ops::list(rt).await.map_err(to_status)?;
    Ok(jobs.into_iter().map(job_pb).collect())
}
