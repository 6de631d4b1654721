//! The app's pub/sub subscriptions: declarative ones from `Subscription` resources and
//! programmatic ones the app lists on `GET /dapr/subscribe`, with their routing rules
//! compiled (a rule Trellis cannot evaluate is rejected here, at load time).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::cel;
use crate::config::SidecarConfig;
use crate::pubsub::PubSubs;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionKind {
    Declarative,
    Programmatic,
    /// Opened by the app over gRPC (`SubscribeTopicEventsAlpha1`), for as long as its
    /// stream lasts.
    Streaming,
}

impl SubscriptionKind {
    /// As the metadata API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionKind::Declarative => "DECLARATIVE",
            SubscriptionKind::Programmatic => "PROGRAMMATIC",
            SubscriptionKind::Streaming => "STREAMING",
        }
    }
}

/// One routing rule: events matching `match_expr` (every event when `None`) go to `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    pub match_expr: Option<String>,
    pub path: String,
}

/// A subscription as declared, before compiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    pub kind: SubscriptionKind,
    pub pubsub: String,
    pub topic: String,
    pub rules: Vec<RouteRule>,
    pub default_route: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub dead_letter_topic: Option<String>,
    /// Deliver in batches (`bulkSubscribe.enabled`); `None` = one event per request.
    pub bulk_subscribe: Option<BulkConfig>,
}

impl SubscriptionSpec {
    /// A streaming subscription: every event goes down the stream, so it has the one route
    /// `/` (as Dapr lists it), and no bulk delivery.
    pub fn streaming(
        pubsub: String,
        topic: String,
        metadata: BTreeMap<String, String>,
        dead_letter_topic: Option<String>,
    ) -> Self {
        Self {
            kind: SubscriptionKind::Streaming,
            pubsub,
            topic,
            rules: Vec::new(),
            default_route: Some("/".to_string()),
            metadata,
            dead_letter_topic,
            bulk_subscribe: None,
        }
    }
}

/// How a bulk subscription batches: at most `max_messages` events per request, and a
/// partial batch leaves at the latest `max_await` after its first event arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkConfig {
    pub max_messages: usize,
    pub max_await: Duration,
}

impl BulkConfig {
    /// Dapr's defaults: 100 messages, 1000 ms.
    pub const DEFAULT_MAX_MESSAGES: u32 = 100;
    pub const DEFAULT_MAX_AWAIT_MS: u32 = 1000;

    /// From `maxMessagesCount` / `maxAwaitDurationMs`; absent or zero means the default.
    pub fn new(max_messages: Option<u32>, max_await_ms: Option<u32>) -> Self {
        let count = max_messages
            .filter(|n| *n > 0)
            .unwrap_or(Self::DEFAULT_MAX_MESSAGES);
        let wait = max_await_ms
            .filter(|n| *n > 0)
            .unwrap_or(Self::DEFAULT_MAX_AWAIT_MS);
        Self {
            max_messages: usize::try_from(count).unwrap_or(usize::MAX),
            max_await: Duration::from_millis(u64::from(wait)),
        }
    }
}

/// A subscription ready to deliver: its rules compiled.
#[derive(Debug)]
pub struct ActiveSubscription {
    pub spec: SubscriptionSpec,
    rules: Vec<(Option<cel::Expr>, String)>,
}

impl ActiveSubscription {
    /// Compiles the rules; an unsupported `match` or a subscription with nowhere to
    /// deliver is an error naming the subscription.
    pub fn compile(spec: SubscriptionSpec) -> Result<Self, String> {
        let what = format!("subscription to {}/{}", spec.pubsub, spec.topic);
        if spec.topic.is_empty() || spec.pubsub.is_empty() {
            return Err(format!("{what}: pubsubname and topic are required"));
        }
        let mut rules = Vec::new();
        for rule in &spec.rules {
            if rule.path.is_empty() {
                return Err(format!("{what}: a routing rule has no path"));
            }
            let expr = match rule.match_expr.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(src) => Some(cel::Expr::parse(src).map_err(|e| format!("{what}: {e}"))?),
            };
            rules.push((expr, normalize(&rule.path)));
        }
        if let Some(default) = spec.default_route.as_deref().filter(|d| !d.is_empty()) {
            rules.push((None, normalize(default)));
        }
        if rules.is_empty() {
            return Err(format!(
                "{what}: no route (route, routes.rules or routes.default)"
            ));
        }
        Ok(Self { spec, rules })
    }

    /// Whether routing looks inside events (some rule has a `match`); if not, every
    /// event takes the same route and delivery need not parse it.
    pub fn routes_by_content(&self) -> bool {
        self.rules.iter().any(|(expr, _)| expr.is_some())
    }

    /// The app path for `event` (the parsed CloudEvent; `None` for a raw payload, which
    /// only rules without a `match` accept).
    pub fn route(&self, event: Option<&Value>) -> Option<&str> {
        self.rules
            .iter()
            .find(|(expr, _)| match (expr, event) {
                (None, _) => true,
                (Some(e), Some(ev)) => e.matches(ev),
                (Some(_), None) => false,
            })
            .map(|(_, path)| path.as_str())
    }
}

