//! `LISTEN` for the PostgreSQL store's subscribers: one connection per notify channel
//! (outside the pool, since a listening connection is held for good), shared by every
//! subscription on that channel, and closed when the last of them is gone.
//!
//! Each notification becomes a [`Hint`]: a payload with a row (`{"data": {"key": ...}}`,
//! as Dapr's documented trigger sends) names its key; any other payload, the empty one
//! included, means "read everything again". When the connection is lost (the server
//! restarted, the backend was terminated) the listener connects and listens again, backing
//! off, and then says [`Hint::Everything`].

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::Shared;
use crate::ConfigurationError;
use crate::subscription::{Hint, MAX_RETRY, Watch};

/// How often a listener checks whether anyone still subscribes.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The listening connections of one store, by channel.
#[derive(Default)]
pub(super) struct Listeners(Mutex<HashMap<String, broadcast::Sender<Hint>>>);

/// One subscription's notifications.
pub(super) struct Notifications(broadcast::Receiver<Hint>);

#[async_trait]
impl Watch for Notifications {
    async fn next(&mut self) -> Option<Hint> {
        match self.0.recv().await {
            Ok(hint) => Some(hint),
            // Hints were dropped: reading everything makes up for them.
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Hint::Everything),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The notifications of `channel`, listening first if nobody does yet.
pub(super) async fn subscribe(
    shared: &Arc<Shared>,
    channel: &str,
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<Notifications, ConfigurationError> {
    let mut map = shared.listeners.0.lock().await;
    if let Some(sender) = map.get(channel) {
        return Ok(Notifications(sender.subscribe()));
    }
    let (client, notes) = listen(config, channel, timeout)
        .await
        .map_err(ConfigurationError::Backend)?;
    let (sender, rx) = broadcast::channel(256);
    map.insert(channel.to_string(), sender.clone());
    tokio::spawn(run(
        Arc::downgrade(shared),
        channel.to_string(),
        config.clone(),
        timeout,
        sender,
        client,
        notes,
    ));
    Ok(Notifications(rx))
}

/// Connects and listens; the payloads arrive on the receiver, which ends when the
/// connection does. The client must be kept: dropping it closes the connection.
async fn listen(
    config: &tokio_postgres::Config,
    channel: &str,
    timeout: Duration,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), String> {
    let connect = async {
        let (client, mut conn) = config.connect(NoTls).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_string()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "configuration.postgresql: listening connection failed");
                        return;
                    }
                }
            }
        });
        let quoted = channel.replace('"', "\"\"");
        client
            .batch_execute(&format!("LISTEN \"{quoted}\""))
            .await?;
        Ok::<_, tokio_postgres::Error>((client, rx))
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(res) => res.map_err(|e| format!("postgresql listen on {channel:?}: {e}")),
        Err(_) => Err(format!(
            "postgresql listen on {channel:?}: no connection within {timeout:?}"
        )),
    }
}

/// What a notification's payload says.
fn hint(payload: &str) -> Hint {
    let key = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            let row = v.get("data")?.as_object()?;
            row.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("key"))
                .and_then(|(_, v)| v.as_str().map(str::to_string))
        });
    match key {
        Some(key) => Hint::Keys(vec![key]),
        None => Hint::Everything,
    }
}

async fn run(
    shared: Weak<Shared>,
    channel: String,
    config: tokio_postgres::Config,
    timeout: Duration,
    sender: broadcast::Sender<Hint>,
    mut client: Client,
    mut notes: mpsc::UnboundedReceiver<String>,
) {
    let mut idle = tokio::time::interval(IDLE_CHECK);
    loop {
        tokio::select! {
            note = notes.recv() => match note {
                Some(payload) => {
                    let _ = sender.send(hint(&payload));
                }
                None => {
                    tracing::warn!(channel, "configuration.postgresql: lost the listening connection; reconnecting");
                    let mut backoff = Duration::from_millis(100);
                    loop {
                        if sender.receiver_count() == 0 && stop(&shared, &channel, &sender).await {
                            return;
                        }
                        match listen(&config, &channel, timeout).await {
                            Ok((c, n)) => {
                                (client, notes) = (c, n);
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "configuration.postgresql: reconnecting failed");
                                tokio::time::sleep(backoff).await;
                                backoff = (backoff * 2).min(MAX_RETRY);
                            }
                        }
                    }
                    tracing::info!(channel, "configuration.postgresql: listening again; reading the subscribed keys afresh");
                    let _ = sender.send(Hint::Everything);
                }
            },
            _ = idle.tick() => {
                if sender.receiver_count() == 0 && stop(&shared, &channel, &sender).await {
                    drop(client);
                    return;
                }
            }
        }
    }
}

/// Removes the listener if still nobody subscribes (checked under the lock subscribers
/// take); answers whether it did.
async fn stop(shared: &Weak<Shared>, channel: &str, sender: &broadcast::Sender<Hint>) -> bool {
    let Some(shared) = shared.upgrade() else {
        return true;
    };
    let mut map = shared.listeners.0.lock().await;
    if sender.receiver_count() > 0 {
        return false;
    }
    map.remove(channel);
    true
}

#[cfg(test)]
mod tests {
    use super::{Hint, hint};

    #[test]
    fn payloads_name_their_key_or_everything() {
        let row = r#"{"table":"t","action":"UPDATE","data":{"key":"a","value":"1","version":"2","metadata":null}}"#;
        assert_eq!(hint(row), Hint::Keys(vec!["a".into()]));
        let upper = r#"{"data":{"KEY":"b"}}"#;
        assert_eq!(hint(upper), Hint::Keys(vec!["b".into()]));
        assert_eq!(hint(""), Hint::Everything);
        assert_eq!(hint("changed"), Hint::Everything);
        assert_eq!(hint(r#"{"data":[1]}"#), Hint::Everything);
    }
}
