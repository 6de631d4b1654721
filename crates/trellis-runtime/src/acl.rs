//! Access control on the callee side (Dapr's `Configuration.spec.accessControl`): which
//! verified callers may invoke which methods of this app.
//!
//! The rules, as Dapr applies them:
//! - a policy is found for the caller by app id, trust domain (default `public`) and
//!   namespace (default `default`); with none, the global `defaultAction` applies
//!   (`allow` when unset);
//! - within the caller's policy, the operation that matches the method most specifically
//!   decides (`*` is one path segment, `**` any number; a literal segment beats `*`, which
//!   beats `**`), when its `httpVerb` list holds the request's verb or `*` (gRPC calls have
//!   no verb and match any list); otherwise the policy's `defaultAction` applies (else the
//!   global one).
//!
//! The caller is the identity its mTLS certificate proves, so the runtime refuses to start
//! with an access-control section and mTLS off.

use trellis_mtls::SpiffeId;
use trellis_resources::{AccessControlSpec, AppPolicySpec};

#[derive(Debug, Clone)]
pub struct AccessControl {
    default_allow: bool,
    policies: Vec<Policy>,
}

#[derive(Debug, Clone)]
struct Policy {
    app_id: String,
    trust_domain: String,
    namespace: String,
    default_allow: Option<bool>,
    operations: Vec<Operation>,
}

#[derive(Debug, Clone)]
struct Operation {
    segments: Vec<Segment>,
    /// Upper case; empty or `*` means every verb.
    verbs: Vec<String>,
    allow: bool,
    name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Any,
}

/// Why a call was let through or refused, for the debug log and the 403 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: String,
}

fn allow(action: Option<&str>) -> Option<bool> {
    action.map(|a| a.eq_ignore_ascii_case("allow"))
}

impl AccessControl {
    pub fn new(spec: &AccessControlSpec) -> Self {
        let policies = spec.policies.iter().map(Policy::new).collect();
        Self {
            default_allow: allow(spec.default_action.as_deref()).unwrap_or(true),
            policies,
        }
    }

    /// May `caller` call `path` (the method, without its query) with `verb` (`None` for a
    /// gRPC call)?
    pub fn decide(&self, caller: &SpiffeId, path: &str, verb: Option<&str>) -> Decision {
        let policy = self.policies.iter().find(|p| {
            p.app_id == caller.app_id
                && p.trust_domain == caller.trust_domain
                && p.namespace == caller.namespace
        });
        let Some(policy) = policy else {
            return Decision {
                allowed: self.default_allow,
                rule: "the global defaultAction (no policy for the caller)".into(),
            };
        };
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let best = policy
            .operations
            .iter()
            .filter(|op| verb.is_none_or(|v| op.allows_verb(v)))
            .filter_map(|op| op.specificity(&segments).map(|score| (score, op)))
            .max_by_key(|(score, _)| *score);
        match best {
            Some((_, op)) => Decision {
                allowed: op.allow,
                rule: format!("operation {} of the policy for {}", op.name, policy.app_id),
            },
            None => Decision {
                allowed: policy.default_allow.unwrap_or(self.default_allow),
                rule: format!("the defaultAction of the policy for {}", policy.app_id),
            },
        }
    }
}

impl Policy {
    fn new(spec: &AppPolicySpec) -> Self {
        Self {
            app_id: spec.app_id.clone(),
            trust_domain: spec
                .trust_domain
                .clone()
                .unwrap_or_else(|| trellis_mtls::DEFAULT_TRUST_DOMAIN.into()),
            namespace: spec
                .namespace
                .clone()
                .unwrap_or_else(|| trellis_nameres::DEFAULT_NAMESPACE.into()),
            default_allow: allow(spec.default_action.as_deref()),
            operations: spec
                .operations
                .iter()
                .map(|op| Operation {
                    segments: op
                        .name
                        .trim_start_matches('/')
                        .split('/')
                        .map(|s| match s {
                            "*" => Segment::One,
                            "**" => Segment::Any,
                            lit => Segment::Literal(lit.to_string()),
                        })
                        .collect(),
                    verbs: op
                        .http_verb
                        .iter()
                        .map(|v| v.to_ascii_uppercase())
                        .collect(),
                    allow: op.action.eq_ignore_ascii_case("allow"),
                    name: op.name.clone(),
                })
                .collect(),
        }
    }
}

