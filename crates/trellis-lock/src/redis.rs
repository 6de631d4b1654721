//! `lock.redis`: Dapr's Redis lock store. A lease is the key named by the resource, holding
//! its owner, set with `SET NX PX` (so it expires by itself); unlocking deletes it only if
//! it still holds the caller's name, in one script, as Dapr does.
//!
//! The fencing token is one counter key (`fencingTokenKey`), incremented in the same script
//! that sets the lease, so no acquisition goes without a larger token. Its durability is
//! Redis's: with persistence off, a restarted server starts the counter again (see
//! docs/lock-stores.md).

use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::ConnectionManager;
use trellis_core::redis::RedisSettings;

use crate::{LockError, LockStore, Metadata, TryLock, UnlockStatus, expiry_ms, validate};

/// The counter key when the component does not name one.
pub const DEFAULT_FENCING_KEY: &str = "trellis||lock-fencing-token";

/// KEYS[1] the lease, KEYS[2] the counter; ARGV[1] the owner, ARGV[2] the expiry in ms.
/// Answers the new token, or 0 when the lease is held.
const LOCK_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
";

/// Dapr's unlock script: 1 released, -1 no lease, -2 someone else's.
const UNLOCK_SCRIPT: &str = r#"
local v = redis.call("get", KEYS[1])
if v == false then return -1 end
if v ~= ARGV[1] then return -2 end
return redis.call("del", KEYS[1])
"#;

/// `lock.redis`. See the module docs.
pub struct RedisLockStore {
    conn: ConnectionManager,
    host: String,
    fencing_key: String,
    lock: Script,
    unlock: Script,
    /// The bound on one call: connecting plus answering.
    timeout: Duration,
}

impl std::fmt::Debug for RedisLockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLockStore")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl RedisLockStore {
    /// Connects to `redisHost`; fails when Redis does not answer.
    pub async fn open(metadata: &Metadata) -> Result<Self, LockError> {
        let settings = RedisSettings::from_metadata(metadata)?;
        let fencing_key = metadata
            .get("fencingTokenKey")
            .unwrap_or(DEFAULT_FENCING_KEY)
            .to_string();
        let conn = settings.connect().await.map_err(LockError::backend)?.conn;
        Ok(RedisLockStore {
            conn,
            host: settings.address(),
            fencing_key,
            lock: Script::new(LOCK_SCRIPT),
            unlock: Script::new(UNLOCK_SCRIPT),
            timeout: settings.dial_timeout + settings.read_timeout,
        })
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, LockError> {
        let call = || {
            let mut invocation = script.prepare_invoke();
            for k in keys {
                invocation.key(*k);
            }
            for a in args {
                invocation.arg(*a);
            }
            let mut conn = self.conn.clone();
            async move { invocation.invoke_async(&mut conn).await }
        };
        match tokio::time::timeout(self.timeout, trellis_core::redis::retry_refused(call)).await {
            Ok(res) => res.map_err(LockError::backend),
            Err(_) => Err(LockError::Backend(format!(
                "redis at {} did not answer within {:?}",
                self.host, self.timeout
            ))),
        }
    }
}

#[async_trait]
impl LockStore for RedisLockStore {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        expiry: Duration,
    ) -> Result<TryLock, LockError> {
        validate(resource, owner, Some(expiry))?;
        let ms = expiry_ms(expiry).to_string();
        let token: i64 = self
            .run(
                &self.lock,
                &[resource, &self.fencing_key],
                &[owner, ms.as_str()],
            )
            .await?;
        Ok(match u64::try_from(token) {
            Ok(t) if t > 0 => TryLock::Acquired { fencing_token: t },
            _ => TryLock::Held,
        })
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        validate(resource, owner, None)?;
        let status: i64 = self.run(&self.unlock, &[resource], &[owner]).await?;
        match status {
            1 => Ok(UnlockStatus::Success),
            -1 | 0 => Ok(UnlockStatus::LockDoesNotExist),
            -2 => Ok(UnlockStatus::LockBelongsToOthers),
            other => Err(LockError::Backend(format!(
                "redis unlock script answered {other}"
            ))),
        }
    }
}
