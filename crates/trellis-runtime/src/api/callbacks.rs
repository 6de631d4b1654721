//! The wire JSON of the app callbacks the sidecar calls for pub/sub: the app's
//! `GET /dapr/subscribe` answer, its answer to a delivered event, and the bulk delivery
//! envelope (`com.dapr.event.sent.bulk`) with its per-entry answer.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use super::gojson::{self, GoJson, fold_field, fold_keys};
use crate::cloudevent::{self, CLOUDEVENT_CONTENT_TYPE};
use crate::subscriptions::{BulkConfig, RouteRule, SubscriptionKind, SubscriptionSpec};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSubscription {
    #[serde(default)]
    pubsubname: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    route: Option<String>,
    #[serde(default)]
    routes: Option<WireRoutes>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    dead_letter_topic: Option<String>,
    #[serde(default)]
    bulk_subscribe: Option<WireBulk>,
}

#[derive(Deserialize, Default)]
struct WireRoutes {
    #[serde(default)]
    rules: Vec<WireRule>,
    #[serde(default)]
    default: Option<String>,
}

#[derive(Deserialize)]
struct WireRule {
    #[serde(rename = "match", default)]
    match_expr: Option<String>,
    #[serde(default)]
    path: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBulk {
    #[serde(default)]
    enabled: bool,
    #[serde(default)]
    max_messages_count: Option<u32>,
    #[serde(default)]
    max_await_duration_ms: Option<u32>,
}

// Dapr reads the app's answers with Go's case-insensitive key matching (`pubsubName`,
// `PubsubName` and `pubsubname` are one field); see `gojson`.

impl GoJson for WireSubscription {
    fn fold(v: &mut Value) {
        fold_keys(
            v,
            &[
                "pubsubname",
                "topic",
                "route",
                "routes",
                "metadata",
                "deadLetterTopic",
                "bulkSubscribe",
            ],
        );
        fold_field::<WireRoutes>(v, "routes");
        fold_field::<WireBulk>(v, "bulkSubscribe");
    }
}

impl GoJson for WireRoutes {
    fn fold(v: &mut Value) {
        fold_keys(v, &["rules", "default"]);
        fold_field::<Vec<WireRule>>(v, "rules");
    }
}

impl GoJson for WireRule {
    fn fold(v: &mut Value) {
        fold_keys(v, &["match", "path"]);
    }
}

impl GoJson for WireBulk {
    fn fold(v: &mut Value) {
        fold_keys(v, &["enabled", "maxMessagesCount", "maxAwaitDurationMs"]);
    }
}

impl GoJson for WireBulkAnswer {
    fn fold(v: &mut Value) {
        fold_keys(v, &["statuses"]);
        fold_field::<Vec<WireEntryStatus>>(v, "statuses");
    }
}

impl GoJson for WireEntryStatus {
    fn fold(v: &mut Value) {
        fold_keys(v, &["entryId", "status"]);
    }
}

/// Parses the app's `GET /dapr/subscribe` answer. An empty body or `null` means none.
pub fn parse_subscriptions(body: &[u8]) -> Result<Vec<SubscriptionSpec>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let list: Option<Vec<WireSubscription>> = gojson::from_slice(body)
        .map_err(|e| format!("the app's /dapr/subscribe answer is not a subscription list: {e}"))?;
    Ok(list
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            let routes = w.routes.unwrap_or_default();
            SubscriptionSpec {
                kind: SubscriptionKind::Programmatic,
                pubsub: w.pubsubname,
                topic: w.topic,
                rules: routes
                    .rules
                    .into_iter()
                    .map(|r| RouteRule {
                        match_expr: r.match_expr,
                        path: r.path,
                    })
                    .collect(),
                // `route` is the v1 form; `routes.default` wins when both are given.
                default_route: routes.default.filter(|d| !d.is_empty()).or(w.route),
                metadata: w.metadata,
                dead_letter_topic: w.dead_letter_topic.filter(|t| !t.is_empty()),
                bulk_subscribe: w
                    .bulk_subscribe
                    .filter(|b| b.enabled)
                    .map(|b| BulkConfig::new(b.max_messages_count, b.max_await_duration_ms)),
            }
        })
        .collect())
}

/// What the app said about one delivered event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppVerdict {
    Success,
    /// Redeliver; the text says why.
    Retry(String),
    /// Give up on the message (acked, logged, counted).
    Drop(String),
}

