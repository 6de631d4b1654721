//! Dapr's distributed lock API: `POST /v1.0-alpha1/lock/{store}` and
//! `POST /v1.0-alpha1/unlock/{store}`.
//!
//! The HTTP adapter over [`ops::lock`](super::ops::lock): `{"resourceId", "lockOwner",
//! "expiryInSeconds"}` in, `{"success": bool}` or `{"status": n}` out. An acquisition's
//! fencing token goes out in the `trellis-fencing-token` response header (a Trellis
//! extension; Dapr has none).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::gojson::{self, GoJson, fold_keys};
use super::ops::lock::{self as ops, FENCING_TOKEN_HEADER};
use super::ops::state::malformed;
use super::state::read_body;
use crate::runtime::Runtime;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockRequest {
    #[serde(default)]
    resource_id: String,
    #[serde(default)]
    lock_owner: String,
    #[serde(default)]
    expiry_in_seconds: i64,
}

impl GoJson for LockRequest {
    fn fold(v: &mut Value) {
        fold_keys(v, &["resourceId", "lockOwner", "expiryInSeconds"]);
    }
}

async fn parse(rt: &Runtime, body: Body) -> Result<LockRequest, ApiError> {
    let bytes = read_body(body, rt.max_request_body).await?;
    gojson::from_slice(&bytes)
        .map_err(|e| malformed(format!("failed deserializing HTTP body: {e}")))
}

pub async fn lock(
    State(rt): State<Arc<Runtime>>,
    Path(store): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let req = parse(&rt, body).await?;
    let got = ops::try_lock(
        &rt,
        &store,
        &req.resource_id,
        &req.lock_owner,
        req.expiry_in_seconds,
    )
    .await?;
    let mut resp = Json(json!({ "success": got.acquired() })).into_response();
    if let trellis_lock::TryLock::Acquired { fencing_token } = got {
        resp.headers_mut()
            .insert(FENCING_TOKEN_HEADER, HeaderValue::from(fencing_token));
    }
    Ok(resp)
}

pub async fn unlock(
    State(rt): State<Arc<Runtime>>,
    Path(store): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req = parse(&rt, body).await?;
    let status = ops::unlock(&rt, &store, &req.resource_id, &req.lock_owner).await?;
    Ok(Json(json!({ "status": ops::status_code(status) })))
}
