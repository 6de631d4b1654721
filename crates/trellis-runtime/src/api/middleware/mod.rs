//! HTTP middleware of Dapr's `Configuration.spec.httpPipeline` (on the sidecar's own HTTP
//! API) and `spec.appHttpPipeline` (on calls from the sidecar to its app), of
//! `middleware.http.*` components, run in the order a pipeline lists them, each able to
//! refuse a request before it goes further.
//!
//! A middleware is a component like any other: a type registered in `components.rs`, built
//! from its metadata by a factory. A pipeline's handlers name the components; a handler
//! naming a missing component, or a component of another type than the handler says, stops
//! the sidecar at start-up. Both pipelines are opened here by one [`Pipeline::open`]; a
//! component named in both is opened once for each (a rate limit counts each direction
//! apart). Where the API pipeline stands is in `layers.rs`; the app pipeline is a wrapper of
//! the app channel ([`app`]).

mod app;
mod bearer;
mod ratelimit;
mod requestsize;
mod routerchecker;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;

pub use app::on_app_channel;
pub use bearer::Bearer;
pub use ratelimit::RateLimit;
pub use requestsize::RequestSize;
pub use routerchecker::RouterChecker;

use crate::api::ApiError;
use crate::components::Registries;
use crate::config::SidecarConfig;
use crate::loading;
use crate::runtime::Runtime;

/// Who sent the request a middleware checks, as far as the pipeline running it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A client of the sidecar's HTTP API, by its address (`spec.httpPipeline`).
    Client(Option<IpAddr>),
    /// Another app (or this one) invoking the app, by the app id its sidecar stated (proven
    /// by its certificate with mTLS; empty when none was stated) (`spec.appHttpPipeline`).
    App(&'a str),
    /// This sidecar calling its app on its own account: a pub/sub delivery, a job, a
    /// configuration update, the subscription list (`spec.appHttpPipeline`).
    Sidecar,
}

/// One middleware: lets a request through, or refuses it with Dapr's error shape.
#[async_trait]
pub trait HttpMiddleware: Send + Sync + std::fmt::Debug {
    async fn check(&self, req: &Parts, caller: Caller<'_>) -> Result<(), ApiError>;
}

/// Which pipeline of the configuration to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calls {
    /// `spec.httpPipeline`: calls of the sidecar's HTTP API.
    ToSidecar,
    /// `spec.appHttpPipeline`: calls from the sidecar to its app over HTTP.
    ToApp,
}

impl Calls {
    /// The configuration field, as errors name it.
    fn field(self) -> &'static str {
        match self {
            Calls::ToSidecar => "spec.httpPipeline",
            Calls::ToApp => "spec.appHttpPipeline",
        }
    }
}

/// The middleware of one pipeline, in order.
#[derive(Debug, Default)]
pub struct Pipeline {
    stages: Vec<(String, Arc<dyn HttpMiddleware>)>,
}

impl Pipeline {
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Builds the pipeline `calls` names in the configuration from the app's middleware
    /// components.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
        calls: Calls,
    ) -> Result<Self, Vec<String>> {
        let spec = config.configuration.as_ref().and_then(|c| match calls {
            Calls::ToSidecar => c.spec.http_pipeline.as_ref(),
            Calls::ToApp => c.spec.app_http_pipeline.as_ref(),
        });
        let Some(spec) = spec else {
            return Ok(Self::default());
        };
        let field = calls.field();
        let (components, mut errors) = loading::select(config, "middleware", None);
        let mut stages = Vec::new();
        for handler in &spec.handlers {
            let Some(component) = components.iter().find(|c| c.meta.name == handler.name) else {
                errors.push(format!(
                    "{field}: no middleware component named {:?} for this app",
                    handler.name
                ));
                continue;
            };
            if !handler.type_name.is_empty()
                && !handler.type_name.eq_ignore_ascii_case(&component.type_name)
            {
                errors.push(format!(
                    "{field}: handler {:?} says type {:?}, but the component is {:?}",
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

    /// Runs the stages in order on a request's head; the first refusal ends it.
    pub async fn check(&self, req: &Parts, caller: Caller<'_>) -> Result<(), ApiError> {
        for (name, stage) in &self.stages {
            if let Err(refused) = stage.check(req, caller).await {
                tracing::debug!(
                    middleware = name,
                    method = %req.method,
                    path = req.uri.path(),
                    ?caller,
                    status = %refused.status,
                    "refused by middleware"
                );
                return Err(refused);
            }
        }
        Ok(())
    }
}

/// The axum middleware that runs `spec.httpPipeline` (see `layers.rs` for where it stands).
pub async fn run(State(rt): State<Arc<Runtime>>, req: Request, next: Next) -> Response {
    // The head only: a body is not `Sync`, and no middleware here reads one.
    let (parts, body) = req.into_parts();
    let caller = Caller::Client(
        parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip()),
    );
    if let Err(refused) = rt.http_pipeline.check(&parts, caller).await {
        return refused.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}
