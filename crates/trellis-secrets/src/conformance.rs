//! The conformance suite every [`SecretStore`] backend passes.
//!
//! Secret stores are read-only through Dapr's API, so a backend's test seeds its store (sets
//! variables, writes a file, fills a vault) and hands the suite a [`Setup`]: the store, the
//! secrets it was seeded with, and what it answers for a name it does not hold (Dapr's
//! stores differ there: the environment store answers an empty value, the others an
//! error). A test file invokes one macro:
//!
//! ```ignore
//! mod file_conformance {
//!     trellis_secrets::conformance_tests!(async { super::seeded_file_store().await });
//! }
//! ```
//!
//! It expands to one `#[tokio::test]` per case, so a failure names the broken behaviour.
//! The cases are plain `pub async fn`s in [`cases`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{Secret, SecretStore};

/// What a store answers for a name it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// [`SecretError::NotFound`](crate::SecretError::NotFound) (file, vaults).
    NotFound,
    /// `{name: ""}` (the environment store, as Dapr's).
    EmptyValue,
}

/// A seeded store and what it was seeded with.
#[derive(Debug, Clone)]
pub struct Setup {
    pub store: Arc<dyn SecretStore>,
    /// Every secret the store must hold, with its exact contents.
    pub known: BTreeMap<String, Secret>,
    pub missing: Missing,
}

/// Expands to one `#[tokio::test]` per conformance case; see the module docs.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__secrets_conformance_cases! { $make;
            every_known_secret_reads_back,
            bulk_lists_every_known_secret,
            an_unknown_name_is_reported_as_the_store_declares,
            concurrent_reads_agree,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __secrets_conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let setup: $crate::conformance::Setup = $make.await;
                assert!(
                    !setup.known.is_empty(),
                    "the setup seeded no secrets, so the case would prove nothing"
                );
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

    use super::{Missing, Setup};
    use crate::{Secret, SecretError};

    pub async fn every_known_secret_reads_back(setup: Setup) {
        let none = BTreeMap::new();
        for (name, want) in &setup.known {
            let got = setup.store.get(name, &none).await.unwrap();
            assert_eq!(&got, want, "secret {name}");
        }
    }

    pub async fn bulk_lists_every_known_secret(setup: Setup) {
        let all = setup.store.bulk(&BTreeMap::new()).await.unwrap();
        for (name, want) in &setup.known {
            assert_eq!(all.get(name), Some(want), "secret {name} in bulk");
        }
    }

    pub async fn an_unknown_name_is_reported_as_the_store_declares(setup: Setup) {
        let name = "conformance-no-such-secret-8f3a";
        assert!(!setup.known.contains_key(name));
        let got = setup.store.get(name, &BTreeMap::new()).await;
        match setup.missing {
            Missing::NotFound => assert_eq!(got, Err(SecretError::NotFound(name.into()))),
            Missing::EmptyValue => {
                assert_eq!(got, Ok(Secret::from([(name.to_string(), String::new())])));
            }
        }
    }

    pub async fn concurrent_reads_agree(setup: Setup) {
        let mut tasks = Vec::new();
        for i in 0..32 {
            let (store, known) = (setup.store.clone(), setup.known.clone());
            tasks.push(tokio::spawn(async move {
                let (name, want) = known.iter().nth(i % known.len()).unwrap();
                let got = store.get(name, &BTreeMap::new()).await.unwrap();
                assert_eq!(&got, want);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
