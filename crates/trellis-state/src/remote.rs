//! Helpers shared by the backends that talk to a database server over the network
//! (PostgreSQL, MySQL, Redis): table names, operation timeouts, binary values in JSON
//! columns, and background tasks that end with their store. (Their metadata is read with
//! [`trellis_core::Metadata`].)

// Each backend uses a subset of these helpers; with only one backend enabled the rest are
// unused, which is no reason to fail a `-D warnings` build of that feature alone.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use crate::StateError;

/// Whether `name` is a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`), optionally qualified
/// by a schema when `allow_schema`. Table names are spliced into SQL text (no driver binds
/// identifiers), so anything else is refused rather than quoted.
pub(crate) fn valid_identifier(name: &str, allow_schema: bool) -> bool {
    let part_ok = |p: &str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, table)) if allow_schema => part_ok(schema) && part_ok(table),
        Some(_) => false,
        None => part_ok(name),
    }
}

/// Runs `fut` for at most `limit`; on expiry the operation fails with a backend error that
/// says so, instead of hanging on a server that no longer answers.
pub(crate) async fn with_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(StateError::Backend(format!(
            "operation timed out after {}",
            trellis_core::duration::format(limit)
        ))),
    }
}

/// A TTL in whole milliseconds for the database (at least 1: a zero TTL still expires).
pub(crate) fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Checks that an ETag is one of the UUIDs the SQL backends hand out, so that a malformed one
/// is reported as such (HTTP 400) rather than as a mismatch (409).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn uuid_etag(etag: &str) -> Result<uuid::Uuid, StateError> {
    uuid::Uuid::try_parse(etag).map_err(|_| StateError::InvalidEtag(etag.to_string()))
}

/// How Dapr's SQL stores keep bytes that are not JSON in a JSON column: a JSON string holding
/// their base64, with the row's `isbinary` flag set.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn binary_to_json(value: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    // A base64 alphabet string needs no escaping inside JSON quotes.
    format!("\"{encoded}\"").into_bytes()
}

/// The inverse of [`binary_to_json`].
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn binary_from_json(stored: &[u8]) -> Result<Vec<u8>, StateError> {
    use base64::Engine as _;
    let text: String = serde_json::from_slice(stored).map_err(|e| {
        StateError::Backend(format!("stored binary value is not a json string: {e}"))
    })?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| StateError::Backend(format!("stored binary value is not base64: {e}")))
}

/// A background task (expired-row cleanup) that stops when its store is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(valid_identifier("state", false));
        assert!(valid_identifier("_s1", false));
        assert!(valid_identifier("public.state", true));
        assert!(!valid_identifier("public.state", false));
        assert!(!valid_identifier("1state", false));
        assert!(!valid_identifier("st-ate", false));
        assert!(!valid_identifier("a.b.c", true));
        assert!(!valid_identifier("state; drop table x", true));
        assert!(!valid_identifier("", false));
    }

    #[cfg(any(feature = "postgres", feature = "mysql"))]
    #[test]
    fn binary_round_trip() {
        let raw = [0u8, 159, 146, 150, b'"'];
        let stored = binary_to_json(&raw);
        assert!(serde_json::from_slice::<String>(&stored).is_ok());
        assert_eq!(binary_from_json(&stored).unwrap(), raw);
    }
}
