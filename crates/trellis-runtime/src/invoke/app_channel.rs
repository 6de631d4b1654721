//! The channel from a sidecar to its own app: pooled keep-alive HTTP/1.1 (or h2c) to
//! `host:port`, plus the app's health probe.

use std::time::Duration;

use http::{HeaderValue, Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::InvokeError;
use super::headers::{API_TOKEN, finish_response};
use crate::Body;
use crate::config::{AppChannelConfig, AppHealthCheck, AppProtocol};

#[derive(Debug)]
pub struct AppChannel {
    client: Client<HttpConnector, Body>,
    authority: String,
    /// The HTTP version requests to the app must carry (a peer's request arrives as HTTP/2).
    version: http::Version,
    token: Option<HeaderValue>,
}

impl AppChannel {
    pub fn new(config: &AppChannelConfig, app_api_token: Option<&str>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(3)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256);
        if config.protocol == AppProtocol::H2c {
            builder.http2_only(true);
        }
        let authority = if config.host.contains(':') {
            format!("[{}]:{}", config.host, config.port)
        } else {
            format!("{}:{}", config.host, config.port)
        };
        Self {
            client: builder.build(connector),
            authority,
            version: match config.protocol {
                AppProtocol::Http => http::Version::HTTP_11,
                AppProtocol::H2c => http::Version::HTTP_2,
            },
            token: app_api_token.and_then(|t| HeaderValue::from_str(t).ok()),
        }
    }

    /// Sends `req` (method, headers, body) to `path_and_query` on the app.
    pub async fn call(
        &self,
        path_and_query: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        *req.uri_mut() = self.uri(path_and_query)?;
        *req.version_mut() = self.version;
        match &self.token {
            Some(token) => {
                req.headers_mut().insert(API_TOKEN, token.clone());
            }
            None => {
                req.headers_mut().remove(API_TOKEN);
            }
        }
        match self.client.request(req).await {
            Ok(resp) => finish_response(resp)
                .await
                .map_err(|e| InvokeError::AppChannel(format!("reading the app's response: {e}"))),
            Err(error) => {
                let detail = match std::error::Error::source(&error) {
                    Some(cause) => format!("{error}: {cause}"),
                    None => error.to_string(),
                };
                Err(InvokeError::AppChannel(detail))
            }
        }
    }

    /// One health probe: `GET <path>` answered with 2xx within the timeout.
    pub async fn probe(&self, check: &AppHealthCheck) -> bool {
        let Ok(uri) = self.uri(&check.path) else {
            return false;
        };
        let mut req = Request::get(uri).body(Body::empty()).unwrap_or_default();
        if let Some(token) = &self.token {
            req.headers_mut().insert(API_TOKEN, token.clone());
        }
        match tokio::time::timeout(check.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp.status().is_success(),
            _ => false,
        }
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, InvokeError> {
        Uri::builder()
            .scheme("http")
            .authority(self.authority.as_str())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| InvokeError::InvalidMethod(path_and_query.to_string()))
    }
}
