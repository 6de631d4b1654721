//! Dapr's state API: `/v1.0/state/{store}...` and `/v1.0-alpha1/state/{store}/query`.
//!
//! The HTTP adapter over [`ops::state`](super::ops::state): wire JSON (read with Go's
//! case-insensitive keys) in, the operation's result as Dapr's JSON and headers out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;
use trellis_core::time::{Precision, rfc3339};
use trellis_state::{Concurrency, Consistency};

use super::error::ApiError;
use super::gojson::{self, GoJson, fold_field, fold_keys};
use super::ops::state::{self as ops, malformed};
use crate::runtime::Runtime;

// ---- wire types --------------------------------------------------------------------------

#[derive(Deserialize)]
struct SaveItem {
    key: Option<String>,
    #[serde(default)]
    value: Value,
    etag: Option<Value>,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(default)]
    options: Options,
}

#[derive(Deserialize, Default)]
struct Options {
    concurrency: Option<String>,
    consistency: Option<String>,
}

#[derive(Deserialize)]
struct BulkGet {
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct Transaction {
    #[serde(default)]
    operations: Vec<TransactionOp>,
}

#[derive(Deserialize)]
struct TransactionOp {
    operation: String,
    request: SaveItem,
}

// Dapr reads these with Go's case-insensitive key matching; see `gojson`.

impl GoJson for SaveItem {
    fn fold(v: &mut Value) {
        fold_keys(v, &["key", "value", "etag", "metadata", "options"]);
        fold_field::<Options>(v, "options");
    }
}

impl GoJson for Options {
    fn fold(v: &mut Value) {
        fold_keys(v, &["concurrency", "consistency"]);
    }
}

impl GoJson for BulkGet {
    fn fold(v: &mut Value) {
        fold_keys(v, &["keys"]);
    }
}

impl GoJson for Transaction {
    fn fold(v: &mut Value) {
        fold_keys(v, &["operations"]);
        fold_field::<Vec<TransactionOp>>(v, "operations");
    }
}

impl GoJson for TransactionOp {
    fn fold(v: &mut Value) {
        fold_keys(v, &["operation", "request"]);
        fold_field::<SaveItem>(v, "request");
    }
}

// ---- helpers -----------------------------------------------------------------------------

pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::body_too_large(limit)
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "ERR_BODY_READ",
                format!("failed to read request body: {e}"),
            )
        }
    })
}

fn parse_json<T: GoJson>(bytes: &[u8]) -> Result<T, ApiError> {
    gojson::from_slice(bytes).map_err(|e| malformed(format!("failed deserializing HTTP body: {e}")))
}

fn concurrency(value: Option<&str>) -> Result<Concurrency, String> {
    match value {
        None | Some("") | Some("last-write") => Ok(Concurrency::LastWrite),
        Some("first-write") => Ok(Concurrency::FirstWrite),
        Some(other) => Err(format!(
            "options.concurrency {other:?} is not first-write or last-write"
        )),
    }
}

fn consistency(value: Option<&str>) -> Result<Consistency, String> {
    match value {
        None | Some("") | Some("eventual") => Ok(Consistency::Eventual),
        Some("strong") => Ok(Consistency::Strong),
        Some(other) => Err(format!(
            "options.consistency {other:?} is not eventual or strong"
        )),
    }
}

fn etag_text(etag: Option<Value>) -> Result<Option<String>, String> {
    match etag {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(format!("etag must be a string, got {other}")),
    }
}

fn is_json_type(content_type: &str) -> bool {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
}

/// Turns one wire item into the operation's request.
fn save_item(item: SaveItem) -> Result<ops::SaveItem, ApiError> {
    let content_type = item.metadata.get("contentType");
    // A string saved with a non-JSON content type is the app's raw bytes (text, CSV...);
    // everything else is JSON and stays JSON.
    let (value, is_json) = match (&item.value, content_type) {
        (Value::String(s), Some(ct)) if !is_json_type(ct) => {
            (Bytes::from(s.clone().into_bytes()), false)
        }
        (v, _) => (
            Bytes::from(serde_json::to_vec(v).map_err(|e| malformed(e.to_string()))?),
            true,
        ),
    };
    Ok(ops::SaveItem {
        key: item.key.unwrap_or_default(),
        value,
        is_json,
        etag: etag_text(item.etag).map_err(malformed)?,
        concurrency: concurrency(item.options.concurrency.as_deref()).map_err(malformed)?,
        consistency: consistency(item.options.consistency.as_deref()).map_err(malformed)?,
        metadata: item.metadata,
    })
}

