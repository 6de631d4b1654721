//! Tests of loading and validation through the public entry points (`parse_str`, `load_paths`,
//! `load_configuration_file`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::*;

fn parse(text: &str) -> Result<Resources, LoadErrors> {
    parse_str(Path::new("res.yaml"), text)
}

fn error_lines(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

const COMPONENT_HEAD: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\n";

/// Each case: a name, the YAML, and the exact number of errors expected, each identified by a
/// substring that must appear in exactly one distinct reported error.
#[test]
fn validation_errors() {
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "missing metadata",
            format!("{COMPONENT_HEAD}spec:\n  type: state.redis\n  version: v1\n"),
            vec!["res.yaml (document 1): metadata.name: missing required field"],
        ),
        (
            "empty metadata.name",
            format!("{COMPONENT_HEAD}metadata:\n  name: ''\nspec:\n  type: state.redis\n"),
            vec!["res.yaml (document 1): metadata.name: missing required field"],
        ),
        (
            "missing spec.type",
            format!("{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  version: v1\n"),
            vec!["res.yaml (document 1): spec.type: missing required field"],
        ),
        (
            "missing spec entirely",
            format!("{COMPONENT_HEAD}metadata:\n  name: s\n"),
            vec!["spec.type: missing required field"],
        ),
        (
            "metadata item without name",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  type: state.redis\n  metadata:\n  - name: a\n    value: b\n  - value: c\n"
            ),
            vec!["spec.metadata[1].name: missing required field"],
        ),
        (
            "value and secretKeyRef together",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  type: state.redis\n  metadata:\n  - name: password\n    value: x\n    secretKeyRef:\n      name: sec\n      key: k\n"
            ),
            vec!["spec.metadata[0]: has both value and secretKeyRef; use one"],
        ),
        (
            "secretKeyRef without name",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  type: state.redis\n  metadata:\n  - name: password\n    secretKeyRef:\n      key: k\n"
            ),
            vec!["spec.metadata[0].secretKeyRef.name: missing required field"],
        ),
        (
            "envRef refused",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  type: state.redis\n  metadata:\n  - name: password\n    envRef: REDIS_PASSWORD\n"
            ),
            vec!["spec.metadata[0].envRef: envRef is not supported"],
        ),
        (
            "malformed yaml reports file, document and line",
            format!("{COMPONENT_HEAD}metadata:\n  name: ok\nspec:\n  type: state.redis\n---\nkind: Component\nmetadata:\n  name: a: b\n"),
            vec!["res.yaml (document 2): invalid yaml: mapping values are not allowed in this context at line 10 column 10"],
        ),
        (
            "unclosed flow sequence",
            "scopes: [a, b\n".to_string(),
            vec!["res.yaml (document 1): invalid yaml: did not find expected ',' or ']' at line 2"],
        ),
        (
            "tab indentation error carries a line",
            "apiVersion: dapr.io/v1alpha1\n\tkind: Component\n".to_string(),
            vec!["res.yaml (document 1): invalid yaml"],
        ),
        (
            "duplicate yaml key",
            format!("{COMPONENT_HEAD}metadata:\n  name: a\n  name: b\nspec:\n  type: state.redis\n"),
            vec!["res.yaml (document 1): invalid yaml: metadata: duplicate entry with key \"name\" at line 4 column 3"],
        ),
        (
            "wrong types",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  type: [state.redis]\n  ignoreErrors: maybe\n  metadata:\n    host: localhost\nscopes: app1\n"
            ),
            vec![
                "spec.type: expected a string, found a list",
                "spec.ignoreErrors: expected a boolean, found a string",
                "spec.metadata: expected a list, found a mapping",
                "scopes: expected a list, found a string",
            ],
        ),
        (
            "metadata entry not a mapping, spec not a mapping",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  type: state.redis\n  metadata:\n  - host\n---\n{COMPONENT_HEAD}metadata:\n  name: t\nspec: [1]\n"
            ),
            vec![
                "res.yaml (document 1): spec.metadata[0]: expected a mapping, found a string",
                "res.yaml (document 2): spec: expected a mapping, found a list",
            ],
        ),
        (
            "subscription without pubsubname, topic, routes",
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: sub\nspec:\n  deadLetterTopic: dead\n".to_string(),
            vec![
                "spec.pubsubname: missing required field",
                "spec.topic: missing required field",
                "spec.routes: missing required field",
            ],
        ),
        (
            "v1alpha1 subscription without route",
            "apiVersion: dapr.io/v1alpha1\nkind: Subscription\nmetadata:\n  name: sub\nspec:\n  pubsubname: p\n  topic: t\n".to_string(),
            vec!["spec.route: missing required field"],
        ),
        (
            "subscription with both route and routes",
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: sub\nspec:\n  pubsubname: p\n  topic: t\n  route: /a\n  routes:\n    default: /b\n".to_string(),
            vec!["spec: has both route and routes"],
        ),
        (
            "subscription routes without rules or default, rule without path",
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: sub\nspec:\n  pubsubname: p\n  topic: t\n  routes: {}\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: sub2\nspec:\n  pubsubname: p\n  topic: t\n  routes:\n    rules:\n    - match: event.type == \"x\"\n".to_string(),
            vec![
                "res.yaml (document 1): spec.routes: needs at least one rule or a default path",
                "res.yaml (document 2): spec.routes.rules[0].path: missing required field",
            ],
        ),
        (
            "subscription bulkSubscribe with bad count",
            "apiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: sub\nspec:\n  pubsubname: p\n  topic: t\n  routes:\n    default: /x\n  bulkSubscribe:\n    enabled: true\n    maxMessagesCount: -4\n".to_string(),
            vec!["spec.bulkSubscribe.maxMessagesCount: expected a non-negative integer"],
        ),
        (
            "bad durations",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: s\nspec:\n  type: state.redis\n  initTimeout: 5 seconds\n---\napiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      general: 5\n    retries:\n      r1:\n        duration: abc\n        maxInterval: 1d\n    circuitBreakers:\n      cb:\n        timeout: -3s\n"
            ),
            vec![
                "res.yaml (document 1): spec.initTimeout: invalid duration \"5 seconds\"",
                "spec.policies.timeouts.general: invalid duration \"5\": missing unit",
                "spec.policies.retries.r1.duration: invalid duration \"abc\"",
                "spec.policies.retries.r1.maxInterval: invalid duration \"1d\": unknown unit \"d\"",
                "spec.policies.circuitBreakers.cb.timeout: invalid duration \"-3s\": negative durations are not allowed",
            ],
        ),
        (
            "resiliency targets referencing unknown policies",
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    timeouts:\n      general: 5s\n    retries:\n      fast:\n        maxRetries: 3\n  targets:\n    apps:\n      appB:\n        timeout: general\n        retry: slow\n    actors:\n      myActor:\n        timeout: long\n    components:\n      statestore:\n        outbound:\n          retry: DaprBuiltInServiceRetries\n          circuitBreaker: cb\n".to_string(),
            vec![
                "spec.targets.apps.appB.retry: unknown retry policy \"slow\": not found in spec.policies.retries (defined retry policies: fast)",
                "spec.targets.actors.myActor.timeout: unknown timeout policy \"long\": not found in spec.policies.timeouts (defined timeout policies: general)",
                "spec.targets.components.statestore.outbound.circuitBreaker: unknown circuit breaker policy \"cb\": not found in spec.policies.circuitBreakers (no circuit breaker policies are defined)",
            ],
        ),
        (
            "invalid trip expression",
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    circuitBreakers:\n      cb:\n        trip: consecutiveFailures >> 5\n      cb2:\n        trip: failures > 1\n".to_string(),
            vec![
                "spec.policies.circuitBreakers.cb.trip: invalid trip expression \"consecutiveFailures >> 5\"",
                "spec.policies.circuitBreakers.cb2.trip: unknown field \"failures\" in trip expression",
            ],
        ),
        (
            "bad retry settings",
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      r1:\n        policy: linear\n        maxRetries: -2\n        matching:\n          httpStatusCodes: 500-599,600\n          gRPCStatusCodes: 1-4,x\n".to_string(),
            vec![
                "spec.policies.retries.r1.policy: unknown retry policy \"linear\"",
                "spec.policies.retries.r1.maxRetries: invalid value -2",
                "spec.policies.retries.r1.matching.httpStatusCodes: invalid status code range \"600\"",
                "spec.policies.retries.r1.matching.gRPCStatusCodes: invalid status code range \"x\"",
            ],
        ),
        (
            "actor circuit breaker needs a scope",
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    circuitBreakers:\n      cb:\n        trip: consecutiveFailures > 3\n  targets:\n    actors:\n      a:\n        circuitBreaker: cb\n      b:\n        circuitBreaker: cb\n        circuitBreakerScope: everything\n".to_string(),
            vec![
                "spec.targets.actors.a.circuitBreakerScope: required when circuitBreaker is set",
                "spec.targets.actors.b.circuitBreakerScope: invalid value \"everything\"",
            ],
        ),
        (
            "duplicate component names",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.redis\n---\n{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.postgresql\n"
            ),
            vec!["res.yaml (document 2): metadata.name: duplicate component name \"statestore\": also defined in res.yaml (document 1)"],
        ),
        (
            "duplicate component names with overlapping scopes",
            format!(
                "{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.redis\nscopes: [a, b]\n---\n{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.postgresql\nscopes: [b, c]\n"
            ),
            vec!["duplicate component name \"statestore\""],
        ),
        (
            "duplicate http endpoint names",
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: gh\nspec:\n  baseUrl: https://api.github.com\n---\napiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: gh\nspec:\n  baseUrl: https://example.com\n".to_string(),
            vec!["res.yaml (document 2): metadata.name: duplicate http endpoint name \"gh\""],
        ),
        (
            "unknown kind with dapr.io apiVersion",
            "apiVersion: dapr.io/v1alpha1\nkind: Compnent\nmetadata:\n  name: x\n".to_string(),
            vec!["kind: unknown kind \"Compnent\"; known kinds: Component, Configuration, HTTPEndpoint, Resiliency, Subscription"],
        ),
        (
            "missing kind with dapr.io apiVersion",
            "apiVersion: dapr.io/v1alpha1\nmetadata:\n  name: x\n".to_string(),
            vec!["kind: missing required field (expected one of: Component, Configuration, HTTPEndpoint, Resiliency, Subscription)"],
        ),
        (
            "unsupported apiVersion, other errors still reported",
            "apiVersion: dapr.io/v2alpha1\nkind: Component\nmetadata:\n  name: x\nspec: {}\n".to_string(),
            vec![
                "apiVersion: unsupported apiVersion \"dapr.io/v2alpha1\" for kind Component; expected dapr.io/v1alpha1",
                "spec.type: missing required field",
            ],
        ),
        (
            "bare dapr.io apiVersion",
            "apiVersion: dapr.io\nkind: Component\nmetadata:\n  name: x\nspec:\n  type: state.redis\n".to_string(),
            vec!["apiVersion: unsupported apiVersion \"dapr.io\" for kind Component"],
        ),
        (
            "dapr kind without apiVersion",
            "kind: Component\nmetadata:\n  name: x\nspec:\n  type: state.redis\n".to_string(),
            vec!["apiVersion: missing required field (expected dapr.io/v1alpha1 for kind Component)"],
        ),
        (
            "http endpoint without or with a bad baseUrl",
            "apiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: a\nspec:\n  headers:\n  - value: x\n---\napiVersion: dapr.io/v1alpha1\nkind: HTTPEndpoint\nmetadata:\n  name: b\nspec:\n  baseUrl: api.github.com\n".to_string(),
            vec![
                "res.yaml (document 1): spec.baseUrl: missing required field",
                "res.yaml (document 1): spec.headers[0].name: missing required field",
                "res.yaml (document 2): spec.baseUrl: invalid base url \"api.github.com\"; it must start with http:// or https://",
            ],
        ),
        (
            "configuration problems",
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  tracing:\n    samplingRate: lots\n  accessControl:\n    defaultAction: maybe\n    policies:\n    - defaultAction: deny\n      operations:\n      - name: /op\n        httpVerb: [GET]\n  features: {a: b}\n  secrets:\n    scopes:\n    - defaultAccess: allow\n  api:\n    allowed:\n    - name: state\n  nameResolution:\n    version: v1\n  httpPipeline:\n    handlers:\n    - name: h\n".to_string(),
            vec![
                "spec.tracing.samplingRate: invalid sampling rate \"lots\"",
                "spec.accessControl.defaultAction: invalid value \"maybe\"; expected \"allow\" or \"deny\"",
                "spec.accessControl.policies[0].appId: missing required field",
                "spec.accessControl.policies[0].operations[0].action: missing required field",
                "spec.features: expected a list, found a mapping",
                "spec.secrets.scopes[0].storeName: missing required field",
                "spec.api.allowed[0].version: missing required field",
                "spec.nameResolution.component: missing required field",
                "spec.httpPipeline.handlers[0].type: missing required field",
            ],
        ),
    ];

    for (name, yaml, expected) in cases {
        let lines = error_lines(&yaml);
        assert_eq!(
            lines.len(),
            expected.len(),
            "case {name:?}: got errors {lines:#?}"
        );
        for want in &expected {
            assert!(
                lines.iter().any(|l| l.contains(want)),
                "case {name:?}: no error containing {want:?} in {lines:#?}"
            );
        }
    }
}

