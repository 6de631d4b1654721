//! Dapr's secrets API: `GET /v1.0/secrets/{store}/{key}` and `GET /v1.0/secrets/{store}/bulk`.
//!
//! The HTTP adapter over [`ops::secrets`](super::ops::secrets): `metadata.*` query
//! parameters in, the secret's map (`{"k":"v"}`) or every secret's (`{"name":{"k":"v"}}`)
//! as JSON out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};

use super::error::ApiError;
use super::ops::secrets as ops;
use crate::runtime::Runtime;
use trellis_secrets::Secret;

/// The request's `metadata.<name>` query parameters, for the store.
fn metadata(query: &HashMap<String, String>) -> BTreeMap<String, String> {
    query
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.clone())))
        .collect()
}

pub async fn get(
    State(rt): State<Arc<Runtime>>,
    Path((store, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Secret>, ApiError> {
    ops::get(&rt, &store, &key, metadata(&query))
        .await
        .map(Json)
}

pub async fn bulk(
    State(rt): State<Arc<Runtime>>,
    Path(store): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<BTreeMap<String, Secret>>, ApiError> {
    ops::bulk(&rt, &store, metadata(&query)).await.map(Json)
}
