//! Dapr's `state.redis` component on the `redis` crate, through a `ConnectionManager` that
//! reconnects by itself when the server goes away and comes back.
//!
//! Each key is a hash `{data, version}` as Dapr keeps it (plus `contentType` when one was
//! given). The ETag is `version`; conditional writes and deletes check it inside a Lua script,
//! so check and write are one atomic step, and a transaction is one script that checks every
//! operation before applying any. TTLs are `PEXPIRE`s set by the same scripts.
//!
//! Dapr starts `version` at 1, so a key that is deleted and written again hands out the ETags
//! of its previous life again. Here a new key starts at the server's clock in nanoseconds
//! (microseconds × 1000) and counts up by one per write: a later incarnation starts beyond
//! every version an earlier one could have reached, unless that one took a thousand writes per
//! microsecond. Dapr sidecars sharing the keys read and increment such versions as usual.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script};
use trellis_core::redis::RedisSettings;

use crate::remote;
use crate::{
    Capabilities, Concurrency, DeleteRequest, Item, Metadata, Operation, SetRequest, StateError,
    StateStore,
};

/// Writes one key. KEYS[1] = key; ARGV = etag ("" = none), data, first-write ("1"/"0"),
/// TTL in ms ("0" = none), has content type ("1"/"0"), content type.
/// Returns 1 when written, 0 when the ETag (or first-write) condition failed. Public so that
/// benchmarks measure the direct path with exactly what the store sends.
pub const SET_SCRIPT: &str = r#"
local current = redis.call("HGET", KEYS[1], "version")
if ARGV[1] ~= "" then
  if (not current) or current ~= ARGV[1] then return 0 end
elseif ARGV[3] == "1" and current then
  return 0
end
if current then
  redis.call("HINCRBY", KEYS[1], "version", 1)
else
  local t = redis.call("TIME")
  redis.call("HSET", KEYS[1], "version", t[1] .. string.format("%06d", tonumber(t[2])) .. "000")
end
redis.call("HSET", KEYS[1], "data", ARGV[2])
if ARGV[5] == "1" then
  redis.call("HSET", KEYS[1], "contentType", ARGV[6])
else
  redis.call("HDEL", KEYS[1], "contentType")
end
if ARGV[4] ~= "0" then
  redis.call("PEXPIRE", KEYS[1], ARGV[4])
else
  redis.call("PERSIST", KEYS[1])
end
return 1
"#;

/// Deletes one key. KEYS[1] = key; ARGV[1] = etag ("" = none). Returns 1, or 0 on a
/// mismatch.
const DELETE_SCRIPT: &str = r#"
if ARGV[1] ~= "" then
  local current = redis.call("HGET", KEYS[1], "version")
  if (not current) or current ~= ARGV[1] then return 0 end
end
redis.call("DEL", KEYS[1])
return 1
"#;

/// A transaction. KEYS = the keys of the operations, in order; ARGV[1] = the number of
/// operations, then 7 arguments per operation: kind ("set"/"del") and the SET_SCRIPT
/// arguments (etag, data, first-write, ttl, has content type, content type).
/// First every condition is checked against the state the operations before it leave (a key
/// written earlier in the transaction exists, a deleted one does not); only if all hold is
/// anything written. Returns 0, or the 1-based index of the first operation that failed.
const TRANSACT_SCRIPT: &str = r#"
local n = tonumber(ARGV[1])
local exists = {}
local version = {}
local function known(k)
  if exists[k] == nil then
    local v = redis.call("HGET", k, "version")
    exists[k] = v and true or false
    version[k] = v
  end
end
for i = 0, n - 1 do
  local b = 2 + i * 7
  local k = KEYS[i + 1]
  known(k)
  local etag = ARGV[b + 1]
  if etag ~= "" then
    if (not exists[k]) or version[k] ~= etag then return i + 1 end
  elseif ARGV[b] == "set" and ARGV[b + 3] == "1" and exists[k] then
    return i + 1
  end
  -- A version written inside the transaction is unknown to the caller: nothing matches it.
  exists[k] = (ARGV[b] == "set")
  version[k] = false
end
for i = 0, n - 1 do
  local b = 2 + i * 7
  local k = KEYS[i + 1]
  if ARGV[b] == "del" then
    redis.call("DEL", k)
  else
    if redis.call("HEXISTS", k, "version") == 1 then
      redis.call("HINCRBY", k, "version", 1)
    else
      local t = redis.call("TIME")
      redis.call("HSET", k, "version", t[1] .. string.format("%06d", tonumber(t[2])) .. "000")
    end
    redis.call("HSET", k, "data", ARGV[b + 2])
    if ARGV[b + 5] == "1" then
      redis.call("HSET", k, "contentType", ARGV[b + 6])
    else
      redis.call("HDEL", k, "contentType")
    end
    if ARGV[b + 4] ~= "0" then
      redis.call("PEXPIRE", k, ARGV[b + 4])
    else
      redis.call("PERSIST", k)
    end
  end