#[test]
fn errors_from_all_documents_are_reported_together() {
    let text = format!(
        "{COMPONENT_HEAD}spec:\n  type: state.redis\n---\n{COMPONENT_HEAD}metadata:\n  name: b\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n  pubsubname: p\n  routes:\n    default: /x\n"
    );
    let lines = error_lines(&text);
    assert_eq!(
        lines,
        vec![
            "res.yaml (document 1): metadata.name: missing required field",
            "res.yaml (document 2): spec.type: missing required field",
            "res.yaml (document 3): spec.topic: missing required field",
        ]
    );
}

const REALISTIC: &str = r#"# Everything an app might ship in one file.
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
  namespace: production
spec:
  type: state.redis
  version: v1
  initTimeout: 1m30s
  ignoreErrors: true
  metadata:
  - name: redisHost
    value: localhost:6379
  - name: redisPassword
    secretKeyRef:
      name: redis-secret
      key: password
  - name: maxRetries
    value: 5
  - name: enableTLS
    value: false
  - name: ratio
    value: 1.5
  - name: empty
    value:
  - name: tokenFromName
    secretKeyRef:
      name: token
  - name: nested
    value:
      hosts: [a, b]
      port: 7000
auth:
  secretStore: vault
scopes:
- checkout
- orders
---
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: appconfig
spec:
  tracing:
    samplingRate: "1"
    stdout: true
    otel:
      endpointAddress: localhost:4317
      isSecure: false
      protocol: grpc
    zipkin:
      endpointAddress: http://localhost:9411/api/v2/spans
  metrics:
    enabled: false
  nameResolution:
    component: mdns
    configuration:
      selfRegister: true
  accessControl:
    defaultAction: deny
    trustDomain: public
    policies:
    - appId: app1
      defaultAction: Allow
      trustDomain: public
      namespace: default
      operations:
      - name: /op1
        httpVerb: ['POST', 'GET']
        action: deny
  api:
    allowed:
    - name: state
      version: v1.0
      protocol: HTTP
    denied:
    - name: invoke
      version: v1.0
  features:
  - name: SchedulerReminders
    enabled: true
  secrets:
    scopes:
    - storeName: vault
      defaultAccess: deny
      allowedSecrets: [redis-secret]
  httpPipeline:
    handlers:
    - name: oauth2
      type: middleware.http.oauth2
  logging:
    apiLogging:
      enabled: true
