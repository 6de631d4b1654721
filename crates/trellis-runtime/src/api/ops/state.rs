//! State operations: get, save, delete, bulk, transactions and queries, with Dapr's checks
//! and error codes, for both the HTTP and the gRPC API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use tonic::Code;
use trellis_state::{
    Concurrency, Consistency, DeleteRequest, GetRequest, Item, Operation, QueryResponse,
    SetRequest, StateError,
};

use crate::api::ApiError;
use crate::runtime::Runtime;
use crate::state::StateComponent;
use crate::trace;

/// One value to save, as either protocol delivers it.
#[derive(Debug, Clone)]
pub struct SaveItem {
    pub key: String,
    /// The bytes to store: JSON text when `is_json`, the app's raw bytes otherwise.
    pub value: Bytes,
    pub is_json: bool,
    pub etag: Option<String>,
    /// `ttlInSeconds`, `contentType` and store-specific keys.
    pub metadata: HashMap<String, String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

/// One key to delete.
#[derive(Debug, Clone)]
pub struct DeleteItem {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

/// One operation of a transaction.
#[derive(Debug, Clone)]
pub enum TxOp {
    Upsert(SaveItem),
    Delete(DeleteItem),
}

/// The store named `name`, with Dapr's errors when there is none.
pub fn store<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Arc<StateComponent>, ApiError> {
    if rt.state.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORE_NOT_CONFIGURED",
            "state store is not configured",
        )
        .grpc(Code::FailedPrecondition)
        .reason("DAPR_STATE_NOT_CONFIGURED"));
    }
    rt.state.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_STATE_STORE_NOT_FOUND",
            format!("state store {name} is not found"),
        )
        .reason("DAPR_STATE_NOT_FOUND")
    })
}

pub fn malformed(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", message)
}

/// An operation type other than `upsert` and `delete` in a transaction.
pub fn unsupported_operation(kind: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ERR_NOT_SUPPORTED_STATE_OPERATION",
        format!("operation type {kind} not supported"),
    )
}

/// `metadata.ttlInSeconds`: a positive number of seconds, or -1 for none.
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

fn set_request(component: &StateComponent, item: SaveItem) -> Result<SetRequest, ApiError> {
    if item.key.is_empty() {
        return Err(malformed("key is empty"));
    }
    Ok(SetRequest {
        key: component.key(&item.key),
        value: item.value,
        is_json: item.is_json,
        etag: item.etag.filter(|e| !e.is_empty()),
        concurrency: item.concurrency,
        consistency: item.consistency,
        ttl: ttl(&item.metadata).map_err(malformed)?,
        content_type: item.metadata.get("contentType").cloned(),
    })
}

fn delete_request(component: &StateComponent, item: DeleteItem) -> Result<DeleteRequest, ApiError> {
    if item.key.is_empty() {
        return Err(malformed("key is empty"));
    }
    Ok(DeleteRequest {
        key: component.key(&item.key),
        etag: item.etag.filter(|e| !e.is_empty()),
        concurrency: item.concurrency,
        consistency: item.consistency,
    })
}

/// Maps a store error for one operation (`code` is `ERR_STATE_SAVE`, ...): a stale ETag is
/// a conflict, a malformed one a bad request, anything the backend says an internal error.
fn store_error(code: &'static str, message: String, err: &StateError) -> ApiError {
    match err {
        StateError::EtagMismatch => {
            ApiError::new(StatusCode::CONFLICT, code, message).grpc(Code::Aborted)
        }
        StateError::InvalidEtag(_) | StateError::InvalidRequest(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, code, message)
        }
        StateError::NotSupported(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORE_NOT_SUPPORTED",
            message,
        )
        .grpc(Code::Unimplemented),
        StateError::Backend(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, message),
    }
}

/// Reads one key; `consistency` and `metadata` go to the store as the caller sent them.
pub async fn get(
    rt: &Runtime,
    name: &str,
    key: &str,
    consistency: Consistency,
    metadata: BTreeMap<String, String>,
) -> Result<Option<Item>, ApiError> {
    let component = store(rt, name)?;
    let req = GetRequest {
        key: component.key(key),
        consistency,
        metadata,
    };
    let got = trace::client(
        rt.tracer.as_ref(),
        "state/get",
        name,
        component.store.get_with(&req),
    );
    got.await.map_err(|e| {
        store_error(
            "ERR_STATE_GET",
            format!("fail to get {key} from state store {name}: {e}"),
            &e,
        )
    })
}

