//! Subscriptions to changes: the one mechanism every backend shares.
//!
//! A backend only says *that* something may have changed ([`Hint`]: these keys, or
//! anything) through a [`Watch`] (a Redis keyspace notification, a PostgreSQL `NOTIFY`, the
//! embedded store's version counter moving), and how to read items ([`Reader`]). The
//! subscription task here does the rest, the same way for every backend:
//!
//! - it reads the subscribed keys once when the subscription starts (the watch already
//!   running, so that nothing changed in between is missed) and keeps what it read;
//! - on a hint it reads the keys concerned again and passes on only what differs from what
//!   it kept: a new or changed item as it is now, a deleted one as an empty item (no value,
//!   version or metadata), as Dapr's Redis store reports a deletion;
//! - a watch that lost its backend and came back says [`Hint::Everything`], and the fresh
//!   read of every subscribed key delivers the changes made while it was away (only those);
//! - a read that fails is tried again (every subscribed key, backing off up to
//!   [`MAX_RETRY`]) until one succeeds;
//! - when the subscriber is slower than the changes, changes of the same key are merged, so
//!   a subscriber always gets the latest item and nothing piles up.
//!
//! Dropping the [`Subscription`] stops its task.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{ConfigurationError, Item};

/// Changed items by key; a deleted item is an empty [`Item`].
pub type Update = BTreeMap<String, Item>;

/// The first wait before reading again after a failed read.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// The longest wait between two reads while the backend keeps failing.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// What a backend's [`Watch`] knows about a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// These keys may have changed.
    Keys(Vec<String>),
    /// Anything may have changed (the backend was away, or cannot say which keys).
    Everything,
}

/// Reads items, as [`ConfigurationStore::get`](crate::ConfigurationStore::get) does (an
/// empty `keys`: every item).
#[async_trait]
pub trait Reader: Send + Sync + 'static {
    async fn read(&self, keys: &[String]) -> Result<BTreeMap<String, Item>, ConfigurationError>;
}

/// A backend's news of changes, for one subscription.
#[async_trait]
pub trait Watch: Send + 'static {
    /// The next hint; `None` once the store is gone for good.
    async fn next(&mut self) -> Option<Hint>;
}

/// A live subscription: [`Subscription::next`] answers each batch of changes.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Update>,
    task: JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscription {
    /// Reads `keys` (none: every key) through `reader` and starts the task that follows
    /// `watch`. Fails when that first read fails. `watch` must already be watching.
    pub async fn start(
        reader: Arc<dyn Reader>,
        keys: &[String],
        watch: impl Watch,
    ) -> Result<Self, ConfigurationError> {
        let keys: BTreeSet<String> = keys.iter().cloned().collect();
        let listed: Vec<String> = keys.iter().cloned().collect();
        let known = reader.read(&listed).await?;
        let (tx, rx) = mpsc::channel(1);
        let state = State {
            reader,
            keys,
            known,
            pending: Update::new(),
        };
        let task = tokio::spawn(state.run(watch, tx));
        Ok(Subscription { rx, task })
    }

    /// The next changes; `None` once the store closed the subscription.
    pub async fn next(&mut self) -> Option<Update> {
        self.rx.recv().await
    }
}

struct State {
    reader: Arc<dyn Reader>,
    /// The subscribed keys; empty: every key.
    keys: BTreeSet<String>,
    /// The items as last read (of the subscribed keys, or of the whole store).
    known: BTreeMap<String, Item>,
    /// Changes not yet taken by the subscriber.
    pending: Update,
}