---
apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: myresiliency
scopes: [checkout]
spec:
  policies:
    timeouts:
      general: 5s
      important: 60s
    retries:
      pubsubRetry:
        policy: constant
        duration: 5s
        maxRetries: 10
      retryForever:
        policy: exponential
        maxInterval: 15s
        maxRetries: -1
      defaults: {}
      matched:
        matching:
          httpStatusCodes: 500-599,429
          gRPCStatusCodes: "14"
    circuitBreakers:
      pubsubCB:
        maxRequests: 1
        interval: 8s
        timeout: 45s
        trip: consecutiveFailures > 8
      plain: {}
  targets:
    apps:
      appB:
        timeout: general
        retry: retryForever
        circuitBreaker: pubsubCB
    actors:
      myActorType:
        timeout: general
        retry: DaprBuiltInActorRetries
        circuitBreaker: pubsubCB
        circuitBreakerScope: both
        circuitBreakerCacheSize: 5000
    components:
      statestore:
        outbound:
          timeout: general
          retry: pubsubRetry
      pubsub:
        inbound:
          retry: matched
---
apiVersion: dapr.io/v2alpha1
kind: Subscription
metadata:
  name: order-pub-sub
spec:
  topic: orders
  routes:
    rules:
    - match: event.type == "widget"
      path: /widgets
    - path: /everything
    default: /orders
  pubsubname: pubsub
  metadata:
    rawPayload: true
    maxCount: 3
  deadLetterTopic: poison
  bulkSubscribe:
    enabled: true
    maxMessagesCount: 100
    maxAwaitDurationMs: 40
