//! Lock operations: try to acquire a lease, release it, with Dapr's validation and error
//! codes, for both the HTTP and the gRPC API.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tonic::Code;
use trellis_lock::{TryLock, UnlockStatus};

use crate::api::ApiError;
use crate::lock::LockComponent;
use crate::runtime::Runtime;

/// The name of the Trellis extension that carries an acquisition's fencing token: a
/// response header over HTTP, response metadata over gRPC.
pub const FENCING_TOKEN_HEADER: &str = "trellis-fencing-token";

/// The store named `name`, with Dapr's errors when there is none.
pub fn store<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Arc<LockComponent>, ApiError> {
    if rt.lock.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_LOCK_STORE_NOT_CONFIGURED",
            "lock store is not configured",
        )
        .grpc(Code::FailedPrecondition));
    }
    rt.lock.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_LOCK_STORE_NOT_FOUND",
            format!("lock store {name} not found"),
        )
        .grpc(Code::InvalidArgument)
    })
}

fn malformed(msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "ERR_MALFORMED_REQUEST", msg).grpc(Code::InvalidArgument)
}

/// Dapr's checks, in its order, of the names both lock operations take.
fn check_names(name: &str, resource: &str, owner: &str) -> Result<(), ApiError> {
    if resource.is_empty() {
        return Err(malformed(format!(
            "ResourceId is empty in lock store {name}"
        )));
    }
    if owner.is_empty() {
        return Err(malformed(format!(
            "LockOwner is empty in lock store {name}"
        )));
    }
    Ok(())
}

/// `TryLockAlpha1`: whether `owner` now holds `resource` in store `name`, and if so the
/// acquisition's fencing token.
pub async fn try_lock(
    rt: &Runtime,
    name: &str,
    resource: &str,
    owner: &str,
    expiry_in_seconds: i64,
) -> Result<TryLock, ApiError> {
    let store = store(rt, name)?;
    check_names(name, resource, owner)?;
    let Some(seconds) = u64::try_from(expiry_in_seconds).ok().filter(|s| *s > 0) else {
        return Err(malformed(format!(
            "ExpiryInSeconds is not positive in lock store {name}"
        )));
    };
    store
        .store
        .try_lock(&store.key(resource), owner, Duration::from_secs(seconds))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_TRY_LOCK",
                format!("failed to try acquiring lock: {e}"),
            )
            .grpc(Code::Internal)
        })
}

/// `UnlockAlpha1`: releases `resource` in store `name` if `owner` holds it.
pub async fn unlock(
    rt: &Runtime,
    name: &str,
    resource: &str,
    owner: &str,
) -> Result<UnlockStatus, ApiError> {
    let store = store(rt, name)?;
    check_names(name, resource, owner)?;
    store
        .store
        .unlock(&store.key(resource), owner)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ERR_UNLOCK",
                format!("failed to release lock: {e}"),
            )
            .grpc(Code::Internal)
        })
}

/// Dapr's number for an unlock status (`UnlockResponse.Status`).
pub fn status_code(status: UnlockStatus) -> i32 {
    match status {
        UnlockStatus::Success => 0,
        UnlockStatus::LockDoesNotExist => 1,
        UnlockStatus::LockBelongsToOthers => 2,
    }
}
