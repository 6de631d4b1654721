//! Dapr's publish API: `/v1.0/publish/{pubsub}/{topic}` and the bulk form under
//! `/v1.0-alpha1/publish/bulk/...` (also `/v1.0/publish/bulk/...`).
//!
//! The HTTP adapter over [`ops::pubsub`](super::ops::pubsub): a publish is answered 204
//! once the broker has stored it; a broker failure is a 500.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::ApiError;
use super::ops::pubsub as ops;
use crate::cloudevent;
use crate::runtime::Runtime;

// ---- wire types --------------------------------------------------------------------------

/// One entry of a bulk publish. The event stays the JSON text it came as (no tree is
/// built for it: a bulk request is mostly events), and keys match in any case, the last
/// one winning, as Go's decoder does (the JavaScript SDK sends `entryID`).
#[derive(Default)]
struct BulkEntry {
    entry_id: String,
    event: Option<Box<RawValue>>,
    content_type: Option<String>,
    metadata: HashMap<String, String>,
}

impl<'de> Deserialize<'de> for BulkEntry {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = BulkEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a bulk publish entry object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<BulkEntry, A::Error> {
                let mut entry = BulkEntry::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.to_ascii_lowercase().as_str() {
                        "entryid" => entry.entry_id = map.next_value()?,
                        "event" => entry.event = Some(map.next_value()?),
                        "contenttype" => entry.content_type = map.next_value()?,
                        "metadata" => {
                            entry.metadata = map
                                .next_value::<Option<HashMap<String, String>>>()?
                                .unwrap_or_default();
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(entry)
            }
        }
        de.deserialize_map(Entry)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkResponse {
    failed_entries: Vec<FailedEntry>,
    error_code: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedEntry {
    entry_id: String,
    error: String,
}

// ---- helpers -----------------------------------------------------------------------------

/// `metadata.<name>` query parameters, prefix removed.
fn query_metadata(query: &HashMap<String, String>) -> BTreeMap<String, String> {
    query
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata.")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

// ---- handlers ----------------------------------------------------------------------------

pub async fn publish(
    State(rt): State<Arc<Runtime>>,
    Path((name, topic)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    ops::target(&rt, &name, &topic)?;
    let data = super::state::read_body(body, rt.max_request_body).await?;
    ops::publish(
        &rt,
        ops::Publish {
            pubsub: &name,
            topic: &topic,
            data,
            content_type: header_str(&headers, header::CONTENT_TYPE.as_str()),
            metadata: query_metadata(&query),
            traceparent: header_str(&headers, "traceparent"),
            tracestate: header_str(&headers, "tracestate"),
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/v1.0/publish/{pubsub}` and `/v1.0/publish/{pubsub}/`: a publish without a topic.
pub async fn publish_no_topic(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    ops::target(&rt, &name, "").map(|_| StatusCode::NO_CONTENT)
}

pub async fn bulk_publish(
    State(rt): State<Arc<Runtime>>,
    Path((name, topic)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ops::target(&rt, &name, &topic)?;
    let data = super::state::read_body(body, rt.max_request_body).await?;
    let wire: Vec<BulkEntry> =
        serde_json::from_slice(&data).map_err(|e| ops::bulk_malformed(&name, &topic, e))?;
    let entries = wire
        .into_iter()
        .map(|entry| {
            // A string event is the data itself; anything else is JSON.
            let raw = entry.event.as_deref().map_or("null", RawValue::get);
            let is_string = raw.starts_with('"');
            let content_type = entry.content_type.unwrap_or_else(|| {
                if is_string {
                    "text/plain"
                } else {
                    "application/json"
                }
                .to_string()
            });
            let event = if is_string && !cloudevent::is_json_type(&content_type) {
                serde_json::from_str::<String>(raw)
                    .unwrap_or_default()
                    .into_bytes()
            } else {
                raw.as_bytes().to_vec()
            };
            ops::BulkEntry {
                entry_id: entry.entry_id,
                event: Bytes::from(event),
                content_type,
                metadata: entry.metadata.into_iter().collect(),
            }
        })
        .collect();
    let request = ops::Publish {
        pubsub: &name,
        topic: &topic,
        metadata: query_metadata(&query),
        traceparent: header_str(&headers, "traceparent"),
        tracestate: header_str(&headers, "tracestate"),
        ..Default::default()
    };
    match ops::bulk_publish(&rt, request, entries).await? {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(failure) => {
            let failed_entries = failure
                .failed
                .into_iter()
                .map(|(entry_id, error)| FailedEntry { entry_id, error })
                .collect();
            Ok((
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(BulkResponse {
                    failed_entries,
                    error_code: "ERR_PUBSUB_PUBLISH_MESSAGE",
                }),
            )
                .into_response())
        }
    }
}