scopes:
- orderprocessing
---
apiVersion: dapr.io/v1alpha1
kind: Subscription
metadata:
  name: legacy
spec:
  topic: a
  route: /a
  pubsubname: pubsub
---
apiVersion: dapr.io/v1alpha1
kind: HTTPEndpoint
metadata:
  name: github
spec:
  baseUrl: https://api.github.com
  headers:
  - name: Accept-Language
    value: en-US
  - name: Authorization
    secretKeyRef:
      name: my-secret
      key: myGithubToken
auth:
  secretStore: local
scopes: [checkout]
---
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: not-dapr
spec:
  replicas: 1
---
- just
- a list
---
services:
  web:
    image: nginx
"#;

#[test]
fn realistic_multi_document_file() {
    let r = parse(REALISTIC).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.components.len(), 1);
    assert_eq!(r.configurations.len(), 1);
    assert_eq!(r.resiliencies.len(), 1);
    assert_eq!(r.subscriptions.len(), 2);
    assert_eq!(r.http_endpoints.len(), 1);

    // Component
    let c = &r.components[0];
    assert_eq!(c.location, Location::new("res.yaml", 0));
    assert_eq!(
        c.meta,
        ObjectMeta {
            name: "statestore".into(),
            namespace: Some("production".into())
        }
    );
    assert_eq!(c.type_name, "state.redis");
    assert_eq!(c.building_block(), "state");
    assert_eq!(c.version, "v1");
    assert_eq!(c.init_timeout, Some(Duration::from_secs(90)));
    assert!(c.ignore_errors);
    assert_eq!(c.auth_secret_store.as_deref(), Some("vault"));
    assert_eq!(c.scopes, vec!["checkout", "orders"]);
    assert_eq!(c.metadata_str("redisHost"), Some("localhost:6379"));
    assert_eq!(c.metadata_str("REDISHOST"), Some("localhost:6379"));
    assert_eq!(c.metadata_str("redisPassword"), None);
    assert_eq!(
        c.metadata_item("redispassword").map(|m| &m.value),
        Some(&MetadataValue::SecretRef {
            name: "redis-secret".into(),
            key: "password".into()
        })
    );
    assert_eq!(c.metadata_str("maxRetries"), Some("5"));
    assert_eq!(c.metadata_str("enableTLS"), Some("false"));
    assert_eq!(c.metadata_str("ratio"), Some("1.5"));
    assert_eq!(c.metadata_str("empty"), Some(""));
    assert_eq!(
        c.metadata_item("tokenFromName").map(|m| &m.value),
        Some(&MetadataValue::SecretRef {
            name: "token".into(),
            key: "token".into()
        })
    );
    let nested: serde_json::Value =
        serde_json::from_str(c.metadata_str("nested").unwrap()).unwrap();
    assert_eq!(
        nested,
        serde_json::json!({"hosts": ["a", "b"], "port": 7000})
    );
    assert_eq!(c.metadata_str("missing"), None);
    assert!(c.is_scoped_to("orders"));
    assert!(!c.is_scoped_to("other"));

    // Configuration
    let cfg = &r.configurations[0];
    assert_eq!(cfg.meta.name, "appconfig");
    let tracing = cfg.spec.tracing.as_ref().unwrap();
    assert_eq!(tracing.sampling_rate.as_deref(), Some("1"));
    assert!(tracing.stdout);
    let otel = tracing.otel.as_ref().unwrap();
    assert_eq!(otel.endpoint_address, "localhost:4317");
    assert!(!otel.is_secure);
    assert_eq!(otel.protocol.as_deref(), Some("grpc"));
    assert_eq!(
        tracing.zipkin.as_ref().unwrap().endpoint_address,
        "http://localhost:9411/api/v2/spans"
    );
    assert_eq!(cfg.spec.metrics, Some(MetricsSpec { enabled: false }));
    let nr = cfg.spec.name_resolution.as_ref().unwrap();
    assert_eq!(nr.component, "mdns");
    assert_eq!(nr.version, "v1");
    assert_eq!(nr.configuration, serde_json::json!({"selfRegister": true}));
    let ac = cfg.spec.access_control.as_ref().unwrap();
    assert_eq!(ac.default_action.as_deref(), Some("deny"));
    assert_eq!(ac.trust_domain.as_deref(), Some("public"));
    assert_eq!(ac.policies.len(), 1);
    let pol = &ac.policies[0];
    assert_eq!(pol.app_id, "app1");
    assert_eq!(pol.default_action.as_deref(), Some("allow"));
    assert_eq!(pol.namespace.as_deref(), Some("default"));
    assert_eq!(
        pol.operations,
        vec![AppOperation {
            name: "/op1".into(),
            http_verb: vec!["POST".into(), "GET".into()],
            action: "deny".into()
        }]
    );
    let api = cfg.spec.api.as_ref().unwrap();
    assert_eq!(
        api.allowed,
        vec![ApiAccessRule {
            name: "state".into(),
            version: "v1.0".into(),
            protocol: Some("http".into())
        }]
    );
    assert_eq!(
        api.denied,
        vec![ApiAccessRule {
            name: "invoke".into(),
            version: "v1.0".into(),
            protocol: None
        }]
    );
    assert_eq!(
        cfg.spec.features,
        vec![FeatureSpec {
            name: "SchedulerReminders".into(),
            enabled: true
        }]
    );
    let secrets = cfg.spec.secrets.as_ref().unwrap();
    assert_eq!(secrets.scopes[0].store_name, "vault");
    assert_eq!(secrets.scopes[0].default_access.as_deref(), Some("deny"));
    assert_eq!(secrets.scopes[0].allowed_secrets, vec!["redis-secret"]);
    assert!(secrets.scopes[0].denied_secrets.is_empty());
    assert_eq!(
        cfg.spec.http_pipeline.as_ref().unwrap().handlers,
        vec![HandlerSpec {
            name: "oauth2".into(),
            type_name: "middleware.http.oauth2".into()
        }]
    );
    assert!(cfg.spec.app_http_pipeline.is_none());
    assert_eq!(
        cfg.spec.raw["logging"]["apiLogging"]["enabled"],
        serde_json::json!(true)
    );

    // Resiliency
    let res = &r.resiliencies[0];
    assert_eq!(res.scopes, vec!["checkout"]);
    assert_eq!(res.policies.timeouts["general"], Duration::from_secs(5));
    assert_eq!(res.policies.timeouts["important"], Duration::from_secs(60));
    let pr = &res.policies.retries["pubsubRetry"];
    assert_eq!(
        (pr.policy, pr.duration, pr.max_retries),
        (BackoffPolicy::Constant, Duration::from_secs(5), 10)
    );
    let rf = &res.policies.retries["retryForever"];
    assert_eq!(
        (rf.policy, rf.max_interval, rf.max_retries),
        (BackoffPolicy::Exponential, Duration::from_secs(15), -1)
    );
    assert_eq!(res.policies.retries["defaults"], RetryPolicy::default());
    let defaults = &res.policies.retries["defaults"];
    assert_eq!(
        (
            defaults.duration,
            defaults.max_interval,
            defaults.max_retries
        ),
        (Duration::from_secs(5), Duration::from_secs(60), -1)
    );
    let matching = res.policies.retries["matched"].matching.as_ref().unwrap();
    assert!(
        matching.matches_http(503) && matching.matches_http(429) && !matching.matches_http(404)
    );
    assert!(matching.matches_grpc(14) && !matching.matches_grpc(13));
    let cb = &res.policies.circuit_breakers["pubsubCB"];
    assert_eq!(cb.max_requests, 1);
    assert_eq!(cb.interval, Duration::from_secs(8));
    assert_eq!(cb.timeout, Duration::from_secs(45));
    assert_eq!(
        cb.trip,
        TripExpr {
            field: TripField::ConsecutiveFailures,
            op: Comparison::Gt,
            value: 8
        }
        .into()
    );
    let plain = &res.policies.circuit_breakers["plain"];
    assert_eq!(
        (plain.max_requests, plain.interval, plain.timeout),
        (1, Duration::ZERO, Duration::from_secs(60))
    );
    assert_eq!(plain.trip.to_string(), "consecutiveFailures > 5");
    assert_eq!(
        res.targets.apps["appB"],
        TargetPolicy {
            timeout: Some("general".into()),
            retry: Some("retryForever".into()),
            circuit_breaker: Some("pubsubCB".into())
        }
    );
    let actor = &res.targets.actors["myActorType"];
    assert_eq!(
        actor.circuit_breaker_scope,
        Some(ActorCircuitBreakerScope::Both)
    );
    assert_eq!(actor.circuit_breaker_cache_size, Some(5000));
    assert_eq!(actor.retry.as_deref(), Some("DaprBuiltInActorRetries"));
    let ss = &res.targets.components["statestore"];
    assert_eq!(
        ss.outbound.as_ref().unwrap().retry.as_deref(),
        Some("pubsubRetry")
    );
    assert!(ss.inbound.is_none());
    assert_eq!(
        res.targets.components["pubsub"]
            .inbound
            .as_ref()
            .unwrap()
            .retry
            .as_deref(),
        Some("matched")
    );

    // Subscriptions
    let s = &r.subscriptions[0];
    assert_eq!(s.location.document, 3);
    assert_eq!(s.pubsub_name, "pubsub");
    assert_eq!(s.topic, "orders");
    assert_eq!(
        s.routes.rules,
        vec![
            RouteRule {
                match_expr: Some("event.type == \"widget\"".into()),
                path: "/widgets".into()
            },
            RouteRule {
                match_expr: None,
                path: "/everything".into()
            },
        ]
    );
    assert_eq!(s.routes.default.as_deref(), Some("/orders"));
    assert_eq!(
        s.metadata.get("rawPayload").map(String::as_str),
        Some("true")
    );
    assert_eq!(s.metadata.get("maxCount").map(String::as_str), Some("3"));
    assert_eq!(s.dead_letter_topic.as_deref(), Some("poison"));
    assert_eq!(
        s.bulk_subscribe,
        Some(BulkSubscribe {
            enabled: true,
            max_messages_count: Some(100),
            max_await_duration_ms: Some(40)
        })
    );
    assert_eq!(s.scopes, vec!["orderprocessing"]);
    let legacy = &r.subscriptions[1];
    assert_eq!(
        legacy.routes,
        Routes {
            rules: vec![],
            default: Some("/a".into())
        }
    );

    // HTTPEndpoint
    let h = &r.http_endpoints[0];
    assert_eq!(h.meta.name, "github");
    assert_eq!(h.base_url, "https://api.github.com");
    assert_eq!(
        h.headers,
        vec![
            MetadataItem {
                name: "Accept-Language".into(),
                value: MetadataValue::Plain("en-US".into())
            },
            MetadataItem {
                name: "Authorization".into(),
                value: MetadataValue::SecretRef {
                    name: "my-secret".into(),
                    key: "myGithubToken".into()
                },
            },
        ]
    );
    assert_eq!(h.auth_secret_store.as_deref(), Some("local"));

    // The empty document (index 6) is ignored; the rest are skipped, not errors.
    let skipped: Vec<(usize, Option<&str>)> = r
        .skipped
        .iter()
        .map(|s| (s.location.document, s.kind.as_deref()))
        .collect();
    assert_eq!(skipped, vec![(7, Some("Deployment")), (8, None), (9, None)]);
    assert_eq!(
        r.skipped[0].to_string(),
        "res.yaml (document 8): skipped: apiVersion apps/v1 is not dapr.io"
    );
    assert!(r.skipped[1].reason.contains("a list rather than a mapping"));
    assert!(r.skipped[2].reason.contains("no apiVersion"));
}

