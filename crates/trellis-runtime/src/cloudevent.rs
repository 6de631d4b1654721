//! CloudEvents 1.0 envelopes, as Dapr builds them around published data.
//!
//! The one exception to "only `api` knows wire JSON": the envelope is built when the API
//! publishes and read again when `delivery` routes and dead-letters a message, so both use
//! this module rather than one reaching into the other.

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value};

/// The content type of a CloudEvent in JSON (structured mode).
pub const CLOUDEVENT_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Dapr's event type for published data.
pub const EVENT_TYPE: &str = "com.dapr.event.sent";

/// Everything about a publish that ends up in the envelope besides the data.
#[derive(Debug, Clone)]
pub struct EnvelopeContext<'a> {
    /// The publishing app id (`source`).
    pub source: &'a str,
    pub pubsub: &'a str,
    pub topic: &'a str,
    /// The request's `traceparent`; a new one is made when absent.
    pub traceparent: Option<&'a str>,
    pub tracestate: Option<&'a str>,
    /// `ttlInSeconds`: the envelope gets an `expiration`.
    pub ttl: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum CloudEventError {
    #[error("the body is not a JSON CloudEvent: {0}")]
    NotCloudEvent(String),
}

/// True for `application/json` and every `+json` type.
pub fn is_json_type(content_type: &str) -> bool {
    let ct = essence(content_type);
    ct.eq_ignore_ascii_case("application/json") || ct.to_ascii_lowercase().ends_with("+json")
}

/// The media type without parameters.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Wraps `data` in a new envelope. JSON data (declared JSON and parseable) stays JSON;
/// UTF-8 data of any other non-binary type becomes a string; everything else goes to
/// `data_base64`.
pub fn wrap(ctx: &EnvelopeContext<'_>, data: &[u8], content_type: Option<&str>) -> Bytes {
    let mut ev = Map::new();
    let ct = content_type
        .filter(|c| !c.trim().is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            if std::str::from_utf8(data).is_ok() {
                "text/plain".to_string()
            } else {
                "application/octet-stream".to_string()
            }
        });
    // JSON data goes in as the bytes the app sent, once checked to be JSON: parsing it into
    // a tree only to print it again would cost more than the rest of the publish.
    let raw_json =
        is_json_type(&ct) && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    if !raw_json {
        match std::str::from_utf8(data) {
            Ok(t) if !essence(&ct).eq_ignore_ascii_case("application/octet-stream") => {
                ev.insert("data".into(), Value::String(t.to_string()));
            }
            _ => {
                ev.insert(
                    "data_base64".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
                );
            }
        }
    }
    ev.insert("datacontenttype".into(), Value::String(ct));
    fill(&mut ev, ctx, true);
    let fields = serde_json::to_vec(&Value::Object(ev)).unwrap_or_default();
    if !raw_json {
        return Bytes::from(fields);
    }
    // `fields` is `{…}` with at least the fields `fill` sets: splice `"data":<raw>,` in.
    let mut out = Vec::with_capacity(fields.len() + data.len() + 8);
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(data);
    out.push(b',');
    out.extend_from_slice(fields.get(1..).unwrap_or_default());
    Bytes::from(out)
}

/// An app's own CloudEvent (`application/cloudevents+json`): its fields are kept, missing
/// required ones filled in, and `topic`/`pubsubname` set to where it is really published.
pub fn complete(ctx: &EnvelopeContext<'_>, body: &[u8]) -> Result<Bytes, CloudEventError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| CloudEventError::NotCloudEvent(e.to_string()))?;
    let Value::Object(mut ev) = value else {
        return Err(CloudEventError::NotCloudEvent("not a JSON object".into()));
    };
    if !ev.contains_key("datacontenttype") && ev.contains_key("data") {
        let ct = if ev.get("data").is_some_and(Value::is_string) {
            "text/plain"
        } else {
            "application/json"
        };
        ev.insert("datacontenttype".into(), Value::String(ct.into()));
    }
    fill(&mut ev, ctx, false);
    Ok(Bytes::from(
        serde_json::to_vec(&Value::Object(ev)).unwrap_or_default(),
    ))
}

/// Sets the envelope fields; with `overwrite` false only missing ones (but `topic` and
/// `pubsubname` always say where the event really went, as Dapr does).
fn fill(ev: &mut Map<String, Value>, ctx: &EnvelopeContext<'_>, overwrite: bool) {
    let mut set = |k: &str, v: String| {
        if overwrite || !ev.contains_key(k) {
            ev.insert(k.to_string(), Value::String(v));
        }
    };
    set("id", uuid::Uuid::new_v4().to_string());
    set("source", ctx.source.to_string());
    set("type", EVENT_TYPE.to_string());
    set("specversion", "1.0".to_string());
    let now = SystemTime::now();
    set("time", rfc3339(now));
    let traceparent = ctx
        .traceparent
        .map(str::to_string)
        .unwrap_or_else(new_traceparent);
    set("traceid", traceparent.clone());
    set("traceparent", traceparent);
    set("tracestate", ctx.tracestate.unwrap_or_default().to_string());
    if let Some(ttl) = ctx.ttl {
        set("expiration", rfc3339(now + ttl));
    }
    ev.insert("topic".into(), Value::String(ctx.topic.to_string()));
    ev.insert("pubsubname".into(), Value::String(ctx.pubsub.to_string()));
}

