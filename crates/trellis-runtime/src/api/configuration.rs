//! Dapr's configuration API: `GET /v1.0/configuration/{store}?key=a&key=b` (and the same
//! under `/v1.0-alpha1`).
//!
//! The HTTP adapter over [`ops::configuration`](super::ops::configuration): repeated `key`
//! query parameters (none: every item) and `metadata.*` ones in, `{"a": {"value",
//! "version", "metadata"}}` out. Subscribing to changes is not implemented yet.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Serialize;

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
    let keys: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "key")
        .map(|(_, v)| v.clone())
        .collect();
    let metadata: BTreeMap<String, String> = query
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("metadata.")?.to_string(), v.clone())))
        .collect();
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
