//! `apps.<id>` resiliency policies around every invocation.
//!
//! This stands above the transport (`Invoker::send`: resolve, pick an instance, built-in
//! retries of requests that never left) and below every entry point (HTTP path and header
//! forms, gRPC `InvokeService`, the gRPC proxy), so that each call is judged once, as the
//! caller sees it, whichever API it came through; in Dapr too the endpoint policy wraps the
//! built-in service retries.
//!
//! An attempt fails when the transport fails, when the callee answers an HTTP status
//! outside 200–399, or a gRPC status other than OK in its headers (a trailers-only answer;
//! a status in the trailers of a streamed answer arrives after the call is handed back and
//! is not seen). When all attempts fail, the caller gets the last answer as it was, or the
//! policy's error (timeout, open breaker) as Dapr's `ERR_DIRECT_INVOKE`.
//!
//! Retrying needs the request again: a body of known length up to [`REPLAY_LIMIT`] is read
//! whole and kept while the retry policy may still use it. A streamed body (no length, or
//! a longer one) goes out once; when the policy would have retried it, the answer carries
//! [`NOT_RETRIED`] saying why it was not.

use http::{HeaderName, HeaderValue, Request, Response};
use trellis_nameres::AppRef;

use super::builtin_retry::Replay;
use super::{InvokeError, Invoker};
use crate::Body;
use crate::resiliency::{Failure, Verdict};

/// The largest request body kept to be sent again by a retry policy (Dapr's default
/// request size limit, 4 MiB): that much memory per call being retried.
pub const REPLAY_LIMIT: u64 = 4 << 20;

/// On an answer whose request a retry policy would have sent again but could not.
pub const NOT_RETRIED: HeaderName = HeaderName::from_static("trellis-not-retried");

/// The value of [`NOT_RETRIED`].
pub const NOT_RETRIED_WHY: HeaderValue =
    HeaderValue::from_static("the request body was streamed and cannot be sent again");

impl Invoker {
    /// Calls `path_and_query` (e.g. `/orders/1?x=y`) on app `target` with the method,
    /// headers and body of `req` (its URI is ignored), under the target's resiliency
    /// policy. The callee's response comes back as it was, minus hop-by-hop headers.
    /// Counted per target app here, once per call whatever the retries.
    pub async fn invoke(
        &self,
        target: &AppRef,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        if !self.metrics.is_enabled() {
            return self.invoke_policed(target, path_and_query, req).await;
        }
        let started = std::time::Instant::now();
        self.metrics.invoke_sent(&target.app_id);
        let result = self.invoke_policed(target, path_and_query, req).await;
        let code = result.as_ref().ok().map(Response::status);
        let status = code
            .as_ref()
            .map_or(crate::metrics::NO_ANSWER, http::StatusCode::as_str);
        let elapsed = started.elapsed();
        self.metrics
            .invoke_answered(&target.app_id, status, elapsed);
        result
    }

    async fn invoke_policed(
        &self,
        target: &AppRef,
        path_and_query: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let method = path_and_query
            .split('?')
            .next()
            .unwrap_or_default()
            .trim_start_matches('/');
        let Some(policy) = self.resiliency.app(&target.app_id, method) else {
            return self.send(target, path_and_query, req).await;
        };
        let replay = match policy.retries() {
            true => Replay::capture(&mut req, REPLAY_LIMIT).await,
            false => None,
        };
        let mut first = Some(req);
        let attempt = |_| {
            let req = first
                .take()
                .or_else(|| replay.as_ref().map(Replay::request));
            async move {
                match req {
                    Some(req) => self.send(target, path_and_query, req).await,
                    // Not reached: without a replay the policy makes one attempt.
                    None => Err(InvokeError::Failed {
                        app: target.clone(),
                        detail: "the request cannot be sent again".into(),
                    }),
                }
            }
        };
        let outcome = policy.run(replay.is_some(), attempt, judge).await;
        let result = outcome.result.unwrap_or_else(|s| Err(s.into()));
        match (result, outcome.not_replayable) {
            (Ok(mut resp), true) => {
                resp.headers_mut().insert(NOT_RETRIED, NOT_RETRIED_WHY);
                Ok(resp)
            }
            (Err(e), true) => Err(InvokeError::NotReplayable(Box::new(e))),
            (result, false) => result,
        }
    }
}

/// Whether one attempt's result counts as a failure for the policy.
fn judge(result: &Result<Response<Body>, InvokeError>) -> Verdict {
    let resp = match result {
        Ok(resp) => resp,
        // The caller's own mistake: sending it again changes nothing.
        Err(InvokeError::InvalidMethod(_)) => return Verdict::Success,
        Err(_) => return Verdict::Failure(Failure::Error),
    };
    let status = resp.status().as_u16();
    if !(200..=399).contains(&status) {
        return Verdict::Failure(Failure::Http(status));
    }
    let grpc = ["grpc-status", "dapr-grpc-status"]
        .iter()
        .find_map(|name| resp.headers().get(*name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    match grpc {
        Some(code) if code != 0 => Verdict::Failure(Failure::Grpc(code)),
        _ => Verdict::Success,
    }
}