/// Reads several keys; each answers on its own (a failed key carries its error text).
pub async fn bulk_get(
    rt: &Runtime,
    name: &str,
    keys: Vec<String>,
) -> Result<Vec<(String, Result<Option<Item>, String>)>, ApiError> {
    let component = store(rt, name)?;
    let stored: Vec<String> = keys.iter().map(|k| component.key(k)).collect();
    let results = component.store.bulk_get(&stored).await;
    Ok(keys
        .into_iter()
        .zip(results)
        .map(|(key, (_, result))| (key, result.map_err(|e| e.to_string())))
        .collect())
}

pub async fn save(rt: &Runtime, name: &str, items: Vec<SaveItem>) -> Result<(), ApiError> {
    let component = store(rt, name)?;
    let mut reqs = items
        .into_iter()
        .map(|item| set_request(component, item))
        .collect::<Result<Vec<_>, _>>()?;
    let saved = async {
        match reqs.len() {
            0 => Ok(()),
            1 => match reqs.pop() {
                Some(req) => component.store.set(req).await,
                None => Ok(()),
            },
            _ => component.store.bulk_set(reqs).await,
        }
    };
    let result = trace::client(rt.tracer.as_ref(), "state/save", name, saved).await;
    result.map_err(|e| {
        store_error(
            "ERR_STATE_SAVE",
            format!("failed saving state in state store {name}: {e}"),
            &e,
        )
    })
}

pub async fn delete(rt: &Runtime, name: &str, item: DeleteItem) -> Result<(), ApiError> {
    let component = store(rt, name)?;
    let key = item.key.clone();
    let req = delete_request(component, item)?;
    let deleted = trace::client(
        rt.tracer.as_ref(),
        "state/delete",
        name,
        component.store.delete(req),
    );
    deleted.await.map_err(|e| {
        store_error(
            "ERR_STATE_DELETE",
            format!("failed deleting state with key {key}: {e}"),
            &e,
        )
    })
}

/// Deletes several keys, one after the other as Dapr's bulk delete does for stores without
/// transactions; the first failure stops it.
pub async fn bulk_delete(rt: &Runtime, name: &str, items: Vec<DeleteItem>) -> Result<(), ApiError> {
    let component = store(rt, name)?;
    let reqs = items
        .into_iter()
        .map(|item| delete_request(component, item))
        .collect::<Result<Vec<_>, _>>()?;
    for req in reqs {
        component.store.delete(req).await.map_err(|e| {
            store_error(
                "ERR_STATE_BULK_DELETE",
                format!("failed deleting state in state store {name}: {e}"),
                &e,
            )
        })?;
    }
    Ok(())
}

pub async fn transact(rt: &Runtime, name: &str, ops: Vec<TxOp>) -> Result<(), ApiError> {
    let component = store(rt, name)?;
    if !component.capabilities.transactional {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORE_NOT_SUPPORTED",
            format!("state store {name} doesn't support transaction"),
        )
        .grpc(Code::Unimplemented)
        .reason("DAPR_STATE_TRANSACTIONS_NOT_SUPPORTED"));
    }
    let ops = ops
        .into_iter()
        .map(|op| match op {
            TxOp::Upsert(item) => set_request(component, item).map(Operation::Upsert),
            TxOp::Delete(item) => delete_request(component, item).map(Operation::Delete),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let done = trace::client(
        rt.tracer.as_ref(),
        "state/transact",
        name,
        component.store.transact(ops),
    );
    done.await.map_err(|e| {
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
    })
}

/// Runs a query given as its JSON document; result keys come back without the prefix.
pub async fn query(rt: &Runtime, name: &str, document: &Value) -> Result<QueryResponse, ApiError> {
    let component = store(rt, name)?;
    if !component.capabilities.query {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_STATE_STORE_NOT_SUPPORTED",
            format!("state store {name} doesn't support query"),
        )
        .reason("DAPR_STATE_QUERYING_NOT_SUPPORTED"));
    }
    let query = trellis_state::Query::from_json(document).map_err(|e| malformed(e.to_string()))?;
    let mut response = component
        .store
        .query(&component.prefix, &query)
        .await
        .map_err(|e| {
            store_error(
                "ERR_STATE_QUERY",
                format!("failed query in state store {name}: {e}"),
                &e,
            )
            .reason("DAPR_STATE_QUERY_FAILED")
        })?;
    for r in &mut response.results {
        r.key = component.app_key(&r.key).to_string();
    }
    Ok(response)
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
