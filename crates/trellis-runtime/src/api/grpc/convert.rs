//! Conversions between the JSON the sidecar speaks with HTTP apps and the protobuf messages
//! of gRPC apps: subscriptions, events, bulk envelopes, event statuses, and gRPC's mapping
//! of status codes to HTTP.

use base64::Engine as _;
use http::StatusCode;
use serde_json::{Map, Value, json};
use tonic::Code;
use trellis_proto::runtime as pb;

/// A `TopicSubscription` as one entry of `/dapr/subscribe`.
pub fn subscription_json(s: pb::TopicSubscription) -> Value {
    let mut out = Map::new();
    out.insert("pubsubname".into(), Value::String(s.pubsub_name));
    out.insert("topic".into(), Value::String(s.topic));
    if !s.metadata.is_empty() {
        out.insert("metadata".into(), json!(s.metadata));
    }
    // A gRPC app gets every event through OnTopicEvent; the route only tells its handlers
    // apart (`path`), and "no route" means its default handler. Delivery wants a route for
    // every event, so the default becomes `/`, which the channel gives back as "".
    let routes = s.routes.unwrap_or_default();
    let rules: Vec<Value> = routes
        .rules
        .into_iter()
        .map(|r| json!({"match": r.r#match, "path": r.path}))
        .collect();
    let default = if routes.default.is_empty() {
        "/".to_string()
    } else {
        routes.default
    };
    out.insert("routes".into(), json!({"rules": rules, "default": default}));
    if !s.dead_letter_topic.is_empty() {
        out.insert("deadLetterTopic".into(), Value::String(s.dead_letter_topic));
    }
    if let Some(bulk) = s.bulk_subscribe {
        out.insert(
            "bulkSubscribe".into(),
            json!({
                "enabled": bulk.enabled,
                "maxMessagesCount": bulk.max_messages_count,
                "maxAwaitDurationMs": bulk.max_await_duration_ms,
            }),
        );
    }
    Value::Object(out)
}

/// The CloudEvent attributes that have fields of their own in `TopicEventRequest`.
const CE_FIELDS: &[&str] = &[
    "id",
    "source",
    "type",
    "specversion",
    "datacontenttype",
    "data",
    "data_base64",
    "topic",
    "pubsubname",
];

fn str_field(event: &Map<String, Value>, key: &str) -> String {
    event
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The `data` of a CloudEvent exactly as it was written (key order and spacing kept).
#[derive(serde::Deserialize)]
struct RawData<'a> {
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// The data of a CloudEvent as bytes: `data_base64` decoded, a string as its text when the
/// content type is not JSON, anything else as JSON text (`raw`, when given, is that text as
/// the publisher wrote it).
fn event_data(event: &Map<String, Value>, content_type: &str, raw: Option<&str>) -> Vec<u8> {
    if let Some(b64) = event.get("data_base64").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_default();
    }
    match event.get("data") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) if !crate::cloudevent::is_json_type(content_type) => {
            s.clone().into_bytes()
        }
        Some(v) => raw.map_or_else(|| v.to_string().into_bytes(), |r| r.as_bytes().to_vec()),
    }
}

/// One delivered message as `OnTopicEvent` takes it. A message that is not a CloudEvent
/// (raw payload) is passed as its bytes with the delivery's content type.
pub fn topic_event(
    body: &[u8],
    content_type: &str,
    pubsub: &str,
    topic: &str,
    path: &str,
) -> pb::TopicEventRequest {
    let parsed: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    match parsed.filter(|e| e.contains_key("specversion")) {
        Some(event) => {
            let data_content_type = str_field(&event, "datacontenttype");
            let raw = serde_json::from_slice::<RawData<'_>>(body)
                .ok()
                .and_then(|r| r.data.map(|d| d.get()));
            pb::TopicEventRequest {
                id: str_field(&event, "id"),
                source: str_field(&event, "source"),
                r#type: str_field(&event, "type"),
                spec_version: str_field(&event, "specversion"),
                data: event_data(&event, &data_content_type, raw),
                data_content_type,
                topic: topic.to_string(),
                pubsub_name: pubsub.to_string(),
                path: path.to_string(),
                extensions: Some(extensions(&event)),
            }
        }
        None => pb::TopicEventRequest {
            id: uuid::Uuid::new_v4().to_string(),
            data: body.to_vec(),
            data_content_type: content_type.to_string(),
            topic: topic.to_string(),
            pubsub_name: pubsub.to_string(),
            path: path.to_string(),
            ..Default::default()
        },
    }
}

/// A `com.dapr.event.sent.bulk` envelope as `OnBulkTopicEvent` takes it.
pub fn bulk_event(
    body: &[u8],
    pubsub: &str,
    topic: &str,
    path: &str,
) -> Option<pb::TopicEventBulkRequest> {
    let envelope: Map<String, Value> = serde_json::from_slice(body).ok()?;
    let entries = envelope.get("entries")?.as_array()?;
    let entries = entries
        .iter()
        .filter_map(Value::as_object)
        .map(|entry| {
            let content_type = str_field(entry, "contentType");
            let event = match entry.get("event") {
                Some(Value::Object(ce)) if ce.contains_key("specversion") => {
                    let data_content_type = str_field(ce, "datacontenttype");
                    pb::topic_event_bulk_request_entry::Event::CloudEvent(pb::TopicEventCeRequest {
                        id: str_field(ce, "id"),
                        source: str_field(ce, "source"),
                        r#type: str_field(ce, "type"),
                        spec_version: str_field(ce, "specversion"),
                        data: event_data(ce, &data_content_type, None),
                        data_content_type,
                        extensions: Some(extensions(ce)),
                    })
                }
                Some(Value::String(s)) => {
                    pb::topic_event_bulk_request_entry::Event::Bytes(s.clone().into_bytes())
                }
                Some(other) => {
                    pb::topic_event_bulk_request_entry::Event::Bytes(other.to_string().into_bytes())
                }
                None => pb::topic_event_bulk_request_entry::Event::Bytes(Vec::new()),
            };
            pb::TopicEventBulkRequestEntry {
                entry_id: str_field(entry, "entryId"),
                event: Some(event),
                content_type,
                metadata: string_map(entry.get("metadata")),
            }
        })
        .collect();
    Some(pb::TopicEventBulkRequest {
        id: str_field(&envelope, "id"),
        entries,
        metadata: string_map(envelope.get("metadata")),
        topic: topic.to_string(),
        pubsub_name: pubsub.to_string(),
        r#type: str_field(&envelope, "type"),
        path: path.to_string(),
    })
}

fn string_map(v: Option<&Value>) -> std::collections::HashMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The CloudEvent's other attributes (`traceparent`, `time`, custom extensions...).
fn extensions(event: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: event
            .iter()
            .filter(|(k, _)| !CE_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), proto_value(v)))
            .collect(),
    }
}

