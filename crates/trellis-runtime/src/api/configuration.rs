//! Dapr's configuration API: `GET /v1.0/configuration/{store}?key=a&key=b`, `GET
//! .../{store}/subscribe?key=a` (`{"id"}`; the changes go to the app) and `GET
//! .../{store}/{id}/unsubscribe` (`{"ok": true}`), each also under `/v1.0-alpha1`.
//!
//! The HTTP adapter over [`ops::configuration`](super::ops::configuration): repeated `key`
//! query parameters (none: every item) and `metadata.*` ones in, `{"a": {"value",
//! "version", "metadata"}}` out.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::error::ApiError;
use super::ops::configuration as ops;
use crate::runtime::Runtime;

/// One item as Dapr writes it.
#[derive(Serialize)]
pub struct ItemJson {
    value: String,
    version: String,
    metadata: BTreeMap<String, String>,
}

/// `key` repeats, so the query is read as pairs rather than a map (which keeps one value
/// per name).
pub async fn get(
    State(rt): State<Arc<Runtime>>,
    Path(store): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<BTreeMap<String, ItemJson>>, ApiError> {
    let (keys, metadata) = keys_and_metadata(&query);
    let items = ops::get(&rt, &store, &keys, &metadata).await?;
    Ok(Json(
        items
            .into_iter()
            .map(|(k, i)| {
                (
                    k,
                    ItemJson {
                        value: i.value,
                        version: i.version,
                        metadata: i.metadata,
                    },
                )
            })
            .collect(),
    ))
}

/// The repeated `key` parameters and the `metadata.*` ones of a query.
fn keys_and_metadata(query: &[(String, String)]) -> (Vec<String>, BTreeMap<String, String>) {
    let keys = query
        .iter()
        .filter(|(k, _)| k == "key")
        .map(|(_, v)| v.clone())
        .collect();
    let metadata = query
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.clone())))
        .collect();
    (keys, metadata)
}

/// `GET .../{store}/subscribe`: `{"id": ...}`; the changes go to the app.
pub async fn subscribe(
    State(rt): State<Arc<Runtime>>,
    Path(store): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (keys, metadata) = keys_and_metadata(&query);
    let id = ops::subscribe_app(&rt, &store, &keys, &metadata).await?;
    Ok(Json(json!({ "id": id })))
}

/// `GET .../{store}/{id}/unsubscribe`: `{"ok": true}`; an unknown id is Dapr's 500 with
/// `{"message": ...}` alone.
pub async fn unsubscribe(
    State(rt): State<Arc<Runtime>>,
    Path((store, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    if ops::unsubscribe(&rt, Some(&store), &id)? {
        Ok(Json(json!({"ok": true})).into_response())
    } else {
        let body = json!({ "message": ops::unsubscribe_failure(&id) });
        Ok((StatusCode::INTERNAL_SERVER_ERROR, Json(body)).into_response())
    }
}
