//! Spreads calls over the instances of an app and keeps resolvers off the hot path.
//!
//! Resolution results are cached for a short time so that a busy sidecar does not hit the
//! registry (or DNS) on every request; a connection failure invalidates the entry so that a
//! dead instance disappears from rotation at once. Empty answers are never cached: an app
//! that starts a moment later must be reachable on the next call.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{AppRef, NameResolver, ResolveError};

/// How long a non-empty answer is trusted before the resolver is asked again.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Balancer {
    resolver: Box<dyn NameResolver>,
    ttl: Duration,
    cache: Mutex<HashMap<AppRef, Cached>>,
    next: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Cached {
    addrs: Arc<[SocketAddr]>,
    fetched: Instant,
}

/// The instances to try for one call, in order: round-robin start, then the others as
/// fail-over candidates.
#[derive(Debug, Clone)]
pub struct Candidates {
    addrs: Arc<[SocketAddr]>,
    start: usize,
}

impl Candidates {
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.addrs.len();
        (0..n).map(move |i| self.addrs[(self.start + i) % n])
    }
}

impl Balancer {
    pub fn new(resolver: Box<dyn NameResolver>) -> Self {
        Self::with_ttl(resolver, DEFAULT_CACHE_TTL)
    }

    pub fn with_ttl(resolver: Box<dyn NameResolver>, ttl: Duration) -> Self {
        Self {
            resolver,
            ttl,
            cache: Mutex::new(HashMap::default()),
            next: AtomicUsize::new(0),
        }
    }

    pub fn resolver_kind(&self) -> &'static str {
        self.resolver.kind()
    }

    /// The instances of `app`, starting at the next one in rotation.
    pub async fn candidates(&self, app: &AppRef) -> Result<Candidates, ResolveError> {
        let addrs = match self.cached(app) {
            Some(addrs) => addrs,
            None => {
                let mut fresh = self.resolver.resolve(app).await?;
                // A stable order makes round-robin fair across refreshes.
                fresh.sort_unstable();
                fresh.dedup();
                let addrs: Arc<[SocketAddr]> = fresh.into();
                if !addrs.is_empty() {
                    self.lock().insert(
                        app.clone(),
                        Cached {
                            addrs: addrs.clone(),
                            fetched: Instant::now(),
                        },
                    );
                }
                addrs
            }
        };
        let start = match addrs.len() {
            0 | 1 => 0,
            n => self.next.fetch_add(1, Ordering::Relaxed) % n,
        };
        Ok(Candidates { addrs, start })
    }

    /// Stops advertising this sidecar; see [`NameResolver::withdraw`].
    pub fn withdraw(&self) {
        self.resolver.withdraw();
    }

    /// Forgets what is known about `app`, after an instance failed to answer.
    pub fn invalidate(&self, app: &AppRef) {
        self.lock().remove(app);
    }

    fn cached(&self, app: &AppRef) -> Option<Arc<[SocketAddr]>> {
        let cache = self.lock();
        let entry = cache.get(app)?;
        (entry.fetched.elapsed() < self.ttl).then(|| entry.addrs.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AppRef, Cached>> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BoxFuture;
    use std::sync::atomic::AtomicUsize;

    #[derive(Debug)]
    struct Counting {
        calls: Arc<AtomicUsize>,
        addrs: Vec<SocketAddr>,
    }

    impl NameResolver for Counting {
        fn resolve<'a>(
            &'a self,
            _app: &'a AppRef,
        ) -> BoxFuture<'a, Result<Vec<SocketAddr>, ResolveError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let addrs = self.addrs.clone();
            Box::pin(async move { Ok(addrs) })
        }
        fn kind(&self) -> &'static str {
            "counting"
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn rotates_and_caches() {
        let calls = Arc::new(AtomicUsize::new(0));
        let balancer = Balancer::new(Box::new(Counting {
            calls: calls.clone(),
            addrs: vec![addr(2), addr(1)],
        }));
        let app = AppRef::new("a", "default").unwrap();
        let first: Vec<_> = balancer.candidates(&app).await.unwrap().iter().collect();
        let second: Vec<_> = balancer.candidates(&app).await.unwrap().iter().collect();
        assert_eq!(first.len(), 2);
        assert_ne!(
            first[0], second[0],
            "consecutive calls start on different instances"
        );
        assert_eq!(first[0], second[1]);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "second call served from cache"
        );
        balancer.invalidate(&app);
        balancer.candidates(&app).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn empty_answers_are_not_cached() {
        let calls = Arc::new(AtomicUsize::new(0));
        let balancer = Balancer::new(Box::new(Counting {
            calls: calls.clone(),
            addrs: vec![],
        }));
        let app = AppRef::new("a", "default").unwrap();
        assert!(balancer.candidates(&app).await.unwrap().is_empty());
        assert!(balancer.candidates(&app).await.unwrap().is_empty());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
