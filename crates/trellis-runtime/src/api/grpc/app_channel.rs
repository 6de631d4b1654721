//! The channel to a gRPC app (`--app-protocol grpc`): each HTTP-shaped request the sidecar
//! sends its app becomes a call of the app's `AppCallback` services, and the answer comes
//! back HTTP-shaped, so invocation and delivery stay the same for every app.
//!
//! | [`AppCall`] | RPC | answer |
//! |---|---|---|
//! | `Invoke` | `OnInvoke` (verb and query in the `HTTPExtension`, headers as metadata) | 200 with the data; an error status as its HTTP counterpart, the gRPC code in `dapr-grpc-status` |
//! | `ListSubscriptions` | `ListTopicSubscriptions` | the subscriptions as `/dapr/subscribe` JSON |
//! | `TopicEvent` | `OnTopicEvent` (the CloudEvent's attributes as fields) | `{"status": ...}` |
//! | `BulkTopicEvent` | `OnBulkTopicEvent`, else `OnBulkTopicEventAlpha1` | `{"statuses": [...]}` |
//! | `ConfigurationUpdate` | `OnInvoke` of `configuration/<store>/<key>`, as Dapr sends it | as `Invoke` |
//! | `JobEvent` | `OnJobEvent`, else `OnJobEventAlpha1` (the job's data as stored) | 200, or the error status |
//!
//! Health probes call `AppCallbackHealthCheck.HealthCheck`. An RPC the app does not
//! implement answers 404, which delivery treats as "drop" and `/dapr/subscribe` as "none".

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Status};
use trellis_proto::common::{self as pbc, http_extension::Verb};
use trellis_proto::runtime::app_callback_alpha_client::AppCallbackAlphaClient;
use trellis_proto::runtime::app_callback_client::AppCallbackClient;
use trellis_proto::runtime::app_callback_health_check_client::AppCallbackHealthCheckClient;

use super::convert;
use crate::Body;
use crate::config::{AppChannelConfig, AppHealthCheck};
use crate::invoke::{AppCall, AppChannel, AppH2, AppSendError, InvokeError};

/// The gRPC code of an app's error answer, for callers that speak gRPC themselves.
pub const GRPC_STATUS_HEADER: &str = "dapr-grpc-status";

#[derive(Debug)]
pub struct GrpcAppChannel {
    /// tonic's clients are made over this, one per call (a clone of an `Arc`).
    channel: Channel,
    token: Option<AsciiMetadataValue>,
}

impl GrpcAppChannel {
    pub fn new(config: &AppChannelConfig, app_api_token: Option<&str>) -> Self {
        // The address comes from flags that were validated; the fallback only guards
        // against surprises (calls still go to the address, and say where it was).
        let authority = crate::invoke::app_authority(config)
            .unwrap_or_else(|_| http::uri::Authority::from_static("localhost"));
        Self {
            channel: Channel(Arc::new(AppH2::new(&config.host, config.port, authority))),
            token: app_api_token.and_then(|t| AsciiMetadataValue::try_from(t).ok()),
        }
    }

    fn request<T>(&self, message: T, metadata: MetadataMap) -> tonic::Request<T> {
        let mut req = tonic::Request::from_parts(metadata, Default::default(), message);
        if let Some(token) = &self.token {
            req.metadata_mut().insert("dapr-api-token", token.clone());
        }
        req
    }

