//! `middleware.http.ratelimit`: at most `maxRequestsPerSecond` (default 100) API requests a
//! second per caller address, as a token bucket (bursts up to one second's worth); over
//! the limit is 429. Buckets of callers silent for a second are full again, so they are
//! dropped whenever the map grows past [`SWEEP_AT`] entries: many distinct callers cannot
//! grow it without bound.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::ConnectInfo;
use http::StatusCode;
use http::request::Parts;

use super::HttpMiddleware;
use crate::api::ApiError;

/// How many callers' buckets are kept before the full ones are swept out.
const SWEEP_AT: usize = 1024;

#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    pub fn new(md: &trellis_core::Metadata) -> Result<Self, trellis_core::MetadataError> {
        let per_second = md.u64("maxRequestsPerSecond", 100)?;
        if per_second == 0 {
            return Err(md.error("maxRequestsPerSecond", Some("0"), "must be at least 1"));
        }
        Ok(Self {
            per_second: per_second as f64,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token for `caller` at `now`, if one is left.
    fn take(&self, caller: Option<IpAddr>, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= SWEEP_AT {
            // A bucket idle for a second has refilled: dropping it changes nothing.
            buckets.retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < 1.0);
        }
        let bucket = buckets.entry(caller).or_insert(Bucket {
            tokens: self.per_second,
            at: now,
        });
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.per_second);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[async_trait]
impl HttpMiddleware for RateLimit {
    async fn check(&self, req: &Parts) -> Result<(), ApiError> {
        let caller = req
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        if self.take(caller, Instant::now()) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ERR_TOO_MANY_REQUESTS",
            format!(
                "over the rate limit of {} requests per second (middleware.http.ratelimit)",
                self.per_second
            ),
        )
        .grpc(tonic::Code::ResourceExhausted))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_per_caller_refills_with_time() {
        let md = trellis_core::Metadata::from_pairs([("maxRequestsPerSecond", "2")]);
        let limit = RateLimit::new(&md).unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (
            Some(IpAddr::from([10, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 2])),
        );
        let t0 = Instant::now();
        assert!(limit.take(a, t0) && limit.take(a, t0));
        assert!(!limit.take(a, t0), "the third in the same instant");
        assert!(limit.take(b, t0), "another caller has its own bucket");
        assert!(
            limit.take(a, t0 + Duration::from_millis(500)),
            "half a second refills one"
        );
        assert!(!limit.take(a, t0 + Duration::from_millis(500)));
        // Many distinct callers: full buckets are swept, the map stays bounded.
        for i in 0..3000u32 {
            let ip = Some(IpAddr::from(i.to_be_bytes()));
            limit.take(ip, t0 + Duration::from_secs(2 + u64::from(i / 1000)));
        }
        let kept = limit.buckets.lock().map(|b| b.len()).unwrap_or_default();
        assert!(kept <= SWEEP_AT + 1000, "{kept} buckets kept");
        let zero = trellis_core::Metadata::from_pairs([("maxRequestsPerSecond", "0")]);
        assert!(RateLimit::new(&zero).is_err());
    }
}
