//! Connecting to PostgreSQL the one way every PostgreSQL-backed component does
//! (`state.postgresql`, `lock.postgresql`, `configuration.postgresql`,
//! `scheduler.postgresql`, `workflowbackend.postgresql`): Dapr's connection strings read as
//! Dapr's pgx reads them, one `deadpool` pool setup, the advisory lock that lets sidecars
//! starting together create their tables without racing, and one deadline per call.

use std::fmt::Write as _;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

/// A connection string that does not parse, or asks for what is not supported (TLS); the
/// message names the metadata key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnectionStringError(pub String);

/// Runs `op` for at most `timeout`; past it, the error `late` makes of the reason, so
/// that a PostgreSQL that stopped answering fails the call instead of holding it.
pub async fn bounded<T, E>(
    timeout: Duration,
    op: impl Future<Output = Result<T, E>>,
    late: impl FnOnce(String) -> E,
) -> Result<T, E> {
    tokio::time::timeout(timeout, op).await.unwrap_or_else(|_| {
        Err(late(format!(
            "postgresql did not answer within {timeout:?}"
        )))
    })
}

/// The pool every PostgreSQL component uses: at most `max_conns` connections, and
/// `timeout` for waiting on one, opening one and checking one.
pub fn pool(
    config: tokio_postgres::Config,
    max_conns: usize,
    timeout: Duration,
) -> Result<Pool, deadpool_postgres::BuildError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // A server restart closes every pooled connection, which `is_closed` sees, so
            // the cheap check is enough to not hand out dead connections.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_conns)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
}

/// The pool size a component asks for: its `maxConns` (1 to 1024), else the connection
/// string's `pool_max_conns` (as [`parse_connection_string`] answers it) when in range,
/// else `default`.
pub fn max_conns(
    md: &crate::Metadata,
    pool_max: Option<i64>,
    default: usize,
) -> Result<usize, crate::MetadataError> {
    let default = pool_max
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or(default);
    md.usize("maxConns", default, 1..=1024)
}

/// Runs `ddl` (`CREATE ... IF NOT EXISTS` statements) in one transaction under an advisory
/// lock named by `key`: concurrent `CREATE TABLE IF NOT EXISTS` can fail on a catalog
/// unique index (`pg_type`), so sidecars starting together take turns, and each later one
/// finds the tables made.
pub async fn create_under_lock(
    client: &mut tokio_postgres::Client,
    key: &str,
    ddl: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1)::bigint)",
        &[&key],
    )
    .await?;
    tx.batch_execute(ddl).await?;
    tx.commit().await
}

/// Reads a libpq connection string (keyword/value or `postgres://` URL) the way Dapr's pgx
/// does: `database` is accepted for `dbname`, and pgx's own pool settings (`pool_max_conns`...)
/// are taken out before tokio-postgres sees the rest. Returns the pool size it named, if any.
pub fn parse_connection_string(
    text: &str,
) -> Result<(tokio_postgres::Config, Option<i64>), ConnectionStringError> {
    let bad = |e: &dyn std::fmt::Display| {
        ConnectionStringError(format!("metadata connectionString: {e}"))
    };
    let text = text.trim();
    let mut pool_max = None;
    let mut keep =
        |key: &str, value: &str| -> Result<Option<(String, String)>, ConnectionStringError> {
            let key = match key {
                "database" => "dbname",
                "sslmode" => {
                    return match value {
                        "disable" | "allow" | "prefer" => {
                            Ok(Some(("sslmode".into(), "disable".into())))
                        }
                        other => Err(ConnectionStringError(format!(
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
}
