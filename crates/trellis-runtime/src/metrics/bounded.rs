//! Label values that come from requests (target app ids, topics, gRPC methods, app paths),
//! bounded so that a caller cannot grow the number of series without limit.
//!
//! The first [`BoundedValues::new`]`(limit)` distinct values keep their own label; every
//! later one is [`OTHER`]. Checking a value already admitted is one read lock and one hash,
//! without allocating.

use std::collections::HashSet;
use std::sync::RwLock;

/// What every value past a label's limit (and every unknown method or path) is recorded as.
pub const OTHER: &str = "_other";

#[derive(Debug)]
pub struct BoundedValues {
    limit: usize,
    seen: RwLock<HashSet<Box<str>>>,
}

impl BoundedValues {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: RwLock::new(HashSet::new()),
        }
    }

    /// `value` itself while it is one of the first `limit` distinct values, else [`OTHER`].
    pub fn admit<'v>(&self, value: &'v str) -> &'v str {
        {
            let seen = self.seen.read().unwrap_or_else(|p| p.into_inner());
            if seen.contains(value) {
                return value;
            }
            if seen.len() >= self.limit {
                return OTHER;
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= self.limit && !seen.contains(value) {
            return OTHER;
        }
        seen.insert(value.into());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_limit_collapse() {
        let values = BoundedValues::new(2);
        assert_eq!(values.admit("a"), "a");
        assert_eq!(values.admit("b"), "b");
        assert_eq!(values.admit("c"), OTHER);
        assert_eq!(values.admit("a"), "a");
    }
}
