//! What `state.postgresql` reads from its component metadata: the connection (Dapr's
//! connection strings, URL or keyword form), table names, timeouts and switches.

use std::fmt::Write as _;
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
        let (mut config, pool_max) = parse_connection_string(conn.unwrap_or(""))?;
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

/// Reads a libpq connection string (keyword/value or `postgres://` URL) the way Dapr's pgx
/// does: `database` is accepted for `dbname`, and pgx's own pool settings (`pool_max_conns`...)
/// are taken out before tokio-postgres sees the rest. Returns the pool size it named, if any.
fn parse_connection_string(
    text: &str,
) -> Result<(tokio_postgres::Config, Option<i64>), StateError> {
    let bad = |e: &dyn std::fmt::Display| {
        StateError::InvalidRequest(format!("metadata connectionString: {e}"))
    };
    let text = text.trim();
    let mut pool_max = None;
    let mut keep = |key: &str, value: &str| -> Result<Option<(String, String)>, StateError> {
        let key = match key {
            "database" => "dbname",
            "sslmode" => {
                return match value {
                    "disable" | "allow" | "prefer" => {
                        Ok(Some(("sslmode".into(), "disable".into())))
                    }
                    other => Err(StateError::InvalidRequest(format!(
                        "metadata connectionString: sslmode={other}: tls connections to \
                         postgresql are not supported yet"
                    ))),
                };
            }
            "pool_max_conns" => {
                pool_max = value.parse().ok();
                return Ok(None);
            }
            k if k.starts_with("pool_")
                || k.starts_with("ssl")
                || matches!(
                    k,
                    "statement_cache_capacity"
                        | "description_cache_capacity"
                        | "default_query_exec_mode"
                ) =>
            {
                return Ok(None);
            }
            k => k,
        };
        Ok(Some((key.to_string(), value.to_string())))
    };

    let rewritten = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        match text.split_once('?') {
            None => text.to_string(),
            Some((base, query)) => {
                let mut params = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if let Some((k, v)) = keep(k, v)? {
                        params.push(format!("{k}={v}"));
                    }
                }
                if params.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", params.join("&"))
                }
            }
        }
    } else {
        let mut out = String::new();
        for (k, v) in keyword_pairs(text).map_err(|e| bad(&e))? {
            if let Some((k, v)) = keep(&k, &v)? {
                let escaped = v.replace('\\', "\\\\").replace('\'', "\\'");
                let _ = write!(out, "{k}='{escaped}' ");
            }
        }
        out
    };
    let config = rewritten
        .parse::<tokio_postgres::Config>()
        .map_err(|e| bad(&e))?;
    Ok((config, pool_max))
}

/// Splits `key=value key2='quoted value'` as libpq does.
fn keyword_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected = after {key:?}"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value for {key:?}")),
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings() {
        let (c, max) = parse_connection_string(
            "host=localhost user=postgres password='p w\\'x' port=5433 connect_timeout=10 \
             database=my_db sslmode=disable pool_max_conns=7",
        )
        .unwrap();
        assert_eq!(c.get_dbname(), Some("my_db"));
        assert_eq!(c.get_user(), Some("postgres"));
        assert_eq!(c.get_password(), Some(&b"p w'x"[..]));
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(max, Some(7));

        let (c, _) = parse_connection_string(
            "postgres://u:secret@127.0.0.1:5432/test?database=x&pool_min_conns=1",
        )
        .unwrap();
        assert_eq!(c.get_dbname(), Some("x"));
        assert_eq!(c.get_user(), Some("u"));

        let err = parse_connection_string("host=x sslmode=verify-full").unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        assert!(parse_connection_string("host=x bogus=1").is_err());
        assert!(parse_connection_string("host='x").is_err());
    }

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
