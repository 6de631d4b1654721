//! The `Resiliency` resource (`kind: Resiliency`): named timeout, retry and circuit-breaker policies, and
//! the targets (apps, actors, components) they apply to.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_norway::Mapping;

use crate::component::{ObjectMeta, parse_object_meta, parse_scopes, scopes_admit};
use crate::error::{LoadError, Location};
use crate::yaml::{Ctx, child, get};
use trellis_core::duration::parse as parse_duration;

/// Retry policy names Dapr defines itself; targets may name them without defining them.
pub const BUILT_IN_RETRY_POLICIES: &[&str] = &[
    "DaprBuiltInServiceRetries",
    "DaprBuiltInActorRetries",
    "DaprBuiltInActorReminderRetries",
    "DaprBuiltInInitializationRetries",
    "DaprBuiltInActorNotFoundRetries",
];

/// A `kind: Resiliency` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resiliency {
    /// Where it was defined.
    pub location: Location,
    /// Name and namespace.
    pub meta: ObjectMeta,
    /// `spec.policies`.
    pub policies: Policies,
    /// `spec.targets`.
    pub targets: Targets,
    /// App IDs the resource applies to; empty means every app.
    pub scopes: Vec<String>,
}

impl Resiliency {
    /// True when the resource applies to `app_id` (an empty scope list admits everyone).
    pub fn is_scoped_to(&self, app_id: &str) -> bool {
        scopes_admit(&self.scopes, app_id)
    }
}

/// `spec.policies`, each keyed by the policy's name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policies {
    /// `timeouts`.
    pub timeouts: BTreeMap<String, Duration>,
    /// `retries`.
    pub retries: BTreeMap<String, RetryPolicy>,
    /// `circuitBreakers`.
    pub circuit_breakers: BTreeMap<String, CircuitBreakerPolicy>,
}

/// How the wait between retries evolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackoffPolicy {
    /// Wait `duration` between attempts.
    #[default]
    Constant,
    /// Grow the wait exponentially up to `max_interval`.
    Exponential,
}

/// A named retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `policy`: `constant` (default) or `exponential`.
    pub policy: BackoffPolicy,
    /// `duration`: the wait for the constant policy; 5s by default.
    pub duration: Duration,
    /// `maxInterval`: the cap for the exponential policy; 60s by default.
    pub max_interval: Duration,
    /// `maxRetries`: -1 (the default) retries forever, 0 never retries.
    pub max_retries: i64,
    /// `matching`: which failures to retry; `None` retries all.
    pub matching: Option<RetryMatching>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            policy: BackoffPolicy::Constant,
            duration: Duration::from_secs(5),
            max_interval: Duration::from_secs(60),
            max_retries: -1,
            matching: None,
        }
    }
}

/// `matching` of a retry policy: the status codes worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetryMatching {
    /// `httpStatusCodes`, such as `500-599,429`.
    pub http_status_codes: Vec<StatusCodeRange>,
    /// `gRPCStatusCodes`, such as `1-4,8-11,13,14`.
    pub grpc_status_codes: Vec<StatusCodeRange>,
}

impl RetryMatching {
    /// True when `code` is listed in `httpStatusCodes`.
    pub fn matches_http(&self, code: u32) -> bool {
        self.http_status_codes.iter().any(|r| r.contains(code))
    }

    /// True when `code` is listed in `gRPCStatusCodes`.
    pub fn matches_grpc(&self, code: u32) -> bool {
        self.grpc_status_codes.iter().any(|r| r.contains(code))
    }
}

/// An inclusive range of status codes (`start == end` for a single code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCodeRange {
    /// First code in the range.
    pub start: u32,
    /// Last code in the range.
    pub end: u32,
}

impl StatusCodeRange {
    /// True when `code` lies in the range.
    pub fn contains(&self, code: u32) -> bool {
        (self.start..=self.end).contains(&code)
    }
}

/// A named circuit-breaker policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitBreakerPolicy {
    /// `maxRequests`: requests let through while half-open; 1 by default.
    pub max_requests: u32,
    /// `interval`: how often the counts are cleared while closed; 0 (never) by default.
    pub interval: Duration,
    /// `timeout`: how long the breaker stays open before going half-open; 60s by default.
    pub timeout: Duration,
    /// `trip`: when to open; `consecutiveFailures > 5` by default.
    pub trip: Trip,
}

