//! `middleware.http.routerchecker`: every request's path must match the regular expression
//! `rule` (e.g. `^[A-Za-z0-9/._-]+$`); others are refused with 400 before any route of the
//! API sees them (`httpPipeline`), or before they reach the app (`appHttpPipeline`: the
//! invoked method's path, or a delivery's route).

use async_trait::async_trait;
use http::StatusCode;
use http::request::Parts;

use super::{Caller, HttpMiddleware};
use crate::api::ApiError;

#[derive(Debug)]
pub struct RouterChecker {
    rule: regex::Regex,
}

impl RouterChecker {
    pub fn new(md: &trellis_core::Metadata) -> Result<Self, trellis_core::MetadataError> {
        let text = md.require("rule")?;
        let rule = regex::Regex::new(text).map_err(|e| {
            md.error(
                "rule",
                Some(text),
                &format!("is not a regular expression: {e}"),
            )
        })?;
        Ok(Self { rule })
    }
}

#[async_trait]
impl HttpMiddleware for RouterChecker {
    async fn check(&self, req: &Parts, _caller: Caller<'_>) -> Result<(), ApiError> {
        let path = req.uri.path();
        if self.rule.is_match(path) {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ERR_INVALID_ROUTE",
            format!("the path {path:?} does not match the rule of middleware.http.routerchecker"),
        ))
    }
}