/// Dapr's reading of an app's answer to a delivered event: 2xx with `status` SUCCESS or
/// empty (or a body that is not JSON at all, as Dapr does) = success; RETRY, any other
/// status value, or a non-2xx status other than 404 = retry; DROP or 404 = drop.
pub fn app_verdict(status: StatusCode, body: &[u8]) -> AppVerdict {
    if status == StatusCode::NOT_FOUND {
        return AppVerdict::Drop("the app answered 404".into());
    }
    if !status.is_success() {
        return AppVerdict::Retry(format!("the app answered {status}"));
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
        // Dapr skips the status check when the body is not JSON (an Express app's "OK").
        return AppVerdict::Success;
    };
    fold_keys(&mut value, &["status"]);
    status_verdict(value.get("status"))
}

/// One `status` field: absent, null, empty or SUCCESS = success; RETRY and anything
/// unknown = retry; DROP = drop.
fn status_verdict(status: Option<&Value>) -> AppVerdict {
    match status {
        None | Some(Value::Null) => AppVerdict::Success,
        Some(Value::String(s)) => match s.to_ascii_uppercase().as_str() {
            "" | "SUCCESS" => AppVerdict::Success,
            "RETRY" => AppVerdict::Retry("the app answered RETRY".into()),
            "DROP" => AppVerdict::Drop("the app answered DROP".into()),
            other => AppVerdict::Retry(format!("the app answered an unknown status {other:?}")),
        },
        Some(other) => AppVerdict::Retry(format!("the app answered a malformed status {other}")),
    }
}

/// One event of a bulk delivery, as the delivery loop hands it over.
pub struct BulkEntry<'a> {
    /// Unique within the request; the app names it in its answer.
    pub entry_id: &'a str,
    /// The stored payload: a CloudEvent's JSON when `is_cloudevent`, raw data otherwise.
    pub data: &'a [u8],
    pub is_cloudevent: bool,
    /// The raw payload's content type (ignored for CloudEvents).
    pub content_type: Option<&'a str>,
    pub metadata: &'a BTreeMap<String, String>,
}

/// The body of a bulk delivery: Dapr's `com.dapr.event.sent.bulk` envelope. CloudEvents go
/// in as the JSON they are stored as (already validated when routing parsed them), so a
/// batch costs one copy, not a parse and a re-serialisation per event.
pub fn bulk_envelope(id: &str, pubsub: &str, topic: &str, entries: &[BulkEntry<'_>]) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| e.data.len() + 128).sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(b"{\"id\":");
    put_json(&mut out, id);
    out.extend_from_slice(b",\"entries\":[");
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"entryId\":");
        put_json(&mut out, e.entry_id);
        out.extend_from_slice(b",\"event\":");
        let content_type = if e.is_cloudevent {
            out.extend_from_slice(e.data);
            CLOUDEVENT_CONTENT_TYPE
        } else {
            let ct = e.content_type.unwrap_or("application/octet-stream");
            put_json(&mut out, &raw_event(e.data, ct));
            ct
        };
        out.extend_from_slice(b",\"contentType\":");
        put_json(&mut out, content_type);
        out.extend_from_slice(b",\"metadata\":");
        put_json(&mut out, e.metadata);
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"metadata\":{\"pubsubName\":");
    put_json(&mut out, pubsub);
    out.extend_from_slice(b"},\"pubsubname\":");
    put_json(&mut out, pubsub);
    out.extend_from_slice(b",\"topic\":");
    put_json(&mut out, topic);
    out.extend_from_slice(b",\"type\":\"com.dapr.event.sent.bulk\"}");
    out
}

/// Appends `value` as JSON. Strings, string maps and `Value`s always serialise, and
/// writing to a `Vec` cannot fail, so there is no error to pass on.
fn put_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let _ = serde_json::to_writer(out, value);
}

