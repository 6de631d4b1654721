//! The store's configuration: Dapr's `state.sqlite` metadata (and Trellis's
//! `readConnections` and `inlineReadsBelow`), parsed and checked once at open.

use std::time::Duration;

use crate::{Metadata, StateError};

/// The component configuration, parsed from metadata.
#[derive(Debug, Clone)]
pub(super) struct Config {
    pub(super) connection: String,
    pub(super) table: String,
    pub(super) metadata_table: String,
    pub(super) timeout: Duration,
    pub(super) cleanup_interval: Option<Duration>,
    pub(super) busy_timeout: Duration,
    pub(super) disable_wal: bool,
    pub(super) readers: usize,
    /// The largest database, in bytes, whose gets read on the caller's thread; 0: none.
    pub(super) inline_below: u64,
}

impl Config {
    pub(super) fn from_metadata(md: &Metadata) -> Result<Self, StateError> {
        let connection = md.require("connectionString")?.to_string();
        let table = identifier(md, "tableName", "state")?;
        let metadata_table = identifier(md, "metadataTableName", "metadata")?;
        if table == metadata_table {
            return Err(invalid(
                "metadata tableName and metadataTableName must differ",
            ));
        }
        let timeout =
            md.positive_duration(["timeout", "timeoutInSeconds"], Duration::from_secs(20))?;
        let cleanup_interval = match md.signed_duration("cleanupInterval")? {
            None => Some(Duration::from_secs(3600)),
            Some(d) => d.positive(),
        };
        let busy_timeout = match md.signed_duration("busyTimeout")? {
            None => Duration::from_secs(2),
            Some(d) => d.positive().unwrap_or_default(),
        };
        Ok(Config {
            connection,
            table,
            metadata_table,
            timeout,
            cleanup_interval,
            busy_timeout,
            disable_wal: md.bool("disableWAL", false)?,
            readers: md.usize("readConnections", 2, 1..=64)?,
            inline_below: md.size("inlineReadsBelow", 64 << 20)? as u64,
        })
    }

    /// In-memory databases get one connection: a second one would be another database.
    pub(super) fn in_memory(&self) -> bool {
        trellis_sqlite::in_memory(&self.connection)
    }
}

pub(super) fn invalid(msg: impl Into<String>) -> StateError {
    StateError::InvalidRequest(msg.into())
}

/// A table name from metadata; restricted to what needs no quoting, since it is pasted
/// into SQL.
fn identifier(md: &Metadata, name: &str, default: &str) -> Result<String, StateError> {
    let v = md.get(name).unwrap_or(default);
    let ok = v
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && v.len() <= 64;
    if ok {
        Ok(v.to_string())
    } else {
        Err(md
            .error(name, Some(v), "must be letters, digits and underscores")
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        let md = |pairs: &[(&str, &str)]| Metadata::from_pairs(pairs.iter().copied());
        assert!(Config::from_metadata(&md(&[])).is_err());
        let c = Config::from_metadata(&md(&[("ConnectionString", "/x/data.db")])).unwrap();
        assert_eq!(c.table, "state");
        assert_eq!(c.timeout, Duration::from_secs(20));
        assert_eq!(c.cleanup_interval, Some(Duration::from_secs(3600)));
        assert_eq!(c.busy_timeout, Duration::from_secs(2));
        assert!(!c.disable_wal && !c.in_memory());
        assert_eq!(c.inline_below, 64 << 20);
        let c = Config::from_metadata(&md(&[
            ("connectionString", ":memory:"),
            ("tableName", "my_state"),
            ("timeoutInSeconds", "5"),
            ("cleanupInterval", "-1"),
            ("busyTimeout", "100ms"),
            ("disableWAL", "true"),
            ("inlineReadsBelow", "512Ki"),
        ]))
        .unwrap();
        assert!(c.in_memory() && c.disable_wal);
        assert_eq!(c.inline_below, 512 << 10);
        assert_eq!(c.table, "my_state");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.cleanup_interval, None);
        assert_eq!(c.busy_timeout, Duration::from_millis(100));
        for bad in ["st ate", "x;drop", "1abc", "\"q\""] {
            let r = Config::from_metadata(&md(&[("connectionString", "a"), ("tableName", bad)]));
            assert!(r.is_err(), "{bad:?}");
        }
    }
}
