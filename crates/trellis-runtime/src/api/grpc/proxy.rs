//! gRPC proxying: an ordinary gRPC call to the sidecar that carries `dapr-app-id` metadata
//! and is not one of the sidecar's own services goes to that app's gRPC server, as Dapr's
//! gRPC service invocation does. The call travels as it is (streams both ways, trailers,
//! `grpc-timeout`) through the one [`Invoker`](crate::invoke::Invoker); when the caller
//! cancels, dropping the call resets it at every hop down to the app.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::Arc;
use trellis_nameres::AppRef;

use super::{grpc_response, to_status};
use crate::api::ApiError;
use crate::invoke::{APP_ID, AppCall};
use crate::runtime::Runtime;

/// Sends `req`, which carries `dapr-app-id`, to that app ([`super::dispatch`] decides which
/// calls come here).
pub async fn forward(rt: Arc<Runtime>, mut req: Request) -> Result<Response, Infallible> {
    let target = req
        .headers()
        .get(APP_ID)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let app = match AppRef::parse(&target, &rt.app.namespace) {
        Ok(app) => app,
        Err(e) => return Ok(grpc_response(to_status(ApiError::invalid_app_id(&e)))),
    };
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
    req.extensions_mut().insert(AppCall::GrpcProxy);
    // A unary call's message is here with its headers: forwarded whole, it leaves in the
    // same flush as the headers on the next hop.
    let (parts, body) = req.into_parts();
    let req = match crate::invoke::coalesce(&parts.headers, body).await {
        Ok(body) => Request::from_parts(parts, body),
        Err(e) => {
            let err = crate::invoke::InvokeError::AppChannel(format!("reading the request: {e}"));
            return Ok(grpc_response(to_status(ApiError::invoke(&target, &err))));
        }
    };
    Ok(match rt.invoker.invoke(&app, &path_and_query, req).await {
        // A status in the headers is a trailers-only answer (the app failed the call at
        // once): it must leave as one HEADERS frame that ends the stream, which an empty
        // body gives; the hops in between may have turned its end into a DATA frame.
        Ok(resp) if resp.headers().contains_key("grpc-status") => {
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, axum::body::Body::empty())
        }
        Ok(resp) => resp.into_response(),
        Err(err) => {
            tracing::debug!(target, error = %err, "grpc proxy call failed");
            grpc_response(to_status(ApiError::invoke(&target, &err)))
        }
    })
}
