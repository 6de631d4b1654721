//! A circuit breaker: closed → open → half-open → closed, as Dapr's (sony/gobreaker) works.
//!
//! - **Closed**: every call goes through and is counted. After a failure, the `trip`
//!   expression is evaluated over the counts; when it holds, the breaker opens. With an
//!   `interval`, the counts start over every interval.
//! - **Open**: every call fails at once, without reaching the callee, for `timeout`; then
//!   the breaker is half-open.
//! - **Half-open**: `maxRequests` calls go through; the ones beyond fail at once. A failure
//!   opens the breaker again; `maxRequests` successes in a row close it.
//!
//! The counts of a state belong to its *generation*: a call that started before the
//! state changed does not count in the new one. Time is tokio's, so tests pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use trellis_resources::{BreakerCounts, CircuitBreakerPolicy};

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

/// Why a call was refused without being made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Dapr's (gobreaker's) words, which clients may know.
    #[error("circuit breaker is open")]
    Open,
    #[error("too many requests")]
    TooManyRequests,
}

#[derive(Debug)]
struct Inner {
    state: State,
    generation: u64,
    counts: BreakerCounts,
    /// When the current generation ends (closed with an interval, or open); `None` never.
    expiry: Option<Instant>,
}

/// One circuit breaker (one per target: an app's method, a component and direction).
#[derive(Debug)]
pub struct CircuitBreaker {
    pub name: String,
    policy: CircuitBreakerPolicy,
    inner: Mutex<Inner>,
    /// The state gauge and transition counters of the breaker's target.
    metrics: Option<crate::metrics::Policed>,
}

/// A call the breaker let through: its result must be reported with
/// [`CircuitBreaker::record`]. Dropped unreported (the call was cancelled), it counts as a
/// failure, so that a half-open breaker does not wait forever for an answer.
#[derive(Debug)]
pub struct Ticket<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    reported: bool,
}

impl Ticket<'_> {
    /// Reports how the call ended.
    pub fn record(mut self, success: bool) {
        self.reported = true;
        self.breaker.report(self.generation, success);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.report(self.generation, false);
        }
    }
}

impl CircuitBreaker {
    pub fn new(name: impl Into<String>, policy: &CircuitBreakerPolicy) -> Self {
        let now = Instant::now();
        Self {
            name: name.into(),
            policy: policy.clone(),
            inner: Mutex::new(Inner {
                state: State::Closed,
                generation: 0,
                counts: BreakerCounts::default(),
                expiry: closed_expiry(policy, now),
            }),
            metrics: None,
        }
    }

    /// Reports the breaker's state to `metrics` from now on (closed, to begin with).
    pub fn with_metrics(mut self, metrics: Option<crate::metrics::Policed>) -> Self {
        if let Some(m) = &metrics {
            m.breaker_is(crate::metrics::BreakerState::Closed, false);
        }
        self.metrics = metrics;
        self
    }

    /// The state now (an open breaker past its timeout is half-open).
    pub fn state(&self) -> State {
        let mut inner = self.lock();
        self.advance(&mut inner, Instant::now());
        inner.state
    }

    /// Lets a call through, or refuses it.
    pub fn allow(&self) -> Result<Ticket<'_>, Refused> {
        let mut inner = self.lock();
        self.advance(&mut inner, Instant::now());
        match inner.state {
            State::Open => return Err(Refused::Open),
            State::HalfOpen if inner.counts.requests >= self.max_requests() => {
                return Err(Refused::TooManyRequests);
            }
            _ => {}
        }
        inner.counts.requests += 1;
        Ok(Ticket {
            breaker: self,
            generation: inner.generation,
            reported: false,
        })
    }

    fn report(&self, generation: u64, success: bool) {
        let mut inner = self.lock();
        let now = Instant::now();
        self.advance(&mut inner, now);
        if inner.generation != generation {
            return;
        }
        let c = &mut inner.counts;
        if success {
            c.total_successes += 1;
            c.consecutive_successes += 1;
            c.consecutive_failures = 0;
            if inner.state == State::HalfOpen
                && inner.counts.consecutive_successes >= self.max_requests()
            {
                self.set_state(&mut inner, State::Closed, now);
            }
        } else {
            c.total_failures += 1;
            c.consecutive_failures += 1;
            c.consecutive_successes = 0;
            let trip = match inner.state {
                State::Closed => self.policy.trip.is_tripped(&inner.counts),
                State::HalfOpen => true,
                State::Open => false,
            };
            if trip {
                self.set_state(&mut inner, State::Open, now);
            }
        }
    }

    /// Moves on to the next generation where the current one has expired.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        let expired = inner.expiry.is_some_and(|at| at <= now);
        match inner.state {
            State::Closed if expired => {
                inner.generation += 1;
                inner.counts = BreakerCounts::default();
                inner.expiry = closed_expiry(&self.policy, now);
            }
            State::Open if expired => self.set_state(inner, State::HalfOpen, now),
            _ => {}
        }
    }

    fn set_state(&self, inner: &mut Inner, state: State, now: Instant) {
        if inner.state == state {
            return;
        }
        tracing::info!(
            breaker = self.name,
            from = ?inner.state,
            to = ?state,
            "circuit breaker changed state"
        );
        if let Some(m) = &self.metrics {
            let s = match state {
                State::Closed => crate::metrics::BreakerState::Closed,
                State::Open => crate::metrics::BreakerState::Open,
                State::HalfOpen => crate::metrics::BreakerState::HalfOpen,
            };
            m.breaker_is(s, true);
        }
        inner.state = state;
        inner.generation += 1;
        inner.counts = BreakerCounts::default();
        inner.expiry = match state {
            State::Closed => closed_expiry(&self.policy, now),
            State::Open => Some(now + self.policy.timeout),
            State::HalfOpen => None,
        };
    }

    /// As gobreaker, 0 means 1.
    fn max_requests(&self) -> u64 {
        u64::from(self.policy.max_requests.max(1))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state stays consistent even if a holder panicked: every change is one step.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn closed_expiry(policy: &CircuitBreakerPolicy, now: Instant) -> Option<Instant> {
    (policy.interval > Duration::ZERO).then(|| now + policy.interval)
}
