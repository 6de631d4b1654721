//! The `dapr-app-id` dispatch: a request carrying that header is an invocation of the app
//! it names, whatever its path (Dapr's header form of service invocation).
//!
//! A tower service of its own rather than `axum::middleware::from_fn`, because every
//! request of the API passes through it and nearly all of them go on unchanged: `from_fn`
//! boxes the middleware's future and wraps the inner route in another boxed, cloned service
//! (`Next`) for each request, where this passes the route's own future through.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures_util::future::{BoxFuture, Either};

use super::invoke;
use crate::runtime::Runtime;

/// Adds [`AppIdDispatch`] around a route.
#[derive(Clone)]
pub(super) struct AppIdLayer(pub(super) Arc<Runtime>);

impl<S> tower::Layer<S> for AppIdLayer {
    type Service = AppIdDispatch<S>;

    fn layer(&self, inner: S) -> AppIdDispatch<S> {
        AppIdDispatch {
            inner,
            rt: self.0.clone(),
        }
    }
}

/// Sends a request with `dapr-app-id` to invocation, any other to `inner`.
#[derive(Clone)]
pub(super) struct AppIdDispatch<S> {
    inner: S,
    rt: Arc<Runtime>,
}

impl<S> tower::Service<Request> for AppIdDispatch<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let Some(target) = req.headers().get(crate::invoke::APP_ID) else {
            return Either::Left(self.inner.call(req));
        };
        // Not `to_str`: a value with non-ASCII bytes must be refused as an invalid id, not
        // ignored as if the header were absent.
        let target = String::from_utf8_lossy(target.as_bytes()).into_owned();
        let rt = self.rt.clone();
        Either::Right(Box::pin(async move {
            Ok(invoke::by_header(&rt, &target, req).await)
        }))
    }
}
