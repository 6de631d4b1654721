//! Unit tests of policy resolution, backoff schedules, the circuit breaker and the runner,
//! on tokio's paused clock (no real waiting).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use trellis_resources::{CircuitBreakerPolicy, RetryPolicy};

use super::breaker::State;
use super::*;

fn parse(yaml: &str) -> Vec<trellis_resources::Resiliency> {
    match trellis_resources::parse_str(std::path::Path::new("r.yaml"), yaml) {
        Ok(r) => r.resiliencies,
        Err(e) => panic!("{e}"),
    }
}

fn doc(name: &str, scopes: &str, spec: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: {name}\n{scopes}spec:\n{spec}"
    )
}

fn breaker_policy(
    trip: &str,
    max_requests: u32,
    interval: u64,
    timeout: u64,
) -> CircuitBreakerPolicy {
    CircuitBreakerPolicy {
        max_requests,
        interval: Duration::from_secs(interval),
        timeout: Duration::from_secs(timeout),
        trip: trip.parse().unwrap_or_default(),
    }
}

fn retry(yaml_policy: RetryPolicy) -> Retry {
    Retry::new("r", &yaml_policy)
}

const SPEC: &str = "  policies:
    timeouts:
      fast: 1s
      DefaultTimeoutPolicy: 9s
    retries:
      three:
        policy: constant
        duration: 2s
        maxRetries: 3
      DefaultComponentOutboundRetryPolicy:
        maxRetries: 1
    circuitBreakers:
      cb:
        trip: consecutiveFailures > 2
  targets:
    apps:
      b:
        timeout: fast
        retry: three
        circuitBreaker: cb
      c:
        retry: DaprBuiltInServiceRetries
    components:
      statestore:
        outbound:
          timeout: fast
      pubsub:
        inbound:
          retry: three
";

#[test]
fn targets_resolve_to_their_policies() {
    let r = Resiliency::new(&parse(&doc("r", "", SPEC)), "a");
    let Some(b) = r.app("b", "m") else {
        panic!("apps.b has a policy")
    };
    assert_eq!(b.target, "apps.b");
    assert_eq!(b.timeout, Some(Duration::from_secs(1)));
    assert_eq!(b.retry.as_ref().map(|r| r.policy.max_retries), Some(3));
    assert!(b.breaker.is_some());
    // Built-in retry policies can be named without being defined.
    let c = r.app("c", "m").and_then(|p| p.retry);
    assert_eq!(
        c.map(|r| (r.policy.max_retries, r.policy.duration)),
        Some((3, Duration::from_secs(1)))
    );
    // Components: a direction of its own; the other direction of a targeted component has
    // none, even where a default would apply.
    let out = r.component("statestore", Block::Statestore, Direction::Outbound);
    assert_eq!(out.and_then(|p| p.timeout), Some(Duration::from_secs(1)));
    assert!(
        r.component("pubsub", Block::Pubsub, Direction::Outbound)
            .is_none()
    );
    let inbound = r.component("pubsub", Block::Pubsub, Direction::Inbound);
    assert_eq!(
        inbound.map(|p| p.target),
        Some("components.pubsub.inbound".into())
    );
}

#[test]
fn untargeted_calls_use_dapr_default_policies() {
    let r = Resiliency::new(&parse(&doc("r", "", SPEC)), "a");
    // Another app: DefaultTimeoutPolicy (no DefaultApp* is defined).
    let other = r.app("zzz", "m");
    assert_eq!(
        other.as_ref().and_then(|p| p.timeout),
        Some(Duration::from_secs(9))
    );
    assert!(other.and_then(|p| p.retry).is_none());
    // An untargeted component: the outbound component retry default and the top timeout.
    let lock = r.component("mylock", Block::Lock, Direction::Outbound);
    assert_eq!(
        lock.as_ref()
            .and_then(|p| p.retry.as_ref())
            .map(|r| r.name.as_str()),
        Some("DefaultComponentOutboundRetryPolicy")
    );
    assert_eq!(lock.and_then(|p| p.timeout), Some(Duration::from_secs(9)));
    let inbound = r.component("mylock", Block::Lock, Direction::Inbound);
    assert!(inbound.and_then(|p| p.retry).is_none());
    // Nothing at all without resources.
    assert!(Resiliency::new(&[], "a").app("b", "m").is_none());
}

