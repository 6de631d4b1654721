//! HTTP middleware of the public API (Dapr's `Configuration.spec.httpPipeline` of
//! `middleware.http.*` components), run in the order the pipeline lists them, each able to
//! refuse a request before it reaches a route.
//!
//! A middleware is a component like any other: a type registered in `components.rs`, built
//! from its metadata by a factory. The pipeline's handlers name the components; a handler
//! naming a missing component, or a component of another type than the handler says, stops
//! the sidecar at start-up.

mod bearer;
mod ratelimit;
mod requestsize;
mod routerchecker;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;

pub use bearer::Bearer;
pub use ratelimit::RateLimit;
pub use requestsize::RequestSize;
pub use routerchecker::RouterChecker;

use crate::api::ApiError;
use crate::components::Registries;
use crate::config::SidecarConfig;
use crate::loading;
use crate::runtime::Runtime;

/// One middleware: lets a request through, or refuses it with Dapr's error shape.
#[async_trait]
pub trait HttpMiddleware: Send + Sync + std::fmt::Debug {
    async fn check(&self, req: &Parts) -> Result<(), ApiError>;
}

/// The middleware of `spec.httpPipeline`, in order.
#[derive(Debug, Default)]
pub struct Pipeline {
    stages: Vec<(String, Arc<dyn HttpMiddleware>)>,
}

impl Pipeline {
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Builds the pipeline the configuration names from the app's middleware components.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, Vec<String>> {
        let Some(spec) = config
            .configuration
            .as_ref()
            .and_then(|c| c.spec.http_pipeline.as_ref())
        else {
            return Ok(Self::default());
        };
        let (components, mut errors) = loading::select(config, "middleware", None);
        let mut stages = Vec::new();
        for handler in &spec.handlers {
            let Some(component) = components.iter().find(|c| c.meta.name == handler.name) else {
                errors.push(format!(
                    "spec.httpPipeline: no middleware component named {:?} for this app",
                    handler.name
                ));
                continue;
            };
            if !handler.type_name.is_empty()
                && !handler.type_name.eq_ignore_ascii_case(&component.type_name)
            {
                errors.push(format!(
                    "spec.httpPipeline: handler {:?} says type {:?}, but the component is {:?}",
                    handler.name, handler.type_name, component.type_name
                ));
                continue;
            }
            let built = async {
                let factory = registries
                    .middleware
                    .get(&component.type_name, &component.version)
                    .map_err(|e| format!("spec.type: {e}"))?;
                let metadata = trellis_core::Metadata::new(
                    &component.meta.name,
                    loading::plain_metadata(component)?,
                );
                loading::init(component, "middleware", factory(metadata)).await
            };
            match built.await {
                Ok(Some(m)) => stages.push((handler.name.clone(), m)),
                Ok(None) => {}
                Err(e) => errors.push(format!("{}: {e}", component.location)),
            }
        }
        if errors.is_empty() {
            Ok(Self { stages })
        } else {
            Err(errors)
        }
    }
}

/// The axum middleware that runs the pipeline (see `layers.rs` for where it stands).
pub async fn run(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    // The head only: a body is not `Sync`, and no middleware here reads one.
    let (parts, body) = req.into_parts();
    for (name, stage) in &rt.http_pipeline.stages {
        if let Err(refused) = stage.check(&parts).await {
            tracing::debug!(middleware = name, path = parts.uri.path(), status = %refused.status, "refused by middleware");
            return refused.into_response();
        }
    }
    next.run(Request::from_parts(parts, body)).await
}
