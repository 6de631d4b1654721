//! The innermost service of the gRPC API: each call goes to exactly one place, decided from
//! its path and `dapr-app-id` metadata alone.
//!
//! | the call | goes to |
//! |---|---|
//! | carries `dapr-app-id`, for a service the sidecar does not serve | [`super::proxy`] |
//! | an RPC the `Dapr` service declares | tonic's `DaprServer` |
//! | an RPC `TaskHubSidecarService` declares | tonic's `TaskHubSidecarServiceServer` |
//! | anything else | UNIMPLEMENTED, naming the building block ([`super::unimplemented`]) |
//!
//! Why by hand rather than an axum `Router` with middlewares: every gRPC call pays for
//! what stands here. A router matched each call's path twice (tonic's `Routes` are an axum
//! router of their own), and each `middleware::from_fn` boxed a cloned service and a
//! future per call; the proxy and the UNIMPLEMENTED answer were two of those. Here a call
//! of the `Dapr` service costs one split of its path and one lookup of the RPC name, and
//! its future is tonic's own (docs/benchmarks.md, "The gRPC path").

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Either, Map, Ready};
use tower::Service;
use trellis_proto::durabletask::task_hub_sidecar_service_server::TaskHubSidecarServiceServer;
use trellis_proto::runtime::dapr_server::DaprServer;

use super::{service::DaprApi, task_hub::TaskHub};
use crate::invoke::APP_ID;
use crate::runtime::Runtime;

type TonicResult = Result<http::Response<tonic::body::Body>, Infallible>;
type Answer = Result<Response, Infallible>;

/// A tonic server's future, its answer given axum's body type.
type Served<S> = Map<<S as Service<Request>>::Future, fn(TonicResult) -> Answer>;

/// See the module docs.
#[derive(Clone)]
pub struct Dispatch {
    rt: Arc<Runtime>,
    dapr: DaprServer<DaprApi>,
    task_hub: TaskHubSidecarServiceServer<TaskHub>,
}

impl Dispatch {
    pub fn new(rt: Arc<Runtime>) -> Self {
        // Messages over the limit the HTTP API applies (`--max-body-size`) are refused by
        // tonic with OUT_OF_RANGE before any operation runs.
        let dapr = DaprServer::new(DaprApi::new(rt.clone()))
            .max_decoding_message_size(rt.max_request_body)
            .max_encoding_message_size(usize::MAX);
        // The workflow SDKs' service, on the same port as in Dapr.
        let task_hub = TaskHubSidecarServiceServer::new(TaskHub::new(rt.clone()))
            .max_decoding_message_size(rt.max_request_body)
            .max_encoding_message_size(usize::MAX);
        Self { rt, dapr, task_hub }
    }
}

/// The service and RPC names of a call's path (`/<service>/<rpc>`).
pub(super) fn split(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix('/').and_then(|p| p.split_once('/'))
}

/// The services the sidecar serves itself; calls to them are never proxied.
pub(super) fn is_sidecar_service(service: &str) -> bool {
    service == trellis_proto::DAPR_SERVICE || service == trellis_proto::TASK_HUB_SERVICE
}

fn to_axum(result: TonicResult) -> Answer {
    result.map(|resp| resp.map(axum::body::Body::new))
}

impl Service<Request> for Dispatch {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Either<Served<DaprServer<DaprApi>>, Served<TaskHubSidecarServiceServer<TaskHub>>>,
        Either<Ready<Answer>, BoxFuture<'static, Answer>>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // tonic's servers are always ready, and so is the proxy.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (service, rpc) = split(req.uri().path()).unwrap_or_default();
        if !is_sidecar_service(service) && req.headers().contains_key(APP_ID) {
            let rt = self.rt.clone();
            return Either::Right(Either::Right(Box::pin(super::proxy::forward(rt, req))));
        }
        let to_axum = to_axum as fn(TonicResult) -> Answer;
        match service {
            trellis_proto::DAPR_SERVICE if trellis_proto::DAPR_RPCS.binary_search(&rpc).is_ok() => {
                Either::Left(Either::Left(self.dapr.call(req).map(to_axum)))
            }
            trellis_proto::TASK_HUB_SERVICE
                if trellis_proto::TASK_HUB_RPCS.binary_search(&rpc).is_ok() =>
            {
                Either::Left(Either::Right(self.task_hub.call(req).map(to_axum)))
            }
            // tonic would answer an RPC its service does not declare with a bare
            // UNIMPLEMENTED; this answer names the building block.
            _ => Either::Right(Either::Left(futures_util::future::ready(Ok(
                super::unimplemented(req.uri().path()),
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_sidecar_service, split};

    #[test]
    fn only_foreign_services_are_proxied() {
        let service = |path| split(path).map_or("", |(s, _)| s);
        assert!(is_sidecar_service(service(
            "/dapr.proto.runtime.v1.Dapr/GetState"
        )));
        assert!(is_sidecar_service(service("/TaskHubSidecarService/Hello")));
        assert!(!is_sidecar_service(service("/helloworld.Greeter/SayHello")));
        assert!(!is_sidecar_service(service("/")));
    }
}