fn delete_item(item: SaveItem) -> Result<ops::DeleteItem, ApiError> {
    Ok(ops::DeleteItem {
        key: item.key.unwrap_or_default(),
        etag: etag_text(item.etag).map_err(malformed)?,
        concurrency: concurrency(item.options.concurrency.as_deref()).map_err(malformed)?,
        consistency: consistency(item.options.consistency.as_deref()).map_err(malformed)?,
    })
}

// ---- handlers ----------------------------------------------------------------------------

pub async fn get(
    State(rt): State<Arc<Runtime>>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // As Dapr does, `consistency` and `metadata.*` go to the store unchecked (an unknown
    // consistency reads as the default, as Go stores compare it with "strong").
    let consistency = consistency(q.get("consistency").map(String::as_str)).unwrap_or_default();
    let metadata = q
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.clone())))
        .collect();
    let Some(item) = ops::get(&rt, &name, &key, consistency, metadata).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut resp = Response::new(Body::from(item.value));
    let headers = resp.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&item.etag) {
        headers.insert(header::ETAG, etag);
    }
    let content_type = item.content_type.as_deref().unwrap_or("application/json");
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(expires) = item.expires_at
        && let Ok(v) = HeaderValue::from_str(&rfc3339(expires, Precision::Seconds))
    {
        headers.insert("metadata.ttlexpiretime", v);
    }
    Ok(resp)
}

pub async fn save(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    ops::store(&rt, &name)?;
    let bytes = read_body(body, rt.max_request_body).await?;
    let items: Vec<SaveItem> = parse_json(&bytes)?;
    let items = items
        .into_iter()
        .map(save_item)
        .collect::<Result<Vec<_>, _>>()?;
    ops::save(&rt, &name, items).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct DeleteQuery {
    concurrency: Option<String>,
    consistency: Option<String>,
}

pub async fn delete(
    State(rt): State<Arc<Runtime>>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    ops::store(&rt, &name)?;
    let etag = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty());
    let bad = |e| ApiError::new(StatusCode::BAD_REQUEST, "ERR_STATE_DELETE", e);
    let item = ops::DeleteItem {
        key,
        etag,
        concurrency: concurrency(q.concurrency.as_deref()).map_err(bad)?,
        consistency: consistency(q.consistency.as_deref()).map_err(bad)?,
    };
    ops::delete(&rt, &name, item).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn bulk(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    ops::store(&rt, &name)?;
    let bytes = read_body(body, rt.max_request_body).await?;
    let request: BulkGet = parse_json(&bytes)?;
    let results = ops::bulk_get(&rt, &name, request.keys).await?;
    let items: Vec<Value> = results
        .into_iter()
        .map(|(key, result)| {
            let mut obj = serde_json::Map::new();
            obj.insert("key".into(), Value::String(key));
            match result {
                Ok(Some(item)) => {
                    obj.insert("data".into(), wire_value(&item.value));
                    obj.insert("etag".into(), Value::String(item.etag));
                    if let Some(expires) = item.expires_at {
                        let md = serde_json::json!({ "ttlExpireTime": rfc3339(expires, Precision::Seconds) });
                        obj.insert("metadata".into(), md);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    obj.insert("error".into(), Value::String(e));
                }
            }
            Value::Object(obj)
        })
        .collect();
    Ok(axum::Json(items).into_response())
}

pub async fn transaction(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    ops::store(&rt, &name)?;
    let bytes = read_body(body, rt.max_request_body).await?;
    let tx: Transaction = parse_json(&bytes)?;
    let ops_list = tx
        .operations
        .into_iter()
        .map(|op| match op.operation.as_str() {
            "upsert" => save_item(op.request).map(ops::TxOp::Upsert),
            "delete" => delete_item(op.request).map(ops::TxOp::Delete),
            other => Err(ops::unsupported_operation(other)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    ops::transact(&rt, &name, ops_list).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn query(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    ops::store(&rt, &name)?;
    let bytes = read_body(body, rt.max_request_body).await?;
    let raw: Value = parse_json(&bytes)?;
    let response = ops::query(&rt, &name, &raw).await?;
    let results: Vec<Value> = response
        .results
        .iter()
        .map(|r| {
            let mut obj = serde_json::Map::new();
            obj.insert("key".into(), Value::String(r.key.clone()));
            obj.insert("data".into(), wire_value(&r.data));
            if let Some(etag) = &r.etag {
                obj.insert("etag".into(), Value::String(etag.clone()));
            }
            Value::Object(obj)
        })
        .collect();
    let mut out = BTreeMap::new();
    out.insert("results", Value::Array(results));
    if let Some(token) = response.token {
        out.insert("token", Value::String(token));
    }
    Ok(axum::Json(out).into_response())
}

/// A stored value inside a JSON response: JSON as JSON, anything else as a string.
fn wire_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}