#[test]
fn yaml_anchors_and_merge_keys() {
    let text = format!(
        "{COMPONENT_HEAD}metadata:\n  name: a\nspec: &spec\n  type: state.redis\n  metadata:\n  - &host\n    name: host\n    value: h\n---\n{COMPONENT_HEAD}metadata:\n  name: b\nspec:\n  <<: *spec\n  version: v2\n"
    );
    // Anchors do not cross documents in YAML, so the second document fails; the first still parses.
    let err = parse(&text).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err.0[0]
            .to_string()
            .starts_with("res.yaml (document 2): invalid yaml"),
        "{err}"
    );

    let text = format!(
        "{COMPONENT_HEAD}metadata:\n  name: a\nspec:\n  type: state.redis\n  metadata:\n  - &host\n    name: host\n    value: h\n  - <<: *host\n    name: host2\n"
    );
    let r = parse(&text).unwrap();
    assert_eq!(r.components[0].metadata_str("host2"), Some("h"));
}

#[test]
fn duplicate_names_with_disjoint_scopes_or_namespaces_are_allowed() {
    let text = format!(
        "{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.redis\nscopes: [a]\n---\n{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.postgresql\nscopes: [b]\n---\n{COMPONENT_HEAD}metadata:\n  name: statestore\n  namespace: other\nspec:\n  type: state.redis\n"
    );
    let r = parse(&text).unwrap();
    assert_eq!(r.components.len(), 3);
    let for_a = r.clone().for_app("a");
    assert_eq!(for_a.components.len(), 2);
    assert_eq!(for_a.components[0].type_name, "state.redis");
    let for_b = r.for_app("b");
    assert_eq!(for_b.components[0].type_name, "state.postgresql");
}

