//! The conformance suite every [`LockStore`] backend passes.
//!
//! A backend's test hands the suite a [`Setup`] (the open store); each case makes up its
//! own resource names, unique per run, so the cases run in parallel against one server and
//! again the next time. A test file invokes one macro:
//!
//! ```ignore
//! mod redis_conformance {
//!     trellis_lock::conformance_tests!(async { super::redis_store().await });
//! }
//! ```
//!
//! It expands to one `#[tokio::test]` per case, so a failure names the broken behaviour.
//! The cases are plain `pub async fn`s in [`cases`].

use std::sync::Arc;

use crate::LockStore;

/// An open store.
#[derive(Debug, Clone)]
pub struct Setup {
    pub store: Arc<dyn LockStore>,
}

/// A resource name no other case or run uses.
pub fn unique(case: &str) -> String {
    format!("conformance-{case}-{}", uuid::Uuid::new_v4().simple())
}

/// Expands to one `#[tokio::test]` per conformance case; see the module docs.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__lock_conformance_cases! { $make;
            a_free_resource_is_acquired,
            a_held_resource_is_refused_to_everyone,
            only_one_of_many_contenders_wins,
            the_owner_unlocks_and_the_next_acquires,
            another_owner_cannot_unlock,
            unlocking_a_missing_lock_says_so,
            an_expired_lease_is_taken_over,
            fencing_tokens_increase,
            invalid_input_is_rejected,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lock_conformance_cases {
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
    use std::time::Duration;

    use super::{Setup, unique};
    use crate::{LockError, TryLock, UnlockStatus};

    const LONG: Duration = Duration::from_secs(60);

    fn token(got: TryLock) -> u64 {
        match got {
            TryLock::Acquired { fencing_token } => fencing_token,
            TryLock::Held => panic!("expected the lock to be acquired"),
        }
    }

    pub async fn a_free_resource_is_acquired(setup: Setup) {
        let r = unique("acquire");
        let got = setup.store.try_lock(&r, "a", LONG).await.unwrap();
        assert!(token(got) > 0, "a fencing token is positive");
    }

    pub async fn a_held_resource_is_refused_to_everyone(setup: Setup) {
        let r = unique("held");
        assert!(
            setup
                .store
                .try_lock(&r, "a", LONG)
                .await
                .unwrap()
                .acquired()
        );
        assert_eq!(
            setup.store.try_lock(&r, "b", LONG).await.unwrap(),
            TryLock::Held
        );
        assert_eq!(
            setup.store.try_lock(&r, "a", LONG).await.unwrap(),
            TryLock::Held,
            "a lock is not re-entrant"
        );
        let other = unique("held-other");
        assert!(
            setup
                .store
                .try_lock(&other, "b", LONG)
                .await
                .unwrap()
                .acquired(),
            "another resource is independent"
        );
    }

    pub async fn only_one_of_many_contenders_wins(setup: Setup) {
        let r = unique("contention");
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (store, r) = (setup.store.clone(), r.clone());
            tasks.push(tokio::spawn(async move {
                store.try_lock(&r, &format!("owner-{i}"), LONG).await
            }));
        }
        let mut winners = 0;
        for t in tasks {
            if t.await.unwrap().unwrap().acquired() {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);
    }

    pub async fn the_owner_unlocks_and_the_next_acquires(setup: Setup) {
        let r = unique("unlock");
        assert!(
            setup
                .store
                .try_lock(&r, "a", LONG)
                .await
                .unwrap()
                .acquired()
        );
        assert_eq!(
            setup.store.unlock(&r, "a").await.unwrap(),
            UnlockStatus::Success
        );
        assert!(
            setup
                .store
                .try_lock(&r, "b", LONG)
                .await
                .unwrap()
                .acquired()
        );
        assert_eq!(
            setup.store.unlock(&r, "a").await.unwrap(),
            UnlockStatus::LockBelongsToOthers
        );
    }

    pub async fn another_owner_cannot_unlock(setup: Setup) {
        let r = unique("non-owner");
        assert!(
            setup
                .store
                .try_lock(&r, "a", LONG)
                .await
                .unwrap()
                .acquired()
        );
        assert_eq!(
            setup.store.unlock(&r, "b").await.unwrap(),
            UnlockStatus::LockBelongsToOthers
        );
        assert_eq!(
            setup.store.try_lock(&r, "b", LONG).await.unwrap(),
            TryLock::Held,
            "the failed unlock left the lease alone"
        );
        assert_eq!(
            setup.store.unlock(&r, "a").await.unwrap(),
            UnlockStatus::Success
        );
    }

    pub async fn unlocking_a_missing_lock_says_so(setup: Setup) {
        let r = unique("missing");
        assert_eq!(
            setup.store.unlock(&r, "a").await.unwrap(),
            UnlockStatus::LockDoesNotExist
        );
        assert!(
            setup
                .store
                .try_lock(&r, "a", LONG)
                .await
                .unwrap()
                .acquired()
        );
        assert_eq!(
            setup.store.unlock(&r, "a").await.unwrap(),
            UnlockStatus::Success
        );
        assert_eq!(
            setup.store.unlock(&r, "a").await.unwrap(),
            UnlockStatus::LockDoesNotExist,
            "a second unlock finds nothing"
        );
    }

    pub async fn an_expired_lease_is_taken_over(setup: Setup) {
        let (r, lone) = (unique("expiry"), unique("expiry-lone"));
        let short = Duration::from_secs(1);
        let first = token(setup.store.try_lock(&r, "a", short).await.unwrap());
        assert!(
            setup
                .store
                .try_lock(&lone, "a", short)
                .await
                .unwrap()
                .acquired()
        );
        assert_eq!(
            setup.store.try_lock(&r, "b", short).await.unwrap(),
            TryLock::Held
        );
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let second = token(setup.store.try_lock(&r, "b", LONG).await.unwrap());
        assert!(second > first, "{second} > {first}");
        assert_eq!(
            setup.store.unlock(&r, "a").await.unwrap(),
            UnlockStatus::LockBelongsToOthers,
            "the expired owner's unlock does not release the new lease"
        );
        assert_eq!(
            setup.store.unlock(&lone, "a").await.unwrap(),
            UnlockStatus::LockDoesNotExist,
            "an expired lease nobody took over is gone"
        );
        assert_eq!(
            setup.store.unlock(&r, "b").await.unwrap(),
            UnlockStatus::Success
        );
    }

    pub async fn fencing_tokens_increase(setup: Setup) {
        let r = unique("fencing");
        let mut last = 0;
        for i in 0..5 {
            let owner = format!("owner-{i}");
            let t = token(setup.store.try_lock(&r, &owner, LONG).await.unwrap());
            assert!(t > last, "token {t} after {last}");
            last = t;
            assert_eq!(
                setup.store.unlock(&r, &owner).await.unwrap(),
                UnlockStatus::Success
            );
        }
        // A refused attempt does not count as an acquisition, and the next one still
        // grows.
        assert!(
            setup
                .store
                .try_lock(&r, "x", LONG)
                .await
                .unwrap()
                .acquired()
        );
        assert_eq!(
            setup.store.try_lock(&r, "y", LONG).await.unwrap(),
            TryLock::Held
        );
        setup.store.unlock(&r, "x").await.unwrap();
        let t = token(setup.store.try_lock(&r, "y", LONG).await.unwrap());
        assert!(t > last);
    }

    pub async fn invalid_input_is_rejected(setup: Setup) {
        let r = unique("invalid");
        let invalid = |res: Result<_, LockError>| matches!(res, Err(LockError::InvalidRequest(_)));
        assert!(invalid(
            setup.store.try_lock("", "a", LONG).await.map(|_| ())
        ));
        assert!(invalid(
            setup.store.try_lock(&r, "", LONG).await.map(|_| ())
        ));
        assert!(invalid(
            setup
                .store
                .try_lock(&r, "a", Duration::ZERO)
                .await
                .map(|_| ())
        ));
        assert!(invalid(setup.store.unlock("", "a").await.map(|_| ())));
        assert!(invalid(setup.store.unlock(&r, "").await.map(|_| ())));
        assert!(
            setup
                .store
                .try_lock(&r, "a", LONG)
                .await
                .unwrap()
                .acquired(),
            "nothing was locked by the rejected requests"
        );
    }
}
