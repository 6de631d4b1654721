//! `middleware.http.requestsize` (Trellis's own type): a body limit tighter than
//! `--max-body-size` for the API routes (or, in `appHttpPipeline`, the paths of calls to the
//! app) that match `pathRegex` (every one when unset). `maxBytes` (e.g. `64Ki`) is checked
//! against `Content-Length` before any byte of the body is read: larger is 413; a chunked
//! body on such a route is 411, since its size cannot be known in advance. (A call reaching
//! the app from another sidecar arrived over HTTP/2, where a streamed body is not "chunked":
//! one without a `Content-Length` passes there.)

use async_trait::async_trait;
use http::StatusCode;
use http::request::Parts;

use super::{Caller, HttpMiddleware};
use crate::api::ApiError;

#[derive(Debug)]
pub struct RequestSize {
    max: usize,
    paths: Option<regex::Regex>,
}

impl RequestSize {
    pub fn new(md: &trellis_core::Metadata) -> Result<Self, trellis_core::MetadataError> {
        md.require("maxBytes")?;
        let max = md.size("maxBytes", usize::MAX)?;
        let paths = match md.get("pathRegex") {
            None => None,
            Some(text) => Some(regex::Regex::new(text).map_err(|e| {
                md.error(
                    "pathRegex",
                    Some(text),
                    &format!("is not a regular expression: {e}"),
                )
            })?),
        };
        Ok(Self { max, paths })
    }
}

#[async_trait]
impl HttpMiddleware for RequestSize {
    async fn check(&self, req: &Parts, _caller: Caller<'_>) -> Result<(), ApiError> {
        if self
            .paths
            .as_ref()
            .is_some_and(|p| !p.is_match(req.uri.path()))
        {
            return Ok(());
        }
        let chunked = req
            .headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match length {
            Some(n) if n > self.max as u64 => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "ERR_BODY_READ",
                format!(
                    "the body of {n} bytes is over the limit of {} bytes for this route (middleware.http.requestsize)",
                    self.max
                ),
            )),
            None if chunked => Err(ApiError::new(
                StatusCode::LENGTH_REQUIRED,
                "ERR_BODY_READ",
                "this route takes bodies up to a set size; send a Content-Length (middleware.http.requestsize)",
            )),
            _ => Ok(()),
        }
    }
}
