//! The Redis backend against the server on 127.0.0.1:6379: the conformance suite, then what
//! is particular to it (Dapr's hash layout, ETags across re-creation, the default TTL,
//! failing fast and recovering across a server restart).

use std::time::Duration;

use redis::AsyncCommands;
use trellis_state::redis::RedisStore;
use trellis_state::{DeleteRequest, Metadata, SetRequest, StateError, StateStore};

use crate::servers;

fn md(pairs: &[(&str, &str)]) -> Metadata {
    let mut m = Metadata::default();
    m.insert("redisHost", "127.0.0.1:6379");
    for (k, v) in pairs {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

// The conformance cases namespace their keys themselves.
mod conformance {
    trellis_state::conformance_tests!(async {
        trellis_state::redis::RedisStore::open(&super::md(&[]))
            .await
            .expect("open a redis store")
    }, lacks: [query]);
}

async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379/")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

#[tokio::test]
async fn keeps_daprs_hash_layout() {
    let key = servers::unique("trellis-it-layout");
    let store = RedisStore::open(&md(&[])).await.unwrap();
    let mut req = SetRequest::new(&key, "{\"a\": 1}");
    req.content_type = Some("application/json".into());
    store.set(req).await.unwrap();
    let mut r = raw().await;
    let data: Vec<u8> = r.hget(&key, "data").await.unwrap();
    let version: String = r.hget(&key, "version").await.unwrap();
    assert_eq!(data, b"{\"a\": 1}");
    assert_eq!(store.get(&key).await.unwrap().unwrap().etag, version);
    // A write increments the version, as Dapr's scripts do.
    store.set(SetRequest::new(&key, "2")).await.unwrap();
    let next: i64 = r.hget(&key, "version").await.unwrap();
    assert_eq!(next, version.parse::<i64>().unwrap() + 1);
    // A key written by a Dapr sidecar (version 1) is read and written as usual.
    let dapr_key = servers::unique("trellis-it-dapr");
    let _: () = r
        .hset_multiple(&dapr_key, &[("data", "\"x\""), ("version", "1")])
        .await
        .unwrap();
    let item = store.get(&dapr_key).await.unwrap().unwrap();
    assert_eq!((&item.value[..], item.etag.as_str()), (&b"\"x\""[..], "1"));
    let mut req = SetRequest::new(&dapr_key, "\"y\"");
    req.etag = Some("1".into());
    store.set(req).await.unwrap();
    assert_eq!(store.get(&dapr_key).await.unwrap().unwrap().etag, "2");
    let _: () = r.del(&[&key, &dapr_key]).await.unwrap();
}

#[tokio::test]
async fn recreated_keys_never_reuse_an_etag() {
    let key = servers::unique("trellis-it-recreate");
    let store = RedisStore::open(&md(&[])).await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        store.set(SetRequest::new(&key, "1")).await.unwrap();
        store.set(SetRequest::new(&key, "2")).await.unwrap();
        let etag = store.get(&key).await.unwrap().unwrap().etag;
        assert!(seen.insert(etag.clone()), "etag {etag} came back");
        store.delete(DeleteRequest::new(&key)).await.unwrap();
    }
}

#[tokio::test]
async fn ttl_in_seconds_is_the_default_ttl() {
    let key = servers::unique("trellis-it-ttl");
    let store = RedisStore::open(&md(&[("ttlInSeconds", "100")]))
        .await
        .unwrap();
    store.set(SetRequest::new(&key, "1")).await.unwrap();
    let ttl: i64 = raw().await.ttl(&key).await.unwrap();
    assert!((90..=100).contains(&ttl), "ttl {ttl}");
    assert!(store.get(&key).await.unwrap().unwrap().expires_at.is_some());
    // A request's own TTL wins over the default.
    let mut req = SetRequest::new(&key, "2");
    req.ttl = Some(Duration::from_secs(5));
    store.set(req).await.unwrap();
    let ttl: i64 = raw().await.ttl(&key).await.unwrap();
    assert!((1..=5).contains(&ttl), "ttl {ttl}");
    store.delete(DeleteRequest::new(&key)).await.unwrap();
}

#[tokio::test]
async fn redis_db_selects_the_database() {
    let key = servers::unique("trellis-it-db");
    let store = RedisStore::open(&md(&[("redisDB", "5")])).await.unwrap();
    store.set(SetRequest::new(&key, "1")).await.unwrap();
    let mut r = raw().await;
    let in_db0: bool = r.exists(&key).await.unwrap();
    assert!(!in_db0);
    let mut db5 = redis::Client::open("redis://127.0.0.1:6379/5")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let in_db5: bool = db5.exists(&key).await.unwrap();
    assert!(in_db5);
    store.delete(DeleteRequest::new(&key)).await.unwrap();
}

#[tokio::test]
async fn unreachable_server_fails_fast_with_the_drivers_error() {
    let started = std::time::Instant::now();
    let err = RedisStore::open(&md(&[("redisHost", "127.0.0.1:1")]))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        StateError::Backend(text) => assert!(!text.is_empty()),
        other => panic!("expected a backend error, got {other:?}"),
    }
    let err = RedisStore::open(&md(&[("enableTLS", "true")]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not supported yet"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_recovers_without_reopening() {
    servers::require_nextest("redis_restart_recovers_without_reopening");
    let key = servers::unique("trellis-it-restart");
    let store = RedisStore::open(&md(&[("readTimeout", "2s"), ("dialTimeout", "1s")]))
        .await
        .unwrap();
    // This Redis keeps nothing on disk: the value is gone after the restart.
    servers::check_restart_recovery(servers::REDIS, &store, &key, Duration::from_secs(3), false)
        .await;
    store.delete(DeleteRequest::new(&key)).await.unwrap();
}

#[tokio::test]
async fn bulk_get_answers_a_key_asked_twice() {
    let store = RedisStore::open(&md(&[])).await.unwrap();
    servers::check_bulk_get_duplicates(&store, &servers::unique("trellis-it-dup")).await;
}
