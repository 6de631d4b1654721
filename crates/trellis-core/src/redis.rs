//! Connecting to Redis the one way every Redis-backed component does (`state.redis`,
//! `pubsub.redis`, and the bindings, lock and configuration stores to come): Dapr's common
//! Redis metadata, read once, and a `ConnectionManager` that reconnects by itself.
//!
//! Dapr's components share one settings struct for Redis too (`redisHost`, `redisUsername`,
//! `redisPassword`, `redisDB`, `dialTimeout`, `readTimeout`, ...), so a component file that
//! works for one Redis component works for the others.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, ConnectionAddr, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo, RedisError,
};

use crate::{Metadata, MetadataError};

/// Dapr's default `dialTimeout`.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Dapr's default `readTimeout`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Where and how to connect, from a component's metadata.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    pub dial_timeout: Duration,
    pub read_timeout: Duration,
}

// The password stays out of logs and error messages.
impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("db", &self.db)
            .field("dial_timeout", &self.dial_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// A connection ready for commands, and what it takes to open more (a blocking read, such
/// as `XREADGROUP ... BLOCK`, needs a connection of its own).
#[derive(Clone)]
pub struct Connected {
    pub client: Client,
    pub config: ConnectionManagerConfig,
    pub conn: ConnectionManager,
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("timed out connecting to redis at {address} after {}", crate::duration::format(*.after))]
    Timeout { address: String, after: Duration },
    #[error("{0}")]
    Redis(#[from] RedisError),
}

impl RedisSettings {
    /// Reads Dapr's common Redis metadata. Settings Trellis does not support yet (TLS,
    /// Sentinel failover, cluster mode) are errors rather than silently ignored.
    pub fn from_metadata(md: &Metadata) -> Result<Self, MetadataError> {
        let host_port = md.require("redisHost")?;
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().map_err(|_| {
                    md.error("redisHost", Some(host_port), "has a bad port (host:port)")
                })?,
            ),
            _ => (host_port, 6379),
        };
        if md.bool("enableTLS", false)? {
            return Err(md.error(
                "enableTLS",
                None,
                "tls connections to redis are not supported yet",
            ));
        }
        if md.bool("failover", false)? {
            return Err(md.error("failover", None, "redis sentinel is not supported yet"));
        }
        if let Some(kind) = md
            .get("redisType")
            .filter(|k| !k.eq_ignore_ascii_case("node"))
        {
            return Err(md.error(
                "redisType",
                Some(kind),
                "is not supported yet (only \"node\")",
            ));
        }
        let timeout = |key: &str, default| -> Result<Duration, MetadataError> {
            Ok(md.duration(key)?.unwrap_or(default))
        };
        Ok(RedisSettings {
            host: host.to_string(),
            port,
            username: md.get("redisUsername").map(str::to_string),
            password: md.get("redisPassword").map(str::to_string),
            db: md.i64("redisDB")?.unwrap_or(0),
            dial_timeout: timeout("dialTimeout", DEFAULT_DIAL_TIMEOUT)?,
            read_timeout: timeout("readTimeout", DEFAULT_READ_TIMEOUT)?,
        })
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connects; fails when Redis does not answer within `dialTimeout` + `readTimeout`.
    pub async fn connect(&self) -> Result<Connected, ConnectError> {
        let mut redis_info = RedisConnectionInfo::default()
            .set_db(self.db)
            // RESP3 makes the manager hear about a closed connection and reconnect before
            // the next command, instead of failing that command.
            .set_protocol(ProtocolVersion::RESP3);
        if let Some(user) = &self.username {
            redis_info = redis_info.set_username(user);
        }
        if let Some(password) = &self.password {
            redis_info = redis_info.set_password(password);
        }
        let info = ConnectionAddr::Tcp(self.host.clone(), self.port)
            .into_connection_info()?
            .set_redis_settings(redis_info);
        let client = Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.dial_timeout))
            .set_response_timeout(Some(self.read_timeout))
            // One quick retry per reconnection: while the server is down every call should
            // fail at once, and each failed call starts the next attempt anyway.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let after = self.dial_timeout + self.read_timeout;
        let conn = tokio::time::timeout(
            after,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await
        .map_err(|_| ConnectError::Timeout {
            address: self.address(),
            after,
        })??;
        Ok(Connected {
            client,
            config,
            conn,
        })
    }
}

/// Runs a command, once more if the first try could not connect: a refused connection
/// proves the command never reached the server, and the retry waits on the reconnection the
/// failure started (the first call after the server comes back would fail otherwise).
pub async fn retry_refused<T, F, Fut>(mut op: F) -> Result<T, RedisError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    match op().await {
        Err(e) if e.is_connection_refusal() => op().await,
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<RedisSettings, MetadataError> {
        RedisSettings::from_metadata(&Metadata::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn settings() {
        let s = parse(&[("redisHost", "localhost:6380")]).unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("localhost", 6380, 0));
        assert_eq!(s.dial_timeout, DEFAULT_DIAL_TIMEOUT);
        assert_eq!(s.read_timeout, DEFAULT_READ_TIMEOUT);
        let s = parse(&[
            ("redisHost", "[::1]:6379"),
            ("redisDB", "3"),
            ("redisPassword", "pw"),
            ("readTimeout", "250ms"),
        ])
        .unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("::1", 6379, 3));
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert_eq!(s.read_timeout, Duration::from_millis(250));
        assert!(!format!("{s:?}").contains("pw"));
        assert_eq!(parse(&[("redisHost", "h")]).unwrap().port, 6379);
        let err = parse(&[("redisHost", "h:1"), ("enableTLS", "true")]).unwrap_err();
        assert!(err.to_string().contains("not supported yet"), "{err}");
        for bad in [
            vec![],
            vec![("redisHost", "h:port")],
            vec![("redisHost", "h:1"), ("redisType", "cluster")],
            vec![("redisHost", "h:1"), ("redisDB", "x")],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }
}
