//! Resiliency policies (`kind: Resiliency`) at run time: which timeout, retry and circuit
//! breaker apply to a call, and the one mechanism that runs a call under them ([`run`]).
//!
//! Where each target's policy acts, each in one place that every call of its kind passes
//! through (not inside the building blocks):
//!
//! - `apps.<id>`: [`crate::invoke::Invoker::invoke`], which the HTTP invoke API, the
//!   `dapr-app-id` header form, gRPC `InvokeService` and the gRPC proxy all call. It sits
//!   above the transport's own built-in retries (requests that provably never reached the
//!   callee), as in Dapr, so one policy attempt may include those.
//! - `components.<name>.outbound`: the store or broker handle itself, wrapped once when the
//!   sidecar is assembled ([`outbound`]), so every API operation and every internal user
//!   (dead-lettering included) goes through it.
//! - `components.<name>.inbound`: the delivery loop (`delivery.rs`): its timeout and breaker
//!   wrap each request to the app; its retry policy replaces the built-in redelivery
//!   backoff and attempt count, the broker keeping the message between attempts.
//!
//! Several Resiliency resources merge as in Dapr: in load order, a later policy or target
//! of the same name replaces an earlier one; resources scoped to other apps are ignored.
//! Without a target of its own, a call uses Dapr's default policies when defined
//! (`DefaultAppRetryPolicy`, `DefaultStatestoreComponentOutboundTimeoutPolicy`,
//! `DefaultComponentCircuitBreakerPolicy`, `DefaultRetryPolicy`, ...).

pub mod breaker;
pub mod outbound;
pub mod retry;
pub mod run;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trellis_resources::{
    ActorTargetPolicy, CircuitBreakerPolicy, ComponentTarget, Resiliency as Resource, RetryPolicy,
    TargetPolicy,
};

pub use breaker::{CircuitBreaker, Refused};
pub use retry::{Failure, Retry};
pub use run::{Outcome, Policy, Stopped, Verdict};

/// Breakers kept per target app, one per method as in Dapr; past this, closed ones go.
const APP_BREAKERS: usize = 100;

/// Which way a component call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sidecar → store or broker.
    Outbound,
    /// Component → app (pub/sub delivery).
    Inbound,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "Outbound",
            Direction::Inbound => "Inbound",
        }
    }
}

/// The building block of a component, which picks its default policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Statestore,
    Pubsub,
    Lock,
    Configuration,
}

impl Block {
    fn as_str(self) -> &'static str {
        match self {
            Block::Statestore => "Statestore",
            Block::Pubsub => "Pubsub",
            Block::Lock => "Lock",
            Block::Configuration => "Configuration",
        }
    }
}

/// Every Resiliency resource of one app, merged.
#[derive(Debug, Default)]
pub struct Resiliency {
    timeouts: BTreeMap<String, Duration>,
    retries: BTreeMap<String, RetryPolicy>,
    breakers: BTreeMap<String, CircuitBreakerPolicy>,
    apps: BTreeMap<String, TargetPolicy>,
    /// Dapr's default policies for apps without a target, found once: the invocation path
    /// asks for every call.
    app_default: Option<TargetPolicy>,
    components: BTreeMap<String, ComponentTarget>,
    /// Parsed and kept; Trellis has no actors to apply them to yet.
    pub actors: BTreeMap<String, ActorTargetPolicy>,
    app_breakers: Mutex<HashMap<String, HashMap<String, Arc<CircuitBreaker>>>>,
    component_breakers: Mutex<HashMap<(String, Direction), Arc<CircuitBreaker>>>,
    /// Where resiliency events are counted (`dapr_resiliency_*`).
    metrics: crate::metrics::Metrics,
    /// The metric series of each target, looked up once (by the policy's `target`).
    policed: Mutex<HashMap<String, Option<crate::metrics::Policed>>>,
    /// Where resiliency events become spans in the trace of the call (none without tracing).
    tracer: Option<trellis_trace::Tracer>,
}

