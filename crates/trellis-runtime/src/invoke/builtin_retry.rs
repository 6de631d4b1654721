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

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request};
use http_body::Body as _;
use http_body_util::BodyExt as _;

use super::small::SMALL_BODY;
use crate::Body;

/// Set by a sidecar on an error response to a peer when the request never reached its
/// app; read (and removed) by the calling sidecar, never seen by apps.
pub const UNDELIVERED: HeaderName = HeaderName::from_static("trellis-undelivered");

/// How many times, and how far apart, an undelivered call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuiltinRetries {
    pub retries: u32,
    pub interval: Duration,
}

impl Default for BuiltinRetries {
    /// Dapr's `DaprBuiltInServiceRetries`: 3 retries, 1 s apart.
    fn default() -> Self {
        Self {
            retries: 3,
            interval: Duration::from_secs(1),
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
    /// Keeps a copy of `req` when its body is small and in memory; `req` keeps an equal
    /// body. A body that fails to read is left for the send to report.
    pub(super) async fn capture(req: &mut Request<Body>) -> Option<Self> {
        let small = req
            .body()
            .size_hint()
            .exact()
            .is_some_and(|n| n <= SMALL_BODY);
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

    #[tokio::test]
    async fn a_small_body_is_kept_and_replayed_whole() {
        let mut req = Request::post("/x")
            .header("content-type", "text/plain")
            .body(Body::from("hello"))
            .unwrap_or_default();
        let replay = Replay::capture(&mut req).await;
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
        assert!(Replay::capture(&mut req).await.is_none());
    }
}
