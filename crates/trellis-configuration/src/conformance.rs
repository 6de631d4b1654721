//! The conformance suite every [`ConfigurationStore`] backend passes.
//!
//! The API only reads a configuration store, so a backend's test hands the suite a
//! [`Setup`]: the open store and a [`Seed`] that writes items the backend's own way (a
//! `SET` for Redis, an `INSERT` for PostgreSQL, another store on the same file for
//! SQLite), always over a connection of its own, so that subscriptions must hear of
//! changes the way they would from another process. Each case makes up its own keys, unique
//! per run, so the cases run in parallel against one server and again the next time. A
//! test file invokes one macro:
//!
//! ```ignore
//! mod redis_conformance {
//!     trellis_configuration::conformance_tests!(super::redis_store());
//! }
//! ```
//!
//! It expands to one `#[tokio::test]` per case, so a failure names the broken behaviour.
//! The cases are plain `pub async fn`s in [`cases`].

use std::sync::Arc;

use async_trait::async_trait;

use crate::ConfigurationStore;

/// Writes items into the store under test, the backend's way.
#[async_trait]
pub trait Seed: Send + Sync {
    /// Sets `key` to `value`, with a version different from the key's previous one.
    async fn set(&self, key: &str, value: &str);
    /// Deletes `key`.
    async fn delete(&self, key: &str);
}

/// An open store and its seeder.
#[derive(Clone)]
pub struct Setup {
    pub store: Arc<dyn ConfigurationStore>,
    pub seed: Arc<dyn Seed>,
}

/// The next item of `key` `sub` delivers, skipping other keys' changes; panics when none
/// comes within `patience` (a bound, not a measurement: latency is trellis-bench's).
pub async fn next_change(
    sub: &mut crate::Subscription,
    key: &str,
    patience: std::time::Duration,
) -> crate::Item {
    let wait = async {
        loop {
            let update = sub.next().await.expect("the subscription ended");
            if let Some(item) = update.get(key) {
                return item.clone();
            }
        }
    };
    tokio::time::timeout(patience, wait)
        .await
        .unwrap_or_else(|_| panic!("no change of {key} within {patience:?}"))
}

/// A key no other case or run uses.
pub fn unique(case: &str) -> String {
    format!("conformance-{case}-{}", uuid::Uuid::new_v4().simple())
}

/// Expands to one `#[tokio::test]` per conformance case; see the module docs.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__configuration_conformance_cases! { $make;
            named_keys_are_read,
            missing_keys_are_left_out,
            no_keys_means_every_item,
            a_change_changes_value_and_version,
            a_change_reaches_a_subscriber,
            a_deletion_reaches_a_subscriber_as_an_empty_item,
            a_subscription_to_every_key_sees_new_keys,
            dropping_a_subscription_leaves_the_others,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __configuration_conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let setup: $crate::conformance::Setup = $make.await;
                $crate::conformance::cases::$case(setup).await;
            }
        )*
    };
}

/// The cases; each panics on a violation.
// Test code: a failed unwrap is a failed case, with its location.
#[allow(clippy::unwrap_used)]
pub mod cases {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::{Setup, unique};
    use crate::{Item, Subscription};

    fn no_metadata() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// How long a case waits for a change before it fails.
    const PATIENCE: Duration = Duration::from_secs(10);

    async fn next_of(sub: &mut Subscription, key: &str) -> Item {
        super::next_change(sub, key, PATIENCE).await
    }

