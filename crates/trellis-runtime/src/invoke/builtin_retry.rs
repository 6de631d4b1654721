//! Dapr's built-in retries of sidecar-to-sidecar invocation (`DaprBuiltInServiceRetries`).
//!
//! Dapr retries a call that failed as *unavailable* three times, a second apart, without any
//! resiliency policy: in a multi-app run the caller's first request often goes out while
//! the callee's sidecar is not registered yet or its app is still starting, and apps are
//! written to rely on the call going through a moment later. Trellis does the same, but
//! only where the request provably never reached the callee's app, so a retry can never
//! run an operation twice:
//!
//! - no instance of the callee is registered (yet);
//! - no instance accepted the connection (the request was never sent);
//! - the callee's sidecar answered that it did not hand the request to its app (the app
//!   not listening yet, reported unhealthy, or the registry entry pointing at another app's
//!   sidecar), which it says with the [`UNDELIVERED`] response header.
//!
//! A request whose body was sent cannot be sent again unless this sidecar still has it: a
//! small body (read whole anyway, see `small.rs`) is kept for the retries; a streamed one
//! is retried only while it was never sent.
//!
//! As in Dapr, a Resiliency retry policy named `DaprBuiltInServiceRetries` replaces the
//! defaults (its `maxRetries`, and its `duration`, or for an exponential policy a wait
//! from 500 ms growing 1.5× per retry up to its `maxInterval`); what counts as
//! undelivered stays the same.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use crate::Body;

/// Set by a sidecar on an error response to a peer when the request never reached its
/// app; read (and removed) by the calling sidecar, never seen by apps.
pub const UNDELIVERED: HeaderName = HeaderName::from_static("trellis-undelivered");

/// The Resiliency retry policy that replaces the defaults.
pub const POLICY_NAME: &str = "DaprBuiltInServiceRetries";

/// How many times, and how far apart, an undelivered call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinRetries {
    pub retries: u32,
    /// The wait before the first retry (and every retry when `max_interval` is `None`).
    pub interval: Duration,
    /// Set for an exponential backoff: the wait grows 1.5× per retry up to this.
    pub max_interval: Option<Duration>,
}

impl Default for BuiltinRetries {
    /// Dapr's `DaprBuiltInServiceRetries`: 3 retries, 1 s apart.
    fn default() -> Self {
        Self {
            retries: 3,
            interval: Duration::from_secs(1),
            max_interval: None,
        }
    }
}

impl BuiltinRetries {
    /// The `DaprBuiltInServiceRetries` policy of the app's resiliency resources, if one
    /// defines it (the last one wins, as files load in order).
    pub fn from_resiliencies(resiliencies: &[trellis_resources::Resiliency]) -> Option<Self> {
        let policy = resiliencies
            .iter()
            .rev()
            .find_map(|r| r.policies.retries.get(POLICY_NAME))?;
        // -1 is "forever" in Dapr; a u32 of retries a second apart is longer than forever.
        let retries = u32::try_from(policy.max_retries).unwrap_or(u32::MAX);
        Some(match policy.policy {
            trellis_resources::BackoffPolicy::Constant => Self {
                retries,
                interval: policy.duration,
                max_interval: None,
            },
            trellis_resources::BackoffPolicy::Exponential => Self {
                retries,
                interval: Duration::from_millis(500),
                max_interval: Some(policy.max_interval),
            },
        })
    }

    /// The wait before retry number `n` (0 for the first).
    pub fn delay(&self, n: u32) -> Duration {
        match self.max_interval {
            None => self.interval,
            Some(max) => {
                let grown = self.interval.as_secs_f64() * 1.5f64.powi(n.min(64) as i32);
                Duration::try_from_secs_f64(grown).unwrap_or(max).min(max)
            }
        }
    }
}

/// A copy of a request with a small body, to send again after its body was consumed.
pub(super) struct Replay {
    method: http::Method,
    version: http::Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Replay {
    /// Keeps a copy of `req` when its body's length is known and at most `limit` (reading
    /// it whole when it is not in memory yet); `req` keeps an equal body. A body that fails
    /// to read is left for the send to report.
    pub(super) async fn capture(req: &mut Request<Body>, limit: u64) -> Option<Self> {
        let small = req.body().size_hint().exact().is_some_and(|n| n <= limit);
        if !small {
            return None;
        }
        let body = std::mem::take(req.body_mut());
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                tracing::debug!(%error, "reading a small request body failed");
                return None;
            }
        };
        *req.body_mut() = Body::from(bytes.clone());
        Some(Self {
            method: req.method().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body: bytes,
        })
    }

    /// The request again (its URI is set by the send, as for the first try).
    pub(super) fn request(&self) -> Request<Body> {
        let mut req = Request::new(Body::from(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resiliency(policy: &str) -> Vec<trellis_resources::Resiliency> {
        let text = format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  \
             policies:\n    retries:\n      {POLICY_NAME}:\n{policy}\n  targets: {{}}\n"
        );
        match trellis_resources::parse_str(std::path::Path::new("r.yaml"), &text) {
            Ok(r) => r.resiliencies,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_resiliency_policy_replaces_the_defaults() {
        assert_eq!(BuiltinRetries::from_resiliencies(&[]), None);
        let constant = BuiltinRetries::from_resiliencies(&resiliency(
            "        policy: constant\n        duration: 2s\n        maxRetries: 10",
        ));
        assert_eq!(
            constant,
            Some(BuiltinRetries {
                retries: 10,
                interval: Duration::from_secs(2),
                max_interval: None
            })
        );
        let forever = BuiltinRetries::from_resiliencies(&resiliency(
            "        policy: exponential\n        maxInterval: 2s",
        ));
        let Some(forever) = forever else {
            panic!("policy not found");
        };
        assert_eq!(forever.retries, u32::MAX);
        let waits: Vec<u128> = (0..5).map(|n| forever.delay(n).as_millis()).collect();
        assert_eq!(waits, [500, 750, 1125, 1687, 2000]);
        assert_eq!(BuiltinRetries::default().delay(7), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_small_body_is_kept_and_replayed_whole() {
        let mut req = Request::post("/x")
            .header("content-type", "text/plain")
            .body(Body::from("hello"))
            .unwrap_or_default();
        let replay = Replay::capture(&mut req, super::super::small::SMALL_BODY).await;
        let Some(replay) = replay else {
            panic!("a 5-byte body must be kept");
        };
        let first = req.into_body().collect().await.map(|c| c.to_bytes());
        assert_eq!(first.ok().as_deref(), Some(&b"hello"[..]));
        let again = replay.request();
        assert_eq!(again.method(), http::Method::POST);
        assert_eq!(again.headers()["content-type"], "text/plain");
        let body = again.into_body().collect().await.map(|c| c.to_bytes());
        assert_eq!(body.ok().as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn a_streamed_body_is_not_kept() {
        let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("a"))]);
        let mut req = Request::new(Body::from_stream(stream));
        assert!(
            Replay::capture(&mut req, super::super::small::SMALL_BODY)
                .await
                .is_none()
        );
    }
}
