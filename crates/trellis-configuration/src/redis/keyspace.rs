//! Redis keyspace notifications for one subscription: a connection of its own subscribed to
//! `__keyspace@<db>__:<key>` per key (or the pattern `__keyspace@<db>__:*`), each
//! notification a [`Hint`] naming its key. The connection is pinged every [`PING_EVERY`];
//! when it is lost (Redis restarted), it connects and subscribes again, backing off, and
//! then says [`Hint::Everything`], so that what changed meanwhile is read afresh.
//!
//! Redis sends keyspace notifications only when `notify-keyspace-events` asks for them.
//! Dapr sets it to `Kg$xe` on each subscribe; [`enable_notifications`] adds those classes
//! to whatever the server has (so other users' settings stay), and only logs a warning
//! where `CONFIG` is not allowed (managed Redis): there the operator sets it.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, PubSub};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use trellis_core::redis::RedisSettings;

use crate::ConfigurationError;
use crate::subscription::{Hint, MAX_RETRY, Watch};

/// How often the listening connection is checked: a lost one is noticed within this (a
/// connection in subscribed mode answers nothing else that would tell).
const PING_EVERY: Duration = Duration::from_secs(1);

/// The notification classes subscriptions need: keyspace events (`K`) of generic commands
/// such as `DEL` (`g`), string commands (`$`), expiry (`x`) and eviction (`e`).
const NEEDED: &str = "Kg$xe";

/// Makes sure the server sends the notifications subscribers need, keeping the classes it
/// already sends.
pub(super) async fn enable_notifications(conn: &ConnectionManager) {
    let mut conn = conn.clone();
    // A map under RESP3, pairs under RESP2: both read as a map.
    let current: Result<std::collections::HashMap<String, String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await;
    let current = match current {
        Ok(map) => map
            .get("notify-keyspace-events")
            .cloned()
            .unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "configuration.redis: cannot read notify-keyspace-events; subscriptions hear of changes only if it includes {NEEDED}");
            return;
        }
    };
    let Some(wanted) = merged_flags(&current) else {
        return;
    };
    let set: Result<(), _> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg(&wanted)
        .query_async(&mut conn)
        .await;
    if let Err(e) = set {
        tracing::warn!(error = %e, "configuration.redis: cannot set notify-keyspace-events; subscriptions hear of changes only if it includes {NEEDED}");
    }
}

/// The flags to set so that `current` covers [`NEEDED`]; `None` when it already does.
fn merged_flags(current: &str) -> Option<String> {
    // `A` stands for every class but `m` and `n`.
    let covered = |c: char| current.contains(c) || (c != 'K' && current.contains('A'));
    let missing: String = NEEDED.chars().filter(|c| !covered(*c)).collect();
    (!missing.is_empty()).then(|| format!("{current}{missing}"))
}

/// One subscription's notifications, from the task that owns its connection.
pub(super) struct Keyspace {
    rx: mpsc::Receiver<Hint>,
    task: JoinHandle<()>,
}

impl Drop for Keyspace {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Watch for Keyspace {
    async fn next(&mut self) -> Option<Hint> {
        self.rx.recv().await
    }
}

/// What a connection listens to.
#[derive(Clone)]
struct Channels {
    /// `__keyspace@<db>__:`, which every channel starts with.
    prefix: String,
    /// The keys' channels; empty: the pattern for every key.
    keys: Vec<String>,
}

impl Keyspace {
    /// Connects and subscribes (so that nothing said after this returns is missed), then
    /// follows the notifications in a task of its own.
    pub(super) async fn start(
        client: &redis::Client,
        conn: &ConnectionManager,
        settings: &RedisSettings,
        keys: &[String],
    ) -> Result<Self, ConfigurationError> {
        let prefix = format!("__keyspace@{}__:", settings.db);
        let channels = Channels {
            keys: keys.iter().map(|k| format!("{prefix}{k}")).collect(),
            prefix,
        };
        let timeout = settings.dial_timeout + settings.read_timeout;
        let pubsub = listen(client, conn, &channels, timeout)
            .await
            .map_err(ConfigurationError::backend)?;
        let (tx, rx) = mpsc::channel(1);
        let link = Link {
            client: client.clone(),
            conn: conn.clone(),
            channels,
            timeout,
        };
        let task = tokio::spawn(follow(link, pubsub, tx));
        Ok(Keyspace { rx, task })
    }
}

/// What it takes to listen again.
struct Link {
    client: redis::Client,
    conn: ConnectionManager,
    channels: Channels,
    timeout: Duration,
}

/// Turns the notifications on (a restarted server forgot them), connects and subscribes.
async fn listen(
    client: &redis::Client,
    conn: &ConnectionManager,
    channels: &Channels,
    timeout: Duration,
) -> Result<PubSub, String> {
    enable_notifications(conn).await;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        if channels.keys.is_empty() {
            pubsub.psubscribe(format!("{}*", channels.prefix)).await?;
        } else {
            pubsub.subscribe(&channels.keys).await?;
        }
        Ok::<_, redis::RedisError>(pubsub)
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(res) => res.map_err(|e| format!("redis keyspace notifications: {e}")),
        Err(_) => Err(format!(
            "redis keyspace notifications: no connection within {timeout:?}"
        )),
    }
}

/// Passes notifications on, merging the keys of those the subscription has not taken yet;
/// reconnects when the connection is lost.
async fn follow(link: Link, mut pubsub: PubSub, tx: mpsc::Sender<Hint>) {
    let channels = &link.channels;
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut everything = false;
    loop {
        {
            let (mut sink, mut messages) = pubsub.split();
            let mut ping = tokio::time::interval(PING_EVERY);
            loop {
                tokio::select! {
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(link.timeout, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            break;
                        }
                    }
                    permit = tx.reserve(), if everything || !pending.is_empty() => {
                        let Ok(permit) = permit else { return };
                        if std::mem::take(&mut everything) {
                            pending.clear();
                            permit.send(Hint::Everything);
                        } else {
                            permit.send(Hint::Keys(std::mem::take(&mut pending).into_iter().collect()));
                        }
                    }
                    msg = messages.next() => match msg {
                        Some(msg) => {
                            if let Some(key) = msg.get_channel_name().strip_prefix(&channels.prefix) {
                                pending.insert(key.to_string());
                            }
                        }
                        None => break,
                    },
                }
            }
        }
        tracing::warn!(
            "configuration.redis: lost the keyspace notification connection; reconnecting"
        );
        let mut backoff = Duration::from_millis(100);
        pubsub = loop {
            if tx.is_closed() {
                return;
            }
            match listen(&link.client, &link.conn, channels, link.timeout).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::debug!(error = %e, "configuration.redis: reconnecting failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_RETRY);
                }
            }
        };
        tracing::info!(
            "configuration.redis: keyspace notifications back; reading the subscribed keys afresh"
        );
        everything = true;
    }
}

#[cfg(test)]
mod tests {
    use super::merged_flags;

    #[test]
    fn needed_classes_are_added_to_the_servers() {
        assert_eq!(merged_flags("").as_deref(), Some("Kg$xe"));
        assert_eq!(merged_flags("Ex").as_deref(), Some("ExKg$e"));
        assert_eq!(merged_flags("KA"), None);
        assert_eq!(merged_flags("AE").as_deref(), Some("AEK"));
        assert_eq!(merged_flags("Kg$xe"), None);
    }
}