    pub async fn named_keys_are_read(s: Setup) {
        let (a, b) = (unique("read-a"), unique("read-b"));
        s.seed.set(&a, "one").await;
        s.seed.set(&b, "two").await;
        let got = s
            .store
            .get(&[a.clone(), b.clone()], &no_metadata())
            .await
            .unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[&a].value, "one");
        assert_eq!(got[&b].value, "two");
        assert!(!got[&a].version.is_empty(), "a seeded item has a version");
    }

    pub async fn missing_keys_are_left_out(s: Setup) {
        let (a, missing) = (unique("present"), unique("missing"));
        s.seed.set(&a, "here").await;
        let got = s
            .store
            .get(&[a.clone(), missing.clone()], &no_metadata())
            .await
            .unwrap();
        assert_eq!(got.keys().collect::<Vec<_>>(), vec![&a]);
        let got = s.store.get(&[missing], &no_metadata()).await.unwrap();
        assert!(got.is_empty(), "{got:?}");
    }

    pub async fn no_keys_means_every_item(s: Setup) {
        let (a, b) = (unique("all-a"), unique("all-b"));
        s.seed.set(&a, "x").await;
        s.seed.set(&b, "y").await;
        // Other cases' items may be there too.
        let got = s.store.get(&[], &no_metadata()).await.unwrap();
        assert_eq!(got.get(&a).map(|i| i.value.as_str()), Some("x"));
        assert_eq!(got.get(&b).map(|i| i.value.as_str()), Some("y"));
    }

    pub async fn a_change_changes_value_and_version(s: Setup) {
        let a = unique("change");
        s.seed.set(&a, "before").await;
        let first = s
            .store
            .get(std::slice::from_ref(&a), &no_metadata())
            .await
            .unwrap();
        s.seed.set(&a, "after").await;
        let second = s
            .store
            .get(std::slice::from_ref(&a), &no_metadata())
            .await
            .unwrap();
        assert_eq!(first[&a].value, "before");
        assert_eq!(second[&a].value, "after");
        assert_ne!(first[&a].version, second[&a].version);
    }

    pub async fn a_change_reaches_a_subscriber(s: Setup) {
        let (a, b, other) = (unique("sub-a"), unique("sub-b"), unique("sub-other"));
        s.seed.set(&a, "before").await;
        let mut sub = s
            .store
            .subscribe(&[a.clone(), b.clone()], &no_metadata())
            .await
            .unwrap();
        // A key nobody subscribed to is not delivered, and what was there before the
        // subscription is not delivered either: the first update is b's alone.
        s.seed.set(&other, "x").await;
        s.seed.set(&b, "new").await;
        let first = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("no update")
            .expect("the subscription ended");
        assert_eq!(first.keys().collect::<Vec<_>>(), vec![&b], "{first:?}");
        assert_eq!(first[&b].value, "new");
        assert!(!first[&b].version.is_empty());
        s.seed.set(&a, "after").await;
        let item = next_of(&mut sub, &a).await;
        assert_eq!(item.value, "after");
        let now = s
            .store
            .get(std::slice::from_ref(&a), &no_metadata())
            .await
            .unwrap();
        assert_eq!(now[&a], item, "the change arrives as get answers it");
    }

    pub async fn a_deletion_reaches_a_subscriber_as_an_empty_item(s: Setup) {
        let a = unique("sub-del");
        s.seed.set(&a, "doomed").await;
        let mut sub = s
            .store
            .subscribe(std::slice::from_ref(&a), &no_metadata())
            .await
            .unwrap();
        s.seed.delete(&a).await;
        assert_eq!(next_of(&mut sub, &a).await, Item::default());
        s.seed.set(&a, "back").await;
        assert_eq!(next_of(&mut sub, &a).await.value, "back");
    }

    pub async fn a_subscription_to_every_key_sees_new_keys(s: Setup) {
        let a = unique("sub-all");
        let mut sub = s.store.subscribe(&[], &no_metadata()).await.unwrap();
        s.seed.set(&a, "fresh").await;
        assert_eq!(next_of(&mut sub, &a).await.value, "fresh");
        s.seed.delete(&a).await;
        assert_eq!(next_of(&mut sub, &a).await, Item::default());
    }

    pub async fn dropping_a_subscription_leaves_the_others(s: Setup) {
        let a = unique("sub-two");
        let first = s
            .store
            .subscribe(std::slice::from_ref(&a), &no_metadata())
            .await
            .unwrap();
        let mut second = s
            .store
            .subscribe(std::slice::from_ref(&a), &no_metadata())
            .await
            .unwrap();
        drop(first);
        s.seed.set(&a, "still heard").await;
        assert_eq!(next_of(&mut second, &a).await.value, "still heard");
    }
}