/// A `trip` expression: comparisons ([`TripExpr`]) joined by `&&` and `||`, `&&` binding
/// tighter, such as `consecutiveFailures > 5 || requests > 100 && totalFailures > 50`.
///
/// Dapr evaluates `trip` as CEL over the counters; this is the part of CEL a trip
/// condition needs. Parentheses, arithmetic and anything else are refused at load time
/// rather than misread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    /// Alternatives (`||`), each a conjunction (`&&`) of comparisons.
    pub any_of: Vec<Vec<TripExpr>>,
}

impl Default for Trip {
    fn default() -> Self {
        TripExpr::default().into()
    }
}

impl From<TripExpr> for Trip {
    fn from(e: TripExpr) -> Self {
        Self {
            any_of: vec![vec![e]],
        }
    }
}

impl Trip {
    /// True when the counts satisfy the expression, that is, when the breaker should open.
    pub fn is_tripped(&self, counts: &BreakerCounts) -> bool {
        self.any_of
            .iter()
            .any(|all| all.iter().all(|e| e.is_tripped(counts)))
    }
}

impl fmt::Display for Trip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, all) in self.any_of.iter().enumerate() {
            if i > 0 {
                f.write_str(" || ")?;
            }
            for (j, e) in all.iter().enumerate() {
                if j > 0 {
                    f.write_str(" && ")?;
                }
                write!(f, "{e}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Trip {
    type Err = TripParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.trim().is_empty() {
            return Err(TripParseError::Empty);
        }
        let any_of = input
            .split("||")
            .map(|alt| {
                alt.split("&&")
                    .map(|part| match part.trim().parse::<TripExpr>() {
                        // A blank side of `&&`/`||` is the whole expression's fault.
                        Err(TripParseError::Empty) => {
                            Err(TripParseError::Malformed(input.to_string()))
                        }
                        other => other,
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { any_of })
    }
}

/// One comparison of a `trip` expression: `<field> <comparison> <integer>`, such as
/// `consecutiveFailures > 5`; [`Trip`] joins several.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TripExpr {
    /// The counter compared.
    pub field: TripField,
    /// The comparison.
    pub op: Comparison,
    /// The integer compared against.
    pub value: u64,
}

impl Default for TripExpr {
    fn default() -> Self {
        Self {
            field: TripField::ConsecutiveFailures,
            op: Comparison::Gt,
            value: 5,
        }
    }
}

/// The circuit-breaker counters a trip expression may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TripField {
    /// `requests`.
    Requests,
    /// `totalSuccesses`.
    TotalSuccesses,
    /// `totalFailures`.
    TotalFailures,
    /// `consecutiveSuccesses`.
    ConsecutiveSuccesses,
    /// `consecutiveFailures`.
    ConsecutiveFailures,
}

impl TripField {
    const ALL: [(&'static str, TripField); 5] = [
        ("requests", TripField::Requests),
        ("totalSuccesses", TripField::TotalSuccesses),
        ("totalFailures", TripField::TotalFailures),
        ("consecutiveSuccesses", TripField::ConsecutiveSuccesses),
        ("consecutiveFailures", TripField::ConsecutiveFailures),
    ];

    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            TripField::Requests => "requests",
            TripField::TotalSuccesses => "totalSuccesses",
            TripField::TotalFailures => "totalFailures",
            TripField::ConsecutiveSuccesses => "consecutiveSuccesses",
            TripField::ConsecutiveFailures => "consecutiveFailures",
        }
    }
}

/// A comparison operator of a trip expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Comparison {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
            Comparison::Eq => "==",
            Comparison::Ne => "!=",
        }
    }
}

/// Circuit-breaker counters, as a trip expression sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BreakerCounts {
    /// Requests in the current interval.
    pub requests: u64,
    /// Successes in the current interval.
    pub total_successes: u64,
    /// Failures in the current interval.
    pub total_failures: u64,
    /// Successes since the last failure.
    pub consecutive_successes: u64,
    /// Failures since the last success.
    pub consecutive_failures: u64,
}