end
return 0
"#;

/// A Redis-backed [`StateStore`].
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    host: String,
    default_ttl: Option<Duration>,
    /// The bound on one call: connecting plus answering.
    timeout: Duration,
    actor: bool,
    set: Script,
    delete: Script,
    transact: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("host", &self.inner.host)
            .finish_non_exhaustive()
    }
}

struct Settings {
    redis: RedisSettings,
    default_ttl: Option<Duration>,
    actor: bool,
}

impl Settings {
    fn parse(md: &Metadata) -> Result<Self, StateError> {
        Ok(Settings {
            redis: RedisSettings::from_metadata(md)?,
            default_ttl: md
                .i64("ttlInSeconds")?
                .filter(|s| *s > 0)
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            actor: md.bool("actorStateStore", false)?,
        })
    }
}

fn backend(e: RedisError) -> StateError {
    StateError::Backend(e.to_string())
}

fn invalid(msg: impl Into<String>) -> StateError {
    StateError::InvalidRequest(msg.into())
}

/// See [`trellis_core::redis::retry_refused`].
async fn retry_refused<T, F, Fut>(op: F) -> Result<T, StateError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RedisError>>,
{
    trellis_core::redis::retry_refused(op)
        .await
        .map_err(backend)
}

impl RedisStore {
    /// Connects to `redisHost` and returns the store; fails when Redis does not answer.
    pub async fn open(metadata: &Metadata) -> Result<Self, StateError> {
        let s = Settings::parse(metadata)?;
        let timeout = s.redis.dial_timeout + s.redis.read_timeout;
        let conn = s.redis.connect().await.map_err(StateError::backend)?.conn;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                host: s.redis.address(),
                default_ttl: s.default_ttl,
                timeout,
                actor: s.actor,
                set: Script::new(SET_SCRIPT),
                delete: Script::new(DELETE_SCRIPT),
                transact: Script::new(TRANSACT_SCRIPT),
            }),
        })
    }
}

/// Checks an ETag is a version this store could have handed out.
fn version_etag(etag: &str) -> Result<(), StateError> {
    etag.parse::<i64>()
        .map(|_| ())
        .map_err(|_| StateError::InvalidEtag(etag.to_string()))
}