impl Operation {
    fn allows_verb(&self, verb: &str) -> bool {
        self.verbs.is_empty()
            || self
                .verbs
                .iter()
                .any(|v| v == "*" || v.eq_ignore_ascii_case(verb))
    }

    /// `None` when the pattern does not match; else how specific the match is (literal
    /// segments, then single wildcards; `**` counts for nothing).
    fn specificity(&self, path: &[&str]) -> Option<(usize, usize)> {
        fn walk(pattern: &[Segment], path: &[&str]) -> Option<(usize, usize)> {
            match (pattern.split_first(), path.split_first()) {
                (None, None) => Some((0, 0)),
                (Some((Segment::Any, rest)), _) => {
                    // `**` takes zero or more segments; the best continuation wins.
                    (0..=path.len())
                        .filter_map(|n| walk(rest, &path[n..]))
                        .max()
                }
                (Some((Segment::One, rest)), Some((_, tail))) => {
                    walk(rest, tail).map(|(l, o)| (l, o + 1))
                }
                (Some((Segment::Literal(lit), rest)), Some((seg, tail))) if lit == seg => {
                    walk(rest, tail).map(|(l, o)| (l + 1, o))
                }
                _ => None,
            }
        }
        walk(&self.segments, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> AccessControl {
        let text = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  accessControl:\n{yaml}"
        );
        match trellis_resources::parse_str(std::path::Path::new("c.yaml"), &text) {
            Ok(mut r) => match r.configurations.pop().and_then(|c| c.spec.access_control) {
                Some(spec) => AccessControl::new(&spec),
                None => panic!("no accessControl"),
            },
            Err(e) => panic!("{e}"),
        }
    }

    fn id(app: &str) -> SpiffeId {
        SpiffeId::new("public", "default", app)
    }

    const RULES: &str = "    defaultAction: deny\n    policies:\n    - appId: web\n      defaultAction: deny\n      operations:\n      - {name: /orders/*, httpVerb: [GET], action: allow}\n      - {name: /orders/secret, httpVerb: ['*'], action: deny}\n      - {name: /public/**, httpVerb: ['*'], action: allow}\n    - appId: ops\n      namespace: infra\n      defaultAction: allow\n";

    #[test]
    fn the_most_specific_operation_of_the_callers_policy_decides() {
        let acl = parse(RULES);
        let web = id("web");
        assert!(acl.decide(&web, "/orders/7", Some("GET")).allowed);
        assert!(
            !acl.decide(&web, "/orders/7", Some("POST")).allowed,
            "verb not listed"
        );
        assert!(
            !acl.decide(&web, "/orders/secret", Some("GET")).allowed,
            "literal beats *"
        );
        assert!(
            acl.decide(&web, "/public", Some("PUT")).allowed,
            "** takes zero segments"
        );
        assert!(
            acl.decide(&web, "/public/a/b/c", None).allowed,
            "gRPC has no verb"
        );
        assert!(
            !acl.decide(&web, "/orders/7/items", Some("GET")).allowed,
            "* is one segment"
        );
        assert!(
            !acl.decide(&web, "/admin", Some("GET")).allowed,
            "the policy's default"
        );
    }

    #[test]
    fn policies_match_on_app_namespace_and_trust_domain() {
        let acl = parse(RULES);
        assert!(
            acl.decide(&SpiffeId::new("public", "infra", "ops"), "/x", Some("GET"))
                .allowed
        );
        let elsewhere = SpiffeId::new("public", "default", "ops");
        let decision = acl.decide(&elsewhere, "/x", Some("GET"));
        assert!(!decision.allowed);
        assert!(decision.rule.contains("global"), "{}", decision.rule);
        let other_domain = SpiffeId::new("corp", "default", "web");
        assert!(!acl.decide(&other_domain, "/orders/1", Some("GET")).allowed);
        let open = parse("    trustDomain: public\n");
        assert!(
            open.decide(&id("any"), "/x", Some("GET")).allowed,
            "allow by default"
        );
    }
}
