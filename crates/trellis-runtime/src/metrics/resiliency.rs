//! Resiliency events (`dapr_resiliency_*`): the series of one policed target, looked up
//! once when its policy is first made and kept in the policy and its circuit breaker, so a
//! retry, a timeout or a breaker's move is an atomic add.

use prometheus::{IntCounter, IntGauge};

use super::Metrics;

impl Metrics {
    /// The resiliency series of one policed target (see [`Policed`]).
    pub fn policed(&self, target: PolicyTarget<'_>) -> Option<Policed> {
        let m = self.0.as_ref()?;
        let f = &m.f;
        let pair = |name: Option<&str>, policy: &str| {
            let name = name?;
            Some((
                policy_counter(&f.resiliency_count, &target, [name, policy, ""])?,
                policy_counter(&f.resiliency_activations, &target, [name, policy, ""])?,
            ))
        };
        let breaker = |name: &str| {
            let state = |status: &str| {
                let labels = [name, "circuitbreaker", status];
                let gauge = f
                    .breaker_state
                    .get_metric_with_label_values(&policy_labels(&target, labels))
                    .ok()?;
                Some((
                    policy_counter(&f.resiliency_activations, &target, labels)?,
                    gauge,
                ))
            };
            Some((
                policy_counter(&f.resiliency_count, &target, [name, "circuitbreaker", ""])?,
                [state("closed")?, state("open")?, state("half-open")?],
            ))
        };
        Some(Policed {
            timeout: pair(target.timeout, "timeout"),
            retry: pair(target.retry, "retry"),
            breaker: target.breaker.and_then(breaker),
        })
    }
}

/// The labels of a resiliency series: `name`, `policy`, `status` of `[name, policy, status]`
/// and the target's.
fn policy_labels<'a>(
    target: &PolicyTarget<'a>,
    [name, policy, status]: [&'a str; 3],
) -> [&'a str; 5] {
    [name, policy, target.direction, target.target, status]
}

fn policy_counter(
    family: &prometheus::IntCounterVec,
    target: &PolicyTarget<'_>,
    labels: [&str; 3],
) -> Option<IntCounter> {
    family
        .get_metric_with_label_values(&policy_labels(target, labels))
        .ok()
}

/// Which resiliency target a [`Policed`] counts for, in Dapr's labels.
#[derive(Debug, Clone, Copy)]
pub struct PolicyTarget<'a> {
    /// The names of the target's policies (Trellis merges the Resiliency resources, so a
    /// policy, not its resource, names the series).
    pub timeout: Option<&'a str>,
    pub retry: Option<&'a str>,
    pub breaker: Option<&'a str>,
    /// `outbound` or `inbound`.
    pub direction: &'a str,
    /// `app_<id>`, `<block>_<component>` as in Dapr.
    pub target: &'a str,
}

/// The resiliency series of one target, looked up once: per policy it has, how often it
/// was applied (`dapr_resiliency_count`) and how often it acted
/// (`dapr_resiliency_activations_total`).
#[derive(Debug, Clone)]
pub struct Policed {
    timeout: Option<(IntCounter, IntCounter)>,
    retry: Option<(IntCounter, IntCounter)>,
    /// Applied; then closed, open, half-open: the activation counter and the state gauge.
    breaker: Option<(IntCounter, [(IntCounter, IntGauge); 3])>,
}

/// A breaker state's index in [`Policed`]'s series.
#[derive(Debug, Clone, Copy)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl Policed {
    /// A call under the target's policies starts.
    pub fn applied(&self) {
        for (applied, _) in [&self.timeout, &self.retry].into_iter().flatten() {
            applied.inc();
        }
        if let Some((applied, _)) = &self.breaker {
            applied.inc();
        }
    }

    /// The retry policy sends a failed call again.
    pub fn retried(&self) {
        if let Some((_, acted)) = &self.retry {
            acted.inc();
        }
    }

    /// The timeout cut an attempt.
    pub fn timed_out(&self) {
        if let Some((_, acted)) = &self.timeout {
            acted.inc();
        }
    }

    /// A breaker of this target is in `state`; `moved` counts it as an activation (not on
    /// creation).
    pub fn breaker_is(&self, state: BreakerState, moved: bool) {
        let Some((_, states)) = &self.breaker else {
            return;
        };
        for (i, (activations, gauge)) in states.iter().enumerate() {
            let now = i == state as usize;
            gauge.set(i64::from(now));
            if now && moved {
                activations.inc();
            }
        }
    }
}