#[test]
fn later_resources_replace_earlier_names_and_scopes_are_honoured() {
    let first = doc(
        "one",
        "",
        "  policies:\n    timeouts:\n      t: 1s\n  targets:\n    apps:\n      b:\n        timeout: t\n",
    );
    let second = doc("two", "", "  policies:\n    timeouts:\n      t: 5s\n");
    let other_app = doc(
        "three",
        "scopes:\n- someone-else\n",
        "  policies:\n    timeouts:\n      t: 30s\n",
    );
    let text = format!("{first}---\n{second}---\n{other_app}");
    let r = Resiliency::new(&parse(&text), "a");
    assert_eq!(
        r.app("b", "m").and_then(|p| p.timeout),
        Some(Duration::from_secs(5))
    );
    let scoped_in = doc(
        "four",
        "scopes:\n- a\n",
        "  policies:\n    timeouts:\n      t: 7s\n",
    );
    let r = Resiliency::new(&parse(&format!("{first}---\n{scoped_in}")), "a");
    assert_eq!(
        r.app("b", "m").and_then(|p| p.timeout),
        Some(Duration::from_secs(7))
    );
}

#[test]
fn an_app_breaker_is_kept_per_method() {
    let r = Resiliency::new(&parse(&doc("r", "", SPEC)), "a");
    let one = r.app("b", "m1").and_then(|p| p.breaker);
    let again = r.app("b", "m1").and_then(|p| p.breaker);
    let other = r.app("b", "m2").and_then(|p| p.breaker);
    let (Some(one), Some(again), Some(other)) = (one, again, other) else {
        panic!("apps.b has a breaker")
    };
    assert!(Arc::ptr_eq(&one, &again));
    assert!(!Arc::ptr_eq(&one, &other));
}

#[test]
fn backoff_schedules() {
    let constant = retry(RetryPolicy {
        duration: Duration::from_secs(2),
        ..RetryPolicy::default()
    });
    assert_eq!(constant.delay(0, 1.0), Duration::from_secs(2));
    assert_eq!(constant.delay(40, -1.0), Duration::from_secs(2));

    let exponential = retry(RetryPolicy {
        policy: trellis_resources::BackoffPolicy::Exponential,
        max_interval: Duration::from_secs(3),
        ..RetryPolicy::default()
    });
    let waits: Vec<u128> = (0..7)
        .map(|n| exponential.base_delay(n).as_millis())
        .collect();
    assert_eq!(waits, [500, 750, 1125, 1687, 2531, 3000, 3000]);
    assert_eq!(exponential.delay(1, 0.0), Duration::from_millis(750));
    assert_eq!(exponential.delay(1, 1.0), Duration::from_millis(1125));
    assert_eq!(exponential.delay(1, -1.0), Duration::from_millis(375));
    assert_eq!(exponential.base_delay(u32::MAX), Duration::from_secs(3));
    for _ in 0..100 {
        let j = retry::jitter();
        assert!((-1.0..=1.0).contains(&j), "{j}");
    }
}

