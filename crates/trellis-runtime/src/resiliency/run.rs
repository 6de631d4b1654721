//! The one way a call runs under a policy, whatever the call is: an invocation, a state
//! operation, a publish, a delivery to the app.
//!
//! Nesting, innermost first, as in Dapr: the **timeout** cuts each attempt; the **circuit
//! breaker** counts each attempt (a timed-out one is a failure) and refuses attempts while
//! open; the **retry** policy repeats failed attempts with its backoff. A refusal by the
//! breaker ends the call at once (it is not retried: waiting out an open breaker with
//! retries would hammer it as soon as it half-opens).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::breaker::{CircuitBreaker, Refused};
use super::retry::{Failure, Retry, jitter};

/// The policies that apply to one target; any of them may be absent.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// What the policy is for (`apps.b`, `components.statestore.outbound`), for logs.
    pub target: String,
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub breaker: Option<Arc<CircuitBreaker>>,
    /// Where the policy's events are counted (none with metrics off).
    pub metrics: Option<crate::metrics::Policed>,
    /// Where the policy's events become spans of the call's trace (none without tracing).
    pub tracer: Option<trellis_trace::Tracer>,
}

/// Why a call ended without an answer of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    /// Dapr's words (Go's context error) first, which clients may match on.
    #[error("context deadline exceeded: no answer within the timeout policy's {}", trellis_core::duration::format(*.0))]
    TimedOut(Duration),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// How one attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure(Failure),
}

/// How a call under a policy ended.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The last attempt's result, or why there was none.
    pub result: Result<T, Stopped>,
    /// Attempts made (0 when the breaker refused the first).
    pub attempts: u32,
    /// The policy would have retried, but the request could not be sent again (its body
    /// was streamed, not kept).
    pub not_replayable: bool,
}

impl Policy {
    /// True when the policy may make more than one attempt.
    pub fn retries(&self) -> bool {
        self.retry.as_ref().is_some_and(Retry::retries)
    }

    /// Runs `attempt` (given the attempt number, 0 first) under the policy; `judge` tells
    /// a result that succeeded from one that failed. `replayable` says whether `attempt`
    /// can be called more than once.
    pub async fn run<T, F, Fut>(
        &self,
        replayable: bool,
        mut attempt: F,
        judge: impl Fn(&T) -> Verdict,
    ) -> Outcome<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut made = 0u32;
        if let Some(m) = &self.metrics {
            m.applied();
        }
        loop {
            let ticket = match self.breaker.as_deref().map(CircuitBreaker::allow) {
                Some(Err(refused)) => {
                    tracing::debug!(target = self.target, %refused, "call refused by the circuit breaker");
                    crate::trace::event(
                        self.tracer.as_ref(),
                        "resiliency/circuit-open",
                        &self.target,
                        |span| span.set_error(refused.to_string()),
                    );
                    return Outcome {
                        result: Err(refused.into()),
                        attempts: made,
                        not_replayable: false,
                    };
                }
                Some(Ok(ticket)) => Some(ticket),
                None => None,
            };
            let call = attempt(made);
            let result = match self.timeout {
                Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| {
                    if let Some(m) = &self.metrics {
                        m.timed_out();
                    }
                    crate::trace::event(
                        self.tracer.as_ref(),
                        "resiliency/timeout",
                        &self.target,
                        |span| {
                            span.set_attribute("trellis.resiliency.attempt", i64::from(made + 1));
                            span.set_error(Stopped::TimedOut(limit).to_string());
                        },
                    );
                    Stopped::TimedOut(limit)
                }),
                None => Ok(call.await),
            };
            made += 1;
            let failure = match &result {
                Ok(value) => match judge(value) {
                    Verdict::Success => None,
                    Verdict::Failure(f) => Some(f),
                },
                Err(_) => Some(Failure::Error),
            };
            if let Some(ticket) = ticket {
                ticket.record(failure.is_none());
            }
            let retry = match (failure, &self.retry) {
                (Some(f), Some(retry)) if retry.matches(f) && retry.allows(made) => retry,
                _ => {
                    return Outcome {
                        result,
                        attempts: made,
                        not_replayable: false,
                    };
                }
            };
            if !replayable {
                return Outcome {
                    result,
                    attempts: made,
                    not_replayable: true,
                };
            }
            let delay = retry.delay(made - 1, jitter());
            tracing::debug!(
                target = self.target,
                retry = retry.name,
                attempt = made,
                ?delay,
                "the call failed; retrying"
            );
            if let Some(m) = &self.metrics {
                m.retried();
            }
            crate::trace::event(
                self.tracer.as_ref(),
                "resiliency/retry",
                &self.target,
                |span| {
                    span.set_attribute("trellis.resiliency.policy", retry.name.clone());
                    // The attempt that failed; the retry is attempt `made + 1`.
                    span.set_attribute("trellis.resiliency.attempt", i64::from(made));
                    span.set_attribute(
                        "trellis.resiliency.delay_ms",
                        i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
                    );
                },
            );
            // The failed answer goes first (a pooled connection or stream is freed).
            drop(result);
            tokio::time::sleep(delay).await;
        }
    }
}