impl Resiliency {
    /// Merges `resources` (in load order) that apply to `app_id`.
    pub fn new(resources: &[Resource], app_id: &str) -> Self {
        let mut merged = Self::default();
        // Dapr's built-in retry policies may be named by targets without being defined.
        let constant = |retries| RetryPolicy {
            duration: Duration::from_secs(1),
            max_retries: retries,
            ..RetryPolicy::default()
        };
        for (name, retries) in [
            ("DaprBuiltInServiceRetries", 3),
            ("DaprBuiltInActorRetries", 3),
            ("DaprBuiltInActorNotFoundRetries", 5),
        ] {
            merged.retries.insert(name.to_string(), constant(retries));
        }
        let exponential = |retries, max_interval| RetryPolicy {
            policy: trellis_resources::BackoffPolicy::Exponential,
            max_interval,
            max_retries: retries,
            ..RetryPolicy::default()
        };
        for (name, retries, max_interval) in [
            (
                "DaprBuiltInActorReminderRetries",
                -1,
                Duration::from_secs(60),
            ),
            (
                "DaprBuiltInInitializationRetries",
                3,
                Duration::from_secs(1),
            ),
        ] {
            let policy = exponential(retries, max_interval);
            merged.retries.insert(name.to_string(), policy);
        }
        for r in resources.iter().filter(|r| r.is_scoped_to(app_id)) {
            let p = &r.policies;
            merged.timeouts.extend(p.timeouts.clone());
            merged.retries.extend(p.retries.clone());
            merged.breakers.extend(p.circuit_breakers.clone());
            merged.apps.extend(r.targets.apps.clone());
            merged.components.extend(r.targets.components.clone());
            merged.actors.extend(r.targets.actors.clone());
        }
        merged.app_default = merged.defaults(&["App"]);
        merged
    }

    /// Records this app's resiliency events as spans of the calls they happen in.
    pub fn with_tracer(mut self, tracer: Option<trellis_trace::Tracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// Counts this app's resiliency events in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Warns about component targets that name no loaded component: Dapr accepts them (a
    /// component may come later), but here they are most likely a typo.
    pub fn warn_unknown_components(&self, loaded: &[&str]) {
        for name in self.components.keys() {
            if !loaded.contains(&name.as_str()) {
                tracing::warn!(
                    component = name,
                    "spec.targets.components.{name} of a Resiliency resource names no loaded component; its policies apply to nothing"
                );
            }
        }
    }

    /// The policy for invoking `method` on app `app_id`, if any applies. Without one this
    /// costs a map lookup: it runs for every invocation.
    pub fn app(&self, app_id: &str, method: &str) -> Option<Policy> {
        let names = match self.apps.get(app_id) {
            Some(t) => t,
            None => self.app_default.as_ref()?,
        };
        let target = format!("apps.{app_id}");
        let labels = MetricLabels {
            target: &target,
            dapr_target: || format!("app_{app_id}"),
            direction: "outbound",
        };
        let policed = self.policed(labels, names);
        let breaker = names
            .circuit_breaker
            .as_deref()
            .and_then(|n| self.breakers.get(n).map(|p| (n, p)))
            .map(|(name, policy)| self.app_breaker(app_id, method, name, policy, &policed));
        self.policy(target, names, breaker, policed)
    }

    /// The policy for calls of `direction` through component `name` of `block`, if any.
    pub fn component(&self, name: &str, block: Block, direction: Direction) -> Option<Policy> {
        let names = match self.components.get(name) {
            // As in Dapr, a component with a target uses its own policies only, even when
            // the target leaves this direction out.
            Some(t) => match direction {
                Direction::Outbound => t.outbound.clone()?,
                Direction::Inbound => t.inbound.clone()?,
            },
            None => {
                let dir = direction.as_str();
                let typed = format!("{}Component{dir}", block.as_str());
                let directed = format!("Component{dir}");
                self.defaults(&[&typed, &directed, "Component"])?
            }
        };
        let target = format!(
            "components.{name}.{}",
            direction.as_str().to_ascii_lowercase()
        );
        let labels = MetricLabels {
            target: &target,
            dapr_target: || format!("{}_{name}", block.as_str()),
            direction: match direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            },
        };
        let policed = self.policed(labels, &names);
        let breaker = names
            .circuit_breaker
            .as_deref()
            .and_then(|n| self.breakers.get(n))
            .map(|policy| {
                let mut all = lock(&self.component_breakers);
                all.entry((name.to_string(), direction))
                    .or_insert_with(|| {
                        Arc::new(
                            CircuitBreaker::new(target.clone(), policy)
                                .with_metrics(policed.clone()),
                        )
                    })
                    .clone()
            });
        self.policy(target, &names, breaker, policed)
    }

