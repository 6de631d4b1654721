//! `spec.appHttpPipeline`: the middleware applied to requests from the sidecar to its app,
//! as a wrapper of the app channel, which every such request goes through (invocations
//! arriving on the internal port or made by the app of itself, pub/sub deliveries, the
//! subscription list, jobs, configuration updates), as Dapr applies it in its HTTP channel.
//!
//! A refusal becomes the app's answer, with Dapr's error body: the invoking caller gets it
//! as its callee's (it never says "undelivered", so it is not retried as a call that did
//! not arrive), and a delivery settles by it as by any status (a 429 is nacked and tried
//! again after the backoff). Nothing of a refused request reaches the app.
//!
//! Not wrapped: a gRPC app channel (the pipeline is HTTP middleware; Dapr ignores it for
//! gRPC apps too), gRPC calls proxied to the app's own services, and health probes. The
//! wrapper stands outside the app channel's metrics, so `dapr_http_client_*` counts only
//! requests that reached the app; refused invocations are counted by the internal port.
//! With no pipeline the channel is returned as it is: a call pays nothing for the feature.

use std::sync::Arc;

use async_trait::async_trait;
use axum::response::IntoResponse as _;
use http::request::Parts;
use http::{Request, Response};

use super::{Caller, Pipeline};
use crate::Body;
use crate::config::{AppHealthCheck, AppProtocol};
use crate::invoke::{AppCall, AppChannel, CALLER_APP_ID, InvokeError};

#[derive(Debug)]
struct Piped {
    inner: Arc<dyn AppChannel>,
    pipeline: Pipeline,
}

/// `channel` behind `pipeline`, unless the pipeline is empty or the app speaks gRPC.
pub fn on_app_channel(
    channel: Arc<dyn AppChannel>,
    pipeline: Pipeline,
    protocol: AppProtocol,
) -> Arc<dyn AppChannel> {
    if pipeline.is_empty() {
        return channel;
    }
    if protocol == AppProtocol::Grpc {
        tracing::warn!(
            "spec.appHttpPipeline is ignored: the app speaks grpc, and the pipeline is HTTP middleware"
        );
        return channel;
    }
    Arc::new(Piped {
        inner: channel,
        pipeline,
    })
}

/// Who a request to the app comes from; `None` for those the pipeline leaves alone.
fn caller(req: &Parts) -> Option<Caller<'_>> {
    match req.extensions.get::<AppCall>() {
        None | Some(AppCall::Invoke) => Some(Caller::App(
            req.headers
                .get(CALLER_APP_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default(),
        )),
        Some(AppCall::GrpcProxy) => None,
        Some(
            AppCall::ListSubscriptions
            | AppCall::TopicEvent { .. }
            | AppCall::BulkTopicEvent { .. }
            | AppCall::ConfigurationUpdate { .. }
            | AppCall::JobEvent { .. },
        ) => Some(Caller::Sidecar),
    }
}

#[async_trait]
impl AppChannel for Piped {
    async fn call(
        &self,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (parts, body) = req.into_parts();
        if let Some(caller) = caller(&parts)
            && let Err(refused) = self.pipeline.check(&parts, caller).await
        {
            return Ok(refused.into_response());
        }
        self.inner
            .call(path_and_query, Request::from_parts(parts, body))
            .await
    }

    async fn probe(&self, check: &AppHealthCheck) -> bool {
        self.inner.probe(check).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(kind: Option<AppCall>, caller: Option<&str>) -> Parts {
        let mut req = Request::post("/orders").body(()).unwrap();
        if let Some(kind) = kind {
            req.extensions_mut().insert(kind);
        }
        if let Some(id) = caller {
            req.headers_mut()
                .insert(CALLER_APP_ID, http::HeaderValue::from_str(id).unwrap());
        }
        req.into_parts().0
    }

    #[test]
    fn invocations_come_from_their_caller_and_the_rest_from_the_sidecar() {
        let parts = head(None, Some("checkout"));
        assert_eq!(caller(&parts), Some(Caller::App("checkout")));
        let parts = head(Some(AppCall::Invoke), None);
        assert_eq!(caller(&parts), Some(Caller::App("")), "no caller stated");
        let event = AppCall::TopicEvent {
            pubsub: "pubsub".into(),
            topic: "orders".into(),
        };
        // A delivery is the sidecar's, whatever headers the published message carried.
        let parts = head(Some(event), Some("checkout"));
        assert_eq!(caller(&parts), Some(Caller::Sidecar));
        let parts = head(Some(AppCall::ListSubscriptions), None);
        assert_eq!(caller(&parts), Some(Caller::Sidecar));
        let parts = head(Some(AppCall::GrpcProxy), Some("checkout"));
        assert_eq!(
            caller(&parts),
            None,
            "proxied gRPC is not HTTP middleware's"
        );
    }
}
