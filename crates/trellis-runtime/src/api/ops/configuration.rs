//! Configuration operations, with Dapr's errors, for both the HTTP and the gRPC API: read
//! items, subscribe to their changes (an HTTP subscription delivers them to the app, a gRPC
//! one down its stream), unsubscribe.
//!
//! One request names at most [`MAX_KEYS`] keys (Dapr sets no bound): a longer list is
//! refused with 400 `ERR_MALFORMED_REQUEST` (gRPC `INVALID_ARGUMENT`) before the store
//! sees it.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::StatusCode;
use tonic::Code;
use trellis_configuration::Item;

use crate::api::ApiError;
use crate::configuration::ConfigurationComponent;
use crate::configuration_updates::{self, ConfigSubscriptions, Registered};
use crate::runtime::Runtime;

/// The most keys one get or subscribe request may name.
pub const MAX_KEYS: usize = 1000;

/// The store `name`, with Dapr's errors when there is none.
fn store<'a>(rt: &'a Runtime, name: &str) -> Result<&'a Arc<ConfigurationComponent>, ApiError> {
    if rt.configuration.is_empty() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_CONFIGURATION_STORE_NOT_CONFIGURED",
            "configuration stores not configured",
        )
        .grpc(Code::FailedPrecondition));
    }
    rt.configuration.get(name).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_CONFIGURATION_STORE_NOT_FOUND",
            format!("failed finding configuration store with key {name}"),
        )
        .grpc(Code::InvalidArgument)
    })
}

fn check_keys(keys: &[String]) -> Result<(), ApiError> {
    if keys.len() > MAX_KEYS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_MALFORMED_REQUEST",
            format!(
                "too many keys: {} (a request names at most {MAX_KEYS})",
                keys.len()
            ),
        )
        .grpc(Code::InvalidArgument));
    }
    Ok(())
}

/// `GetConfiguration`: the items of `keys` in store `name` (every item when `keys` is
/// empty); keys the store does not have are left out.
pub async fn get(
    rt: &Runtime,
    name: &str,
    keys: &[String],
    metadata: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Item>, ApiError> {
    let store = store(rt, name)?;
    check_keys(keys)?;
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

/// `SubscribeConfiguration`: follows `keys` of store `name` (every item when empty) and
/// registers the subscription under a fresh id, until the answer is dropped.
pub async fn subscribe(
    rt: &Arc<Runtime>,
    name: &str,
    keys: &[String],
    metadata: &BTreeMap<String, String>,
) -> Result<Registered, ApiError> {
    let store = store(rt, name)?;
    check_keys(keys)?;
    start(rt, store, keys, metadata).await
}

async fn start(
    rt: &Arc<Runtime>,
    store: &ConfigurationComponent,
    keys: &[String],
    metadata: &BTreeMap<String, String>,
) -> Result<Registered, ApiError> {
    let subscription = store.store.subscribe(keys, metadata).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_CONFIGURATION_SUBSCRIBE",
            format!(
                "failed to subscribe {} from Configuration store {}: {e}",
                go_slice(keys),
                store.name
            ),
        )
        .grpc(Code::InvalidArgument)
    })?;
    Ok(ConfigSubscriptions::add(rt, &store.name, subscription))
}

/// The HTTP subscribe: as [`subscribe`], the changes going to the app's
/// `/configuration/<store>/<key>`; answers the subscription's id.
pub async fn subscribe_app(
    rt: &Arc<Runtime>,
    name: &str,
    keys: &[String],
    metadata: &BTreeMap<String, String>,
) -> Result<String, ApiError> {
    let store = store(rt, name)?;
    check_keys(keys)?;
    if rt.app_channel.is_none() {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ERR_APP_CHANNEL_NIL",
            "app channel is not initialized. cannot subscribe to configuration updates",
        ));
    }
    let registered = start(rt, store, keys, metadata).await?;
    let id = registered.id.clone();
    tokio::spawn(configuration_updates::deliver(
        rt.clone(),
        store.name.clone(),
        registered,
    ));
    Ok(id)
}

/// `UnsubscribeConfiguration`: stops subscription `id` (of store `name`, when given: the
/// HTTP route names one and checks it as Dapr does, the gRPC call's is ignored as Dapr
/// ignores it). `Ok(false)`: no such subscription ([`unsubscribe_failure`] says so).
pub fn unsubscribe(rt: &Runtime, name: Option<&str>, id: &str) -> Result<bool, ApiError> {
    if let Some(name) = name {
        store(rt, name)?;
    }
    Ok(rt.config_subscriptions.stop(id, name))
}

/// Dapr's message for an unsubscribe of an id that is not subscribed.
pub fn unsubscribe_failure(id: &str) -> String {
    format!(
        "failed to unsubscribe to configuration request {id}: subscription with id {id} does \
         not exist"
    )
}

/// `[a b]`, as Go's `%v` prints a slice of strings.
fn go_slice(keys: &[String]) -> String {
    format!("[{}]", keys.join(" "))
}