#[test]
fn scopes_filtering() {
    let r = parse(REALISTIC).unwrap();
    let checkout = r.clone().for_app("checkout");
    assert_eq!(checkout.components.len(), 1);
    assert_eq!(checkout.resiliencies.len(), 1);
    assert_eq!(checkout.http_endpoints.len(), 1);
    // order-pub-sub is scoped to orderprocessing; legacy has no scopes.
    assert_eq!(
        checkout
            .subscriptions
            .iter()
            .map(|s| s.meta.name.as_str())
            .collect::<Vec<_>>(),
        vec!["legacy"]
    );
    assert_eq!(checkout.configurations.len(), 1);

    let other = r.clone().for_app("other");
    assert!(other.components.is_empty());
    assert!(other.resiliencies.is_empty());
    assert!(other.http_endpoints.is_empty());
    assert_eq!(other.subscriptions.len(), 1);
    assert_eq!(
        other.configurations.len(),
        1,
        "configurations are not scoped"
    );

    let orders = r.for_app("orderprocessing");
    assert_eq!(orders.subscriptions.len(), 2);
}

#[test]
fn merge_appends_everything() {
    let mut a = parse(REALISTIC).unwrap();
    let b = parse(&format!(
        "{COMPONENT_HEAD}metadata:\n  name: other\nspec:\n  type: pubsub.kafka\n"
    ))
    .unwrap();
    a.merge(b);
    assert_eq!(a.components.len(), 2);
    assert_eq!(
        a.component("other").map(Component::building_block),
        Some("pubsub")
    );
    assert_eq!(a.skipped.len(), 3);
}