#[test]
fn max_retries_and_matching() {
    let forever = retry(RetryPolicy::default());
    assert!(forever.allows(1_000_000));
    let none = retry(RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    });
    assert!(!none.retries());
    assert!(!none.allows(1));
    let two = retry(RetryPolicy {
        max_retries: 2,
        ..RetryPolicy::default()
    });
    assert!(two.allows(1) && two.allows(2) && !two.allows(3));

    let r = parse(&doc(
        "r",
        "",
        "  policies:\n    retries:\n      m:\n        matching:\n          httpStatusCodes: 500-502,429\n          gRPCStatusCodes: 14\n",
    ));
    let m = Retry::new("m", &r[0].policies.retries["m"]);
    assert!(m.matches(Failure::Http(501)) && m.matches(Failure::Http(429)));
    assert!(!m.matches(Failure::Http(503)) && !m.matches(Failure::Http(404)));
    assert!(m.matches(Failure::Grpc(14)) && !m.matches(Failure::Grpc(5)));
    assert!(m.matches(Failure::Error));
    // An empty list retries every code of its kind, as Dapr does.
    let r = parse(&doc(
        "r",
        "",
        "  policies:\n    retries:\n      m:\n        matching:\n          httpStatusCodes: 500\n",
    ));
    let m = Retry::new("m", &r[0].policies.retries["m"]);
    assert!(m.matches(Failure::Grpc(3)));
    assert!(!m.matches(Failure::Http(404)));
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_half_opens_and_closes() {
    let b = CircuitBreaker::new("t", &breaker_policy("consecutiveFailures > 2", 2, 0, 30));
    for _ in 0..2 {
        b.allow().map(|t| t.record(false)).unwrap_or_default();
    }
    assert_eq!(b.state(), State::Closed);
    // A success resets the consecutive count.
    b.allow().map(|t| t.record(true)).unwrap_or_default();
    for _ in 0..3 {
        b.allow().map(|t| t.record(false)).unwrap_or_default();
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.allow().err(), Some(Refused::Open));

    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(b.allow().err(), Some(Refused::Open));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(b.state(), State::HalfOpen);
    // Half-open: maxRequests (2) calls go through, the third is refused.
    let (Ok(first), Ok(second)) = (b.allow(), b.allow()) else {
        panic!("half-open lets maxRequests through")
    };
    assert_eq!(b.allow().err(), Some(Refused::TooManyRequests));
    first.record(true);
    assert_eq!(b.state(), State::HalfOpen);
    second.record(true);
    assert_eq!(b.state(), State::Closed);
    assert!(b.allow().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_failure_while_half_open_opens_again() {
    let b = CircuitBreaker::new("t", &breaker_policy("totalFailures >= 1", 1, 0, 10));
    b.allow().map(|t| t.record(false)).unwrap_or_default();
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    b.allow().map(|t| t.record(false)).unwrap_or_default();
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(b.state(), State::Open);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(b.state(), State::HalfOpen);
    // A call cancelled before it answered counts as a failure: the breaker does not wait
    // for it forever.
    drop(b.allow());
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_interval_clears_counts_while_closed() {
    let b = CircuitBreaker::new("t", &breaker_policy("totalFailures > 2", 1, 60, 10));
    for _ in 0..2 {
        b.allow().map(|t| t.record(false)).unwrap_or_default();
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    b.allow().map(|t| t.record(false)).unwrap_or_default();
    assert_eq!(b.state(), State::Closed);
    for _ in 0..2 {
        b.allow().map(|t| t.record(false)).unwrap_or_default();
    }
    assert_eq!(b.state(), State::Open);
}

/// A call that started while closed and answers after the breaker opened is not counted
/// in the later generation.
#[tokio::test(start_paused = true)]
async fn a_call_from_an_older_generation_does_not_count() {
    let b = CircuitBreaker::new("t", &breaker_policy("consecutiveFailures > 0", 1, 0, 5));
    let Ok(late) = b.allow() else {
        panic!("closed")
    };
    b.allow().map(|t| t.record(false)).unwrap_or_default();
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(b.state(), State::HalfOpen);
    late.record(true);
    assert_eq!(b.state(), State::HalfOpen);
}

/// A policy with the given parts, for the runner tests.
fn policy(
    timeout: Option<u64>,
    retry: Option<RetryPolicy>,
    breaker: Option<CircuitBreakerPolicy>,
) -> Policy {
    Policy {
        target: "test".into(),
        timeout: timeout.map(Duration::from_secs),
        retry: retry.map(|r| Retry::new("r", &r)),
        breaker: breaker.map(|b| Arc::new(CircuitBreaker::new("b", &b))),
        metrics: None,
        tracer: None,
    }
}

fn constant(secs: u64, max_retries: i64) -> RetryPolicy {
    RetryPolicy {
        duration: Duration::from_secs(secs),
        max_retries,
        ..RetryPolicy::default()
    }
}

fn by_status(code: &u16) -> Verdict {
    match *code {
        200 => Verdict::Success,
        other => Verdict::Failure(Failure::Http(other)),
    }
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_schedule() {
    let p = policy(None, Some(constant(2, 3)), None);
    let start = Instant::now();
    let mut at = Vec::new();
    let outcome = p
        .run(
            true,
            |_| {
                at.push(start.elapsed().as_secs());
                async { 503u16 }
            },
            by_status,
        )
        .await;
    assert_eq!(at, [0, 2, 4, 6]);
    assert_eq!(outcome.attempts, 4);
    assert_eq!(outcome.result, Ok(503));
    assert!(!outcome.not_replayable);
}

#[tokio::test(start_paused = true)]
async fn a_flapping_callee_is_retried_until_it_answers() {
    let p = policy(None, Some(constant(1, -1)), None);
    let calls = AtomicU32::new(0);
    let outcome = p
        .run(
            true,
            |n| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move { if n < 50 { 500u16 } else { 200 } }
            },
            by_status,
        )
        .await;
    assert_eq!(outcome.result, Ok(200));
    assert_eq!(calls.load(Ordering::Relaxed), 51);
}

#[tokio::test(start_paused = true)]
async fn unmatched_statuses_and_unreplayable_requests_are_not_retried() {
    let mut r = constant(1, 5);
    r.matching = Some(trellis_resources::RetryMatching {
        http_status_codes: vec![trellis_resources::StatusCodeRange {
            start: 500,
            end: 599,
        }],
        grpc_status_codes: vec![],
    });
    let p = policy(None, Some(r), None);
    let outcome = p.run(true, |_| async { 404u16 }, by_status).await;
    assert_eq!((outcome.attempts, outcome.result), (1, Ok(404)));
    let outcome = p.run(false, |_| async { 503u16 }, by_status).await;
    assert_eq!((outcome.attempts, outcome.not_replayable), (1, true));
    let none = policy(None, Some(constant(1, 0)), None);
    let outcome = none.run(true, |_| async { 503u16 }, by_status).await;
    assert_eq!((outcome.attempts, outcome.not_replayable), (1, false));
}

#[tokio::test(start_paused = true)]
async fn the_timeout_cuts_each_attempt() {
    let p = policy(Some(1), Some(constant(1, 2)), None);
    let start = Instant::now();
    let outcome = p
        .run(
            true,
            |_| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                200u16
            },
            by_status,
        )
        .await;
    assert_eq!(
        outcome.result,
        Err(Stopped::TimedOut(Duration::from_secs(1)))
    );
    assert_eq!(outcome.attempts, 3);
    // Three cut attempts of 1 s and two waits of 1 s.
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(
        Stopped::TimedOut(Duration::from_secs(1))
            .to_string()
            .starts_with("context deadline exceeded")
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_fails_fast_and_stops_retries() {
    let p = policy(
        None,
        Some(constant(1, 10)),
        Some(breaker_policy("consecutiveFailures > 1", 1, 0, 60)),
    );
    let calls = AtomicU32::new(0);
    let outcome = p
        .run(
            true,
            |_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { 500u16 }
            },
            by_status,
        )
        .await;
    // Two failures trip it; the third attempt is refused without a call.
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(outcome.result, Err(Stopped::Refused(Refused::Open)));
    let start = Instant::now();
    let outcome = p.run(true, |_| async { 200u16 }, by_status).await;
    assert_eq!((outcome.attempts, start.elapsed()), (0, Duration::ZERO));
    // After the breaker's timeout one call goes through and closes it again.
    tokio::time::advance(Duration::from_secs(60)).await;
    let outcome = p.run(true, |_| async { 200u16 }, by_status).await;
    assert_eq!(outcome.result, Ok(200));
    assert_eq!(p.breaker.as_ref().map(|b| b.state()), Some(State::Closed));
}

/// A state store that fails its first `fails` calls with `error`, answers after `delay`.
#[derive(Debug)]
struct FlakyStore {
    fails: AtomicU32,
    calls: AtomicU32,
    error: fn() -> trellis_state::StateError,
    delay: Duration,
}

impl FlakyStore {
    fn new(fails: u32, error: fn() -> trellis_state::StateError, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            fails: AtomicU32::new(fails),
            calls: AtomicU32::new(0),
            error,
            delay,
        })
    }

    async fn answer(&self) -> Result<(), trellis_state::StateError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        let left = self.fails.load(Ordering::Relaxed);
        if left > 0 {
            self.fails.store(left - 1, Ordering::Relaxed);
            return Err((self.error)());
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl trellis_state::StateStore for FlakyStore {
    fn capabilities(&self) -> trellis_state::Capabilities {
        trellis_state::Capabilities::default()
    }
    async fn get(
        &self,
        _key: &str,
    ) -> Result<Option<trellis_state::Item>, trellis_state::StateError> {
        self.answer().await.map(|()| None)
    }
    async fn set(&self, _req: trellis_state::SetRequest) -> Result<(), trellis_state::StateError> {
        self.answer().await
    }
    async fn delete(
        &self,
        _req: trellis_state::DeleteRequest,
    ) -> Result<(), trellis_state::StateError> {
        self.answer().await
    }
    async fn transact(
        &self,
        _ops: Vec<trellis_state::Operation>,
    ) -> Result<(), trellis_state::StateError> {
        self.answer().await
    }
}

fn wrapped(store: &Arc<FlakyStore>, policy: Policy) -> outbound::State {
    outbound::State {
        inner: store.clone(),
        policy,
    }
}

#[tokio::test(start_paused = true)]
async fn an_outbound_policy_retries_a_failing_store_but_not_a_refused_request() {
    use trellis_state::{StateError, StateStore as _};
    let backend = || StateError::Backend("connection reset".into());
    let store = FlakyStore::new(2, backend, Duration::ZERO);
    let state = wrapped(&store, policy(None, Some(constant(1, 3)), None));
    assert!(state.get("k").await.is_ok());
    assert_eq!(store.calls.load(Ordering::Relaxed), 3);

    // An ETag mismatch is the request's fault: answered at once, not retried.
    let store = FlakyStore::new(5, || StateError::EtagMismatch, Duration::ZERO);
    let state = wrapped(&store, policy(None, Some(constant(1, 3)), None));
    let req = trellis_state::DeleteRequest::new("k");
    assert!(matches!(
        state.delete(req).await,
        Err(StateError::EtagMismatch)
    ));
    assert_eq!(store.calls.load(Ordering::Relaxed), 1);
}

#[tokio::test(start_paused = true)]
async fn an_outbound_timeout_cuts_a_slow_store() {
    use trellis_state::StateStore as _;
    let store = FlakyStore::new(
        0,
        || trellis_state::StateError::Backend(String::new()),
        Duration::from_secs(30),
    );
    let state = wrapped(&store, policy(Some(2), None, None));
    let start = Instant::now();
    let err = state
        .get("k")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("context deadline exceeded"), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_combined_trip_waits_for_enough_requests() {
    let b = CircuitBreaker::new(
        "t",
        &breaker_policy("requests >= 4 && totalFailures > 1", 1, 0, 5),
    );
    // Two failures out of two requests: not enough requests yet.
    for _ in 0..2 {
        b.allow().map(|t| t.record(false)).unwrap_or_default();
    }
    assert_eq!(b.state(), State::Closed);
    b.allow().map(|t| t.record(true)).unwrap_or_default();
    b.allow().map(|t| t.record(false)).unwrap_or_default();
    assert_eq!(b.state(), State::Open);
}

#[test]
fn every_built_in_retry_policy_a_target_may_name_is_defined() {
    let r = Resiliency::new(&[], "a");
    for name in trellis_resources::BUILT_IN_RETRY_POLICIES {
        assert!(r.retries.contains_key(*name), "{name}");
    }
}
