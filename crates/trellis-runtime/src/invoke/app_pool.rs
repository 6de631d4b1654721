//! Pooled HTTP/1.1 connections from a sidecar to its own app.
//!
//! Every invocation, event, job and health probe for an HTTP/1.1 app goes through here, on
//! the callee's side of every call. hyper-util's pooled client did this before; keyed by
//! scheme and authority, it hashed that key three times per call (SipHash over the
//! authority), boxed the request's future and checked out through a future of its own:
//! about 10k instructions a call, an eighth of the callee sidecar's work
//! (docs/benchmarks.md, "The proxy floor, fourth pass"). A sidecar has one app, so its pool
//! is a list.
//!
//! * **Not sent is not reached.** hyper hands back a request it did not start writing. A
//!   reused connection that fails that way (the app closed it while idle) is replaced by a
//!   new one once; a request that never reached the app is [`SendError::NotReached`], which
//!   the caller may send elsewhere.
//! * **Streaming both ways.** An HTTP/1.1 connection streams either body; it carries the
//!   next call only once the answer has been read to its end ([`ReturningBody`]).
//! * **Idle connections close** after [`IDLE_TIMEOUT`], as the client before did, so a burst
//!   does not leave an app holding hundreds of idle sockets (a thread each, in some
//!   servers). A reaper task runs while any connection is idle. Idleness is measured on
//!   tokio's clock, so a test with a paused clock can see it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;

use trellis_core::error::describe;

use super::http1::{GiveBack, ReturningBody, handshake};
use crate::Body;

/// An idle connection this old is closed (the h2c channel's client keeps the same).
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept at most; one more is closed instead. As many as the job scheduler
/// triggers at once (`max_in_flight`): a burst of calls leaves its connections for the next
/// burst, where a smaller bound reopened the rest each time (at 256 the jobs bench's
/// triggers per second fell from 27k to 10k). hyper-util's client, before this pool, kept
/// every one; [`IDLE_TIMEOUT`] still closes them once the bursts stop.
const MAX_IDLE: usize = 4096;

/// How long opening a connection to the app may take (the h2c channel's too).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a call to the app failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The app has not seen a byte of the request.
    #[error("{0}")]
    NotReached(String),
    /// The request may have reached the app.
    #[error("{0}")]
    Failed(String),
}

/// Connections to one app, at `host:port`.
#[derive(Debug)]
pub(super) struct AppPool {
    host: String,
    port: u16,
    /// Set on requests that carry no `Host`.
    host_header: Option<HeaderValue>,
    idle: Arc<Mutex<IdleList>>,
}

#[derive(Default)]
struct IdleList {
    /// Most recently used last.
    conns: Vec<(SendRequest<Body>, Instant)>,
    /// A reaper task is running.
    reaping: bool,
}

impl std::fmt::Debug for IdleList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdleList({})", self.conns.len())
    }
}

impl AppPool {
    /// A pool for the app at `host:port`; `authority` is its `Host` header.
    pub(super) fn new(host: &str, port: u16, authority: Option<&str>) -> Self {
        Self {
            host: host.to_string(),
            port,
            host_header: authority.and_then(|a| HeaderValue::from_str(a).ok()),
            idle: Arc::default(),
        }
    }

    /// Sends `req` (origin-form URI) to the app and returns its answer as soon as its head
    /// has arrived; the body streams on.
    pub(super) async fn send(&self, mut req: Request<Body>) -> Result<Response<Body>, SendError> {
        if let Some(host) = &self.host_header {
            req.headers_mut()
                .entry(http::header::HOST)
                .or_insert_with(|| host.clone());
        }
        *req.version_mut() = http::Version::HTTP_11;
        // After a reused connection turns out closed, the next try opens a new one.
        let mut may_reuse = true;
        loop {
            let reused = may_reuse.then(|| self.checkout()).flatten();
            let was_reused = reused.is_some();
            let mut sender = match reused {
                Some(sender) => sender,
                None => Box::pin(self.connect())
                    .await
                    .map_err(SendError::NotReached)?,
            };
            if sender.ready().await.is_err() {
                if was_reused {
                    may_reuse = false;
                    continue;
                }
                return Err(SendError::NotReached(
                    "the new connection to the app closed at once".into(),
                ));
            }
            return match sender.try_send_request(req).await {
                Ok(resp) => Ok(resp.map(|body| {
                    let back = Back {
                        idle: self.idle.clone(),
                        sender,
                    };
                    ReturningBody::wrap(body, back)
                })),
                Err(mut error) => match error.take_message() {
                    Some(again) if was_reused => {
                        may_reuse = false;
                        req = again;
                        continue;
                    }
                    Some(_) => Err(SendError::NotReached(describe(&error.into_error()))),
                    None => Err(SendError::Failed(describe(&error.into_error()))),
                },
            };
        }
    }

    /// The most recently used idle connection that is still open and fresh.
    fn checkout(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((sender, since)) = idle.conns.pop() {
            if since.elapsed() < IDLE_TIMEOUT && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Body>, String> {
        let address = format!("{}:{}", self.host, self.port);
        let setup = async {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connecting to the app at {address}: {e}"))?;
            let _ = stream.set_nodelay(true);
            handshake(address.clone(), stream, ()).await
        };
        tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| format!("connecting to the app at {address} timed out"))?
    }
}

/// A connection on its way back to the idle list.
struct Back {
    idle: Arc<Mutex<IdleList>>,
    sender: SendRequest<Body>,
}

impl GiveBack for Back {
    fn give_back(self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.conns.len() >= MAX_IDLE || self.sender.is_closed() {
            return;
        }
        idle.conns.push((self.sender, Instant::now()));
        if !idle.reaping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            runtime.spawn(reap(Arc::downgrade(&self.idle)));
        }
    }
}

/// Closes connections idle for [`IDLE_TIMEOUT`] (dropping its sender ends an idle
/// connection's task, which closes the socket), until none is idle or the pool is gone.
async fn reap(idle: Weak<Mutex<IdleList>>) {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT / 4).await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.conns
            .retain(|(sender, since)| since.elapsed() < IDLE_TIMEOUT && !sender.is_closed());
        if idle.conns.is_empty() {
            idle.reaping = false;
            return;
        }
    }
}
