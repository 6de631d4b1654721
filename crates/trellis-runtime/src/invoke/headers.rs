//! Header rules for invocation: what is stripped, what is added, in which direction.

use http::{HeaderMap, HeaderName, HeaderValue, Response};

use super::Caller;
use crate::Body;

pub const CALLER_APP_ID: HeaderName = HeaderName::from_static("dapr-caller-app-id");
pub const CALLER_NAMESPACE: HeaderName = HeaderName::from_static("dapr-caller-namespace");
pub const CALLEE_APP_ID: HeaderName = HeaderName::from_static("dapr-callee-app-id");
pub const APP_ID: HeaderName = HeaderName::from_static("dapr-app-id");
pub const API_TOKEN: HeaderName = HeaderName::from_static("dapr-api-token");

/// Connection-level headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1,
/// plus the proxy ones Dapr also strips). HTTP/2 rejects most of them outright. Names, not
/// strings: a `&str` would be parsed into a name again for every lookup, on every call.
const HOP_BY_HOP: [HeaderName; 10] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    HeaderName::from_static("http2-settings"),
    http::header::TE,
    http::header::TRAILER,
    http::header::PROXY_AUTHORIZATION,
    http::header::PROXY_AUTHENTICATE,
];

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the few names present costs less than
    // hashing ten absent names to look each up, on each message of every call.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // Headers named in `Connection` are hop-by-hop too.
    if headers.contains_key(http::header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Keeps, in place, the header values `keep` accepts (`HeaderMap` has no `retain`). One
/// pass finds the names with a value to drop; only those are touched, a name that loses
/// every value by one removal, so a map that keeps everything costs one scan and nothing
/// is copied.
pub(crate) fn retain(headers: &mut HeaderMap, keep: impl Fn(&HeaderName, &HeaderValue) -> bool) {
    // Each name with a value to drop, and whether it keeps any. A name's values come one
    // after another, so one entry per name.
    let mut touched: Vec<(HeaderName, bool)> = Vec::new();
    let mut current: Option<(&HeaderName, bool, bool)> = None; // (name, dropped, kept)
    for (name, value) in headers.iter() {
        let keeps = keep(name, value);
        match &mut current {
            Some((n, dropped, kept)) if *n == name => {
                *dropped |= !keeps;
                *kept |= keeps;
            }
            _ => {
                if let Some((n, true, kept)) = current {
                    touched.push((n.clone(), kept));
                }
                current = Some((name, !keeps, keeps));
            }
        }
    }
    if let Some((n, true, kept)) = current {
        touched.push((n.clone(), kept));
    }
    for (name, kept_some) in touched {
        let kept: Vec<HeaderValue> = match kept_some {
            true => headers
                .get_all(&name)
                .iter()
                .filter(|value| keep(&name, value))
                .cloned()
                .collect(),
            false => Vec::new(),
        };
        headers.remove(&name);
        for value in kept {
            headers.append(name.clone(), value);
        }
    }
}

/// Turns the app's request into the one that leaves this sidecar.
pub(super) fn prepare_outbound(headers: &mut HeaderMap, caller: &Caller, callee_app_id: &str) {
    strip_hop_by_hop(headers);
    // The caller's routing header and its token for *this* sidecar mean nothing downstream,
    // and the token must never leak to another app.
    headers.remove(APP_ID);
    headers.remove(API_TOKEN);
    headers.remove(http::header::HOST);
    headers.insert(CALLER_APP_ID, caller.app_id_header.clone());
    headers.insert(CALLER_NAMESPACE, caller.namespace_header.clone());
    match HeaderValue::from_str(callee_app_id) {
        Ok(v) => {
            headers.insert(CALLEE_APP_ID, v);
        }
        Err(_) => {
            headers.remove(CALLEE_APP_ID);
        }
    }
}

/// The callee's response, minus hop-by-hop headers, with a body this sidecar can forward.
pub(super) async fn finish_response<B>(resp: Response<B>) -> Result<Response<Body>, B::Error>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = super::small::coalesce_answer(&parts.headers, body).await?;
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_nameres::AppRef;

    #[test]
    fn retain_keeps_the_accepted_values_of_each_name_in_order() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("a", "1"),
            ("drop", "x"),
            ("m", "one"),
            ("m", "bad"),
            ("m", "two"),
        ] {
            h.append(name, HeaderValue::from_static(value));
        }
        retain(&mut h, |name, value| name != "drop" && value != "bad");
        let all: Vec<(&str, &str)> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(all, [("a", "1"), ("m", "one"), ("m", "two")]);
        // Nothing to drop: nothing moves.
        retain(&mut h, |_, _| true);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn outbound_headers_are_rewritten() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("5"));
        h.insert("dapr-api-token", HeaderValue::from_static("secret"));
        h.insert("dapr-app-id", HeaderValue::from_static("b"));
        h.insert("dapr-caller-app-id", HeaderValue::from_static("spoofed"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        h.insert("authorization", HeaderValue::from_static("Bearer kept"));
        prepare_outbound(&mut h, &Caller::new(AppRef::new("a", "ns1").unwrap()), "b");
        assert_eq!(h["dapr-caller-app-id"], "a");
        assert_eq!(h["dapr-caller-namespace"], "ns1");
        assert_eq!(h["dapr-callee-app-id"], "b");
        assert_eq!(h["x-custom"], "kept");
        assert_eq!(h["authorization"], "Bearer kept");
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "dapr-api-token",
            "dapr-app-id",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
    }

    /// The caller's token, routing header and `Host` each go even when alone.
    #[test]
    fn each_header_for_this_sidecar_is_dropped_on_its_own() {
        for name in ["dapr-api-token", "dapr-app-id", "host"] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert("x-custom", HeaderValue::from_static("kept"));
            prepare_outbound(&mut h, &Caller::new(AppRef::new("a", "ns1").unwrap()), "b");
            assert!(!h.contains_key(name), "{name} should be dropped");
            assert_eq!(h["x-custom"], "kept");
        }
    }

    /// Each hop-by-hop header goes even when it is the only one (no `Connection` naming it),
    /// and a message with none keeps every header.
    #[test]
    fn each_hop_by_hop_header_is_stripped_on_its_own() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_static("x"));
            h.insert("x-custom", HeaderValue::from_static("kept"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} should be stripped");
            assert_eq!(h["x-custom"], "kept");
        }
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("x-custom", HeaderValue::from_static("kept"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
