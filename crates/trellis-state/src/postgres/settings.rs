//! What `state.postgresql` reads from its component metadata: the connection (Dapr's
//! connection strings, URL or keyword form), table names, timeouts and switches.

use std::time::Duration;

use super::{DEFAULT_CLEANUP, DEFAULT_TIMEOUT, Version};
use crate::remote;
use crate::{Metadata, StateError};

/// What `open` reads from the component metadata.
pub(super) struct Settings {
    pub(super) config: tokio_postgres::Config,
    pub(super) table: String,
    pub(super) metadata_table: String,
    pub(super) timeout: Duration,
    pub(super) cleanup: Option<Duration>,
    pub(super) max_conns: usize,
    pub(super) actor: bool,
    pub(super) create_tables: bool,
}

impl Settings {
    pub(super) fn parse(md: &Metadata, version: Version) -> Result<Self, StateError> {
        let conn = md.get(["connectionString", "url"]);
        let (mut config, pool_max) =
            trellis_core::postgres::parse_connection_string(conn.unwrap_or(""))
                .map_err(|e| StateError::InvalidRequest(e.to_string()))?;
        // Dapr lets single parameters override (or replace) the connection string.
        if let Some(host) = md.get(["host"]) {
            config.host(host);
        }
        if let Some(addr) = md.get(["hostaddr"]) {
            let addr = addr.parse().map_err(|_| {
                StateError::InvalidRequest(format!("metadata hostaddr: {addr:?} is not an ip"))
            })?;
            config.hostaddr(addr);
        }
        if let Some(port) = md.i64(["port"])? {
            let port = u16::try_from(port).map_err(|_| {
                StateError::InvalidRequest(format!("metadata port: {port} is out of range"))
            })?;
            config.port(port);
        }
        if let Some(db) = md.get(["database", "dbname"]) {
            config.dbname(db);
        }
        if let Some(user) = md.get(["user", "username"]) {
            config.user(user);
        }
        if let Some(password) = md.get("password").filter(|p| !p.is_empty()) {
            config.password(password);
        }
        if conn.is_none() && config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            return Err(StateError::InvalidRequest(
                "metadata connectionString is required".into(),
            ));
        }
        for flag in ["useAzureAD", "useAWSIAM"] {
            if md.bool(flag, false)? {
                return Err(StateError::InvalidRequest(format!(
                    "metadata {flag}: this authentication method is not supported yet"
                )));
            }
        }

        let timeout = match md.signed_duration(["timeout", "timeoutInSeconds"])? {
            None => DEFAULT_TIMEOUT,
            Some(t) => t.positive().filter(|t| *t >= SECOND).ok_or_else(|| {
                StateError::InvalidRequest("metadata timeout: must be at least 1s".into())
            })?,
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let cleanup = match md.signed_duration(["cleanupInterval", "cleanupIntervalInSeconds"])? {
            None => Some(DEFAULT_CLEANUP),
            Some(c) => c.positive(),
        };
        let default_conns = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .max(4);
        let max_conns = match md.i64(["maxConns"])?.or(pool_max) {
            Some(n) if n > 0 => usize::try_from(n).unwrap_or(default_conns),
            _ => default_conns,
        };

        let table = match version {
            Version::V1 => md.get(["tableName"]).unwrap_or("state").to_string(),
            Version::V2 => format!("{}state", md.get(["tablePrefix"]).unwrap_or_default()),
        };
        let metadata_table = md
            .get(["metadataTableName"])
            .unwrap_or("dapr_metadata")
            .to_string();
        for (name, value) in [
            ("tableName", &table),
            ("metadataTableName", &metadata_table),
        ] {
            if !remote::valid_identifier(value, true) {
                return Err(StateError::InvalidRequest(format!(
                    "metadata {name}: {value:?} is not a valid table name \
                     (letters, digits and _, optionally schema.table)"
                )));
            }
        }

        Ok(Settings {
            config,
            table,
            metadata_table,
            timeout,
            cleanup,
            max_conns,
            actor: md.bool("actorStateStore", false)?,
            create_tables: md.bool("createTables", true)?,
        })
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings() {
        let md = |pairs: &[(&str, &str)]| Metadata::from_pairs(pairs.iter().copied());
        let s = Settings::parse(&md(&[("connectionString", "host=h")]), Version::V1).unwrap();
        assert_eq!(s.table, "state");
        assert_eq!(s.metadata_table, "dapr_metadata");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        assert_eq!(s.cleanup, Some(DEFAULT_CLEANUP));
        let s = Settings::parse(
            &md(&[
                ("connectionString", "host=h"),
                ("tablePrefix", "app_"),
                ("timeout", "5"),
                ("cleanupInterval", "-1"),
                ("maxConns", "2"),
                ("actorStateStore", "true"),
            ]),
            Version::V2,
        )
        .unwrap();
        assert_eq!(s.table, "app_state");
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.cleanup, None);
        assert_eq!(s.max_conns, 2);
        assert!(s.actor);
        for bad in [
            vec![],
            vec![("connectionString", "host=h"), ("tableName", "x; drop")],
            vec![("connectionString", "host=h"), ("timeout", "500ms")],
            vec![("connectionString", "host=h"), ("useAzureAD", "true")],
        ] {
            assert!(Settings::parse(&md(&bad), Version::V1).is_err(), "{bad:?}");
        }
    }
}