    async fn invoke(
        &self,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (parts, body) = req.into_parts();
        let data = read(body).await?;
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let message = pbc::InvokeRequest {
            method: path.trim_start_matches('/').to_string(),
            data: Some(prost_types::Any {
                type_url: String::new(),
                value: data.to_vec(),
            }),
            content_type,
            http_extension: Some(pbc::HttpExtension {
                verb: verb(&parts.method) as i32,
                querystring: query.to_string(),
            }),
        };
        let metadata = metadata_from(parts.headers);
        let mut client = AppCallbackClient::new(self.channel.clone());
        match client.on_invoke(self.request(message, metadata)).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let mut out =
                    Response::new(Body::from(resp.data.map(|d| d.value).unwrap_or_default()));
                if !resp.content_type.is_empty()
                    && let Ok(ct) = HeaderValue::from_str(&resp.content_type)
                {
                    out.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                Ok(out)
            }
            Err(status) => answer_of(&status),
        }
    }

    /// Forwards a gRPC call of the app's own services untouched: streams both ways,
    /// trailers included; dropping the call (the caller cancelled) resets it at the app.
    async fn proxy(
        &self,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (mut parts, body) = req.into_parts();
        parts.uri = http::Uri::try_from(path_and_query)
            .map_err(|_| InvokeError::InvalidMethod(path_and_query.to_string()))?;
        // `te: trailers` is hop-by-hop, so it was stripped on the way; gRPC servers want it.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
        match &self.token {
            Some(token) => {
                if let Ok(v) = HeaderValue::from_bytes(token.as_encoded_bytes()) {
                    parts.headers.insert("dapr-api-token", v);
                }
            }
            None => {
                parts.headers.remove("dapr-api-token");
            }
        }
        let req = Request::from_parts(parts, body);
        self.channel.0.send(req).await.map_err(|e| unreached(&e))
    }

    async fn list_subscriptions(&self) -> Result<Response<Body>, InvokeError> {
        let mut client = AppCallbackClient::new(self.channel.clone());
        match client
            .list_topic_subscriptions(self.request((), MetadataMap::new()))
            .await
        {
            Ok(resp) => {
                let subs: Vec<Value> = resp
                    .into_inner()
                    .subscriptions
                    .into_iter()
                    .map(convert::subscription_json)
                    .collect();
                Ok(json_response(StatusCode::OK, &Value::Array(subs)))
            }
            Err(status) => answer_of(&status),
        }
    }

    async fn topic_event(
        &self,
        path: &str,
        pubsub: &str,
        topic: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (event, parts) = topic_event_request(req, pubsub, topic, handler(path)).await?;
        let mut client = AppCallbackClient::new(self.channel.clone());
        match client
            .on_topic_event(self.request(event, metadata_from(parts.headers)))
            .await
        {
            Ok(resp) => {
                let status = convert::status_name(resp.into_inner().status);
                Ok(json_response(StatusCode::OK, &json!({ "status": status })))
            }
            Err(status) => answer_of(&status),
        }
    }

    async fn bulk_topic_event(
        &self,
        path: &str,
        pubsub: &str,
        topic: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let (parts, body) = req.into_parts();
        let data = read(body).await?;
        let Some(bulk) = convert::bulk_event(&data, pubsub, topic, handler(path)) else {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "not a bulk envelope"}),
            ));
        };
        let metadata = metadata_from(parts.headers);
        let mut client = AppCallbackClient::new(self.channel.clone());
        let mut result = client
            .on_bulk_topic_event(self.request(bulk.clone(), metadata.clone()))
            .await;
        if matches!(&result, Err(s) if s.code() == Code::Unimplemented) {
            // SDKs of Dapr before 1.17 serve bulk delivery only under its alpha name.
            let mut alpha = AppCallbackAlphaClient::new(self.channel.clone());
            result = alpha
                .on_bulk_topic_event_alpha1(self.request(bulk, metadata))
                .await;
        }
        match result {
            Ok(resp) => {
                let statuses: Vec<Value> = resp
                    .into_inner()
                    .statuses
                    .into_iter()
                    .map(|s| {
                        json!({"entryId": s.entry_id, "status": convert::status_name(s.status)})
                    })
                    .collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "statuses": statuses }),
                ))
            }
            Err(status) => answer_of(&status),
        }
    }

    /// A due job: `OnJobEvent`, or `OnJobEventAlpha1` for SDKs before Dapr 1.18.
    async fn job_event(
        &self,
        name: String,
        type_url: String,
        data: Bytes,
    ) -> Result<Response<Body>, InvokeError> {
        let event = trellis_proto::runtime::JobEventRequest {
            method: format!("job/{name}"),
            name,
            content_type: type_url.clone(),
            data: Some(prost_types::Any {
                type_url,
                value: data.to_vec(),
            }),
            http_extension: Some(pbc::HttpExtension {
                verb: Verb::Post as i32,
                querystring: String::new(),
            }),
        };
        let mut client = AppCallbackClient::new(self.channel.clone());
        let mut result = client
            .on_job_event(self.request(event.clone(), MetadataMap::new()))
            .await
            .map(|_| ());
        if matches!(&result, Err(s) if s.code() == Code::Unimplemented) {
            let mut alpha = AppCallbackAlphaClient::new(self.channel.clone());
            result = alpha
                .on_job_event_alpha1(self.request(event, MetadataMap::new()))
                .await
                .map(|_| ());
        }
        match result {
            Ok(()) => Ok(Response::new(Body::empty())),
            Err(status) => answer_of(&status),
        }
    }
}