/// A fresh W3C `traceparent` (sampled), for publishes that carry none.
fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &span[..16])
}

/// Parses a delivered message as a CloudEvent: `Some` when it is a JSON object with a
/// string `specversion` (a raw payload is not).
pub fn parse(data: &[u8]) -> Option<Value> {
    match serde_json::from_slice::<Value>(data) {
        Ok(v @ Value::Object(_)) if v.get("specversion").is_some_and(Value::is_string) => Some(v),
        _ => None,
    }
}

/// What delivery needs of a message when no routing rule looks inside it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Glance {
    /// Whether [`parse`] would take it for a CloudEvent.
    pub is_cloudevent: bool,
    pub traceparent: Option<String>,
}

/// The same answer as [`parse`] about being a CloudEvent, and its `traceparent`, without
/// building the event: the other fields are only skipped over. Delivery does this once
/// per message, so it is worth not allocating a tree for a 1 KiB event.
pub fn glance(data: &[u8]) -> Glance {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        specversion: Option<Value>,
        #[serde(default)]
        traceparent: Option<Value>,
    }
    // A derived struct would also accept a JSON array (by position); an event is an object.
    if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Glance::default();
    }
    match serde_json::from_slice::<Probe>(data) {
        Ok(p) if p.specversion.as_ref().is_some_and(Value::is_string) => Glance {
            is_cloudevent: true,
            traceparent: p.traceparent.and_then(|t| t.as_str().map(str::to_string)),
        },
        _ => Glance::default(),
    }
}

/// A time as RFC 3339 in UTC with milliseconds (`2024-05-01T12:00:00.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    trellis_core::time::rfc3339(t, trellis_core::time::Precision::Millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn glance_agrees_with_parse() {
        let cases: [&[u8]; 10] = [
            br#"{"specversion":"1.0","id":"1","traceparent":"00-ab-cd-01","data":{"x":[1,2]}}"#,
            br#" {"specversion":"1.0"}"#,
            br#"{"specversion":1}"#,
            br#"{"specversion":null}"#,
            br#"{"id":"no version"}"#,
            br#"["1.0","00-ab-cd-01"]"#,
            br#"{"specversion":"1.0","traceparent":7}"#,
            b"plain text",
            b"{not json",
            b"",
        ];
        for data in cases {
            let parsed = parse(data);
            let g = glance(data);
            let text = String::from_utf8_lossy(data);
            assert_eq!(g.is_cloudevent, parsed.is_some(), "{text}");
            let tp = parsed
                .as_ref()
                .and_then(|v| v.get("traceparent"))
                .and_then(Value::as_str)
                .map(str::to_string);
            assert_eq!(g.traceparent, tp, "{text}");
        }
        assert_eq!(glance(cases[0]).traceparent.as_deref(), Some("00-ab-cd-01"));
    }

    fn ctx() -> EnvelopeContext<'static> {
        EnvelopeContext {
            source: "app",
            pubsub: "pubsub",
            topic: "t",
            traceparent: None,
            tracestate: None,
            ttl: None,
        }
    }

    fn json(b: Bytes) -> Value {
        serde_json::from_slice(&b).unwrap_or_default()
    }

    #[test]
    fn data_kinds() {
        let ev = json(wrap(&ctx(), br#"{"a":1}"#, Some("application/json")));
        assert_eq!(ev["data"]["a"], 1);
        let ev = json(wrap(&ctx(), b"hi", Some("text/plain")));
        assert_eq!(ev["data"], "hi");
        let ev = json(wrap(&ctx(), &[0xff, 0], Some("application/octet-stream")));
        assert_eq!(ev["data_base64"], "/wA=");
        assert!(ev.get("data").is_none());
        assert_eq!(ev["specversion"], "1.0");
        assert_eq!(ev["type"], EVENT_TYPE);
        // JSON data keeps the app's exact bytes (number spelling, key order, spacing).
        let raw = br#" {"z": 1.50, "a": [true, null]} "#;
        let bytes = wrap(&ctx(), raw, Some("application/json; charset=utf-8"));
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(text.contains(r#"{"z": 1.50, "a": [true, null]}"#), "{text}");
        assert_eq!(json(bytes)["data"]["z"], 1.5);
        // Declared JSON that is not JSON is sent as text.
        let ev = json(wrap(&ctx(), b"{oops", Some("application/json")));
        assert_eq!(ev["data"], "{oops");
        let ev = json(wrap(&ctx(), b"[]", Some("application/cloudevents+json")));
        assert_eq!(ev["data"], serde_json::json!([]));
    }

    #[test]
    fn app_cloudevents_keep_their_fields() {
        let ev = json(complete(&ctx(), br#"{"id":"mine","type":"x","data":{"k":1}}"#).unwrap());
        assert_eq!(ev["id"], "mine");
        assert_eq!(ev["type"], "x");
        assert_eq!(ev["source"], "app");
        assert_eq!(ev["topic"], "t");
        assert!(complete(&ctx(), b"[1]").is_err());
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_709_210_096_789)),
            "2024-02-29T12:34:56.789Z"
        );
    }
}
