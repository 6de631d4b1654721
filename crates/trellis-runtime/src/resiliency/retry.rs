//! A retry policy at run time: how many attempts, the wait before each, and which failures
//! are worth another one.
//!
//! The waits are Dapr's (its `dapr/kit` retry package): `constant` waits `duration` every
//! time; `exponential` starts at 500 ms and grows 1.5× per retry up to `maxInterval`, each
//! wait randomised by ±50% so that callers failing together do not retry together.

use std::time::Duration;

use trellis_resources::{BackoffPolicy, RetryPolicy};

/// The first wait of an exponential policy.
const INITIAL_INTERVAL: Duration = Duration::from_millis(500);
/// How much each exponential wait grows.
const MULTIPLIER: f64 = 1.5;
/// How far an exponential wait is randomised either way, as a fraction of it.
const RANDOMIZATION: f64 = 0.5;

/// What went wrong with one attempt, as far as `matching` is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No status to look at: the call failed or was cut (transport error, timeout).
    Error,
    /// The callee answered with this HTTP status (not 2xx or 3xx).
    Http(u16),
    /// The callee answered with this gRPC status code (not OK).
    Grpc(u32),
}

/// A named retry policy, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub name: String,
    pub policy: RetryPolicy,
}

impl Retry {
    pub fn new(name: &str, policy: &RetryPolicy) -> Self {
        Self {
            name: name.to_string(),
            policy: policy.clone(),
        }
    }

    /// True when the policy allows a retry after `done` attempts (1 after the first).
    pub fn allows(&self, done: u32) -> bool {
        match self.policy.max_retries {
            n if n < 0 => true,
            n => i64::from(done) <= n,
        }
    }

    /// True when the policy retries at all (`maxRetries` is not 0).
    pub fn retries(&self) -> bool {
        self.policy.max_retries != 0
    }

    /// True when `failure` is one to retry. As in Dapr, a failure without a status is always
    /// retried, and a status is retried only when its list (HTTP or gRPC) is empty or
    /// names it.
    pub fn matches(&self, failure: Failure) -> bool {
        let Some(m) = &self.policy.matching else {
            return true;
        };
        match failure {
            Failure::Error => true,
            Failure::Http(code) => {
                m.http_status_codes.is_empty() || m.matches_http(u32::from(code))
            }
            Failure::Grpc(code) => m.grpc_status_codes.is_empty() || m.matches_grpc(code),
        }
    }

    /// The wait before retry number `n` (0 for the first) without randomisation.
    pub fn base_delay(&self, n: u32) -> Duration {
        match self.policy.policy {
            BackoffPolicy::Constant => self.policy.duration,
            BackoffPolicy::Exponential => {
                let max = self.policy.max_interval;
                let grown = INITIAL_INTERVAL.as_secs_f64() * MULTIPLIER.powi(n.min(200) as i32);
                Duration::try_from_secs_f64(grown).unwrap_or(max).min(max)
            }
        }
    }

    /// The wait before retry number `n`; `jitter` in `-1.0..=1.0` moves an exponential
    /// wait within ±50% (a constant wait is exact).
    pub fn delay(&self, n: u32, jitter: f64) -> Duration {
        let base = self.base_delay(n);
        match self.policy.policy {
            BackoffPolicy::Constant => base,
            BackoffPolicy::Exponential => {
                let factor = 1.0 + RANDOMIZATION * jitter.clamp(-1.0, 1.0);
                Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(base)
            }
        }
    }
}

/// A number in `-1.0..=1.0`, different each time: the randomisation of exponential waits.
/// (A UUID v4 is the random source the runtime already has.)
pub fn jitter() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits as f64 / u64::MAX as f64) * 2.0 - 1.0
}
