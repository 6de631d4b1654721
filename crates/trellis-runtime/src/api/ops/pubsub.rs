//! Publishing, single and bulk, with Dapr's checks and error codes, for both the HTTP and
//! the gRPC API.
//!
//! Data is wrapped in a CloudEvent unless the app sent its own
//! (`application/cloudevents+json`) or asked for `metadata.rawPayload=true`. A publish
//! succeeds only once the broker has stored it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tonic::Code;
use trellis_pubsub::PublishRequest;

use crate::api::ApiError;
use crate::cloudevent::{self, CLOUDEVENT_CONTENT_TYPE, EnvelopeContext};
use crate::pubsub::PubSubComponent;
use crate::runtime::Runtime;

/// One publish, as either protocol delivers it.
#[derive(Debug, Clone, Default)]
pub struct Publish<'a> {
    pub pubsub: &'a str,
    pub topic: &'a str,
    pub data: Bytes,
    pub content_type: Option<&'a str>,
    /// Request metadata, `metadata.` prefix already removed.
    pub metadata: BTreeMap<String, String>,
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
}

/// One entry of a bulk publish: the event's bytes (JSON text, or the raw data of a string
/// event) and its content type.
#[derive(Debug, Clone)]
pub struct BulkEntry {
    pub entry_id: String,
    pub event: Bytes,
    pub content_type: String,
    pub metadata: BTreeMap<String, String>,
}

/// The entries a bulk publish could not store, with the broker's error for each.
#[derive(Debug, Clone, Default)]
pub struct BulkFailure {
    pub failed: Vec<(String, String)>,
}

/// The pub/sub and topic of a publish, with Dapr's checks in Dapr's order.
pub fn target<'a>(
    rt: &'a Runtime,
    name: &str,
    topic: &str,
) -> Result<&'a Arc<PubSubComponent>, ApiError> {
    let component = component(rt, name, topic)?;
    if !component.scopes.can_publish(&rt.app.app_id, topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ERR_PUBSUB_FORBIDDEN",
            format!("topic {topic} is not allowed for app id {}", rt.app.app_id),
        )
        .reason("DAPR_PUBSUB_FORBIDDEN"));
    }
    Ok(component)
}

/// The pub/sub and topic of a streaming subscription: the same checks as a publish, the
/// topic scoping being the component's `subscriptionScopes`.
pub fn subscribe_target<'a>(
    rt: &'a Runtime,
    name: &str,
    topic: &str,
) -> Result<&'a Arc<PubSubComponent>, ApiError> {
    let component = component(rt, name, topic)?;
    if !component.scopes.can_subscribe(&rt.app.app_id, topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "ERR_PUBSUB_FORBIDDEN",
            format!(
                "subscription to topic '{topic}' on pubsub '{name}' is not allowed for app id {}",
                rt.app.app_id
            ),
        )
        .reason("DAPR_PUBSUB_FORBIDDEN"));
    }
    Ok(component)
}

/// The component `name`, once the names are known to be usable.
fn component<'a>(
    rt: &'a Runtime,
    name: &str,
    topic: &str,
) -> Result<&'a Arc<PubSubComponent>, ApiError> {
    if rt.pubsub.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_PUBSUB_NOT_CONFIGURED",
            "no pubsub is configured",
        )
        .grpc(Code::FailedPrecondition)
        .reason("DAPR_PUBSUB_NOT_CONFIGURED"));
    }
    if name.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_EMPTY",
            "pubsub name is empty",
        )
        .grpc(Code::InvalidArgument)
        .reason("DAPR_PUBSUB_NAME_EMPTY"));
    }
    let component = rt.pubsub.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_PUBSUB_NOT_FOUND",
            format!("pubsub {name} is not found"),
        )
        .grpc(Code::InvalidArgument)
        .reason("DAPR_PUBSUB_NOT_FOUND")
    })?;
    if topic.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "ERR_TOPIC_NAME_EMPTY",
            format!("topic is empty in pubsub {name}"),
        )
        .grpc(Code::InvalidArgument)
        .reason("DAPR_PUBSUB_TOPIC_NAME_EMPTY"));
    }
    Ok(component)
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
        )
        .reason("DAPR_PUBSUB_METADATA_DESERIALIZATION")),
    }
}

