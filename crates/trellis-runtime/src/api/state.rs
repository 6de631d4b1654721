//! Dapr's state API: `/v1.0/state/{store}...` and `/v1.0-alpha1/state/{store}/query`.
//!
//! Wire JSON is parsed into `trellis_state` requests here, keys get this app's prefix, and
//! store errors become Dapr's codes and statuses: ETag mismatch 409, malformed ETag 400,
//! anything the backend says 500 with its text.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;
use trellis_core::time::{Precision, rfc3339};
use trellis_state::{
    Concurrency, Consistency, DeleteRequest, GetRequest, Operation, SetRequest, StateError,
};

use super::error::ApiError;
use super::gojson::{self, GoJson, fold_field, fold_keys};
use crate::runtime::Runtime;
use crate::state::StateComponent;

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

fn store<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Arc<StateComponent>, ApiError> {
    if rt.state.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORES_NOT_CONFIGURED",
            "state store is not configured",
        ));
    }
    rt.state.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_STATE_STORE_NOT_FOUND",
            format!("state store {name} is not found"),
        )
    })
}

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

fn malformed(err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ERR_MALFORMED_REQUEST",
        format!("failed deserializing HTTP body: {err}"),
    )
}

fn parse_json<T: GoJson>(bytes: &[u8]) -> Result<T, ApiError> {
    gojson::from_slice(bytes).map_err(malformed)
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

fn ttl(metadata: &HashMap<String, String>) -> Result<Option<Duration>, String> {
    let Some(raw) = metadata.get("ttlInSeconds") else {
        return Ok(None);
    };
    match raw.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(secs) if secs > 0 => Ok(Some(Duration::from_secs(secs as u64))),
        _ => Err(format!(
            "metadata.ttlInSeconds {raw:?} must be a positive number of seconds, or -1 for none"
        )),
    }
}

fn is_json_type(content_type: &str) -> bool {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    ct.eq_ignore_ascii_case("application/json") || ct.ends_with("+json")
}

/// Turns one wire item into a store request; `Err` is a 400 message.
fn set_request(component: &StateComponent, item: SaveItem) -> Result<SetRequest, String> {
    let key = item.key.filter(|k| !k.is_empty()).ok_or("key is empty")?;
    let content_type = item.metadata.get("contentType").cloned();
    // A string saved with a non-JSON content type is the app's raw bytes (text, CSV...);
    // everything else is JSON and stays JSON.
    let (value, is_json) = match (&item.value, &content_type) {
        (Value::String(s), Some(ct)) if !is_json_type(ct) => {
            (Bytes::from(s.clone().into_bytes()), false)
        }
        (v, _) => (
            Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?),
            true,
        ),
    };
    Ok(SetRequest {
        key: component.key(&key),
        value,
        is_json,
        etag: etag_text(item.etag)?,
        concurrency: concurrency(item.options.concurrency.as_deref())?,
        consistency: consistency(item.options.consistency.as_deref())?,
        ttl: ttl(&item.metadata)?,
        content_type,
    })
}

/// Maps a store error for one operation (`code` is `ERR_STATE_SAVE`, ...).
fn store_error(code: &'static str, message: String, err: &StateError) -> ApiError {
    let status = match err {
        StateError::EtagMismatch => StatusCode::CONFLICT,
        StateError::InvalidEtag(_) | StateError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        StateError::NotSupported(_) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_STATE_STORE_NOT_SUPPORTED",
                message,
            );
        }
        StateError::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, code, message)
}

fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

// ---- handlers ----------------------------------------------------------------------------

