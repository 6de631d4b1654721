//! Dapr's workflow HTTP API, under `/v1.0`, `/v1.0-beta1` and `/v1.0-alpha1`:
//! `POST /workflows/{component}/{name}/start?instanceID=`, `GET /workflows/{component}/{id}`,
//! and `POST .../{id}/raiseEvent/{event}`, `pause`, `resume`, `terminate`, `purge`.
//!
//! The HTTP adapter over [`ops::workflow`](super::ops::workflow). Request bodies are the
//! raw input or event data (not parsed, as in Dapr); terminate and purge are recursive.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};
use trellis_core::time::rfc3339_ms;
use trellis_workflow::InstanceMeta;
use trellis_workflow::engine::StartRequest;

use super::error::ApiError;
use super::ops::workflow::{self as ops, status_name};
use super::state::read_body;
use crate::runtime::Runtime;

/// The routes, under each of Dapr's prefixes.
pub fn routes(router: axum::Router<Arc<Runtime>>) -> axum::Router<Arc<Runtime>> {
    use axum::routing::{get, post};
    ["/v1.0", "/v1.0-beta1", "/v1.0-alpha1"]
        .into_iter()
        .fold(router, |r, prefix| {
            r.route(
                &format!("{prefix}/workflows/{{component}}/{{name}}/start"),
                post(start),
            )
            .route(
                &format!("{prefix}/workflows/{{component}}/{{id}}"),
                get(get_instance),
            )
            .route(
                &format!("{prefix}/workflows/{{component}}/{{id}}/raiseEvent/{{event}}"),
                post(raise_event),
            )
            .route(
                &format!("{prefix}/workflows/{{component}}/{{id}}/{{action}}"),
                post(control),
            )
        })
}

/// The body as the input string, `None` when empty.
async fn input(rt: &Runtime, body: Body) -> Result<Option<String>, ApiError> {
    ops::payload(read_body(body, rt.max_request_body).await?.to_vec())
}

async fn start(
    State(rt): State<Arc<Runtime>>,
    Path((component, name)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let input = input(&rt, body).await?;
    let id = ops::start(
        &rt,
        Some(&component),
        &name,
        StartRequest {
            instance_id: query.get("instanceID").cloned(),
            input,
            ..StartRequest::default()
        },
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "instanceID": id }))).into_response())
}

/// Dapr's JSON for an instance (`GET /v1.0/workflows/dapr/{id}`), also what `trellis
/// workflow get -o json` prints.
pub fn instance_json(m: &InstanceMeta) -> Value {
    let properties: Map<String, Value> = ops::properties(m)
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    json!({
        "instanceID": m.instance_id,
        "workflowName": m.name,
        "createdAt": rfc3339_ms(m.created_at),
        "lastUpdatedAt": rfc3339_ms(m.updated_at),
        "runtimeStatus": status_name(m.status),
        "properties": properties,
    })
}

async fn get_instance(
    State(rt): State<Arc<Runtime>>,
    Path((component, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let meta = ops::get(&rt, Some(&component), &id).await?;
    Ok(Json(instance_json(&meta)).into_response())
}

async fn raise_event(
    State(rt): State<Arc<Runtime>>,
    Path((component, id, event)): Path<(String, String, String)>,
    body: Body,
) -> Result<Response, ApiError> {
    let data = input(&rt, body).await?;
    ops::raise_event(&rt, Some(&component), &id, &event, data).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn control(
    State(rt): State<Arc<Runtime>>,
    Path((component, id, action)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let c = Some(component.as_str());
    match action.as_str() {
        "terminate" => ops::terminate(&rt, c, &id, None, true).await?,
        "pause" => ops::pause(&rt, c, &id, None).await?,
        "resume" => ops::resume(&rt, c, &id, None).await?,
        "purge" => {
            ops::purge(&rt, c, &id, true, false).await?;
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "ERR_DIRECT_INVOKE",
                format!(
                    "unknown workflow operation {other:?}; use terminate, pause, resume, purge or raiseEvent/{{event}}"
                ),
            ));
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}
