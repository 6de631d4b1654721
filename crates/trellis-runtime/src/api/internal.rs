//! The sidecar-to-sidecar port: requests from peers, handed to this sidecar's app.
//!
//! Peers have already applied their own API checks; this side checks that the call is meant
//! for this app and that the app is healthy, then streams it to the app channel. With
//! mTLS, the caller's app id and namespace headers are replaced by the identity its
//! certificate proved (`server::PeerIdentity`); a header alone proves nothing. When the
//! request never reached the app (meant for another app, app unhealthy or not listening
//! yet) the error carries [`UNDELIVERED`], so the calling sidecar may send it again.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use tower::Service;

use super::error::ApiError;
use super::layers;
use crate::invoke::{CALLEE_APP_ID, CALLER_APP_ID, CALLER_NAMESPACE, InvokeError, UNDELIVERED};
use crate::runtime::Runtime;
use crate::server::PeerIdentity;

/// The internal port as served: the tracing span (with `spec.tracing`) over [`handle`].
///
/// A service rather than an axum `Router`: every request goes to the one handler, and a
/// router holding only a fallback still matched each path, stored its parameters in the
/// request and boxed a cloned service per call (about 3,000 instructions on every
/// invocation's callee side, docs/benchmarks.md, "The gRPC path").
pub fn internal_api(
    rt: Arc<Runtime>,
) -> impl Service<Request, Response = Response, Error = Infallible, Future = impl Send + 'static>
+ Clone
+ Send
+ 'static {
    // The callee's span of an invocation: the child of the calling sidecar's, and the
    // parent the app sees in its `traceparent`.
    let tracing = rt.tracer.clone().map(|tracer| {
        let app_id: Arc<str> = Arc::from(rt.app.app_id.as_str());
        crate::trace::ServeLayer::new(tracer, crate::trace::Naming::CallLocal(app_id))
    });
    tower::ServiceBuilder::new()
        .option_layer(tracing)
        // Catching a panic as the public API's catch-panic layer does: one call fails, the
        // connection and the sidecar stay up.
        .service(layers::Caught::new(rt, |rt, req| Box::pin(handle(rt, req))))
}

/// Counts the call per caller (callee side), then serves it.
async fn handle(rt: Arc<Runtime>, req: Request) -> Response {
    if !rt.metrics.is_enabled() {
        return serve(&rt, req).await;
    }
    // Read before serving: with mTLS, `serve` replaces the header with the proven identity.
    // (A header value shares its bytes: keeping it copies nothing.)
    let caller = match req.extensions().get::<PeerIdentity>() {
        Some(PeerIdentity(peer)) => peer.app_id_header.clone(),
        None => req.headers().get(CALLER_APP_ID).cloned(),
    };
    let resp = serve(&rt, req).await;
    let caller = caller.as_ref().and_then(|v| v.to_str().ok());
    let caller = caller.unwrap_or(crate::metrics::OTHER);
    rt.metrics.invoke_served(caller, resp.status().as_str());
    resp
}