impl TripExpr {
    /// True when the counts satisfy the expression, that is, when the breaker should open.
    pub fn is_tripped(&self, counts: &BreakerCounts) -> bool {
        let actual = match self.field {
            TripField::Requests => counts.requests,
            TripField::TotalSuccesses => counts.total_successes,
            TripField::TotalFailures => counts.total_failures,
            TripField::ConsecutiveSuccesses => counts.consecutive_successes,
            TripField::ConsecutiveFailures => counts.consecutive_failures,
        };
        match self.op {
            Comparison::Gt => actual > self.value,
            Comparison::Ge => actual >= self.value,
            Comparison::Lt => actual < self.value,
            Comparison::Le => actual <= self.value,
            Comparison::Eq => actual == self.value,
            Comparison::Ne => actual != self.value,
        }
    }
}

impl fmt::Display for TripExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.field.as_str(),
            self.op.as_str(),
            self.value
        )
    }
}

/// Why a trip expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TripParseError {
    /// Nothing but whitespace.
    #[error("empty trip expression")]
    Empty,
    /// A counter name Dapr does not define.
    #[error(
        "unknown field {0:?} in trip expression; known fields: requests, totalSuccesses, totalFailures, consecutiveSuccesses, consecutiveFailures"
    )]
    UnknownField(String),
    /// Not of the form `<field> <comparison> <integer>`.
    #[error(
        "invalid trip expression {0:?}; expected a comparison such as \"consecutiveFailures > 5\""
    )]
    Malformed(String),
}

impl FromStr for TripExpr {
    type Err = TripParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.trim();
        if s.is_empty() {
            return Err(TripParseError::Empty);
        }
        let malformed = || TripParseError::Malformed(input.to_string());
        let ident_len = s
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
            .map_or(s.len(), |(i, _)| i);
        let (ident, rest) = s.split_at(ident_len);
        if ident.is_empty() || ident.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(malformed());
        }
        let rest = rest.trim_start();
        // Two-character operators first so `>=` is not read as `>` followed by `=`.
        let ops = [
            (">=", Comparison::Ge),
            ("<=", Comparison::Le),
            ("==", Comparison::Eq),
            ("!=", Comparison::Ne),
            (">", Comparison::Gt),
            ("<", Comparison::Lt),
        ];
        let (op, rest) = ops
            .iter()
            .find_map(|(text, op)| rest.strip_prefix(text).map(|r| (*op, r)))
            .ok_or_else(malformed)?;
        let digits = rest.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        let value = digits.parse::<u64>().map_err(|_| malformed())?;
        let field = TripField::ALL
            .iter()
            .find(|(name, _)| *name == ident)
            .map(|(_, f)| *f)
            .ok_or_else(|| TripParseError::UnknownField(ident.to_string()))?;
        Ok(TripExpr { field, op, value })
    }
}

/// `spec.targets`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Targets {
    /// `apps`, keyed by app ID (service invocation).
    pub apps: BTreeMap<String, TargetPolicy>,
    /// `actors`, keyed by actor type.
    pub actors: BTreeMap<String, ActorTargetPolicy>,
    /// `components`, keyed by component name.
    pub components: BTreeMap<String, ComponentTarget>,
}

/// The policies applied to one target, by name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// `timeout`: a name from `policies.timeouts`.
    pub timeout: Option<String>,
    /// `retry`: a name from `policies.retries`.
    pub retry: Option<String>,
    /// `circuitBreaker`: a name from `policies.circuitBreakers`.
    pub circuit_breaker: Option<String>,
}

/// The policies applied to one actor type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActorTargetPolicy {
    /// `timeout`: a name from `policies.timeouts`.
    pub timeout: Option<String>,
    /// `retry`: a name from `policies.retries`.
    pub retry: Option<String>,
    /// `circuitBreaker`: a name from `policies.circuitBreakers`.
    pub circuit_breaker: Option<String>,
    /// `circuitBreakerScope`; required when `circuit_breaker` is set, as in Dapr.
    pub circuit_breaker_scope: Option<ActorCircuitBreakerScope>,
    /// `circuitBreakerCacheSize`: how many per-actor breakers to keep.
    pub circuit_breaker_cache_size: Option<u32>,
}

/// What an actor circuit breaker is kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorCircuitBreakerScope {
    /// One breaker per actor ID.
    Id,
    /// One breaker per actor type.
    Type,
    /// Both.
    Both,
}

