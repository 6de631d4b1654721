//! Small bodies travel whole.
//!
//! A body that declares a small `Content-Length` is read completely before it is forwarded.
//! It usually arrived in the same read as its headers, so this costs no waiting, and it lets
//! the next hop write headers and body in one syscall (HTTP/1.1) or one flush (HTTP/2
//! HEADERS + DATA with END_STREAM) instead of two, saving a wake-up on both ends of every
//! hop. Bodies without a length, or longer than [`SMALL_BODY`], stream untouched.

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt as _;

use crate::Body;

/// Bodies up to this size are read whole: a few TCP segments at most.
pub const SMALL_BODY: u64 = 16 * 1024;

/// The declared length, if it is small enough to read whole. Never for gRPC, whose
/// trailers (the call's status) a collected body would lose.
pub fn small_length(headers: &HeaderMap) -> Option<u64> {
    let grpc = headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return None;
    }
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|len| *len <= SMALL_BODY)
}

/// Reads a small body whole (see the module docs); others are returned as they are.
pub async fn coalesce<B>(headers: &HeaderMap, body: B) -> Result<Body, B::Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    match small_length(headers) {
        Some(0) => Ok(Body::empty()),
        Some(_) => Ok(Body::from(body.collect().await?.to_bytes())),
        None => Ok(Body::new(body)),
    }
}
