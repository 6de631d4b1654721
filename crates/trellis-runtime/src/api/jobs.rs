//! Dapr's jobs HTTP API: `POST|GET|DELETE /v1.0-alpha1/jobs/{name}` and the same under
//! `/v1.0` (Dapr 1.18). Listing and deleting by prefix are gRPC-only, as in Dapr.
//!
//! The HTTP adapter over [`ops::jobs`](super::ops::jobs). The body is Dapr's
//! `JobHTTPRequest` as protojson reads it (unknown fields ignored, `dueTime` or
//! `due_time`): `schedule`, `repeats`, `dueTime`, `ttl`, `data` (any JSON), `overwrite`,
//! `failurePolicy` (`{"drop": {}}` or `{"constant": {"interval": "10s", "maxRetries": 3}}`).
//! `GET` answers the job in the same shape, with its name.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use http::StatusCode;
use serde_json::{Map, Value, json};
use trellis_jobs::{FailurePolicy, JobSpec};

use super::error::ApiError;
use super::ops::jobs as ops;
use super::ops::state::malformed;
use super::state::read_body;
use crate::runtime::Runtime;

/// The routes, under `/v1.0-alpha1` and `/v1.0`.
pub fn routes(router: axum::Router<Arc<Runtime>>) -> axum::Router<Arc<Runtime>> {
    use axum::routing::post;
    ["/v1.0-alpha1", "/v1.0"]
        .into_iter()
        .fold(router, |r, prefix| {
            r.route(
                &format!("{prefix}/jobs/{{name}}"),
                post(schedule).get(get).delete(delete),
            )
        })
}

fn bad(field: &str, why: &str) -> ApiError {
    malformed(format!("failed deserializing HTTP body: {field}: {why}"))
}

/// A field by its JSON name or its proto name, as protojson accepts either.
fn field<'a>(body: &'a Map<String, Value>, json: &str, proto: &str) -> Option<&'a Value> {
    body.get(json)
        .or_else(|| body.get(proto))
        .filter(|v| !v.is_null())
}

fn string(body: &Map<String, Value>, json: &str, proto: &str) -> Result<Option<String>, ApiError> {
    match field(body, json, proto) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(json, "expected a string")),
    }
}

/// A protojson `Duration` (`"1.5s"`), or any Go duration.
fn interval(v: &Value) -> Result<Duration, ApiError> {
    let text = v.as_str().ok_or_else(|| {
        bad(
            "failurePolicy.constant.interval",
            "expected a duration string",
        )
    })?;
    trellis_core::duration::parse(text)
        .map_err(|e| bad("failurePolicy.constant.interval", &e.to_string()))
}

fn failure_policy(v: &Value) -> Result<FailurePolicy, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| bad("failurePolicy", "expected an object"))?;
    if obj.contains_key("drop") {
        return Ok(FailurePolicy::Drop);
    }
    let Some(constant) = obj.get("constant") else {
        return Err(bad("failurePolicy", "expected drop or constant"));
    };
    let constant = constant
        .as_object()
        .ok_or_else(|| bad("failurePolicy.constant", "expected an object"))?;
    let interval = match field(constant, "interval", "interval") {
        Some(v) => interval(v)?,
        None => Duration::ZERO,
    };
    let max_retries = match field(constant, "maxRetries", "max_retries") {
        None => None,
        Some(v) => Some(number(v).ok_or_else(|| {
            bad(
                "failurePolicy.constant.maxRetries",
                "expected a whole number",
            )
        })?),
    };
    Ok(FailurePolicy::Constant {
        interval,
        max_retries,
    })
}