fn publish_failed(name: &str, topic: &str, err: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ERR_PUBSUB_PUBLISH_MESSAGE",
        format!("error when publish to topic {topic} in pubsub {name}: {err}"),
    )
    .reason("DAPR_PUBSUB_PUBLISH_MESSAGE")
}

/// A bulk request that cannot be read (bad JSON, empty or repeated entry ids).
pub fn bulk_malformed(name: &str, topic: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "ERR_PUBSUB_EVENTS_SER",
        format!("error when unmarshaling the request for topic {topic} pubsub {name}: {detail}"),
    )
    .reason("DAPR_PUBSUB_UNMARSHAL_EVENTS")
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
            // A 500 (INVALID_ARGUMENT over gRPC), as Dapr's CloudEventCreation error is,
            // whatever the cause.
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_PUBSUB_CLOUD_EVENTS_SER",
                format!(
                    "cannot create cloudevent for topic {} pubsub {}: {e}",
                    ctx.topic, ctx.pubsub
                ),
            )
            .grpc(Code::InvalidArgument)
            .reason("DAPR_PUBSUB_CLOUD_EVENT_CREATION")
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

pub async fn publish(rt: &Runtime, req: Publish<'_>) -> Result<(), ApiError> {
    let component = target(rt, req.pubsub, req.topic)?;
    // The producer span's context goes into the event, so the delivery's span is its child.
    let mut span = producer(rt, &req);
    let traceparent = span.as_ref().map(|s| s.context().traceparent());
    let ctx = EnvelopeContext {
        source: &rt.app.app_id,
        pubsub: req.pubsub,
        topic: req.topic,
        traceparent: traceparent.as_deref().or(req.traceparent),
        tracestate: req.tracestate,
        ttl: ttl(&req.metadata)?,
    };
    let message = message(&ctx, &req.data, req.content_type, req.metadata)?;
    let result = component
        .broker
        .publish(message)
        .await
        .map_err(|e| publish_failed(req.pubsub, req.topic, e));
    if let (Some(span), Err(e)) = (&mut span, &result) {
        span.set_error(e.message.clone());
    }
    result
}

/// The span of one publish, the child of the request's (none when tracing is off).
fn producer(rt: &Runtime, req: &Publish<'_>) -> Option<trellis_trace::Span> {
    let mut span = crate::trace::child(
        rt.tracer.as_ref(),
        trellis_trace::SpanKind::Producer,
        || format!("publish {}", req.topic).into(),
    )?;
    if span.is_recording() {
        span.set_attribute("messaging.system", "dapr");
        span.set_attribute("messaging.destination.name", req.topic.to_string());
        span.set_attribute("trellis.component", req.pubsub.to_string());
    }
    Some(span)
}

/// Publishes every entry; `Ok(Err(..))` lists the entries the broker did not store.
/// `req.data` and `req.content_type` are unused: each entry has its own.
pub async fn bulk_publish(
    rt: &Runtime,
    req: Publish<'_>,
    entries: Vec<BulkEntry>,
) -> Result<Result<(), BulkFailure>, ApiError> {
    let component = target(rt, req.pubsub, req.topic)?;
    let mut seen = HashSet::new();
    for e in &entries {
        if e.entry_id.is_empty() || !seen.insert(e.entry_id.as_str()) {
            return Err(bulk_malformed(
                req.pubsub,
                req.topic,
                format_args!("entryId {:?} is empty or duplicated", e.entry_id),
            ));
        }
    }
    let span = producer(rt, &req);
    let traceparent = span.as_ref().map(|s| s.context().traceparent());
    let mut messages = Vec::with_capacity(entries.len());
    let mut ids = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut metadata = req.metadata.clone();
        metadata.extend(entry.metadata);
        let ctx = EnvelopeContext {
            source: &rt.app.app_id,
            pubsub: req.pubsub,
            topic: req.topic,
            traceparent: traceparent.as_deref().or(req.traceparent),
            tracestate: req.tracestate,
            ttl: ttl(&metadata)?,
        };
        messages.push(message(
            &ctx,
            &entry.event,
            Some(&entry.content_type),
            metadata,
        )?);
        ids.push(entry.entry_id);
    }
    match component.broker.bulk_publish(messages).await {
        Ok(()) => Ok(Ok(())),
        Err(err) => Ok(Err(BulkFailure {
            failed: err
                .failed
                .iter()
                .map(|(i, e)| (ids.get(*i).cloned().unwrap_or_default(), e.to_string()))
                .collect(),
        })),
    }
}