#[test]
fn resiliency_references_resolve_across_documents() {
    let text = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: policies\nspec:\n  policies:\n    retries:\n      shared:\n        maxRetries: 2\n---\napiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: targets\nspec:\n  targets:\n    apps:\n      b:\n        retry: shared\n";
    let r = parse(text).unwrap();
    assert_eq!(r.resiliencies.len(), 2);
}

#[test]
fn empty_and_comment_only_texts_load_nothing() {
    for text in ["", "\n", "# nothing here\n", "---\n", "---\n---\n"] {
        let r = parse(text).unwrap();
        assert_eq!(r, Resources::default(), "{text:?}");
    }
}

#[test]
fn building_block_without_dot_is_whole_type() {
    let r = parse(&format!(
        "{COMPONENT_HEAD}metadata:\n  name: x\nspec:\n  type: weird\n  version: 2\n"
    ))
    .unwrap();
    assert_eq!(r.components[0].building_block(), "weird");
    assert_eq!(r.components[0].version, "2");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn load_paths_reports_all_files_together() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "a-state.yaml",
        &format!("{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.redis\n"),
    );
    write(
        d,
        "b-broken.yml",
        &format!(
            "{COMPONENT_HEAD}metadata:\n  name: pubsub\nspec:\n  version: v1\n---\napiVersion: dapr.io/v2alpha1\nkind: Subscription\nmetadata:\n  name: s\nspec:\n  pubsubname: pubsub\n  routes:\n    default: /x\n"
        ),
    );
    write(
        d,
        "c-malformed.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: [oops\n",
    );
    write(
        d,
        "d-dup.yaml",
        &format!(
            "{COMPONENT_HEAD}metadata:\n  name: statestore\nspec:\n  type: state.postgresql\n"
        ),
    );
    // Not loaded: wrong extension, and subdirectories are not searched.
    write(d, "notes.txt", "not yaml: [");
    std::fs::create_dir(d.join("nested")).unwrap();
    write(&d.join("nested"), "x.yaml", "kind: [");

    let err = load_paths(&[d.to_path_buf()]).unwrap_err();
    let lines: Vec<String> = err.iter().map(ToString::to_string).collect();
    let name = |f: &str| d.join(f).display().to_string();
    assert_eq!(lines.len(), 4, "{err}");
    assert_eq!(
        lines[0],
        format!(
            "{} (document 1): spec.type: missing required field",
            name("b-broken.yml")
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "{} (document 2): spec.topic: missing required field",
            name("b-broken.yml")
        )
    );
    assert!(
        lines[2].starts_with(&format!(
            "{} (document 1): invalid yaml: ",
            name("c-malformed.yaml")
        )),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains("line 5"), "{}", lines[2]);
    assert_eq!(
        lines[3],
        format!(
            "{} (document 1): metadata.name: duplicate component name \"statestore\": also defined in {} (document 1)",
            name("d-dup.yaml"),
            name("a-state.yaml")
        )
    );
    // Display is one error per line.
    assert_eq!(err.to_string().lines().count(), 4);
}

