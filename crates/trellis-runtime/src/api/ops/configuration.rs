//! Configuration operations: read items from a configuration store, with Dapr's errors,
//! for both the HTTP and the gRPC API.

use std::collections::BTreeMap;

use http::StatusCode;
use tonic::Code;
use trellis_configuration::Item;

use crate::api::ApiError;
use crate::runtime::Runtime;

/// `GetConfiguration`: the items of `keys` in store `name` (every item when `keys` is
/// empty); keys the store does not have are left out.
pub async fn get(
    rt: &Runtime,
    name: &str,
    keys: &[String],
    metadata: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Item>, ApiError> {
    if rt.configuration.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
            "configuration stores not configured",
        )
        .grpc(Code::FailedPrecondition));
    }
    let Some(store) = rt.configuration.get(name) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_CONFIGURATION_STORE_NOT_FOUND",
            format!("failed finding configuration store with key {name}"),
        )
        .grpc(Code::InvalidArgument));
    };
    store.store.get(keys, metadata).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_CONFIGURATION_GET",
            // Dapr formats the key list as Go prints a slice.
            format!(
                "failed to get {} from Configuration store {name}: {e}",
                go_slice(keys)
            ),
        )
        .grpc(Code::Internal)
    })
}

/// `[a b]`, as Go's `%v` prints a slice of strings.
fn go_slice(keys: &[String]) -> String {
    format!("[{}]", keys.join(" "))
}
