//! The channel from a sidecar to its own app, shared by invocation and pub/sub delivery.
//!
//! [`AppChannel`] is the one interface: every request to the app is HTTP-shaped (method,
//! path, headers, body), tagged with an [`AppCall`] saying what it is for. The HTTP channel
//! here ([`HttpAppChannel`]: keep-alive HTTP/1.1 from [`super::app_pool`], or h2c over one
//! multiplexed connection, to `host:port`) sends it as it is; the gRPC channel (`api::grpc::GrpcAppChannel`) maps each kind to the app's
//! `AppCallback` RPC and its answer back.

use async_trait::async_trait;
use http::{HeaderValue, Request, Response, Uri};

use super::InvokeError;
use super::app_h2::AppH2;
use super::app_pool::{AppPool, SendError};
use super::headers::{API_TOKEN, finish_response};
use crate::Body;
use crate::config::{AppChannelConfig, AppHealthCheck, AppProtocol};

/// What a request to the app is for, as a request extension; none means [`AppCall::Invoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppCall {
    /// A service invocation of the method at the request's path.
    Invoke,
    /// `GET /dapr/subscribe`: the app's programmatic subscriptions.
    ListSubscriptions,
    /// One event (a CloudEvent, or raw data) for the route at the request's path.
    TopicEvent { pubsub: String, topic: String },
    /// A `com.dapr.event.sent.bulk` envelope for the route at the request's path.
    BulkTopicEvent { pubsub: String, topic: String },
    /// A change of a configuration item the app subscribed to over HTTP (`POST
    /// /configuration/<store>/<key>`, Dapr's `UpdateEvent` JSON).
    ConfigurationUpdate { store: String, key: String },
    /// A gRPC call of one of the app's own services, proxied as it is (`dapr-app-id`
    /// metadata on a call to the sidecar's gRPC port).
    GrpcProxy,
    /// A due job, `POST /job/<name>` with its data as JSON; a gRPC app gets `OnJobEvent`
    /// with the stored data as it is (`type_url`, `data`).
    JobEvent {
        name: String,
        type_url: String,
        data: bytes::Bytes,
    },
}

/// A sidecar's way to its app.
#[async_trait]
pub trait AppChannel: Send + Sync + std::fmt::Debug {
    /// Sends `req` (method, headers, body; what it is for in its [`AppCall`] extension) to
    /// `path_and_query` on the app; the app's answer as an HTTP response.
    async fn call(
        &self,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError>;

    /// One health probe: true when the app answers healthy within the check's timeout.
    async fn probe(&self, check: &AppHealthCheck) -> bool;
}

/// Opens the channel `config.protocol` names.
pub fn open(
    config: &AppChannelConfig,
    app_api_token: Option<&str>,
) -> std::sync::Arc<dyn AppChannel> {
    match config.protocol {
        AppProtocol::Http | AppProtocol::H2c => {
            std::sync::Arc::new(HttpAppChannel::new(config, app_api_token))
        }
        AppProtocol::Grpc => {
            std::sync::Arc::new(crate::api::grpc::GrpcAppChannel::new(config, app_api_token))
        }
    }
}

/// The app's address as a URI authority (an IPv6 host in brackets); `Err` holds the
/// address that is none.
pub fn app_authority(config: &AppChannelConfig) -> Result<http::uri::Authority, String> {
    let authority = if config.host.contains(':') {
        format!("[{}]:{}", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    };
    http::uri::Authority::try_from(authority.as_str()).map_err(|_| authority)
}

#[derive(Debug)]
pub struct HttpAppChannel {
    transport: Transport,
    /// Parsed once: every request's URI shares its bytes. `Err` holds an address that is no
    /// URI authority, which every call then reports.
    authority: Result<http::uri::Authority, String>,
    token: Option<HeaderValue>,
}

#[derive(Debug)]
enum Transport {
    /// One call per connection at a time, from a pool of keep-alive connections. Requests
    /// carry an origin-form URI and a `Host` header.
    Http1(AppPool),
    /// Calls share one multiplexed connection ([`AppH2`]).
    H2c(AppH2),
}

impl HttpAppChannel {
    pub fn new(config: &AppChannelConfig, app_api_token: Option<&str>) -> Self {
        let authority = app_authority(config);
        let transport = match config.protocol {
            AppProtocol::Http => Transport::Http1(AppPool::new(
                &config.host,
                config.port,
                authority.as_ref().ok().map(|a| a.as_str()),
            )),
            AppProtocol::H2c | AppProtocol::Grpc => Transport::H2c(AppH2::new(
                &config.host,
                config.port,
                authority
                    .clone()
                    .unwrap_or_else(|_| http::uri::Authority::from_static("localhost")),
            )),
        };
        Self {
            transport,
            authority,
            token: app_api_token.and_then(|t| HeaderValue::from_str(t).ok()),
        }
    }

    /// The URI a request to `path_and_query` carries over this channel's transport.
    fn uri(&self, path_and_query: &str) -> Result<Uri, InvokeError> {
        let invalid = || InvokeError::InvalidMethod(path_and_query.to_string());
        if let Err(address) = &self.authority {
            return Err(InvokeError::AppChannel(format!(
                "the app address {address:?} is not host:port"
            )));
        }
        // Both transports take an origin-form URI: HTTP/2's `:authority` comes from the
        // connection ([`AppH2`]), HTTP/1.1's `Host` from the pool.
        let mut parts = http::uri::Parts::default();
        parts.path_and_query =
            Some(http::uri::PathAndQuery::try_from(path_and_query).map_err(|_| invalid())?);
        Uri::from_parts(parts).map_err(|_| invalid())
    }

    /// Sends `req` over the transport; the answer's head, its body streaming on.
    async fn send(&self, req: Request<Body>) -> Result<Response<Body>, SendError> {
        match &self.transport {
            Transport::Http1(pool) => pool.send(req).await,
            Transport::H2c(conn) => conn.send(req).await,
        }
    }
}

#[async_trait]
impl AppChannel for HttpAppChannel {
    async fn call(
        &self,
        path_and_query: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        *req.uri_mut() = self.uri(path_and_query)?;
        match &self.token {
            Some(token) => {
                req.headers_mut().insert(API_TOKEN, token.clone());
            }
            None => {
                req.headers_mut().remove(API_TOKEN);
            }
        }
        match self.send(req).await {
            Ok(resp) => finish_response(resp)
                .await
                .map_err(|e| InvokeError::AppChannel(format!("reading the app's response: {e}"))),
            Err(SendError::NotReached(detail)) => Err(InvokeError::AppNotReached(detail)),
            Err(SendError::Failed(detail)) => Err(InvokeError::AppChannel(detail)),
        }
    }

    /// `GET <path>` answered with 2xx within the timeout. The answer is read to its end, so
    /// that its connection can carry the next probe.
    async fn probe(&self, check: &AppHealthCheck) -> bool {
        let Ok(uri) = self.uri(&check.path) else {
            return false;
        };
        let mut req = Request::get(uri).body(Body::empty()).unwrap_or_default();
        if let Some(token) = &self.token {
            req.headers_mut().insert(API_TOKEN, token.clone());
        }
        let answer = async {
            let resp = self.send(req).await.ok()?;
            let healthy = resp.status().is_success();
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .ok()?;
            Some(healthy)
        };
        matches!(
            tokio::time::timeout(check.timeout, answer).await,
            Ok(Some(true))
        )
    }
}