#[test]
fn load_paths_loads_in_file_name_order_and_accepts_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "b.yaml",
        &format!("{COMPONENT_HEAD}metadata:\n  name: b\nspec:\n  type: state.redis\n"),
    );
    write(
        d,
        "a.YML",
        &format!("{COMPONENT_HEAD}metadata:\n  name: a\nspec:\n  type: state.redis\n"),
    );
    let extra_dir = tempfile::tempdir().unwrap();
    let extra = write(
        extra_dir.path(),
        "extra.conf",
        &format!("{COMPONENT_HEAD}metadata:\n  name: c\nspec:\n  type: pubsub.redis\n"),
    );

    // The directory twice, and a file inside it, must not produce duplicates.
    let r = load_paths(&[
        d.to_path_buf(),
        extra.clone(),
        d.to_path_buf(),
        d.join("b.yaml"),
    ])
    .unwrap();
    let names: Vec<&str> = r.components.iter().map(|c| c.meta.name.as_str()).collect();
    assert_eq!(names, vec!["a", "b", "c"]);
    assert_eq!(r.components[2].location, Location::new(extra, 0));
}

#[test]
fn load_paths_reports_missing_paths() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = load_paths(std::slice::from_ref(&missing)).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err.0[0].location, None);
    assert!(
        err.0[0].message.starts_with(&format!(
            "cannot read resources path {}: ",
            missing.display()
        )),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        load_paths(&[empty.path().to_path_buf()]).unwrap(),
        Resources::default()
    );
}

#[test]
fn load_configuration_file_cases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = write(
        d,
        "config.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: daprConfig\nspec:\n  tracing:\n    samplingRate: \"1\"\n    zipkin:\n      endpointAddress: http://localhost:9411/api/v2/spans\n",
    );
    let cfg = load_configuration_file(&ok).unwrap();
    assert_eq!(cfg.meta.name, "daprConfig");
    assert_eq!(
        cfg.spec.tracing.unwrap().sampling_rate.as_deref(),
        Some("1")
    );

    let empty_spec = write(
        d,
        "bare.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: bare\n",
    );
    let cfg = load_configuration_file(&empty_spec).unwrap();
    assert_eq!(cfg.spec.tracing, None);
    assert_eq!(cfg.spec.raw, serde_json::json!({}));

    let none = write(
        d,
        "component.yaml",
        &format!("{COMPONENT_HEAD}metadata:\n  name: x\nspec:\n  type: state.redis\n"),
    );
    let err = load_configuration_file(&none).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no Configuration resource found in {}", none.display())
    );

    let two = write(
        d,
        "two.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: a\n---\napiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: b\n",
    );
    let err = load_configuration_file(&two).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{} (document 2): only one Configuration is allowed in a configuration file; the first is in {} (document 1)",
            two.display(),
            two.display()
        )
    );

    let broken = write(
        d,
        "broken.yaml",
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nspec:\n  metrics:\n    enabled: sometimes\n",
    );
    let lines: Vec<String> = load_configuration_file(&broken)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].ends_with("metadata.name: missing required field"));
    assert!(lines[1].ends_with("spec.metrics.enabled: expected a boolean, found a string"));

    let err = load_configuration_file(&d.join("absent.yaml")).unwrap_err();
    assert!(err.to_string().starts_with("cannot read "), "{err}");
}

#[test]
fn non_utf8_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, [0xff, 0xfe, 0x00, b'a']).unwrap();
    let err = load_paths(&[path]).unwrap_err();
    assert!(err.to_string().contains("not valid utf-8"), "{err}");
}

#[test]
fn namespaces_filter_only_when_given() {
    let text = format!(
        "{COMPONENT_HEAD}metadata:\n  name: mine\n  namespace: quickstarts\nspec:\n  type: state.redis\n---\n{COMPONENT_HEAD}metadata:\n  name: theirs\n  namespace: other\nspec:\n  type: state.redis\n---\n{COMPONENT_HEAD}metadata:\n  name: everyones\nspec:\n  type: state.redis\n"
    );
    let r = parse(&text).unwrap();
    let names = |r: &Resources| {
        r.components
            .iter()
            .map(|c| c.meta.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&r), ["mine", "theirs", "everyones"]);
    assert_eq!(
        names(&r.clone().in_namespace("quickstarts")),
        ["mine", "everyones"]
    );
    assert_eq!(names(&r.in_namespace("default")), ["everyones"]);
}
