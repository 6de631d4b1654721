//! `InvokeService`: a gRPC caller invoking a method of another app (HTTP or gRPC).
//!
//! The call becomes the same `http` request the HTTP API builds (verb and query string from
//! the `HTTPExtension`, the data as the body, the caller's metadata as headers) and goes
//! through the one [`Invoker`](crate::invoke::Invoker). The callee's HTTP answer maps back
//! as Dapr maps it: 2xx is the response, anything else a gRPC error whose code follows
//! gRPC's HTTP mapping and whose `ErrorInfo` carries the HTTP status and the start of the
//! body; the status is also in the `dapr-http-status` header.

use std::collections::HashMap;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use trellis_nameres::AppRef;
use trellis_proto::common::{self as pbc, http_extension::Verb};
use trellis_proto::runtime as pb;

use super::status::{ERROR_DOMAIN, to_status};
use crate::api::ApiError;
use crate::runtime::Runtime;

/// Dapr puts the callee's HTTP status in this response header.
const HTTP_STATUS_HEADER: &str = "dapr-http-status";

/// Metadata that belongs to the gRPC call itself, not to the invoked method.
fn is_call_metadata(name: &str) -> bool {
    name.starts_with("grpc-")
        || matches!(
            name,
            "content-type" | "te" | "user-agent" | "dapr-api-token" | "dapr-app-id" | "host"
        )
}

fn verb(ext: Option<&pbc::HttpExtension>) -> Method {
    match ext.map(|e| e.verb()) {
        Some(Verb::Get) => Method::GET,
        Some(Verb::Head) => Method::HEAD,
        Some(Verb::Put) => Method::PUT,
        Some(Verb::Delete) => Method::DELETE,
        Some(Verb::Connect) => Method::CONNECT,
        Some(Verb::Options) => Method::OPTIONS,
        Some(Verb::Trace) => Method::TRACE,
        Some(Verb::Patch) => Method::PATCH,
        // No extension (a call meant for a gRPC app) is sent as a POST of the data.
        Some(Verb::Post) | Some(Verb::None) | None => Method::POST,
    }
}

fn invoke_error(target: &str, detail: impl std::fmt::Display) -> Status {
    to_status(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "ERR_DIRECT_INVOKE",
        format!("failed to invoke, id: {target}, err: {detail}"),
    ))
}