/// App paths always start with `/` (`route: orders` means `/orders`, as in Dapr).
fn normalize(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// The declarative subscriptions that apply to this app, validated now so that a bad rule
/// fails start-up with its file and name.
pub fn declarative(
    config: &SidecarConfig,
    pubsubs: &PubSubs,
) -> Result<Vec<ActiveSubscription>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for sub in &config.resources.subscriptions {
        if !sub.is_scoped_to(&config.app_id) {
            continue;
        }
        let spec = SubscriptionSpec {
            kind: SubscriptionKind::Declarative,
            pubsub: sub.pubsub_name.clone(),
            topic: sub.topic.clone(),
            rules: sub
                .routes
                .rules
                .iter()
                .map(|r| RouteRule {
                    match_expr: r.match_expr.clone(),
                    path: r.path.clone(),
                })
                .collect(),
            default_route: sub.routes.default.clone(),
            metadata: sub.metadata.clone(),
            dead_letter_topic: sub.dead_letter_topic.clone(),
            bulk_subscribe: sub
                .bulk_subscribe
                .as_ref()
                .filter(|b| b.enabled)
                .map(|b| BulkConfig::new(b.max_messages_count, b.max_await_duration_ms)),
        };
        match ActiveSubscription::compile(spec) {
            Ok(active) => match admit(&active.spec, &config.app_id, pubsubs) {
                Ok(()) => out.push(active),
                Err(why) => tracing::warn!(subscription = sub.meta.name, "{why}"),
            },
            Err(e) => errors.push(format!("{}: {e}", sub.location)),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Whether this app may use `spec` at all: the pub/sub must exist for it and its topic
/// scoping must allow subscribing.
pub fn admit(spec: &SubscriptionSpec, app_id: &str, pubsubs: &PubSubs) -> Result<(), String> {
    let Some(component) = pubsubs.get(&spec.pubsub) else {
        return Err(format!(
            "skipping the subscription to {}/{}: no pub/sub named {:?} for this app",
            spec.pubsub, spec.topic, spec.pubsub
        ));
    };
    if !component.scopes.can_subscribe(app_id, &spec.topic) {
        return Err(format!(
            "skipping the subscription to {}/{}: subscribing to that topic is not allowed for app id {app_id}",
            spec.pubsub, spec.topic
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(rules: Vec<(&str, &str)>, default: Option<&str>) -> SubscriptionSpec {
        SubscriptionSpec {
            kind: SubscriptionKind::Programmatic,
            pubsub: "pubsub".into(),
            topic: "t".into(),
            rules: rules
                .into_iter()
                .map(|(m, p)| RouteRule {
                    match_expr: Some(m.into()),
                    path: p.into(),
                })
                .collect(),
            default_route: default.map(Into::into),
            metadata: BTreeMap::new(),
            dead_letter_topic: None,
            bulk_subscribe: None,
        }
    }

    #[test]
    fn rules_in_order_then_default() {
        let s = ActiveSubscription::compile(spec(
            vec![(r#"event.type == "a""#, "/a"), ("event.data.n > 3", "b")],
            Some("/default"),
        ))
        .unwrap();
        assert_eq!(s.route(Some(&json!({"type": "a"}))), Some("/a"));
        assert_eq!(
            s.route(Some(&json!({"type": "x", "data": {"n": 5}}))),
            Some("/b")
        );
        assert_eq!(s.route(Some(&json!({"type": "x"}))), Some("/default"));
        assert_eq!(s.route(None), Some("/default"));
        let s =
            ActiveSubscription::compile(spec(vec![(r#"event.type == "a""#, "/a")], None)).unwrap();
        assert_eq!(s.route(Some(&json!({"type": "b"}))), None);
    }

    #[test]
    fn bad_rules_fail_to_load() {
        let err =
            ActiveSubscription::compile(spec(vec![("size(event) > 1", "/a")], None)).unwrap_err();
        assert!(
            err.contains("pubsub/t") && err.contains("unsupported"),
            "{err}"
        );
        assert!(ActiveSubscription::compile(spec(vec![], None)).is_err());
    }
}
