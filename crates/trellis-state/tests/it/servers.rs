//! The servers the networked backends are tested against come from `trellis-test-support`;
//! this adds the recovery check every state backend runs.

// Each backend's feature uses its own server; with one feature on, the others are unused.
#![allow(dead_code)]

use std::time::{Duration, Instant};

pub use trellis_test_support::servers::*;

/// The recovery check every backend runs: with `server` stopped, calls on `store` fail fast
/// with the backend's error; once it is back, the same store works again (no reopening).
/// `persistent` says whether the server keeps data across the restart (Redis here does not).
pub async fn check_restart_recovery(
    server: Server,
    store: &dyn trellis_state::StateStore,
    key: &str,
    timeout: Duration,
    persistent: bool,
) {
    use trellis_state::{SetRequest, StateError};

    store
        .set(SetRequest::new(key, "\"before\""))
        .await
        .expect("set before the restart");
    let mut stopped = tokio::task::block_in_place(|| server.stop());

    // A generous margin over the timeout: the point is "no hang", not exact timing.
    let limit = timeout + Duration::from_secs(2);
    for round in 0..3 {
        let started = Instant::now();
        let got = store.get(key).await;
        let took = started.elapsed();
        match got {
            Err(StateError::Backend(text)) => assert!(!text.is_empty()),
            other => panic!("get with {} down (round {round}): {other:?}", server.name),
        }
        assert!(took < limit, "get with the server down took {took:?}");
        let started = Instant::now();
        let set = store.set(SetRequest::new(key, "\"during\"")).await;
        let took = started.elapsed();
        assert!(
            matches!(set, Err(StateError::Backend(_))),
            "set with {} down: {set:?}",
            server.name
        );
        assert!(took < limit, "set with the server down took {took:?}");
        assert!(store.ping().await.is_err(), "ping with the server down");
    }

    tokio::task::block_in_place(|| stopped.start());
    let started = Instant::now();
    let mut failures = Vec::new();
    let item = loop {
        match store.get(key).await {
            Ok(item) => break item,
            Err(e) => {
                failures.push(e.to_string());
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{} is back but the store still fails: {failures:?}",
                    server.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The server accepted queries before the loop started: the pool (or connection manager)
    // must have dropped its dead connections by itself, not failed a call to find out.
    assert!(
        failures.is_empty(),
        "calls failed after {} was back: {failures:?}",
        server.name
    );
    if persistent {
        let item = item.expect("the value written before the restart survives it");
        assert_eq!(&item.value[..], b"\"before\"");
    }
    store
        .set(SetRequest::new(key, "\"after\""))
        .await
        .expect("set after the restart");
    let item = store.get(key).await.expect("get after the restart");
    assert_eq!(
        item.map(|i| i.value),
        Some(bytes::Bytes::from_static(b"\"after\""))
    );
    store.ping().await.expect("ping after the restart");
}

/// A bulk read that names a key twice (and a missing key) answers every entry in order.
pub async fn check_bulk_get_duplicates(store: &dyn trellis_state::StateStore, prefix: &str) {
    use trellis_state::{DeleteRequest, SetRequest};

    let (a, missing) = (format!("{prefix}a"), format!("{prefix}missing"));
    store.set(SetRequest::new(&a, "1")).await.expect("set");
    let keys = [a.clone(), missing.clone(), a.clone()];
    let got = store.bulk_get(&keys).await;
    let answers: Vec<(String, Option<Vec<u8>>)> = got
        .into_iter()
        .map(|(k, r)| (k, r.expect("bulk get").map(|i| i.value.to_vec())))
        .collect();
    assert_eq!(
        answers,
        [
            (a.clone(), Some(b"1".to_vec())),
            (missing, None),
            (a.clone(), Some(b"1".to_vec())),
        ]
    );
    store.delete(DeleteRequest::new(&a)).await.expect("delete");
}
