//! The `Subscription` resource (`kind: Subscription`): a declarative pub/sub subscription, in both the
//! current `dapr.io/v2alpha1` form (`routes`) and the older `dapr.io/v1alpha1` form (`route`).

use std::collections::BTreeMap;

use serde_norway::Mapping;

use crate::component::{ObjectMeta, parse_object_meta, parse_scopes, scopes_admit};
use crate::error::Location;
use crate::yaml::{Ctx, child, get, item};

/// A `kind: Subscription` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Where it was defined.
    pub location: Location,
    /// Name and namespace.
    pub meta: ObjectMeta,
    /// `spec.pubsubname`: the pub/sub component.
    pub pubsub_name: String,
    /// `spec.topic`.
    pub topic: String,
    /// Where events are delivered in the app.
    pub routes: Routes,
    /// `spec.metadata`, passed to the broker.
    pub metadata: BTreeMap<String, String>,
    /// `spec.deadLetterTopic`.
    pub dead_letter_topic: Option<String>,
    /// `spec.bulkSubscribe`.
    pub bulk_subscribe: Option<BulkSubscribe>,
    /// App IDs the subscription applies to; empty means every app.
    pub scopes: Vec<String>,
}

impl Subscription {
    /// True when the subscription applies to `app_id` (an empty scope list admits everyone).
    pub fn is_scoped_to(&self, app_id: &str) -> bool {
        scopes_admit(&self.scopes, app_id)
    }
}

/// Routing of a subscription: rules tried in order, then the default path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routes {
    /// `routes.rules`.
    pub rules: Vec<RouteRule>,
    /// `routes.default` (or the whole `route` of a v1alpha1 subscription).
    pub default: Option<String>,
}

/// One entry of `routes.rules`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteRule {
    /// `match`: a CEL expression over the CloudEvent; `None` matches every event.
    pub match_expr: Option<String>,
    /// `path`: the app path that receives matching events.
    pub path: String,
}

/// `spec.bulkSubscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BulkSubscribe {
    /// `enabled`.
    pub enabled: bool,
    /// `maxMessagesCount`; the runtime picks a default when absent.
    pub max_messages_count: Option<u32>,
    /// `maxAwaitDurationMs`; the runtime picks a default when absent.
    pub max_await_duration_ms: Option<u32>,
}

/// Reads a `kind: Subscription` document; `api_version` selects which routing field is expected.
pub(crate) fn parse_subscription(
    ctx: &mut Ctx<'_>,
    root: &Mapping,
    api_version: &str,
) -> Subscription {
    let meta = parse_object_meta(ctx, root);
    let scopes = parse_scopes(ctx, root);
    let mut sub = Subscription {
        location: ctx.location.clone(),
        meta,
        pubsub_name: String::new(),
        topic: String::new(),
        routes: Routes::default(),
        metadata: BTreeMap::new(),
        dead_letter_topic: None,
        bulk_subscribe: None,
        scopes,
    };
    let v1 = api_version == "dapr.io/v1alpha1";
    let Some(spec) = ctx.mapping(root, "spec", "") else {
        if get(root, "spec").is_none() {
            ctx.missing("spec.pubsubname");
            ctx.missing("spec.topic");
            ctx.missing(if v1 { "spec.route" } else { "spec.routes" });
        }
        return sub;
    };
    let p = "spec";
    sub.pubsub_name = ctx.required_string(spec, "pubsubname", p);
    sub.topic = ctx.required_string(spec, "topic", p);
    sub.metadata = ctx.string_map(spec, "metadata", p);
    sub.dead_letter_topic = ctx
        .string(spec, "deadLetterTopic", p)
        .filter(|s| !s.is_empty());
    sub.bulk_subscribe = ctx.mapping(spec, "bulkSubscribe", p).map(|b| {
        let path = child(p, "bulkSubscribe");
        BulkSubscribe {
            enabled: ctx.bool(b, "enabled", &path).unwrap_or(false),
            max_messages_count: ctx.u32(b, "maxMessagesCount", &path),
            max_await_duration_ms: ctx.u32(b, "maxAwaitDurationMs", &path),
        }
    });

    // Each API version has its own field, but people mix them up; accept whichever is present and
    // only insist on one.
    let has_route = get(spec, "route").is_some();
    let has_routes = get(spec, "routes").is_some();
    match (has_route, has_routes) {
        (true, true) => ctx.error(
            "spec",
            "has both route and routes; use routes (or route with dapr.io/v1alpha1)",
        ),
        (false, false) => ctx.missing(if v1 { "spec.route" } else { "spec.routes" }),
        (true, false) => match ctx.string(spec, "route", p) {
            Some(route) if !route.trim().is_empty() => sub.routes.default = Some(route),
            Some(_) => ctx.missing("spec.route"),
            // Wrong type, already reported.
            None => {}
        },
        (false, true) => {
            if let Some(routes) = ctx.mapping(spec, "routes", p) {
                sub.routes = parse_routes(ctx, routes);
            }
        }
    }
    sub
}

fn parse_routes(ctx: &mut Ctx<'_>, routes: &Mapping) -> Routes {
    let path = "spec.routes";
    let rules_path = child(path, "rules");
    let mut rules = Vec::new();
    let raw_rules = ctx.sequence(routes, "rules", path).unwrap_or_default();
    for (i, r) in raw_rules.iter().enumerate() {
        let rpath = item(&rules_path, i);
        let Some(r) = ctx.as_mapping(r, &rpath) else {
            continue;
        };
        let match_expr = ctx
            .string(r, "match", &rpath)
            .filter(|m| !m.trim().is_empty());
        let path = ctx.required_string(r, "path", &rpath);
        rules.push(RouteRule { match_expr, path });
    }
    let default = ctx
        .string(routes, "default", path)
        .filter(|s| !s.is_empty());
    // Only complain when nothing was written; broken rules have already been reported.
    if raw_rules.is_empty() && default.is_none() {
        ctx.error(path, "needs at least one rule or a default path");
    }
    Routes { rules, default }
}