/// A `uint32` as protojson reads it: a number or a numeric string.
fn number(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The body as a job named `name`, and whether to overwrite.
fn parse(name: &str, bytes: &[u8]) -> Result<(JobSpec, bool), ApiError> {
    let body: Map<String, Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("failed deserializing HTTP body: {e}")))?
    };
    if body.get("name").is_some_and(|n| n.as_str() != Some("")) {
        return Err(ops::name_in_body());
    }
    let repeats = match field(&body, "repeats", "repeats") {
        None => None,
        Some(v) => Some(number(v).ok_or_else(|| bad("repeats", "expected a whole number"))?),
    };
    let overwrite = match field(&body, "overwrite", "overwrite") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(bad("overwrite", "expected true or false")),
    };
    let spec = JobSpec {
        name: name.to_string(),
        schedule: string(&body, "schedule", "schedule")?,
        repeats,
        due_time: string(&body, "dueTime", "due_time")?,
        ttl: string(&body, "ttl", "ttl")?,
        data: body.get("data").map(ops::data_from_json),
        failure_policy: match field(&body, "failurePolicy", "failure_policy") {
            Some(v) => failure_policy(v)?,
            None => FailurePolicy::default(),
        },
    };
    Ok((spec, overwrite))
}

async fn schedule(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let bytes = read_body(body, rt.max_request_body).await?;
    let (spec, overwrite) = parse(name.trim(), &bytes)?;
    ops::schedule(&rt, spec, overwrite).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let spec = ops::get(&rt, &name).await?;
    Ok(Json(job_json(&spec)))
}

async fn delete(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    ops::delete(&rt, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A protojson `Duration`: seconds with the fraction protojson prints (none, 3, 6 or 9
/// digits).
pub fn proto_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    match nanos {
        0 => format!("{secs}s"),
        n if n % 1_000_000 == 0 => format!("{secs}.{:03}s", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{secs}.{:06}s", n / 1_000),
        n => format!("{secs}.{n:09}s"),
    }
}

/// A job as `GET` shows it (protojson of Dapr's `Job`: unset fields left out).
fn job_json(spec: &JobSpec) -> Value {
    let mut out = Map::new();
    out.insert("name".into(), json!(spec.name));
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            out.insert(k.into(), v);
        }
    };
    put("schedule", spec.schedule.clone().map(Value::from));
    put("repeats", spec.repeats.map(Value::from));
    put("dueTime", spec.due_time.clone().map(Value::from));
    put("ttl", spec.ttl.clone().map(Value::from));
    put("data", spec.data.as_ref().map(ops::data_json));
    put(
        "failurePolicy",
        Some(match spec.failure_policy {
            FailurePolicy::Drop => json!({"drop": {}}),
            FailurePolicy::Constant {
                interval,
                max_retries,
            } => {
                let mut c = Map::new();
                c.insert("interval".into(), json!(proto_duration(interval)));
                if let Some(m) = max_retries {
                    c.insert("maxRetries".into(), json!(m));
                }
                json!({ "constant": c })
            }
        }),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_as_protojson_reads_them() {
        let (spec, overwrite) = parse(
            "j",
            br#"{"schedule":"@every 1s","repeats":"3","due_time":"10s","overwrite":true,
                 "failure_policy":{"constant":{"interval":"1.5s","max_retries":2}},"data":{"a":1},"extra":1}"#,
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert!(overwrite);
        assert_eq!(spec.repeats, Some(3));
        assert_eq!(spec.due_time.as_deref(), Some("10s"));
        assert_eq!(
            spec.failure_policy,
            FailurePolicy::Constant {
                interval: Duration::from_millis(1500),
                max_retries: Some(2)
            }
        );
        let shown = job_json(&spec);
        assert_eq!(shown["data"], json!({"a": 1}));
        assert_eq!(
            shown["failurePolicy"],
            json!({"constant": {"interval": "1.500s", "maxRetries": 2}})
        );
        assert!(parse("j", br#"{"name":"j"}"#).is_err());
        assert!(parse("j", b"{not json").is_err());
        assert!(
            parse("j", br#"{"failurePolicy":{"drop":{}}}"#)
                .is_ok_and(|(s, _)| s.failure_policy == FailurePolicy::Drop)
        );
    }
}