#[async_trait]
impl AppChannel for GrpcAppChannel {
    async fn call(
        &self,
        path_and_query: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, InvokeError> {
        let call = req
            .extensions()
            .get::<AppCall>()
            .cloned()
            .unwrap_or(AppCall::Invoke);
        match call {
            // Dapr's gRPC channel sends configuration updates as invocations too.
            AppCall::Invoke | AppCall::ConfigurationUpdate { .. } => {
                self.invoke(path_and_query, req).await
            }
            AppCall::ListSubscriptions => self.list_subscriptions().await,
            AppCall::TopicEvent { pubsub, topic } => {
                self.topic_event(path_and_query, &pubsub, &topic, req).await
            }
            AppCall::BulkTopicEvent { pubsub, topic } => {
                self.bulk_topic_event(path_and_query, &pubsub, &topic, req)
                    .await
            }
            AppCall::GrpcProxy => self.proxy(path_and_query, req).await,
            AppCall::JobEvent {
                name,
                type_url,
                data,
            } => self.job_event(name, type_url, data).await,
        }
    }

    /// `AppCallbackHealthCheck.HealthCheck` answered OK within the timeout (the check's
    /// path means nothing to a gRPC app).
    async fn probe(&self, check: &AppHealthCheck) -> bool {
        let mut client = AppCallbackHealthCheckClient::new(self.channel.clone());
        let call = client.health_check(self.request((), MetadataMap::new()));
        matches!(tokio::time::timeout(check.timeout, call).await, Ok(Ok(_)))
    }
}

/// Reads one delivery (HTTP-shaped, as the delivery loop sends it) into the
/// `TopicEventRequest` gRPC receivers get: gRPC apps and streaming subscriptions alike.
pub(super) async fn topic_event_request(
    req: Request<Body>,
    pubsub: &str,
    topic: &str,
    path: &str,
) -> Result<
    (
        trellis_proto::runtime::TopicEventRequest,
        http::request::Parts,
    ),
    InvokeError,
> {
    let (parts, body) = req.into_parts();
    let data = read(body).await?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let event = convert::topic_event(&data, content_type, pubsub, topic, path);
    Ok((event, parts))
}

/// The route as the app registered it: delivery gives every route a leading `/` (and the
/// default handler the route `/`), gRPC apps name handlers without one.
fn handler(path: &str) -> &str {
    path.strip_prefix('/').unwrap_or(path)
}

async fn read(body: Body) -> Result<Bytes, InvokeError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| InvokeError::AppChannel(format!("reading the request body: {e}")))
}

fn verb(method: &http::Method) -> Verb {
    match *method {
        http::Method::GET => Verb::Get,
        http::Method::HEAD => Verb::Head,
        http::Method::POST => Verb::Post,
        http::Method::PUT => Verb::Put,
        http::Method::DELETE => Verb::Delete,
        http::Method::CONNECT => Verb::Connect,
        http::Method::OPTIONS => Verb::Options,
        http::Method::TRACE => Verb::Trace,
        http::Method::PATCH => Verb::Patch,
        _ => Verb::None,
    }
}

