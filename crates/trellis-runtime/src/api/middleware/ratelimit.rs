//! `middleware.http.ratelimit`: at most `maxRequestsPerSecond` (default 100) requests a
//! second per caller, as a token bucket (bursts up to one second's worth); over the limit
//! is 429. The caller is the client's address on the sidecar's API (`httpPipeline`), and the
//! calling app's id on calls to the app (`appHttpPipeline`), where the sidecar's own calls
//! (deliveries, jobs...) share one bucket. Buckets of callers silent for a second are full
//! again, so they are dropped whenever a map grows past [`SWEEP_AT`] entries: many distinct
//! callers cannot grow it without bound.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use http::StatusCode;
use http::request::Parts;

use super::{Caller, HttpMiddleware};
use crate::api::ApiError;

/// How many callers' buckets are kept before the full ones are swept out.
const SWEEP_AT: usize = 1024;

/// The key of the sidecar's own calls among app ids, which never contain a `/`.
const SIDECAR: &str = "/";

#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    buckets: Mutex<Buckets>,
}

/// Buckets by address for API clients, by app id for calls to the app. Keyed apart so that
/// looking up an app id needs no allocation once its bucket exists.
#[derive(Debug, Default)]
struct Buckets {
    by_address: HashMap<Option<IpAddr>, Bucket>,
    by_app: HashMap<String, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refills for the time since it was last used, then takes a token if one is left.
    fn take(&mut self, now: Instant, per_second: f64) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(per_second);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Takes a token from `key`'s bucket in `map`, making a full one for a new caller.
fn take_from<K, Q>(map: &mut HashMap<K, Bucket>, key: &Q, now: Instant, per_second: f64) -> bool
where
    K: Borrow<Q> + Hash + Eq,
    Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
{
    if let Some(bucket) = map.get_mut(key) {
        return bucket.take(now, per_second);
    }
    if map.len() >= SWEEP_AT {
        // A bucket idle for a second has refilled: dropping it changes nothing.
        map.retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < 1.0);
    }
    let full = Bucket {
        tokens: per_second,
        at: now,
    };
    map.entry(key.to_owned())
        .or_insert(full)
        .take(now, per_second)
}

impl RateLimit {
    pub fn new(md: &trellis_core::Metadata) -> Result<Self, trellis_core::MetadataError> {
        let per_second = md.u64("maxRequestsPerSecond", 100)?;
        if per_second == 0 {
            return Err(md.error("maxRequestsPerSecond", Some("0"), "must be at least 1"));
        }
        Ok(Self {
            per_second: per_second as f64,
            buckets: Mutex::new(Buckets::default()),
        })
    }

    /// Takes a token for `caller` at `now`, if one is left.
    fn take(&self, caller: Caller<'_>, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let per_second = self.per_second;
        match caller {
            Caller::Client(address) => {
                take_from(&mut buckets.by_address, &address, now, per_second)
            }
            Caller::App(app_id) => take_from(&mut buckets.by_app, app_id, now, per_second),
            Caller::Sidecar => take_from(&mut buckets.by_app, SIDECAR, now, per_second),
        }
    }
}

#[async_trait]
impl HttpMiddleware for RateLimit {
    async fn check(&self, _req: &Parts, caller: Caller<'_>) -> Result<(), ApiError> {
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

    fn limit(per_second: &str) -> RateLimit {
        let md = trellis_core::Metadata::from_pairs([("maxRequestsPerSecond", per_second)]);
        RateLimit::new(&md).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_bucket_per_caller_refills_with_time() {
        let limit = limit("2");
        let (a, b) = (
            Caller::Client(Some(IpAddr::from([10, 0, 0, 1]))),
            Caller::Client(Some(IpAddr::from([10, 0, 0, 2]))),
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
            let ip = Caller::Client(Some(IpAddr::from(i.to_be_bytes())));
            limit.take(ip, t0 + Duration::from_secs(2 + u64::from(i / 1000)));
        }
        let kept = limit
            .buckets
            .lock()
            .map(|b| b.by_address.len())
            .unwrap_or_default();
        assert!(kept <= SWEEP_AT + 1000, "{kept} buckets kept");
        let zero = trellis_core::Metadata::from_pairs([("maxRequestsPerSecond", "0")]);
        assert!(RateLimit::new(&zero).is_err());
    }

    #[test]
    fn calls_to_the_app_are_limited_per_calling_app_and_the_sidecar_is_one_caller() {
        let limit = limit("1");
        let t0 = Instant::now();
        assert!(limit.take(Caller::App("checkout"), t0));
        assert!(!limit.take(Caller::App("checkout"), t0));
        assert!(limit.take(Caller::App("billing"), t0), "another app");
        assert!(limit.take(Caller::Sidecar, t0), "deliveries have their own");
        assert!(!limit.take(Caller::Sidecar, t0), "one bucket for them all");
        assert!(
            limit.take(Caller::App("checkout"), t0 + Duration::from_secs(1)),
            "refilled"
        );
        // An address and an app never share a bucket, nor the sidecar and an app id.
        assert!(limit.take(Caller::Client(None), t0));
        assert!(limit.take(Caller::App(""), t0));
    }
}