/// The policies applied to one component, per direction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComponentTarget {
    /// `outbound`: calls from the sidecar to the component.
    pub outbound: Option<TargetPolicy>,
    /// `inbound`: calls from the component (through the sidecar) to the app.
    pub inbound: Option<TargetPolicy>,
}

/// Reads a `kind: Resiliency` document. Target references are checked later, across all loaded
/// Resiliency resources, because Dapr merges them before resolving names.
pub(crate) fn parse_resiliency(ctx: &mut Ctx<'_>, root: &Mapping) -> Resiliency {
    let meta = parse_object_meta(ctx, root);
    let scopes = parse_scopes(ctx, root);
    let mut policies = Policies::default();
    let mut targets = Targets::default();
    if let Some(spec) = ctx.mapping(root, "spec", "") {
        if let Some(p) = ctx.mapping(spec, "policies", "spec") {
            policies = parse_policies(ctx, p);
        }
        if let Some(t) = ctx.mapping(spec, "targets", "spec") {
            targets = parse_targets(ctx, t);
        }
    }
    Resiliency {
        location: ctx.location.clone(),
        meta,
        policies,
        targets,
        scopes,
    }
}

fn parse_policies(ctx: &mut Ctx<'_>, p: &Mapping) -> Policies {
    let path = "spec.policies";
    let mut policies = Policies::default();

    let timeouts_path = child(path, "timeouts");
    for (k, v) in ctx.mapping(p, "timeouts", path).into_iter().flatten() {
        let Some(name) = ctx.key(k, &timeouts_path) else {
            continue;
        };
        let field = child(&timeouts_path, &name);
        let Some(text) = ctx.as_string(v, &field) else {
            continue;
        };
        match parse_duration(&text) {
            Ok(d) => {
                policies.timeouts.insert(name, d);
            }
            Err(e) => ctx.error(field, e.to_string()),
        }
    }

    let retries_path = child(path, "retries");
    for (k, v) in ctx.mapping(p, "retries", path).into_iter().flatten() {
        let Some(name) = ctx.key(k, &retries_path) else {
            continue;
        };
        let rpath = child(&retries_path, &name);
        let Some(r) = ctx.as_mapping(v, &rpath) else {
            continue;
        };
        policies.retries.insert(name, parse_retry(ctx, r, &rpath));
    }

    let cbs_path = child(path, "circuitBreakers");
    for (k, v) in ctx
        .mapping(p, "circuitBreakers", path)
        .into_iter()
        .flatten()
    {
        let Some(name) = ctx.key(k, &cbs_path) else {
            continue;
        };
        let cpath = child(&cbs_path, &name);
        let Some(c) = ctx.as_mapping(v, &cpath) else {
            continue;
        };
        let mut cb = CircuitBreakerPolicy {
            max_requests: ctx.u32(c, "maxRequests", &cpath).unwrap_or(1),
            interval: ctx
                .duration(c, "interval", &cpath)
                .unwrap_or(Duration::ZERO),
            timeout: ctx
                .duration(c, "timeout", &cpath)
                .unwrap_or(Duration::from_secs(60)),
            trip: Trip::default(),
        };
        if let Some(text) = ctx.string(c, "trip", &cpath) {
            match text.parse::<Trip>() {
                Ok(t) => cb.trip = t,
                Err(e) => ctx.error(child(&cpath, "trip"), e.to_string()),
            }
        }
        policies.circuit_breakers.insert(name, cb);
    }
    policies
}