/// Request headers that mean something to the app, as gRPC metadata: the headers are
/// metadata already, so the map is kept and only what is not metadata leaves it (names and
/// values are neither parsed nor copied again, and no second map is built). ASCII metadata
/// is visible ASCII, so other values are left out.
fn metadata_from(mut headers: http::HeaderMap) -> MetadataMap {
    crate::invoke::headers::retain(&mut headers, |name, value| {
        is_metadata_name(name.as_str()) && value.to_str().is_ok()
    });
    MetadataMap::from_headers(headers)
}

/// Whether a request header of this name travels to a gRPC app as metadata.
fn is_metadata_name(name: &str) -> bool {
    !(matches!(
        name,
        "content-type"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "host"
            | "te"
            | "keep-alive"
            | "upgrade"
            | "user-agent"
    ) || name.starts_with("grpc-")
        // Binary metadata travels base64-encoded; an HTTP header is no such value.
        || name.ends_with("-bin"))
}

/// The transport's error under a status: the call never got an answer from the app. (The
/// [`Channel`]'s error, which tonic keeps as the status's source.)
fn send_error(status: &Status) -> Option<&AppSendError> {
    std::error::Error::source(status)?.downcast_ref::<AppSendError>()
}

/// A failed call's outcome: the app's error status as its answer, or, when the app never
/// answered, the error saying so.
fn answer_of(status: &Status) -> Result<Response<Body>, InvokeError> {
    match send_error(status) {
        Some(e) => Err(unreached(e)),
        None => Ok(error_response(status)),
    }
}

/// A call the app did not answer: not reached (nothing of it left this sidecar), or failed.
fn unreached(e: &AppSendError) -> InvokeError {
    let detail = format!("cannot reach the grpc app: {e}");
    match e {
        AppSendError::NotReached(_) => InvokeError::AppNotReached(detail),
        AppSendError::Failed(_) => InvokeError::AppChannel(detail),
    }
}

/// tonic's clients over the app's one HTTP/2 connection ([`AppH2`]). A request from tonic's
/// codec goes out as it is, its message taken whole when it is all there (a unary call's
/// one message is, at once), so that it leaves with its headers in one write.
#[derive(Debug, Clone)]
struct Channel(Arc<AppH2>);

impl tower::Service<Request<tonic::body::Body>> for Channel {
    type Response = Response<Body>;
    type Error = AppSendError;
    type Future = BoxFuture<'static, Result<Response<Body>, AppSendError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), AppSendError>> {
        // The connection is made, or waited for, in `send`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<tonic::body::Body>) -> Self::Future {
        let conn = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = crate::invoke::coalesce(&parts.headers, body)
                .await
                .map_err(|e| AppSendError::NotReached(format!("encoding the request: {e}")))?;
            conn.send(Request::from_parts(parts, body)).await
        })
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An app's error status as an HTTP answer: gRPC's HTTP counterpart of the code, the
/// status as JSON, and the code itself in a header for gRPC callers.
fn error_response(status: &Status) -> Response<Body> {
    let http = convert::http_status_for(status.code());
    let mut resp = json_response(
        http,
        &json!({"code": status.code() as i32, "message": status.message(), "details": []}),
    );
    resp.headers_mut()
        .insert(GRPC_STATUS_HEADER, HeaderValue::from(status.code() as i32));
    if let Ok(v) = HeaderValue::from_str(status.message()) {
        resp.headers_mut().insert("dapr-grpc-message", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    #[test]
    fn only_metadata_travels_to_the_app_and_bad_values_leave_alone() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("user-agent", "curl"),
            ("grpc-timeout", "1S"),
            ("trace-bin", "AAEC"),
            ("dapr-caller-app-id", "caller"),
            ("x-multi", "one"),
            ("x-multi", "two"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        // Not visible ASCII: that value goes, its name's other values stay.
        headers.append("x-multi", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        headers.append("x-multi", HeaderValue::from_static("three"));
        let md = metadata_from(headers).into_headers();
        let names: Vec<&str> = md.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["dapr-caller-app-id", "x-multi"]);
        let multi: Vec<&str> = md
            .get_all("x-multi")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(multi, ["one", "two", "three"]);
    }
}