async fn serve(rt: &Runtime, mut req: Request) -> Response {
    let me = &rt.app.app_id;
    if let Some(callee) = req.headers().get(CALLEE_APP_ID)
        && callee.as_bytes() != me.as_bytes()
    {
        // A stale registry entry can point at a port that now belongs to another sidecar.
        let callee = String::from_utf8_lossy(callee.as_bytes()).into_owned();
        let err = InvokeError::AppChannel(format!("this sidecar serves app {me}, not {callee}"));
        return undelivered(ApiError::invoke(&callee, &err));
    }
    let Some(channel) = rt.app_channel.as_ref() else {
        return ApiError::invoke(me, &InvokeError::NoAppChannel).into_response();
    };
    if !rt.health.app_healthy() {
        return undelivered(ApiError::invoke(me, &InvokeError::AppUnhealthy));
    }
    // With mTLS the caller is who its certificate says, whatever headers it sent.
    if let Some(PeerIdentity(peer)) = req.extensions().get::<PeerIdentity>().cloned() {
        let headers = req.headers_mut();
        for (name, value) in [
            (CALLER_APP_ID, &peer.app_id_header),
            (CALLER_NAMESPACE, &peer.namespace_header),
        ] {
            match value {
                Some(v) => headers.insert(name, v.clone()),
                None => headers.remove(name),
            };
        }
    }
    if let Some(acl) = &rt.acl
        && let Some(refused) = acl_refusal(acl, &req)
    {
        return refused;
    }
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied()
        && let Some(value) = forwarded_for(peer.ip())
    {
        req.headers_mut().append("x-forwarded-for", value);
    }
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    // A gRPC call of the app's own services (proxied by the caller's sidecar) goes to the
    // app as it is, whatever its channel would make of an invocation.
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if is_grpc {
        req.extensions_mut()
            .insert(crate::invoke::AppCall::GrpcProxy);
    }
    let (parts, body) = req.into_parts();
    let req = match crate::invoke::coalesce(&parts.headers, body).await {
        Ok(body) => Request::from_parts(parts, body),
        Err(err) => {
            let err = InvokeError::AppChannel(format!("reading the request body: {err}"));
            return ApiError::invoke(me, &err).into_response();
        }
    };
    match channel.call(&path_and_query, req).await {
        Ok(resp) => resp,
        Err(err @ InvokeError::AppNotReached(_)) => {
            tracing::debug!(error = %err, "the app is not reachable");
            undelivered(ApiError::invoke(me, &err))
        }
        Err(err) => {
            tracing::debug!(error = %err, "app channel call failed");
            ApiError::invoke(me, &err).into_response()
        }
    }
}

/// Applies `spec.accessControl` to a call from a verified peer: `None` lets it through, a
/// refusal is Dapr's 403 `ERR_DIRECT_INVOKE` (the caller's sidecar passes it on as it is).
fn acl_refusal(acl: &crate::acl::AccessControl, req: &Request) -> Option<Response> {
    let Some(PeerIdentity(peer)) = req.extensions().get::<PeerIdentity>() else {
        return Some(acl_denied("the caller has no verified identity".into()));
    };
    let caller = &peer.id;
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    let verb = (!grpc).then(|| req.method().as_str());
    let path = req.uri().path();
    let decision = acl.decide(caller, path, verb);
    tracing::debug!(caller = %caller, path, verb, allowed = decision.allowed, rule = decision.rule, "access control");
    if decision.allowed {
        return None;
    }
    Some(acl_denied(format!(
        "access control policy has denied access to id: {caller} operation: {path} verb: {}",
        verb.unwrap_or("none")
    )))
}

fn acl_denied(message: String) -> Response {
    ApiError::new(http::StatusCode::FORBIDDEN, "ERR_DIRECT_INVOKE", message)
        .grpc(tonic::Code::PermissionDenied)
        .into_response()
}

/// An error answer saying the app never saw the request.
fn undelivered(err: ApiError) -> Response {
    let mut resp = err.into_response();
    resp.headers_mut()
        .insert(UNDELIVERED, HeaderValue::from_static("1"));
    resp
}

/// `x-forwarded-for`'s value for `ip`. An IPv4 address, nearly every caller's, is written
/// by hand: through `Display` it cost some 1,300 instructions of every call this port serves.
fn forwarded_for(ip: std::net::IpAddr) -> Option<HeaderValue> {
    let std::net::IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).ok();
    };
    let mut text = [0u8; 15];
    let mut n = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[n] = b'.';
            n += 1;
        }
        for (place, shown) in [(100, octet >= 100), (10, octet >= 10), (1, true)] {
            if shown {
                text[n] = b'0' + octet / place % 10;
                n += 1;
            }
        }
    }
    HeaderValue::from_bytes(&text[..n]).ok()
}

#[cfg(test)]
mod tests {
    use super::forwarded_for;

    #[test]
    fn forwarded_for_writes_addresses_as_display_does() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.99.9",
            "::1",
            "fe80::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(forwarded_for(ip).unwrap().to_str().unwrap(), ip.to_string());
        }
    }
}