pub async fn get(
    State(rt): State<Arc<Runtime>>,
    Path((name, key)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let component = store(&rt, &name)?;
    // As Dapr does, `consistency` and `metadata.*` go to the store unchecked (an unknown
    // consistency reads as the default, as Go stores compare it with "strong").
    let req = GetRequest {
        key: component.key(&key),
        consistency: consistency(q.get("consistency").map(String::as_str)).unwrap_or_default(),
        metadata: q
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.clone())))
            .collect(),
    };
    let item = component.store.get_with(&req).await.map_err(|e| {
        store_error(
            "ERR_STATE_GET",
            format!("fail to get {key} from state store {name}: {e}"),
            &e,
        )
    })?;
    let Some(item) = item else {
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
    let component = store(&rt, &name)?;
    let bytes = read_body(body, rt.max_request_body).await?;
    let items: Vec<SaveItem> = parse_json(&bytes)?;
    let mut reqs = Vec::with_capacity(items.len());
    for item in items {
        reqs.push(
            set_request(component, item).map_err(|e| bad_request("ERR_MALFORMED_REQUEST", e))?,
        );
    }
    let result = match reqs.len() {
        0 => Ok(()),
        1 => {
            let req = reqs
                .pop()
                .ok_or_else(|| ApiError::internal("empty save request"))?;
            component.store.set(req).await
        }
        _ => component.store.bulk_set(reqs).await,
    };
    result.map_err(|e| {
        store_error(
            "ERR_STATE_SAVE",
            format!("failed saving state in state store {name}: {e}"),
            &e,
        )
    })?;
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
    let component = store(&rt, &name)?;
    let etag = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty());
    let req = DeleteRequest {
        key: component.key(&key),
        etag,
        concurrency: concurrency(q.concurrency.as_deref())
            .map_err(|e| bad_request("ERR_STATE_DELETE", e))?,
        consistency: consistency(q.consistency.as_deref())
            .map_err(|e| bad_request("ERR_STATE_DELETE", e))?,
    };
    component.store.delete(req).await.map_err(|e| {
        store_error(
            "ERR_STATE_DELETE",
            format!("failed deleting state with key {key}: {e}"),
            &e,
        )
    })?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn bulk(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let component = store(&rt, &name)?;
    let bytes = read_body(body, rt.max_request_body).await?;
    let request: BulkGet = parse_json(&bytes)?;
    let keys: Vec<String> = request.keys.iter().map(|k| component.key(k)).collect();
    let results = component.store.bulk_get(&keys).await;
    let items: Vec<Value> = request
        .keys
        .into_iter()
        .zip(results)
        .map(|(key, (_, result))| {
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
                    obj.insert("error".into(), Value::String(e.to_string()));
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
    let component = store(&rt, &name)?;
    if !component.capabilities.transactional {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORE_NOT_SUPPORTED",
            format!("state store {name} doesn't support transaction"),
        ));
    }
    let bytes = read_body(body, rt.max_request_body).await?;
    let tx: Transaction = parse_json(&bytes)?;
    let mut ops = Vec::with_capacity(tx.operations.len());
    for op in tx.operations {
        let op = match op.operation.as_str() {
            "upsert" => Operation::Upsert(
                set_request(component, op.request)
                    .map_err(|e| bad_request("ERR_MALFORMED_REQUEST", e))?,
            ),
            "delete" => {
                let r = op.request;
                let key = r
                    .key
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| bad_request("ERR_MALFORMED_REQUEST", "key is empty"))?;
                Operation::Delete(DeleteRequest {
                    key: component.key(&key),
                    etag: etag_text(r.etag).map_err(|e| bad_request("ERR_MALFORMED_REQUEST", e))?,
                    concurrency: concurrency(r.options.concurrency.as_deref())
                        .map_err(|e| bad_request("ERR_MALFORMED_REQUEST", e))?,
                    consistency: consistency(r.options.consistency.as_deref())
                        .map_err(|e| bad_request("ERR_MALFORMED_REQUEST", e))?,
                })
            }
            other => {
                return Err(bad_request(
                    "ERR_NOT_SUPPORTED_STATE_OPERATION",
                    format!("operation type {other} not supported"),
                ));
            }
        };
        ops.push(op);
    }
    component.store.transact(ops).await.map_err(|e| {
        let message = format!("error while executing state transaction: {e}");
        match e {
            StateError::NotSupported(_) => store_error("ERR_STATE_TRANSACTION", message, &e),
            // Dapr answers every failed transaction 500, a stale ETag too (unlike a save
            // or delete, which get 409); SDKs read the status.
            _ => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_STATE_TRANSACTION",
                message,
            ),
        }
    })?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn query(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let component = store(&rt, &name)?;
    if !component.capabilities.query {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORE_NOT_SUPPORTED",
            format!("state store {name} doesn't support query"),
        ));
    }
    let bytes = read_body(body, rt.max_request_body).await?;
    let raw: Value = parse_json(&bytes)?;
    let query = trellis_state::Query::from_json(&raw)
        .map_err(|e| bad_request("ERR_MALFORMED_REQUEST", e.to_string()))?;
    let response = component
        .store
        .query(&component.prefix, &query)
        .await
        .map_err(|e| {
            store_error(
                "ERR_STATE_QUERY",
                format!("failed query in state store {name}: {e}"),
                &e,
            )
        })?;
    let results: Vec<Value> = response
        .results
        .iter()
        .map(|r| {
            let mut obj = serde_json::Map::new();
            obj.insert(
                "key".into(),
                Value::String(component.app_key(&r.key).to_string()),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ttls() {
        let md = |v: &str| HashMap::from([("ttlInSeconds".to_string(), v.to_string())]);
        assert_eq!(ttl(&md("60")).unwrap(), Some(Duration::from_secs(60)));
        assert_eq!(ttl(&md("-1")).unwrap(), None);
        assert!(ttl(&md("0")).is_err());
        assert!(ttl(&md("soon")).is_err());
        assert_eq!(ttl(&HashMap::new()).unwrap(), None);
    }
}