fn parse_retry(ctx: &mut Ctx<'_>, r: &Mapping, path: &str) -> RetryPolicy {
    let mut retry = RetryPolicy::default();
    if let Some(policy) = ctx.string(r, "policy", path) {
        if policy.eq_ignore_ascii_case("constant") {
            retry.policy = BackoffPolicy::Constant;
        } else if policy.eq_ignore_ascii_case("exponential") {
            retry.policy = BackoffPolicy::Exponential;
        } else {
            ctx.error(
                child(path, "policy"),
                format!(
                    "unknown retry policy {policy:?}; expected \"constant\" or \"exponential\""
                ),
            );
        }
    }
    if let Some(d) = ctx.duration(r, "duration", path) {
        retry.duration = d;
    }
    if let Some(d) = ctx.duration(r, "maxInterval", path) {
        retry.max_interval = d;
    }
    if let Some(n) = ctx.int(r, "maxRetries", path) {
        if n < -1 {
            ctx.error(
                child(path, "maxRetries"),
                format!("invalid value {n}; use -1 to retry forever or a count of 0 or more"),
            );
        } else {
            retry.max_retries = n;
        }
    }
    if let Some(m) = ctx.mapping(r, "matching", path) {
        let mpath = child(path, "matching");
        let http = ctx
            .string(m, "httpStatusCodes", &mpath)
            .map(|text| parse_code_ranges(ctx, &text, 100, 599, &child(&mpath, "httpStatusCodes")));
        let grpc = ctx
            .string(m, "gRPCStatusCodes", &mpath)
            .map(|text| parse_code_ranges(ctx, &text, 0, 16, &child(&mpath, "gRPCStatusCodes")));
        retry.matching = Some(RetryMatching {
            http_status_codes: http.unwrap_or_default(),
            grpc_status_codes: grpc.unwrap_or_default(),
        });
    }
    retry
}

/// Parses `500-599,429`-style lists; every code must lie within `min..=max`.
fn parse_code_ranges(
    ctx: &mut Ctx<'_>,
    text: &str,
    min: u32,
    max: u32,
    path: &str,
) -> Vec<StatusCodeRange> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        match (a.parse::<u32>(), b.parse::<u32>()) {
            (Ok(start), Ok(end)) if start <= end && start >= min && end <= max => {
                out.push(StatusCodeRange { start, end });
            }
            _ => ctx.error(path, format!("invalid status code range {part:?}; codes must be from {min} to {max}, as in \"{min}\" or \"{min}-{max}\"")),
        }
    }
    out
}

fn parse_target(ctx: &mut Ctx<'_>, t: &Mapping, path: &str) -> TargetPolicy {
    TargetPolicy {
        timeout: ctx.string(t, "timeout", path).filter(|s| !s.is_empty()),
        retry: ctx.string(t, "retry", path).filter(|s| !s.is_empty()),
        circuit_breaker: ctx
            .string(t, "circuitBreaker", path)
            .filter(|s| !s.is_empty()),
    }
}

fn parse_targets(ctx: &mut Ctx<'_>, t: &Mapping) -> Targets {
    let path = "spec.targets";
    let mut targets = Targets::default();

    let apps_path = child(path, "apps");
    for (k, v) in ctx.mapping(t, "apps", path).into_iter().flatten() {
        let Some(name) = ctx.key(k, &apps_path) else {
            continue;
        };
        let tpath = child(&apps_path, &name);
        let Some(m) = ctx.as_mapping(v, &tpath) else {
            continue;
        };
        targets.apps.insert(name, parse_target(ctx, m, &tpath));
    }

    let actors_path = child(path, "actors");
    for (k, v) in ctx.mapping(t, "actors", path).into_iter().flatten() {
        let Some(name) = ctx.key(k, &actors_path) else {
            continue;
        };
        let tpath = child(&actors_path, &name);
        let Some(m) = ctx.as_mapping(v, &tpath) else {
            continue;
        };
        let base = parse_target(ctx, m, &tpath);
        let scope = ctx.string(m, "circuitBreakerScope", &tpath).and_then(|s| {
            match s.to_ascii_lowercase().as_str() {
                "id" => Some(ActorCircuitBreakerScope::Id),
                "type" => Some(ActorCircuitBreakerScope::Type),
                "both" => Some(ActorCircuitBreakerScope::Both),
                _ => {
                    ctx.error(
                        child(&tpath, "circuitBreakerScope"),
                        format!("invalid value {s:?}; expected \"id\", \"type\" or \"both\""),
                    );
                    None
                }
            }
        });
        // Dapr refuses an actor circuit breaker without a scope.
        if base.circuit_breaker.is_some() && get(m, "circuitBreakerScope").is_none() {
            ctx.error(
                child(&tpath, "circuitBreakerScope"),
                "required when circuitBreaker is set (\"id\", \"type\" or \"both\")",
            );
        }
        let cache_size = ctx.u32(m, "circuitBreakerCacheSize", &tpath);
        targets.actors.insert(
            name,
            ActorTargetPolicy {
                timeout: base.timeout,
                retry: base.retry,
                circuit_breaker: base.circuit_breaker,
                circuit_breaker_scope: scope,
                circuit_breaker_cache_size: cache_size,
            },
        );
    }

    let comps_path = child(path, "components");
    for (k, v) in ctx.mapping(t, "components", path).into_iter().flatten() {
        let Some(name) = ctx.key(k, &comps_path) else {
            continue;
        };
        let cpath = child(&comps_path, &name);
        let Some(m) = ctx.as_mapping(v, &cpath) else {
            continue;
        };
        let outbound = ctx
            .mapping(m, "outbound", &cpath)
            .map(|o| parse_target(ctx, o, &child(&cpath, "outbound")));
        let inbound = ctx
            .mapping(m, "inbound", &cpath)
            .map(|i| parse_target(ctx, i, &child(&cpath, "inbound")));
        targets
            .components
            .insert(name, ComponentTarget { outbound, inbound });
    }
    targets
}