/// A raw (non-CloudEvent) payload in a bulk entry: JSON stays JSON, text becomes a
/// string, anything else a base64 string.
fn raw_event(data: &[u8], content_type: &str) -> Value {
    if cloudevent::is_json_type(content_type)
        && let Ok(v) = serde_json::from_slice::<Value>(data)
    {
        return v;
    }
    match std::str::from_utf8(data) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireBulkAnswer {
    #[serde(default)]
    statuses: Vec<WireEntryStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireEntryStatus {
    #[serde(default)]
    entry_id: String,
    #[serde(default)]
    status: Option<Value>,
}

/// Dapr's reading of an app's answer to a bulk delivery, one verdict per entry of
/// `entry_ids` (in that order): 404 drops them all and any other non-2xx status retries
/// them all, as for a single event; a 2xx answer must list `statuses`, and an entry it
/// does not name is retried (the app may not have seen it). A 2xx answer that is not a
/// status list retries everything: acknowledging events the app never confirmed could
/// lose them.
pub fn bulk_verdicts(status: StatusCode, body: &[u8], entry_ids: &[&str]) -> Vec<AppVerdict> {
    let all = |v: AppVerdict| vec![v; entry_ids.len()];
    if status == StatusCode::NOT_FOUND {
        return all(AppVerdict::Drop("the app answered 404".into()));
    }
    if !status.is_success() {
        return all(AppVerdict::Retry(format!("the app answered {status}")));
    }
    let answer: WireBulkAnswer = match gojson::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            return all(AppVerdict::Retry(format!(
                "the app's answer to a bulk delivery is not a status list: {e}"
            )));
        }
    };
    let by_id: HashMap<&str, Option<&Value>> = answer
        .statuses
        .iter()
        .map(|s| (s.entry_id.as_str(), s.status.as_ref()))
        .collect();
    entry_ids
        .iter()
        .map(|id| match by_id.get(id) {
            None => AppVerdict::Retry("the app's bulk answer does not list this entry".into()),
            Some(status) => status_verdict(*status),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ok = StatusCode::OK;
        assert_eq!(app_verdict(ok, b""), AppVerdict::Success);
        assert_eq!(
            app_verdict(ok, br#"{"status":"SUCCESS"}"#),
            AppVerdict::Success
        );
        assert_eq!(app_verdict(ok, b"OK"), AppVerdict::Success);
        assert!(matches!(
            app_verdict(ok, br#"{"Status":"RETRY"}"#),
            AppVerdict::Retry(_)
        ));
        assert!(matches!(
            app_verdict(ok, br#"{"status":"RETRY"}"#),
            AppVerdict::Retry(_)
        ));
        assert!(matches!(
            app_verdict(ok, br#"{"status":"DROP"}"#),
            AppVerdict::Drop(_)
        ));
        assert!(matches!(
            app_verdict(ok, br#"{"status":"MAYBE"}"#),
            AppVerdict::Retry(_)
        ));
        assert!(matches!(
            app_verdict(ok, br#"{"status":7}"#),
            AppVerdict::Retry(_)
        ));
        assert!(matches!(
            app_verdict(StatusCode::NOT_FOUND, b""),
            AppVerdict::Drop(_)
        ));
        assert!(matches!(
            app_verdict(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"status":"SUCCESS"}"#
            ),
            AppVerdict::Retry(_)
        ));
    }

    #[test]
    fn subscribe_answers() {
        let subs = parse_subscriptions(
            br#"[{"pubsubname":"pubsub","topic":"a","route":"/a"},
                 {"pubsubName":"pubsub","topic":"b","routes":{"rules":[{"match":"event.type == \"x\"","path":"/x"}],"default":"/b"},
                  "deadLetterTopic":"dead","metadata":{"k":"v"},"bulkSubscribe":{"enabled":true}}]"#,
        )
        .unwrap();
        assert_eq!(subs.len(), 2);
        assert_eq!(subs[0].default_route.as_deref(), Some("/a"));
        assert_eq!(subs[1].rules[0].path, "/x");
        assert_eq!(subs[1].default_route.as_deref(), Some("/b"));
        assert_eq!(subs[1].dead_letter_topic.as_deref(), Some("dead"));
        assert_eq!(
            subs[1].bulk_subscribe,
            Some(BulkConfig {
                max_messages: 100,
                max_await: std::time::Duration::from_secs(1)
            })
        );
        assert_eq!(subs[0].bulk_subscribe, None);
        let go_cased = parse_subscriptions(
            br#"[{"PubsubName":"p","Topic":"t","Routes":{"Rules":[{"Match":"event.type == \"x\"","Path":"/x"}]},
                  "DeadLetterTopic":"d","BulkSubscribe":{"Enabled":true,"MaxMessagesCount":5}}]"#,
        )
        .unwrap();
        assert_eq!(go_cased[0].pubsub, "p");
        assert_eq!(go_cased[0].topic, "t");
        assert_eq!(go_cased[0].rules[0].path, "/x");
        assert_eq!(go_cased[0].dead_letter_topic.as_deref(), Some("d"));
        assert_eq!(go_cased[0].bulk_subscribe.map(|b| b.max_messages), Some(5));
        assert!(parse_subscriptions(b"").unwrap().is_empty());
        assert!(parse_subscriptions(b"null").unwrap().is_empty());
        assert!(parse_subscriptions(b"{").is_err());
    }

    #[test]
    fn bulk_envelope_keeps_cloudevents_and_wraps_raw_payloads() {
        let ce = br#"{"specversion":"1.0","id":"e1","data":{"n":1}}"#;
        let md: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let none = BTreeMap::new();
        let entries = [
            BulkEntry {
                entry_id: "1",
                data: ce,
                is_cloudevent: true,
                content_type: None,
                metadata: &md,
            },
            BulkEntry {
                entry_id: "2",
                data: b"plain \"text\"",
                is_cloudevent: false,
                content_type: Some("text/plain"),
                metadata: &none,
            },
            BulkEntry {
                entry_id: "3",
                data: br#"{"a":[1,2]}"#,
                is_cloudevent: false,
                content_type: Some("application/json"),
                metadata: &none,
            },
            BulkEntry {
                entry_id: "4",
                data: &[0xff, 0x00],
                is_cloudevent: false,
                content_type: None,
                metadata: &none,
            },
        ];
        let body = bulk_envelope("req", "ps", "orders", &entries);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "req");
        assert_eq!(v["type"], "com.dapr.event.sent.bulk");
        assert_eq!(v["pubsubname"], "ps");
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["metadata"]["pubsubName"], "ps");
        let e = &v["entries"];
        assert_eq!(e[0]["entryId"], "1");
        assert_eq!(e[0]["event"]["data"]["n"], 1);
        assert_eq!(e[0]["contentType"], CLOUDEVENT_CONTENT_TYPE);
        assert_eq!(e[0]["metadata"]["k"], "v");
        assert_eq!(e[1]["event"], "plain \"text\"");
        assert_eq!(e[1]["contentType"], "text/plain");
        assert_eq!(e[2]["event"]["a"][1], 2);
        assert_eq!(e[3]["event"], "/wA=");
        assert_eq!(e[3]["contentType"], "application/octet-stream");
        let empty: Value = serde_json::from_slice(&bulk_envelope("r", "p", "t", &[])).unwrap();
        assert_eq!(empty["entries"], serde_json::json!([]));
    }

    #[test]
    fn bulk_verdicts_follow_each_entry() {
        let ids = ["a", "b", "c", "d", "e"];
        let body =
            br#"{"statuses":[{"entryId":"a","status":"SUCCESS"},{"entryId":"b","status":"RETRY"},
            {"entryId":"c","status":"DROP"},{"entryId":"e","status":"bogus"}]}"#;
        let v = bulk_verdicts(StatusCode::OK, body, &ids);
        let go_cased = br#"{"Statuses":[{"EntryID":"a","Status":"DROP"}]}"#;
        assert!(matches!(
            bulk_verdicts(StatusCode::OK, go_cased, &ids)[0],
            AppVerdict::Drop(_)
        ));
        assert_eq!(v[0], AppVerdict::Success);
        assert!(matches!(v[1], AppVerdict::Retry(_)));
        assert!(matches!(v[2], AppVerdict::Drop(_)));
        assert!(matches!(&v[3], AppVerdict::Retry(why) if why.contains("does not list")));
        assert!(matches!(v[4], AppVerdict::Retry(_)));
        let all_retry = |v: Vec<AppVerdict>| v.iter().all(|v| matches!(v, AppVerdict::Retry(_)));
        assert!(all_retry(bulk_verdicts(StatusCode::OK, b"OK", &ids)));
        assert!(all_retry(bulk_verdicts(StatusCode::OK, b"", &ids)));
        assert!(all_retry(bulk_verdicts(
            StatusCode::INTERNAL_SERVER_ERROR,
            body,
            &ids
        )));
        let dropped = bulk_verdicts(StatusCode::NOT_FOUND, b"", &ids);
        assert!(dropped.iter().all(|v| matches!(v, AppVerdict::Drop(_))));
        assert_eq!(dropped.len(), 5);
    }
}
