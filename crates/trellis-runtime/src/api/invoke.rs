//! `/v1.0/invoke/{app-id}/method/{method}` and the `dapr-app-id` header form.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_LENGTH;
use std::sync::atomic::AtomicBool;

use crate::invoke::{InvokeError, LimitedBody};
use trellis_nameres::AppRef;

use super::error::ApiError;
use crate::Body;
use crate::runtime::Runtime;

pub(super) const INVOKE_PREFIX: &str = "/v1.0/invoke/";

/// The path form: the target and method come from the URL.
pub async fn by_path(State(rt): State<Arc<Runtime>>, req: Request) -> Response {
    let Some((target, method)) = split_invoke_path(req.uri().path()) else {
        return ApiError::no_app_id().into_response();
    };
    let target = target.into_owned();
    let method = method.to_string();
    invoke(&rt, &target, &method, req).await
}

/// The header form: `dapr-app-id: target`, and the whole path is the method.
pub async fn by_header(rt: &Runtime, target: &str, req: Request) -> Response {
    let method = req.uri().path().trim_start_matches('/').to_string();
    invoke(rt, target, &method, req).await
}

async fn invoke(rt: &Runtime, target: &str, method: &str, req: Request) -> Response {
    if target.is_empty() {
        return ApiError::no_app_id().into_response();
    }
    // The one check of the target, before anything (the resolver above all) sees it. When
    // `http://` targets (HTTPEndpoint) arrive they are told apart before this line.
    let app = match AppRef::parse(target, &rt.app.namespace) {
        Ok(app) => app,
        Err(err) => {
            tracing::debug!(error = %err, "invocation target refused");
            drain(req.into_body()).await;
            return ApiError::invalid_app_id(&err).into_response();
        }
    };
    let (req, exceeded) = match limit_body(req, rt.max_request_body) {
        Ok(limited) => limited,
        Err((err, body)) => {
            drain(body).await;
            return err.into_response();
        }
    };
    let (parts, body) = req.into_parts();
    let req = match crate::invoke::coalesce(&parts.headers, body).await {
        Ok(body) => Request::from_parts(parts, body),
        Err(err) => {
            let err = ApiError::new(
                http::StatusCode::BAD_REQUEST,
                "ERR_BODY_READ",
                format!("failed to read request body: {err}"),
            );
            return err.into_response();
        }
    };
    let mut path_and_query = String::with_capacity(method.len() + 16);
    path_and_query.push('/');
    path_and_query.push_str(method);
    if let Some(query) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    match rt.invoker.invoke(&app, &path_and_query, req).await {
        Ok(resp) => resp,
        Err(_) if exceeded.is_some_and(|e| e.load(std::sync::atomic::Ordering::Acquire)) => {
            ApiError::body_too_large(rt.max_request_body).into_response()
        }
        Err(err) => {
            tracing::debug!(target, error = %err, "invocation failed");
            let mut resp = ApiError::invoke(target, &err).into_response();
            if let InvokeError::NotReplayable(_) = err {
                resp.headers_mut()
                    .insert(crate::invoke::NOT_RETRIED, crate::invoke::NOT_RETRIED_WHY);
            }
            resp
        }
    }
}

/// A request whose body is guarded by the size limit, and the flag telling whether a body
/// without a declared length went over it.
type Limited = (Request, Option<Arc<AtomicBool>>);

/// Enforces the body size limit without buffering: a declared length is checked up front,
/// a chunked body is counted as it streams (the flag tells whether it went over).
fn limit_body(req: Request, max: usize) -> Result<Limited, (ApiError, Body)> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > max as u64 => Err((ApiError::body_too_large(max), req.into_body())),
        // hyper already refuses a body longer than its Content-Length.
        Some(_) => Ok((req, None)),
        None => {
            let (parts, body) = req.into_parts();
            let (body, exceeded) = LimitedBody::new(body, max);
            Ok((Request::from_parts(parts, Body::new(body)), Some(exceeded)))
        }
    }
}

/// Reads and discards a refused body (up to a bound) before answering, so that a client still
/// writing it gets the 413 instead of a broken pipe. A body past the bound, or one that
/// trickles, is cut off: the connection closes instead.
async fn drain(body: Body) {
    const DRAIN_LIMIT: usize = 64 << 20;
    let mut body = body;
    let mut drained = 0usize;
    let reading = async {
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            drained += frame.data_ref().map_or(0, |d| d.len());
            if drained > DRAIN_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reading).await;
}

/// Splits `/v1.0/invoke/{id}/method/{method}`; the id is percent-decoded, the method stays
/// as sent so that the app sees exactly the path the caller wrote.
fn split_invoke_path(path: &str) -> Option<(std::borrow::Cow<'_, str>, &str)> {
    let rest = path.strip_prefix(INVOKE_PREFIX)?;
    let (id, method) = match rest.find("/method") {
        Some(i) => {
            let after = &rest[i + "/method".len()..];
            match after.strip_prefix('/') {
                Some(m) => (&rest[..i], m),
                None if after.is_empty() => (&rest[..i], ""),
                None => return None,
            }
        }
        None => return None,
    };
    if id.is_empty() {
        return None;
    }
    Some((percent_decode(id), method))
}

fn percent_decode(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains('%') {
        return s.into();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paths() {
        let split = |p| split_invoke_path(p).map(|(a, b)| (a.into_owned(), b.to_string()));
        assert_eq!(
            split("/v1.0/invoke/b/method/x/y"),
            Some(("b".into(), "x/y".into()))
        );
        assert_eq!(
            split("/v1.0/invoke/b.ns/method/"),
            Some(("b.ns".into(), "".into()))
        );
        assert_eq!(
            split("/v1.0/invoke/b/method"),
            Some(("b".into(), "".into()))
        );
        assert_eq!(
            split("/v1.0/invoke/my%2Eapp/method/m"),
            Some(("my.app".into(), "m".into()))
        );
        assert_eq!(split("/v1.0/invoke/b/methodx"), None);
        assert_eq!(split("/v1.0/invoke//method/x"), None);
        assert_eq!(split("/v1.0/invoke/b"), None);
        assert_eq!(split("/v1.0/state/b"), None);
    }

    #[test]
    fn percent_decoding_tolerates_garbage() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a%zz"), "a%zz");
        assert_eq!(percent_decode("%41b"), "Ab");
    }
}