/// gRPC's mapping of an HTTP status to a code, as Dapr applies it to HTTP callees.
fn code_for_http(status: StatusCode) -> Code {
    match status.as_u16() {
        408 => Code::Cancelled,
        500 => Code::Unknown,
        400 => Code::Internal,
        504 => Code::DeadlineExceeded,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        403 => Code::PermissionDenied,
        401 => Code::Unauthenticated,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

pub async fn invoke_service(
    rt: &Runtime,
    request: Request<pb::InvokeServiceRequest>,
) -> Result<Response<pbc::InvokeResponse>, Status> {
    let (metadata, _, req) = request.into_parts();
    let target = req.id;
    if target.is_empty() {
        return Err(to_status(ApiError::no_app_id()));
    }
    // The one validation of ids, before any resolver runs: INVALID_ARGUMENT when it fails.
    let app = AppRef::parse(&target, &rt.app.namespace)
        .map_err(|e| to_status(ApiError::invalid_app_id(&e)))?;
    let message = req.message.unwrap_or_default();
    let mut path_and_query = String::with_capacity(message.method.len() + 16);
    if !message.method.starts_with('/') {
        path_and_query.push('/');
    }
    path_and_query.push_str(&message.method);
    if let Some(qs) = message
        .http_extension
        .as_ref()
        .map(|e| e.querystring.as_str())
        .filter(|q| !q.is_empty())
    {
        path_and_query.push('?');
        path_and_query.push_str(qs.trim_start_matches('?'));
    }
    let body = message.data.map(|d| d.value).unwrap_or_default();
    let length = HeaderValue::from(body.len());
    let mut http_req = http::Request::new(crate::Body::from(body));
    *http_req.method_mut() = verb(message.http_extension.as_ref());
    let headers = http_req.headers_mut();
    for (name, value) in metadata.into_headers().iter() {
        if !is_call_metadata(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    // The whole body is here: the app gets its length rather than a chunked stream.
    headers.insert(http::header::CONTENT_LENGTH, length);
    if !message.content_type.is_empty()
        && let Ok(ct) = HeaderValue::from_str(&message.content_type)
    {
        headers.insert(http::header::CONTENT_TYPE, ct);
    }

    let resp = rt
        .invoker
        .invoke(&app, &path_and_query, http_req)
        .await
        .map_err(|e| {
            tracing::debug!(target, error = %e, "grpc invocation failed");
            to_status(ApiError::invoke(&target, &e))
        })?;
    let (parts, body) = resp.into_parts();
    let data: Bytes = body
        .collect()
        .await
        .map_err(|e| invoke_error(&target, format_args!("reading the response: {e}")))?
        .to_bytes();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();

    // A gRPC app's own error status passes through as it was.
    if let Some(code) = parts
        .headers
        .get(super::app_channel::GRPC_STATUS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    {
        let message = parts
            .headers
            .get("dapr-grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        return Err(Status::new(Code::from(code), message));
    }
    if !parts.status.is_success() {
        let text = parts.status.canonical_reason().unwrap_or("Unknown");
        // Dapr keeps at most 63 bytes of the body in the error's metadata.
        let mut end = data.len().min(63);
        while end > 0 && std::str::from_utf8(&data[..end]).is_err() {
            end -= 1;
        }
        let detail = String::from_utf8_lossy(&data[..end]).into_owned();
        let info = HashMap::from([
            ("http.code".to_string(), parts.status.as_u16().to_string()),
            ("http.error_message".to_string(), detail),
        ]);
        let mut status = Status::with_error_details(
            code_for_http(parts.status),
            text,
            ErrorDetails::with_error_info(text, ERROR_DOMAIN, info),
        );
        if let Ok(v) = MetadataValue::try_from(parts.status.as_u16().to_string()) {
            status.metadata_mut().insert(HTTP_STATUS_HEADER, v);
        }
        return Err(status);
    }

    let mut response = Response::new(pbc::InvokeResponse {
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: data.to_vec(),
        }),
        content_type,
    });
    if let Ok(v) = MetadataValue::try_from(parts.status.as_u16().to_string()) {
        response.metadata_mut().insert(HTTP_STATUS_HEADER, v);
    }
    // The callee's headers come back as response metadata, as Dapr returns them.
    for (name, value) in parts.headers.iter() {
        if is_forwardable_header(name)
            && let Ok(v) = tonic::metadata::AsciiMetadataValue::try_from(value.as_bytes())
            && let Ok(key) = tonic::metadata::AsciiMetadataKey::from_bytes(name.as_str().as_bytes())
        {
            response.metadata_mut().append(key, v);
        }
    }
    Ok(response)
}

fn is_forwardable_header(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-type" | "content-length" | "transfer-encoding" | "connection" | "date"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_http_statuses_as_grpc_does() {
        assert_eq!(code_for_http(StatusCode::NOT_FOUND), Code::NotFound);
        assert_eq!(code_for_http(StatusCode::BAD_REQUEST), Code::Internal);
        assert_eq!(
            code_for_http(StatusCode::INTERNAL_SERVER_ERROR),
            Code::Unknown
        );
        assert_eq!(code_for_http(StatusCode::IM_A_TEAPOT), Code::Unknown);
    }

    #[test]
    fn verbs_default_to_post() {
        assert_eq!(verb(None), Method::POST);
        let get = pbc::HttpExtension {
            verb: Verb::Get as i32,
            querystring: String::new(),
        };
        assert_eq!(verb(Some(&get)), Method::GET);
    }
}