impl State {
    async fn run(mut self, mut watch: impl Watch, tx: mpsc::Sender<Update>) {
        let mut retry_at: Option<Instant> = None;
        let mut backoff = FIRST_RETRY;
        loop {
            let hint = tokio::select! {
                permit = tx.reserve(), if !self.pending.is_empty() => {
                    match permit {
                        Ok(permit) => permit.send(std::mem::take(&mut self.pending)),
                        Err(_) => return,
                    }
                    continue;
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => Hint::Everything,
                hint = watch.next() => match hint {
                    Some(h) => h,
                    None => return,
                },
            };
            // Once a read failed, only a read of everything makes up for it.
            let hint = if retry_at.is_some() {
                Hint::Everything
            } else {
                hint
            };
            match self.apply(hint).await {
                Ok(()) => {
                    retry_at = None;
                    backoff = FIRST_RETRY;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "configuration subscription: read failed");
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Reads what `hint` concerns and records the differences.
    async fn apply(&mut self, hint: Hint) -> Result<(), ConfigurationError> {
        let (to_read, looked_at): (Vec<String>, Vec<String>) = match hint {
            Hint::Keys(keys) => {
                let keys: Vec<String> = keys
                    .into_iter()
                    .filter(|k| self.keys.is_empty() || self.keys.contains(k))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if keys.is_empty() {
                    return Ok(());
                }
                (keys.clone(), keys)
            }
            Hint::Everything => {
                let listed: Vec<String> = self.keys.iter().cloned().collect();
                // Every key: whatever was known and whatever is there now.
                (listed.clone(), listed)
            }
        };
        let fresh = self.reader.read(&to_read).await?;
        let looked_at: Vec<String> = if looked_at.is_empty() {
            self.known
                .keys()
                .chain(fresh.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            looked_at
        };
        let changes = diff(&mut self.known, &looked_at, fresh);
        self.pending.extend(changes);
        Ok(())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Brings `known` up to `fresh` for the keys `looked_at` and answers what changed: new and
/// changed items as they are now, deleted ones as empty items.
pub fn diff(
    known: &mut BTreeMap<String, Item>,
    looked_at: &[String],
    mut fresh: BTreeMap<String, Item>,
) -> Update {
    let mut changes = Update::new();
    for key in looked_at {
        match fresh.remove(key) {
            Some(item) => {
                if known.get(key) != Some(&item) {
                    known.insert(key.clone(), item.clone());
                    changes.insert(key.clone(), item);
                }
            }
            None => {
                if known.remove(key).is_some() {
                    changes.insert(key.clone(), Item::default());
                }
            }
        }
    }
    changes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn items(pairs: &[(&str, &str, &str)]) -> BTreeMap<String, Item> {
        pairs
            .iter()
            .map(|(k, v, ver)| (k.to_string(), Item::new(*v, *ver)))
            .collect()
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_differences_are_changes_and_deletions_are_empty_items() {
        let mut known = items(&[("a", "1", "1"), ("b", "2", "2"), ("c", "3", "3")]);
        let fresh = items(&[("a", "1", "1"), ("b", "20", "4"), ("d", "4", "5")]);
        let changes = diff(&mut known, &keys(&["a", "b", "c", "d"]), fresh);
        assert_eq!(
            changes,
            BTreeMap::from([
                ("b".to_string(), Item::new("20", "4")),
                ("c".to_string(), Item::default()),
                ("d".to_string(), Item::new("4", "5")),
            ])
        );
        assert_eq!(
            known,
            items(&[("a", "1", "1"), ("b", "20", "4"), ("d", "4", "5")])
        );
        // Nothing new the second time.
        let fresh = known.clone();
        assert!(diff(&mut known, &keys(&["a", "b", "c", "d"]), fresh).is_empty());
        // A key not looked at is left alone even when absent from the read.
        let changes = diff(&mut known, &keys(&["a"]), BTreeMap::new());
        assert_eq!(changes.keys().collect::<Vec<_>>(), vec!["a"]);
        assert!(known.contains_key("b"));
    }

    /// A reader over a map the test changes, and a watch the test drives.
    struct Fake(
        std::sync::Mutex<BTreeMap<String, Item>>,
        std::sync::atomic::AtomicBool,
    );

    #[async_trait]
    impl Reader for Fake {
        async fn read(
            &self,
            keys: &[String],
        ) -> Result<BTreeMap<String, Item>, ConfigurationError> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ConfigurationError::Backend("down".into()));
            }
            let all = self.0.lock().unwrap().clone();
            Ok(all
                .into_iter()
                .filter(|(k, _)| keys.is_empty() || keys.contains(k))
                .collect())
        }
    }

    struct Hints(mpsc::UnboundedReceiver<Hint>);

    #[async_trait]
    impl Watch for Hints {
        async fn next(&mut self) -> Option<Hint> {
            self.0.recv().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hints_become_updates_and_failed_reads_are_made_up_for() {
        let fake = Arc::new(Fake(
            std::sync::Mutex::new(items(&[("a", "1", "1")])),
            Default::default(),
        ));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sub = Subscription::start(fake.clone(), &keys(&["a", "b"]), Hints(rx))
            .await
            .unwrap();
        let set = |k: &str, v: &str, ver: &str| {
            fake.0.lock().unwrap().insert(k.into(), Item::new(v, ver));
        };
        set("b", "2", "2");
        set("other", "x", "9");
        tx.send(Hint::Keys(keys(&["other"]))).unwrap();
        tx.send(Hint::Keys(keys(&["b"]))).unwrap();
        assert_eq!(sub.next().await.unwrap(), items(&[("b", "2", "2")]));
        // The backend goes away; a change meanwhile arrives after it is back.
        fake.1.store(true, std::sync::atomic::Ordering::SeqCst);
        tx.send(Hint::Everything).unwrap();
        tokio::task::yield_now().await;
        fake.0.lock().unwrap().remove("a");
        fake.1.store(false, std::sync::atomic::Ordering::SeqCst);
        let got = sub.next().await.unwrap();
        assert_eq!(got, BTreeMap::from([("a".to_string(), Item::default())]));
        drop(tx);
        assert!(sub.next().await.is_none());
    }
}
