//! Secret operations: get one secret, get them all, with the store's access rule and
//! Dapr's error codes, for both the HTTP and the gRPC API.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use tonic::Code;
use trellis_secrets::Secret;

use crate::api::ApiError;
use crate::runtime::Runtime;
use crate::secrets::SecretComponent;

/// The store named `name`, with Dapr's errors when there is none.
pub fn store<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Arc<SecretComponent>, ApiError> {
    if rt.secrets.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_SECRET_STORES_NOT_CONFIGURED",
            "secret store is not configured",
        )
        .grpc(Code::FailedPrecondition));
    }
    rt.secrets.get(name).ok_or_else(|| {
        // Dapr answers 401 here, an odd status kept for clients that match on it.
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "ERR_SECRET_STORE_NOT_FOUND",
            format!("failed finding secret store with key {name}"),
        )
        .grpc(Code::InvalidArgument)
    })
}

fn denied(key: &str, store: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "ERR_PERMISSION_DENIED",
        format!("access denied by policy to get {key:?} from {store:?}"),
    )
    .grpc(Code::PermissionDenied)
}

/// The secret `key` of store `name`. `metadata` is the request's `metadata.*`.
pub async fn get(
    rt: &Runtime,
    name: &str,
    key: &str,
    metadata: BTreeMap<String, String>,
) -> Result<Secret, ApiError> {
    let store = store(rt, name)?;
    if !store.allows(key) {
        return Err(denied(key, name));
    }
    store.store.get(key, &metadata).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_SECRET_GET",
            format!("failed getting secret with key {key} from secret store {name}: {e}"),
        )
        .grpc(Code::Internal)
    })
}

/// Every secret of store `name` the app may read; the others are left out silently, as
/// Dapr does.
pub async fn bulk(
    rt: &Runtime,
    name: &str,
    metadata: BTreeMap<String, String>,
) -> Result<BTreeMap<String, Secret>, ApiError> {
    let store = store(rt, name)?;
    let mut all = store.store.bulk(&metadata).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_SECRET_GET",
            format!("failed getting secrets from secret store {name}: {e}"),
        )
        .grpc(Code::Internal)
    })?;
    all.retain(|key, _| store.allows(key));
    Ok(all)
}