/// A JSON value as a `google.protobuf.Value`.
pub fn proto_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(proto_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), proto_value(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A `google.protobuf.Value` as JSON, as Go's `structpb` writes it (whole numbers without
/// a fraction).
pub fn json_value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json_value).collect()),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        ),
    }
}

/// A `TopicEventResponseStatus` as the `status` an HTTP app answers.
pub fn status_name(status: i32) -> &'static str {
    use pb::topic_event_response::TopicEventResponseStatus as S;
    match S::try_from(status) {
        Ok(S::Success) => "SUCCESS",
        Ok(S::Drop) => "DROP",
        // An unknown status is retried, as an unknown HTTP status is.
        Ok(S::Retry) | Err(_) => "RETRY",
    }
}

/// gRPC's HTTP counterpart of a status code (as grpc-gateway and Dapr map them).
pub fn http_status_for(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevents_become_topic_event_requests() {
        let ce = json!({
            "id": "1", "source": "shop", "type": "com.dapr.event.sent", "specversion": "1.0",
            "datacontenttype": "application/json", "data": {"orderId": 7},
            "topic": "orders", "pubsubname": "pubsub", "traceparent": "00-ab-cd-01"
        });
        let ev = topic_event(
            ce.to_string().as_bytes(),
            "application/cloudevents+json",
            "pubsub",
            "orders",
            "/orders",
        );
        assert_eq!(ev.id, "1");
        assert_eq!(ev.source, "shop");
        assert_eq!(ev.data, br#"{"orderId":7}"#);
        assert_eq!(ev.path, "/orders");
        let ext = ev.extensions.unwrap();
        assert!(ext.fields.contains_key("traceparent"));
        assert!(!ext.fields.contains_key("data"));

        let text =
            json!({"id": "2", "specversion": "1.0", "datacontenttype": "text/plain", "data": "hi"});
        let ev = topic_event(text.to_string().as_bytes(), "", "p", "t", "/t");
        assert_eq!(ev.data, b"hi");
        let raw = topic_event(b"\x00\x01", "application/octet-stream", "p", "t", "/t");
        assert_eq!(raw.data, b"\x00\x01");
        assert_eq!(raw.data_content_type, "application/octet-stream");
    }

    #[test]
    fn statuses_and_codes_map_as_dapr_maps_them() {
        assert_eq!(status_name(0), "SUCCESS");
        assert_eq!(status_name(1), "RETRY");
        assert_eq!(status_name(2), "DROP");
        assert_eq!(status_name(9), "RETRY");
        assert_eq!(http_status_for(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_status_for(Code::InvalidArgument),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            http_status_for(Code::Unimplemented),
            StatusCode::NOT_IMPLEMENTED
        );
    }

    #[test]
    fn subscriptions_become_subscribe_json() {
        let sub = pb::TopicSubscription {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            routes: Some(pb::TopicRoutes {
                rules: vec![pb::TopicRule {
                    r#match: "event.type == \"x\"".into(),
                    path: "/x".into(),
                }],
                default: "/orders".into(),
            }),
            dead_letter_topic: "dead".into(),
            ..Default::default()
        };
        let v = subscription_json(sub);
        assert_eq!(v["routes"]["default"], "/orders");
        assert_eq!(v["routes"]["rules"][0]["path"], "/x");
        assert_eq!(v["deadLetterTopic"], "dead");
        let plain = subscription_json(pb::TopicSubscription {
            pubsub_name: "pubsub".into(),
            topic: "orders".into(),
            ..Default::default()
        });
        assert_eq!(plain["routes"]["default"], "/");
    }
}
