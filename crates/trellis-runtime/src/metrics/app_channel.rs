//! Requests from the sidecar to its app counted and timed (Dapr's `dapr_http_client_*`),
//! whatever they are for (invocations, deliveries, the subscription list) and whichever
//! channel carries them: the one [`AppChannel`] every such request goes through is wrapped
//! once where the sidecar opens it.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{Request, Response};

use super::{Metrics, NO_ANSWER};
use crate::Body;
use crate::config::AppHealthCheck;
use crate::invoke::{AppChannel, InvokeError};

#[derive(Debug)]
pub struct Metered {
    pub inner: Arc<dyn AppChannel>,
    pub metrics: Metrics,
}

/// `channel` counted, unless metrics are off.
pub fn wrap(channel: Arc<dyn AppChannel>, metrics: &Metrics) -> Arc<dyn AppChannel> {
    match metrics.is_enabled() {
        true => Arc::new(Metered {
            inner: channel,
            metrics: metrics.clone(),
        }),
        false => channel,
    }
}

#[async_trait]
impl AppChannel for Metered {
    async fn call(
        &self,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let method = req.method().clone();
        let started = Instant::now();
        let result = self.inner.call(path_and_query, req).await;
        let path = path_and_query.split('?').next().unwrap_or_default();
        let status = match &result {
            Ok(resp) => resp.status(),
            Err(_) => {
                let elapsed = started.elapsed();
                self.metrics.app_call(&method, path, NO_ANSWER, elapsed);
                return result;
            }
        };
        self.metrics
            .app_call(&method, path, status.as_str(), started.elapsed());
        result
    }

    async fn probe(&self, check: &AppHealthCheck) -> bool {
        self.inner.probe(check).await
    }
}
