//! [`ApiError`] as a gRPC status: Dapr's code for the case, the message, and a
//! `google.rpc.ErrorInfo` detail (`reason`, domain `dapr.io`) as Dapr's richer errors carry.

use std::collections::HashMap;

use tonic::Status;
use tonic_types::{ErrorDetails, StatusExt};

use crate::api::ApiError;

/// The `ErrorInfo` domain of every error the sidecar itself produces.
pub const ERROR_DOMAIN: &str = "dapr.io";

pub fn to_status(err: ApiError) -> Status {
    let mut metadata = HashMap::new();
    metadata.insert("errorCode".to_string(), err.code.to_string());
    let details = ErrorDetails::with_error_info(err.grpc_reason(), ERROR_DOMAIN, metadata);
    Status::with_error_details(err.grpc_code(), err.message, details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn carries_code_reason_and_domain() {
        let err = ApiError::new(StatusCode::BAD_REQUEST, "ERR_STATE_STORE_NOT_FOUND", "nope")
            .reason("DAPR_STATE_NOT_FOUND");
        let status = to_status(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "nope");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "DAPR_STATE_NOT_FOUND");
        assert_eq!(info.domain, "dapr.io");
        assert_eq!(info.metadata["errorCode"], "ERR_STATE_STORE_NOT_FOUND");
    }

    #[test]
    fn explicit_grpc_codes_win_over_the_http_status() {
        let err = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ERR_X", "m")
            .grpc(tonic::Code::FailedPrecondition);
        assert_eq!(to_status(err).code(), tonic::Code::FailedPrecondition);
    }
}
