//! Service invocation: getting a request from this sidecar to the app that should serve it.
//!
//! [`Invoker::invoke`] resolves the target app through the name resolver, picks an instance,
//! and sends the request to that instance's sidecar over a pooled HTTP/1.1 connection (a
//! small unary call, [`unary`]) or its multiplexed HTTP/2 connection ([`peers`]); the peer
//! hands it to its app through the [`AppChannel`]. A call to this sidecar's own app id goes
//! straight to the app channel.
//!
//! Retries: a request that never left this sidecar (connection refused, connection already
//! closed) is tried on the next instance. A call that provably never reached the callee's
//! app (no instance registered yet, none reachable, or the callee's sidecar saying it did
//! not deliver) is tried again a few times, a second apart, as Dapr's built-in retries do
//! ([`builtin_retry`]). Once a request may have reached the callee's app nothing is retried
//! by the transport; that is a resiliency policy's decision (`apps.<id>`, [`resilient`]),
//! made around it.
//!
//! Bodies are streamed in both directions, never buffered.

mod app_channel;
mod app_h2;
mod app_pool;
mod builtin_retry;
pub(crate) mod headers;
mod http1;
mod limit;
mod peers;
mod resilient;
mod small;
mod unary;

use http::{HeaderValue, Request, Response, Uri};
use trellis_nameres::{AppRef, Balancer, ResolveError};

pub use app_channel::{
    AppCall, AppChannel, HttpAppChannel, app_authority, open as open_app_channel,
};
pub use app_h2::AppH2;
pub use app_pool::SendError as AppSendError;
pub use builtin_retry::{BuiltinRetries, UNDELIVERED};
pub use headers::{APP_ID, CALLEE_APP_ID, CALLER_APP_ID, CALLER_NAMESPACE, strip_hop_by_hop};
pub use limit::LimitedBody;
pub use peers::{Keepalive, PeerPool, PeerTls};
pub use resilient::{NOT_RETRIED, NOT_RETRIED_WHY};
pub use small::coalesce;

