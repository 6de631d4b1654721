//! Dapr's publish API: `/v1.0/publish/{pubsub}/{topic}` and the bulk form under
//! `/v1.0-alpha1/publish/bulk/...` (also `/v1.0/publish/bulk/...`).
//!
//! Data is wrapped in a CloudEvent unless the app sent its own
//! (`application/cloudevents+json`) or asked for `metadata.rawPayload=true`. A publish is
//! answered 204 only once the broker has stored it; a broker failure is a 500.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use trellis_pubsub::PublishRequest;

use super::error::ApiError;
use crate::cloudevent::{self, CLOUDEVENT_CONTENT_TYPE, EnvelopeContext};
use crate::pubsub::PubSubComponent;
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

/// The pub/sub and topic of a request, with Dapr's checks in Dapr's order.
fn target<'a>(
    rt: &'a Runtime,
    name: &str,
    topic: &str,
) -> Result<&'a Arc<PubSubComponent>, ApiError> {
    if rt.pubsub.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_PUBSUB_NOT_CONFIGURED",
            "no pubsub is configured",
        ));
    }
    if name.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_EMPTY",
            "pubsub name is empty",
        ));
    }
    let component = rt.pubsub.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_NOT_FOUND",
            format!("pubsub {name} is not found"),
        )
    })?;
    if topic.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_TOPIC_NAME_EMPTY",
            format!("topic is empty in pubsub {name}"),
        ));
    }
    if !component.scopes.can_publish(&rt.app.app_id, topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ERR_PUBSUB_FORBIDDEN",
            format!("topic {topic} is not allowed for app id {}", rt.app.app_id),
        ));
    }
    Ok(component)
}

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

fn flag(metadata: &BTreeMap<String, String>, name: &str) -> bool {
    metadata
        .get(name)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn ttl(metadata: &BTreeMap<String, String>) -> Result<Option<Duration>, ApiError> {
    let Some(raw) = metadata.get("ttlInSeconds") else {
        return Ok(None);
    };
    match raw.trim().parse::<i64>() {
        Ok(secs) if secs > 0 => Ok(Some(Duration::from_secs(secs as u64))),
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_PUBSUB_REQUEST_METADATA",
            format!("metadata.ttlInSeconds {raw:?} must be a positive number of seconds"),
        )),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

fn publish_failed(name: &str, topic: &str, err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        format!("error when publish to topic {topic} in pubsub {name}: {err}"),
    )
}

/// Builds the stored message for one publish: the envelope (or the raw data) and its
/// content type.
fn message(
    ctx: &EnvelopeContext<'_>,
    data: &[u8],
    content_type: Option<&str>,
    metadata: BTreeMap<String, String>,
) -> Result<PublishRequest, ApiError> {
    let raw = flag(&metadata, "rawPayload");
    let is_cloudevent = content_type
        .is_some_and(|c| cloudevent::essence(c).eq_ignore_ascii_case(CLOUDEVENT_CONTENT_TYPE));
    let (body, ct) = if raw {
        (
            Bytes::copy_from_slice(data),
            content_type.map(str::to_string),
        )
    } else if is_cloudevent {
        let ev = cloudevent::complete(ctx, data).map_err(|e| {
            // A 500, as in Dapr: its CloudEventCreation error, whatever the cause.
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_PUBSUB_CLOUD_EVENTS_SER",
                format!(
                    "cannot create cloudevent for topic {} pubsub {}: {e}",
                    ctx.topic, ctx.pubsub
                ),
            )
        })?;
        (ev, Some(CLOUDEVENT_CONTENT_TYPE.to_string()))
    } else {
        (
            cloudevent::wrap(ctx, data, content_type),
            Some(CLOUDEVENT_CONTENT_TYPE.to_string()),
        )
    };
    Ok(PublishRequest {
        topic: ctx.topic.to_string(),
        data: body,
        content_type: ct,
        ttl: ctx.ttl,
        metadata,
    })
}

// ---- handlers ----------------------------------------------------------------------------

pub async fn publish(
    State(rt): State<Arc<Runtime>>,
    Path((name, topic)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let component = target(&rt, &name, &topic)?;
    let data = super::state::read_body(body, rt.max_request_body).await?;
    let metadata = query_metadata(&query);
    let ctx = EnvelopeContext {
        source: &rt.app.app_id,
        pubsub: &name,
        topic: &topic,
        traceparent: header_str(&headers, "traceparent"),
        tracestate: header_str(&headers, "tracestate"),
        ttl: ttl(&metadata)?,
    };
    let req = message(
        &ctx,
        &data,
        header_str(&headers, header::CONTENT_TYPE.as_str()),
        metadata,
    )?;
    component
        .broker
        .publish(req)
        .await
        .map_err(|e| publish_failed(&name, &topic, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/v1.0/publish/{pubsub}` and `/v1.0/publish/{pubsub}/`: a publish without a topic.
pub async fn publish_no_topic(
    State(rt): State<Arc<Runtime>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    target(&rt, &name, "").map(|_| StatusCode::NO_CONTENT)
}

pub async fn bulk_publish(
    State(rt): State<Arc<Runtime>>,
    Path((name, topic)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let component = target(&rt, &name, &topic)?;
    let data = super::state::read_body(body, rt.max_request_body).await?;
    let entries: Vec<BulkEntry> = serde_json::from_slice(&data).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_PUBSUB_EVENTS_SER",
            format!("error when unmarshaling the request for topic {topic} pubsub {name}: {e}"),
        )
    })?;
    let request_metadata = query_metadata(&query);
    let mut seen = HashSet::new();
    for e in &entries {
        if e.entry_id.is_empty() || !seen.insert(e.entry_id.as_str()) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "ERR_PUBSUB_EVENTS_SER",
                format!(
                    "entryId {:?} is empty or duplicated in the bulk publish request for topic {topic} pubsub {name}",
                    e.entry_id
                ),
            ));
        }
    }
    let (traceparent, tracestate) = (
        header_str(&headers, "traceparent"),
        header_str(&headers, "tracestate"),
    );
    let mut reqs = Vec::with_capacity(entries.len());
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut metadata = request_metadata.clone();
        metadata.extend(entry.metadata);
        // A string event is the data itself; anything else is JSON.
        let raw = entry.event.as_deref().map_or("null", RawValue::get);
        let is_string = raw.starts_with('"');
        let content_type = entry.content_type.clone().unwrap_or_else(|| {
            if is_string {
                "text/plain"
            } else {
                "application/json"
            }
            .to_string()
        });
        let bytes = if is_string && !cloudevent::is_json_type(&content_type) {
            serde_json::from_str::<String>(raw)
                .unwrap_or_default()
                .into_bytes()
        } else {
            raw.as_bytes().to_vec()
        };
        let ctx = EnvelopeContext {
            source: &rt.app.app_id,
            pubsub: &name,
            topic: &topic,
            traceparent,
            tracestate,
            ttl: ttl(&metadata)?,
        };
        reqs.push(message(&ctx, &bytes, Some(&content_type), metadata)?);
        ids.push(entry.entry_id);
    }
    match component.broker.bulk_publish(reqs).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(err) => {
            let failed_entries = err
                .failed
                .iter()
                .map(|(i, e)| FailedEntry {
                    entry_id: ids.get(*i).cloned().unwrap_or_default(),
                    error: e.to_string(),
                })
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
