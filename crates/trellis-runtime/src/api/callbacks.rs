//! The wire JSON of the app callbacks the sidecar calls for pub/sub: the app's
//! `GET /dapr/subscribe` answer and its answer to a delivered event.

use std::collections::BTreeMap;

use http::StatusCode;
use serde::Deserialize;
use serde_json::Value;

use crate::subscriptions::{RouteRule, SubscriptionKind, SubscriptionSpec};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSubscription {
    #[serde(alias = "pubsubName", default)]
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
struct WireBulk {
    #[serde(default)]
    enabled: bool,
}

/// Parses the app's `GET /dapr/subscribe` answer. An empty body or `null` means none.
pub fn parse_subscriptions(body: &[u8]) -> Result<Vec<SubscriptionSpec>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let list: Option<Vec<WireSubscription>> = serde_json::from_slice(body)
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
                bulk_subscribe: w.bulk_subscribe.is_some_and(|b| b.enabled),
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
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        // Dapr skips the status check when the body is not JSON (an Express app's "OK").
        return AppVerdict::Success;
    };
    match value.get("status") {
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
        assert!(subs[1].bulk_subscribe);
        assert!(parse_subscriptions(b"").unwrap().is_empty());
        assert!(parse_subscriptions(b"null").unwrap().is_empty());
        assert!(parse_subscriptions(b"{").is_err());
    }
}
