//! The settings every embedded store kept in a table of one SQLite file reads the same way
//! from its component metadata: `connectionString` (required), `tableName`, `busyTimeout`
//! (default 5 s) and `timeout` (default 20 s), so each new embedded backend (lock,
//! configuration, ...) parses them once, here.

use std::time::Duration;

use trellis_core::{Metadata, MetadataError};

/// How long to wait for another process's write lock when the metadata does not say.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest any one operation may take when the metadata does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub connection: String,
    pub table: String,
    pub busy_timeout: Duration,
    pub timeout: Duration,
}

impl StoreSettings {
    /// Reads the settings, with `default_table` when `tableName` is unset.
    pub fn from_metadata(md: &Metadata, default_table: &str) -> Result<Self, MetadataError> {
        let connection = md.require("connectionString")?.to_string();
        let table = md.get("tableName").unwrap_or(default_table).to_string();
        if !valid_table(&table) {
            return Err(md.error(
                "tableName",
                Some(&table),
                "is not a valid table name (letters, digits and _)",
            ));
        }
        Ok(Self {
            connection,
            table,
            busy_timeout: md.duration("busyTimeout")?.unwrap_or(DEFAULT_BUSY_TIMEOUT),
            timeout: md.positive_duration("timeout", DEFAULT_TIMEOUT)?,
        })
    }
}

/// Whether `name` can go into SQL as a table name: letters, digits and `_`, not starting
/// with a digit.
pub fn valid_table(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shared_keys_and_refuses_bad_table_names() {
        let md = Metadata::from_pairs([("connectionString", "/x.db"), ("timeout", "3s")]);
        let s = StoreSettings::from_metadata(&md, "locks").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.table, "locks");
        assert_eq!(s.timeout, Duration::from_secs(3));
        assert_eq!(s.busy_timeout, DEFAULT_BUSY_TIMEOUT);
        let bad = Metadata::from_pairs([("connectionString", "/x.db"), ("tableName", "a;b")]);
        assert!(StoreSettings::from_metadata(&bad, "t").is_err());
        assert!(StoreSettings::from_metadata(&Metadata::default(), "t").is_err());
        assert!(!valid_table("1x") && !valid_table("a.b") && valid_table("my_table2"));
    }
}