/// Checks that every policy a target names is defined in one of `resiliencies` (Dapr resolves names
/// across all loaded Resiliency resources) or is one of Dapr's built-in retry policies.
pub(crate) fn check_references(resiliencies: &[Resiliency], errors: &mut Vec<LoadError>) {
    let mut timeouts = BTreeSet::new();
    let mut retries: BTreeSet<&str> = BUILT_IN_RETRY_POLICIES.iter().copied().collect();
    let mut breakers = BTreeSet::new();
    for r in resiliencies {
        timeouts.extend(r.policies.timeouts.keys().map(String::as_str));
        retries.extend(r.policies.retries.keys().map(String::as_str));
        breakers.extend(r.policies.circuit_breakers.keys().map(String::as_str));
    }
    let defined = Defined {
        timeouts,
        retries,
        breakers,
    };

    for r in resiliencies {
        let mut check = |path: String, t: &TargetPolicy| {
            defined.check(
                &r.location,
                &path,
                "timeout",
                "timeout",
                t.timeout.as_deref(),
                errors,
            );
            defined.check(
                &r.location,
                &path,
                "retry",
                "retry",
                t.retry.as_deref(),
                errors,
            );
            defined.check(
                &r.location,
                &path,
                "circuitBreaker",
                "circuit breaker",
                t.circuit_breaker.as_deref(),
                errors,
            );
        };
        for (name, t) in &r.targets.apps {
            check(child("spec.targets.apps", name), t);
        }
        for (name, a) in &r.targets.actors {
            let t = TargetPolicy {
                timeout: a.timeout.clone(),
                retry: a.retry.clone(),
                circuit_breaker: a.circuit_breaker.clone(),
            };
            check(child("spec.targets.actors", name), &t);
        }
        for (name, c) in &r.targets.components {
            let base = child("spec.targets.components", name);
            if let Some(t) = &c.outbound {
                check(child(&base, "outbound"), t);
            }
            if let Some(t) = &c.inbound {
                check(child(&base, "inbound"), t);
            }
        }
    }
}

struct Defined<'a> {
    timeouts: BTreeSet<&'a str>,
    retries: BTreeSet<&'a str>,
    breakers: BTreeSet<&'a str>,
}