use crate::Body;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("failed to resolve app {app}: {source}")]
    Resolve {
        app: AppRef,
        #[source]
        source: ResolveError,
    },
    #[error(
        "no running instance of app {app} found by the {resolver} name resolver; is it started with the same data directory or name resolution?"
    )]
    NotFound { app: AppRef, resolver: &'static str },
    #[error("no instance of app {app} is reachable (tried {tried}): {last_error}")]
    Unreachable {
        app: AppRef,
        tried: usize,
        last_error: String,
    },
    #[error("the call to app {app} failed after it was sent: {detail}")]
    Failed { app: AppRef, detail: String },
    #[error("app channel is not initialized: the sidecar was started without --app-port")]
    NoAppChannel,
    #[error("app is not in a healthy state")]
    AppUnhealthy,
    #[error("error invoking app channel: {0}")]
    AppChannel(String),
    /// The app could not be reached at all (connection refused): nothing of the request
    /// got to it, so the caller's sidecar may send it again.
    #[error("error invoking app channel: {0}")]
    AppNotReached(String),
    #[error("invalid method path {0:?}")]
    InvalidMethod(String),
    /// A resiliency policy ended the call: its timeout, or its open circuit breaker.
    #[error("{0}")]
    Policy(#[from] crate::resiliency::Stopped),
    /// The call failed, and its retry policy would have sent it again, but its streamed
    /// body could not be.
    #[error("{0}")]
    NotReplayable(Box<InvokeError>),
}

/// Who is calling: this sidecar's identity, stamped on outgoing requests.
#[derive(Debug, Clone)]
pub struct Caller {
    pub app: AppRef,
    app_id_header: HeaderValue,
    namespace_header: HeaderValue,
}

impl Caller {
    pub fn new(app: AppRef) -> Self {
        let header = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        Self {
            app_id_header: header(&app.app_id),
            namespace_header: header(&app.namespace),
            app,
        }
    }
}

#[derive(Debug)]
pub struct Invoker {
    caller: Caller,
    balancer: Balancer,
    peers: PeerPool,
    app: Option<std::sync::Arc<dyn AppChannel>>,
    retries: BuiltinRetries,
    resiliency: std::sync::Arc<crate::resiliency::Resiliency>,
    /// Invocations counted per target app (caller side).
    metrics: crate::metrics::Metrics,
}

/// How one try of a call to another app ended.
enum Attempt {
    /// An answer (or an error) to return as it is.
    Done(Result<Response<Body>, InvokeError>),
    /// Nothing reached the callee's app: `last` is what to return if no retry is left,
    /// `request` the request when it was never sent (else it is gone).
    Undelivered {
        last: Result<Response<Body>, InvokeError>,
        request: Option<Box<Request<Body>>>,
    },
}

impl Invoker {
    pub fn new(
        caller: Caller,
        balancer: Balancer,
        app: Option<std::sync::Arc<dyn AppChannel>>,
        keepalive: Keepalive,
        retries: BuiltinRetries,
        tls: Option<PeerTls>,
        resiliency: std::sync::Arc<crate::resiliency::Resiliency>,
    ) -> Self {
        Self {
            caller,
            balancer,
            peers: PeerPool::new(keepalive, tls),
            app,
            retries,
            resiliency,
            metrics: crate::metrics::Metrics::disabled(),
        }
    }

    /// Counts invocations (caller side) in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Stops advertising this sidecar to others (start of shutdown).
    pub fn withdraw(&self) {
        self.balancer.withdraw();
    }

    pub fn resolver_kind(&self) -> &'static str {
        self.balancer.resolver_kind()
    }

    /// One call of `path_and_query` on `target` without resiliency policies (see
    /// [`Invoker::invoke`]), with the built-in retries of undelivered requests.
    async fn send(
        &self,
        target: &AppRef,
        path_and_query: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        headers::prepare_outbound(req.headers_mut(), &self.caller, &target.app_id);
        if *target == self.caller.app {
            let app = self.app.as_ref().ok_or(InvokeError::NoAppChannel)?;
            return app.call(path_and_query, req).await;
        }

        // Only a small body can be sent again once sent; it is in memory already.
        let replay = match self.retries.retries {
            0 => None,
            _ => builtin_retry::Replay::capture(&mut req, small::SMALL_BODY).await,
        };
        let mut retries_left = self.retries.retries;
        loop {
            let (last, request) = match self.attempt(target, path_and_query, req).await {
                Attempt::Done(result) => return result,
                Attempt::Undelivered { last, request } => (last, request),
            };
            let again = request
                .map(|r| *r)
                .or_else(|| replay.as_ref().map(builtin_retry::Replay::request));
            let Some(again) = again.filter(|_| retries_left > 0) else {
                return last.map(without_undelivered);
            };
            let delay = self.retries.delay(self.retries.retries - retries_left);
            retries_left -= 1;
            tracing::debug!(
                app = %target,
                retries_left,
                ?delay,
                "the call did not reach the app; trying again (built-in retries)"
            );
            tokio::time::sleep(delay).await;
            req = again;
        }
    }

    /// One try: resolve `target`, send to the first instance that takes the request.
    async fn attempt(&self, target: &AppRef, path_and_query: &str, req: Request<Body>) -> Attempt {
        let candidates = match self.balancer.candidates(target).await {
            Ok(candidates) => candidates,
            Err(source) => {
                return Attempt::Done(Err(InvokeError::Resolve {
                    app: target.clone(),
                    source,
                }));
            }
        };
        if candidates.is_empty() {
            return Attempt::Undelivered {
                last: Err(InvokeError::NotFound {
                    app: target.clone(),
                    resolver: self.balancer.resolver_kind(),
                }),
                request: Some(Box::new(req)),
            };
        }

        let mut req = req;
        // Origin form; the transport adds the peer where its protocol wants it, and hands
        // back a request it did not send as it got it.
        *req.uri_mut() = match http::uri::PathAndQuery::try_from(path_and_query) {
            Ok(pq) => Uri::from(pq),
            Err(_) => {
                return Attempt::Done(Err(InvokeError::InvalidMethod(path_and_query.to_string())));
            }
        };
        let mut pending = Some(req);
        let mut last_error = String::new();
        let mut tried = 0;
        for addr in candidates.iter() {
            let Some(req) = pending.take() else { break };
            tried += 1;
            match self.peers.send(addr, target, req).await {
                Ok(resp) => {
                    let undelivered = resp.headers().contains_key(UNDELIVERED);
                    let result =
                        headers::finish_response(resp)
                            .await
                            .map_err(|e| InvokeError::Failed {
                                app: target.clone(),
                                detail: format!("reading the response: {e}"),
                            });
                    if undelivered {
                        // A stale entry or an app not up yet: look again next time.
                        self.balancer.invalidate(target);
                        return Attempt::Undelivered {
                            last: result,
                            request: None,
                        };
                    }
                    return Attempt::Done(result);
                }
                Err(peers::SendError::NotSent { request, error }) => {
                    tracing::debug!(%addr, app = %target, %error, "instance unreachable; trying the next one");
                    self.balancer.invalidate(target);
                    last_error = error;
                    pending = Some(*request);
                }
                Err(peers::SendError::Failed(detail)) => {
                    return Attempt::Done(Err(InvokeError::Failed {
                        app: target.clone(),
                        detail,
                    }));
                }
            }
        }
        Attempt::Undelivered {
            last: Err(InvokeError::Unreachable {
                app: target.clone(),
                tried,
                last_error,
            }),
            request: pending.map(Box::new),
        }
    }
}

/// The callee's marker is for this sidecar only.
fn without_undelivered(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut().remove(UNDELIVERED);
    resp
}
