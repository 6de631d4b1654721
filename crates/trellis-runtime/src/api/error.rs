//! Dapr's error responses: `{"errorCode": "ERR_…", "message": "…"}` with the matching status
//! over HTTP, a status with a `google.rpc.ErrorInfo` detail over gRPC. Every error the
//! sidecar itself produces goes through [`ApiError`], which carries both codes so that each
//! operation decides its error once for both protocols.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use crate::invoke::InvokeError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The gRPC code where Dapr's differs from the one the HTTP status suggests.
    grpc: Option<tonic::Code>,
    /// The `ErrorInfo.reason` of Dapr's richer gRPC errors (`DAPR_STATE_NOT_FOUND`, ...),
    /// where Dapr has one; otherwise the error code.
    reason: Option<&'static str>,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "errorCode")]
    error_code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            grpc: None,
            reason: None,
        }
    }

    /// Sets the gRPC code Dapr answers this error with, where the HTTP status does not
    /// imply it (see [`ApiError::grpc_code`]).
    pub fn grpc(mut self, code: tonic::Code) -> Self {
        self.grpc = Some(code);
        self
    }

    /// Sets the reason of the gRPC `ErrorInfo` detail.
    pub fn reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The gRPC code: the one set with [`ApiError::grpc`], else the usual counterpart of
    /// the HTTP status (as Dapr pairs them in its predefined errors).
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        if let Some(code) = self.grpc {
            return code;
        }
        match self.status {
            StatusCode::BAD_REQUEST => Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::CONFLICT => Code::Aborted,
            StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
            StatusCode::NOT_IMPLEMENTED => Code::Unimplemented,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
            _ => Code::Internal,
        }
    }

    /// The `ErrorInfo.reason` of the gRPC error.
    pub fn grpc_reason(&self) -> &'static str {
        self.reason.unwrap_or(self.code)
    }

    /// Any invocation failure, as Dapr reports it: `failed to invoke, id: X, err: …`. (A body
    /// over the size limit is recognised by the invoke handler's flag, not here.)
    /// A resiliency timeout is gRPC's `DEADLINE_EXCEEDED`, as Dapr answers it.
    pub fn invoke(target: &str, err: &InvokeError) -> Self {
        let cause = match err {
            InvokeError::NotReplayable(inner) => inner,
            _ => err,
        };
        let status = match cause {
            InvokeError::InvalidMethod(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let e = Self::new(
            status,
            "ERR_DIRECT_INVOKE",
            format!("failed to invoke, id: {target}, err: {err}"),
        );
        match cause {
            InvokeError::Policy(crate::resiliency::Stopped::TimedOut(_)) => {
                e.grpc(tonic::Code::DeadlineExceeded)
            }
            _ => e,
        }
    }

    /// Dapr has no 413 of its own; it fails the body read with `ERR_BODY_READ`. Trellis keeps
    /// that code and message so clients matching on them keep working, and uses the status
    /// HTTP defines for the case.
    pub fn body_too_large(max_body: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ERR_BODY_READ",
            format!(
                "failed to read request body: stream too large: the limit is {} bytes; raise it with --dapr-http-max-request-size (MB)",
                max_body
            ),
        )
    }

    /// A target that is not an app id (`../x`, a URL, 70 characters...): refused before any
    /// resolver sees it. Dapr's invoke message around the broken rule; the rule's message
    /// already names the target (quoted, cut short), so the id is not repeated here.
    pub fn invalid_app_id(err: &trellis_nameres::InvalidAppId) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "ERR_DIRECT_INVOKE",
            format!("failed to invoke, err: {err}"),
        )
    }

    pub fn no_app_id() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ERR_DIRECT_INVOKE",
            "failed getting app id either from the URL path or the header dapr-app-id",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR_INTERNAL", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Wire {
            error_code: self.code,
            message: &self.message,
        })
        .unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serializes_as_dapr_does() {
        let resp = ApiError::no_app_id().into_response();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["errorCode"], "ERR_DIRECT_INVOKE");
        assert!(json["message"].as_str().unwrap().contains("dapr-app-id"));
    }
}