/// The SET_SCRIPT arguments of a write (the key goes in KEYS).
fn set_args(req: &SetRequest, default_ttl: Option<Duration>) -> Result<[Vec<u8>; 6], StateError> {
    if req.key.is_empty() {
        return Err(invalid("key must not be empty"));
    }
    if let Some(etag) = &req.etag {
        version_etag(etag)?;
    }
    let ttl = req
        .ttl
        .or(default_ttl)
        .map_or(0, remote::ttl_millis)
        .to_string();
    Ok([
        req.etag.clone().unwrap_or_default().into_bytes(),
        req.value.to_vec(),
        if req.concurrency == Concurrency::FirstWrite && req.etag.is_none() {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
        ttl.into_bytes(),
        if req.content_type.is_some() {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        },
        req.content_type.clone().unwrap_or_default().into_bytes(),
    ])
}

fn delete_etag(req: &DeleteRequest) -> Result<String, StateError> {
    if req.key.is_empty() {
        return Err(invalid("key must not be empty"));
    }
    if let Some(etag) = &req.etag {
        version_etag(etag)?;
    }
    Ok(req.etag.clone().unwrap_or_default())
}

/// An item from `HGETALL` and `PTTL`; a hash without data or version is no item.
fn item(
    mut fields: std::collections::HashMap<String, Vec<u8>>,
    pttl_ms: i64,
) -> Result<Option<Item>, StateError> {
    let (Some(data), Some(version)) = (fields.remove("data"), fields.remove("version")) else {
        return Ok(None);
    };
    let etag = String::from_utf8(version)
        .map_err(|_| StateError::Backend("stored version is not text".into()))?;
    let content_type = fields
        .remove("contentType")
        .and_then(|c| String::from_utf8(c).ok());
    let expires_at = u64::try_from(pttl_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(|ms| SystemTime::now() + Duration::from_millis(ms));
    Ok(Some(Item {
        value: Bytes::from(data),
        etag,
        expires_at,
        content_type,
    }))
}

type Fields = std::collections::HashMap<String, Vec<u8>>;

#[async_trait]
impl StateStore for RedisStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            etag: true,
            transactional: true,
            query: false,
            ttl: true,
            actor: self.inner.actor,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError> {
        let inner = &self.inner;
        let (fields, pttl): (Fields, i64) = remote::with_timeout(
            inner.timeout,
            retry_refused(|| {
                let mut conn = inner.conn.clone();
                async move {
                    redis::pipe()
                        .atomic()
                        .hgetall(key)
                        .pttl(key)
                        .query_async(&mut conn)
                        .await
                }
            }),
        )
        .await?;
        item(fields, pttl)
    }

    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        if keys.is_empty() {
            return Vec::new();
        }
        let inner = &self.inner;
        // One round trip for all keys.
        let answers: Result<Vec<(Fields, i64)>, StateError> = remote::with_timeout(
            inner.timeout,
            retry_refused(|| {
                let mut conn = inner.conn.clone();
                let mut pipe = redis::pipe();
                for key in keys {
                    pipe.cmd("MULTI").ignore();
                    pipe.hgetall(key).ignore().pttl(key).ignore();
                    pipe.cmd("EXEC");
                }
                async move { pipe.query_async(&mut conn).await }
            }),
        )
        .await;
        match answers {
            Ok(answers) if answers.len() == keys.len() => keys
                .iter()
                .zip(answers)
                .map(|(k, (fields, pttl))| (k.clone(), item(fields, pttl)))
                .collect(),
            Ok(answers) => {
                let text = format!("redis answered {} of {} reads", answers.len(), keys.len());
                keys.iter()
                    .map(|k| (k.clone(), Err(StateError::Backend(text.clone()))))
                    .collect()
            }
            Err(e) => {
                let text = e.to_string();
                keys.iter()
                    .map(|k| (k.clone(), Err(StateError::Backend(text.clone()))))
                    .collect()
            }
        }
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError> {
        let inner = &self.inner;
        let args = set_args(&req, inner.default_ttl)?;
        let written: i64 = remote::with_timeout(
            inner.timeout,
            retry_refused(|| {
                let mut conn = inner.conn.clone();
                let mut call = inner.set.key(&req.key);
                for a in &args {
                    call.arg(a.as_slice());
                }
                async move { call.invoke_async(&mut conn).await }
            }),
        )
        .await?;
        if written == 1 {
            Ok(())
        } else {
            Err(StateError::EtagMismatch)
        }
    }

    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError> {
        let inner = &self.inner;
        let etag = delete_etag(&req)?;
        let deleted: i64 = remote::with_timeout(
            inner.timeout,
            retry_refused(|| {
                let mut conn = inner.conn.clone();
                let mut call = inner.delete.key(&req.key);
                call.arg(&etag);
                async move { call.invoke_async(&mut conn).await }
            }),
        )
        .await?;
        if deleted == 1 {
            Ok(())
        } else {
            Err(StateError::EtagMismatch)
        }
    }

    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError> {
        if ops.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        let mut keys = Vec::with_capacity(ops.len());
        let mut args: Vec<Vec<u8>> = vec![ops.len().to_string().into_bytes()];
        for op in &ops {
            match op {
                Operation::Upsert(req) => {
                    keys.push(req.key.as_str());
                    args.push(b"set".to_vec());
                    args.extend(set_args(req, inner.default_ttl)?);
                }
                Operation::Delete(req) => {
                    keys.push(req.key.as_str());
                    args.push(b"del".to_vec());
                    args.push(delete_etag(req)?.into_bytes());
                    args.extend(std::iter::repeat_n(Vec::new(), 5));
                }
            }
        }
        let failed: i64 = remote::with_timeout(
            inner.timeout,
            retry_refused(|| {
                let mut conn = inner.conn.clone();
                let mut call = inner.transact.prepare_invoke();
                for k in &keys {
                    call.key(*k);
                }
                for a in &args {
                    call.arg(a.as_slice());
                }
                async move { call.invoke_async(&mut conn).await }
            }),
        )
        .await?;
        if failed == 0 {
            Ok(())
        } else {
            Err(StateError::EtagMismatch)
        }
    }

    async fn ping(&self) -> Result<(), StateError> {
        let inner = &self.inner;
        remote::with_timeout(
            inner.timeout,
            retry_refused(|| {
                let mut conn = inner.conn.clone();
                async move { redis::cmd("PING").query_async::<()>(&mut conn).await }
            }),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        Metadata::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn settings() {
        let s = Settings::parse(&md(&[("redisHost", "h:1"), ("ttlInSeconds", "60")])).unwrap();
        assert_eq!(s.redis.address(), "h:1");
        assert_eq!(s.default_ttl, Some(Duration::from_secs(60)));
        let s = Settings::parse(&md(&[("redisHost", "h:1"), ("ttlInSeconds", "-1")])).unwrap();
        assert_eq!(s.default_ttl, None);
        assert!(Settings::parse(&md(&[])).is_err());
        assert!(Settings::parse(&md(&[("redisHost", "h:1"), ("ttlInSeconds", "x")])).is_err());
    }

    #[test]
    fn etags_are_versions() {
        assert!(version_etag("1700000000123456000").is_ok());
        for bad in ["", " ", "abc", "1.5", "99999999999999999999999999"] {
            assert!(
                matches!(version_etag(bad), Err(StateError::InvalidEtag(_))),
                "{bad:?}"
            );
        }
    }
}