    /// The metric series of a target's policies, looked up on its first call only.
    fn policed(
        &self,
        labels: MetricLabels<'_, impl FnOnce() -> String>,
        names: &TargetPolicy,
    ) -> Option<crate::metrics::Policed> {
        if !self.metrics.is_enabled() {
            return None;
        }
        let mut all = lock(&self.policed);
        if let Some(found) = all.get(labels.target) {
            return found.clone();
        }
        let dapr_target = (labels.dapr_target)();
        let made = self.metrics.policed(crate::metrics::PolicyTarget {
            timeout: names.timeout.as_deref(),
            retry: names.retry.as_deref(),
            breaker: names.circuit_breaker.as_deref(),
            direction: labels.direction,
            target: &dapr_target,
        });
        all.insert(labels.target.to_string(), made.clone());
        made
    }

    fn policy(
        &self,
        target: String,
        names: &TargetPolicy,
        breaker: Option<Arc<CircuitBreaker>>,
        metrics: Option<crate::metrics::Policed>,
    ) -> Option<Policy> {
        let timeout = names
            .timeout
            .as_deref()
            .and_then(|n| self.timeouts.get(n))
            .copied()
            .filter(|d| !d.is_zero());
        let retry = names
            .retry
            .as_deref()
            .and_then(|n| self.retries.get(n).map(|p| Retry::new(n, p)));
        if timeout.is_none() && retry.is_none() && breaker.is_none() {
            return None;
        }
        Some(Policy {
            target,
            timeout,
            retry,
            breaker,
            metrics,
            tracer: self.tracer.clone(),
        })
    }

    /// Dapr's default policies for a target without one of its own: for each kind, the
    /// first of `Default<level>RetryPolicy` (levels most specific first), then
    /// `DefaultRetryPolicy`, that is defined.
    fn defaults(&self, levels: &[&str]) -> Option<TargetPolicy> {
        fn first<V>(map: &BTreeMap<String, V>, levels: &[&str], kind: &str) -> Option<String> {
            levels
                .iter()
                .chain(std::iter::once(&""))
                .map(|level| format!("Default{level}{kind}Policy"))
                .find(|name| map.contains_key(name))
        }
        let t = TargetPolicy {
            timeout: first(&self.timeouts, levels, "Timeout"),
            retry: first(&self.retries, levels, "Retry"),
            circuit_breaker: first(&self.breakers, levels, "CircuitBreaker"),
        };
        (t.timeout.is_some() || t.retry.is_some() || t.circuit_breaker.is_some()).then_some(t)
    }

    fn app_breaker(
        &self,
        app_id: &str,
        method: &str,
        name: &str,
        policy: &CircuitBreakerPolicy,
        policed: &Option<crate::metrics::Policed>,
    ) -> Arc<CircuitBreaker> {
        let mut all = lock(&self.app_breakers);
        let per_method = all.entry(app_id.to_string()).or_default();
        if let Some(b) = per_method.get(method) {
            return b.clone();
        }
        if per_method.len() >= APP_BREAKERS {
            // A closed breaker holds nothing worth keeping; an open one must stay open.
            per_method.retain(|_, b| b.state() != breaker::State::Closed);
        }
        // The breakers of an app's methods share its series, as in Dapr: the gauge shows
        // the state the last of them moved to.
        let b = Arc::new(
            CircuitBreaker::new(format!("apps.{app_id} {method} ({name})"), policy)
                .with_metrics(policed.clone()),
        );
        per_method.insert(method.to_string(), b.clone());
        b
    }
}

/// How a target is labelled in the resiliency metrics.
struct MetricLabels<'a, F> {
    /// The policy's own target name (`apps.b`), the key of its series.
    target: &'a str,
    /// Dapr's label (`app_b`, `Statestore_orders`), made only on the target's first call.
    dapr_target: F,
    direction: &'static str,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