impl Defined<'_> {
    fn check(
        &self,
        location: &Location,
        path: &str,
        key: &str,
        what: &str,
        name: Option<&str>,
        errors: &mut Vec<LoadError>,
    ) {
        let Some(name) = name else { return };
        let (set, section): (&BTreeSet<&str>, &str) = match key {
            "timeout" => (&self.timeouts, "timeouts"),
            "retry" => (&self.retries, "retries"),
            _ => (&self.breakers, "circuitBreakers"),
        };
        if set.contains(name) {
            return;
        }
        let user_defined: Vec<&str> = set
            .iter()
            .copied()
            .filter(|n| !BUILT_IN_RETRY_POLICIES.contains(n))
            .collect();
        let known = if user_defined.is_empty() {
            format!("no {what} policies are defined")
        } else {
            format!("defined {what} policies: {}", user_defined.join(", "))
        };
        errors.push(LoadError::at(
            location,
            child(path, key),
            format!(
                "unknown {what} policy {name:?}: not found in spec.policies.{section} ({known})"
            ),
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn trip_expressions_parse() {
        let cases: &[(&str, TripField, Comparison, u64)] = &[
            (
                "consecutiveFailures > 5",
                TripField::ConsecutiveFailures,
                Comparison::Gt,
                5,
            ),
            (
                "consecutiveFailures>8",
                TripField::ConsecutiveFailures,
                Comparison::Gt,
                8,
            ),
            (
                "  totalFailures >= 10 ",
                TripField::TotalFailures,
                Comparison::Ge,
                10,
            ),
            ("requests < 3", TripField::Requests, Comparison::Lt, 3),
            ("requests <= 3", TripField::Requests, Comparison::Le, 3),
            (
                "consecutiveSuccesses == 0",
                TripField::ConsecutiveSuccesses,
                Comparison::Eq,
                0,
            ),
            (
                "totalSuccesses != 1",
                TripField::TotalSuccesses,
                Comparison::Ne,
                1,
            ),
        ];
        for (text, field, op, value) in cases {
            let t: TripExpr = text.parse().unwrap();
            assert_eq!(
                t,
                TripExpr {
                    field: *field,
                    op: *op,
                    value: *value
                },
                "{text}"
            );
        }
        assert_eq!(
            "consecutiveFailures>=2"
                .parse::<TripExpr>()
                .unwrap()
                .to_string(),
            "consecutiveFailures >= 2"
        );
    }

    #[test]
    fn trip_expressions_rejected() {
        let cases: &[(&str, &str)] = &[
            ("", "empty trip expression"),
            ("   ", "empty trip expression"),
            ("failures > 5", "unknown field \"failures\""),
            ("consecutiveFailures", "invalid trip expression"),
            ("consecutiveFailures >", "invalid trip expression"),
            ("consecutiveFailures > five", "invalid trip expression"),
            ("consecutiveFailures > -1", "invalid trip expression"),
            ("consecutiveFailures > 5 &&", "invalid trip expression"),
            ("|| requests > 1", "invalid trip expression"),
            (
                "(consecutiveFailures > 5) && requests > 10",
                "invalid trip expression",
            ),
            ("consecutiveFailures => 5", "invalid trip expression"),
            ("5 < consecutiveFailures", "invalid trip expression"),
            (
                "consecutiveFailures > 99999999999999999999999",
                "invalid trip expression",
            ),
        ];
        for (text, want) in cases {
            let err = text.parse::<Trip>().expect_err(text).to_string();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn trip_evaluation() {
        let t: TripExpr = "consecutiveFailures > 2".parse().unwrap();
        let mut counts = BreakerCounts {
            consecutive_failures: 2,
            ..Default::default()
        };
        assert!(!t.is_tripped(&counts));
        counts.consecutive_failures = 3;
        assert!(t.is_tripped(&counts));
        assert_eq!(TripExpr::default().to_string(), "consecutiveFailures > 5");
    }

    #[test]
    fn combined_trip_expressions() {
        let t: Trip = "consecutiveFailures > 5 || requests > 10 && totalFailures >= 5"
            .parse()
            .unwrap();
        assert_eq!(t.any_of.len(), 2);
        assert_eq!(
            t.to_string(),
            "consecutiveFailures > 5 || requests > 10 && totalFailures >= 5"
        );
        let counts = |requests, total_failures, consecutive_failures| BreakerCounts {
            requests,
            total_failures,
            consecutive_failures,
            ..Default::default()
        };
        assert!(t.is_tripped(&counts(0, 0, 6)));
        assert!(t.is_tripped(&counts(11, 5, 0)));
        assert!(!t.is_tripped(&counts(11, 4, 5)));
        assert!(!t.is_tripped(&counts(10, 9, 0)));
        assert_eq!(Trip::default().to_string(), "consecutiveFailures > 5");
    }

    #[test]
    fn status_code_ranges() {
        let m = RetryMatching {
            http_status_codes: vec![
                StatusCodeRange {
                    start: 500,
                    end: 599,
                },
                StatusCodeRange {
                    start: 429,
                    end: 429,
                },
            ],
            grpc_status_codes: vec![],
        };
        assert!(m.matches_http(503));
        assert!(m.matches_http(429));
        assert!(!m.matches_http(404));
        assert!(!m.matches_grpc(14));
    }
}
