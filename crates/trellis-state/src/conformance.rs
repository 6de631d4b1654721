//! The conformance suite every [`StateStore`] backend passes.
//!
//! A backend's test file invokes one macro with an async expression that builds the store:
//!
//! ```ignore
//! mod sqlite_conformance {
//!     trellis_state::conformance_tests!(async {
//!         trellis_state::sqlite::SqliteStore::open(&metadata()).await.unwrap()
//!     });
//! }
//! ```
//!
//! It expands to one `#[test]` per case (so a failure names the broken behaviour), each
//! running on its own multi-threaded tokio runtime. The expression may evaluate to an
//! `impl StateStore`, an `Arc<impl StateStore>`, an `Arc<dyn StateStore>`, or an `Option` of
//! any of those (`None` fails the case: a case that cannot run must not pass).
//!
//! Every case works under its own random key namespace (`conformance-<random>-<case>||`), so
//! the cases run in parallel, and the suite runs repeatedly, against one shared database;
//! keys a case created are deleted (best effort) when it ends.
//!
//! Cases that need a capability (`etag`, `transactional`, `ttl`, `query`) exist only for a
//! store that has it: a store without one says so, `conformance_tests!(make, lacks:
//! [query])`, and those cases are not generated, so the test runner lists none that proves
//! nothing. The generated `declared_capabilities_match_the_store` test fails when the
//! store's [`Capabilities`](crate::Capabilities) and `lacks` disagree.
//!
//! The cases are plain `pub async fn`s in [`cases`], so a backend can also call one directly.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::StateStore;

/// What a store factory may produce; see the module docs.
pub trait IntoStore {
    fn into_store(self) -> Option<Arc<dyn StateStore>>;
}

impl<T: StateStore + 'static> IntoStore for T {
    fn into_store(self) -> Option<Arc<dyn StateStore>> {
        Some(Arc::new(self))
    }
}

impl<T: StateStore + 'static> IntoStore for Arc<T> {
    fn into_store(self) -> Option<Arc<dyn StateStore>> {
        Some(self)
    }
}

impl IntoStore for Arc<dyn StateStore> {
    fn into_store(self) -> Option<Arc<dyn StateStore>> {
        Some(self)
    }
}

impl<T: IntoStore> IntoStore for Option<T> {
    fn into_store(self) -> Option<Arc<dyn StateStore>> {
        self.and_then(IntoStore::into_store)
    }
}

/// One case's store and key namespace.
#[derive(Debug)]
pub struct Ctx {
    pub store: Arc<dyn StateStore>,
    ns: String,
    created: Mutex<BTreeSet<String>>,
}

impl Ctx {
    pub fn new(store: Arc<dyn StateStore>, case: &str) -> Self {
        Self {
            store,
            ns: format!("conformance-{:016x}-{case}||", random_u64()),
            created: Mutex::new(BTreeSet::new()),
        }
    }

    /// The namespace every key of this case starts with (ends in `||`).
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// A key inside this case's namespace, remembered for the clean-up.
    pub fn key(&self, name: &str) -> String {
        let key = format!("{}{name}", self.ns);
        if let Ok(mut created) = self.created.lock() {
            created.insert(key.clone());
        }
        key
    }

    /// Deletes every key handed out by [`Ctx::key`], ignoring errors: a shared database
    /// should not fill up with conformance leftovers, but clean-up must not fail a case.
    pub async fn cleanup(&self) {
        let keys: Vec<String> = match self.created.lock() {
            Ok(created) => created.iter().cloned().collect(),
            Err(_) => return,
        };
        for key in keys {
            let _ = self.store.delete(crate::DeleteRequest::new(key)).await;
        }
    }
}

/// A random 64-bit number without a dependency: std's `RandomState` is seeded randomly
/// per instance; the clock and pid are mixed in so two processes never collide in practice.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}

/// Runs one case on a fresh multi-threaded runtime (the concurrency cases need real
/// parallelism); used by [`conformance_tests!`](crate::conformance_tests).
pub fn run<M, MF, S, C, CF>(case_name: &str, make: M, case: C)
where
    M: FnOnce() -> MF,
    MF: Future<Output = S>,
    S: IntoStore,
    C: FnOnce(Arc<Ctx>) -> CF,
    CF: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");
    rt.block_on(async move {
        let Some(store) = make().await.into_store() else {
            panic!("{case_name}: the store factory returned None, so there is nothing to test");
        };
        let ctx = Arc::new(Ctx::new(store, case_name));
        case(ctx.clone()).await;
        ctx.cleanup().await;
    });
}

/// Expands to one `#[test]` per conformance case the store can run; see
/// [`conformance`](crate::conformance). `lacks: [etag, transactional, ttl, query]` leaves out
/// the cases of capabilities the store does not have.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!($make, lacks: []);
    };
    ($make:expr, lacks: [$($lack:ident),* $(,)?]) => {
        $crate::__conformance_cases! { $make;
            get_missing,
            roundtrip_json_object,
            roundtrip_json_string,
            roundtrip_binary,
            bulk_set_roundtrip,
            first_write_without_etag,
            last_write_without_etag_always_wins,
            delete_with_correct_etag,
            delete_missing_without_etag,
            bulk_get_mixed,
            content_type_roundtrip,
            odd_keys,
            large_value,
        }
        $crate::__state_unless_lacking! { etag; [$($lack),*];
            $crate::__conformance_cases! { $make;
                etag_changes_on_every_write,
                etag_not_reused_after_recreate,
                stale_etag_on_set_fails,
                malformed_etag_changes_nothing,
                delete_with_stale_etag_fails,
                concurrent_etag_race_one_winner,
                concurrent_counter_no_lost_update,
            }
            $crate::__state_unless_lacking! { transactional; [$($lack),*];
                $crate::__conformance_cases! { $make; transact_with_stale_etag_applies_nothing }
            }
        }
        $crate::__state_unless_lacking! { transactional; [$($lack),*];
            $crate::__conformance_cases! { $make; transact_applies_all, transact_applies_in_order }
        }
        $crate::__state_unless_lacking! { ttl; [$($lack),*];
            $crate::__conformance_cases! { $make; ttl_expires, ttl_cleared_by_overwrite }
        }
        $crate::__state_unless_lacking! { query; [$($lack),*];
            $crate::__conformance_cases! { $make;
                query_eq_nested,
                query_in,
                query_and_or,
                query_sort,
                query_paging,
                query_prefix_isolation,
                query_non_json_never_matches,
            }
        }

        #[test]
        fn declared_capabilities_match_the_store() {
            $crate::conformance::run(
                "declared_capabilities_match_the_store",
                || $make,
                |ctx| $crate::conformance::check_declared(ctx, &[$(stringify!($lack)),*]),
            );
        }
    };
}

/// Expands its body unless the capability is in the list (one rule per capability, since
/// `macro_rules` cannot compare two identifiers).
#[doc(hidden)]
#[macro_export]
macro_rules! __state_unless_lacking {
    (etag; [etag $(, $rest:ident)*]; $($body:tt)*) => {};
    (transactional; [transactional $(, $rest:ident)*]; $($body:tt)*) => {};
    (ttl; [ttl $(, $rest:ident)*]; $($body:tt)*) => {};
    (query; [query $(, $rest:ident)*]; $($body:tt)*) => {};
    ($cap:ident; [$other:ident $(, $rest:ident)*]; $($body:tt)*) => {
        $crate::__state_unless_lacking! { $cap; [$($rest),*]; $($body)* }
    };
    ($cap:ident; []; $($body:tt)*) => { $($body)* };
}

/// Fails unless the store reports exactly the capabilities the invocation did not list
/// under `lacks`; used by [`conformance_tests!`](crate::conformance_tests).
pub async fn check_declared(ctx: Arc<Ctx>, lacks: &[&str]) {
    let caps = ctx.store.capabilities();
    let flags = [
        ("etag", caps.etag),
        ("transactional", caps.transactional),
        ("ttl", caps.ttl),
        ("query", caps.query),
    ];
    for lack in lacks {
        assert!(
            flags.iter().any(|(name, _)| name == lack),
            "unknown capability {lack:?} in lacks"
        );
    }
    for (name, has) in flags {
        let declared_lacking = lacks.contains(&name);
        assert_ne!(
            has,
            declared_lacking,
            "the store {} {name}, but the conformance_tests! invocation {}",
            if has { "reports" } else { "does not report" },
            if declared_lacking {
                "lists it under lacks"
            } else {
                "does not list it under lacks"
            }
        );
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run(
                    stringify!($case),
                    || $make,
                    $crate::conformance::cases::$case,
                );
            }
        )*
    };
}

/// The cases. Each takes its [`Ctx`] and panics on a violation.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod cases {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use serde_json::{Value, json};

    use super::Ctx;
    use crate::{
        Capabilities, Concurrency, DeleteRequest, Item, Operation, Query, SetRequest, StateError,
    };

    /// A case generated for a store without the capability it needs is a wrong `lacks:`
    /// list (the declared-capabilities test says which); it fails rather than passing
    /// without having run. Always `false` otherwise, so cases read `if skip(..) { return }`.
    fn skip(ctx: &Ctx, case: &str, needs: &str, has: bool) -> bool {
        assert!(
            has,
            "{case} needs the {needs} capability, which the store does not report ({:?}): \
             list it under lacks in conformance_tests!",
            ctx.store.capabilities()
        );
        false
    }

    fn caps(ctx: &Ctx) -> Capabilities {
        ctx.store.capabilities()
    }

    async fn get(ctx: &Ctx, key: &str) -> Option<Item> {
        ctx.store
            .get(key)
            .await
            .unwrap_or_else(|e| panic!("get {key:?}: {e}"))
    }

    async fn must_get(ctx: &Ctx, key: &str) -> Item {
        get(ctx, key)
            .await
            .unwrap_or_else(|| panic!("{key:?} should exist"))
    }

    async fn set(ctx: &Ctx, key: &str, value: impl Into<Bytes>) -> Item {
        let value = value.into();
        ctx.store
            .set(SetRequest::new(key, value.clone()))
            .await
            .unwrap_or_else(|e| panic!("set {key:?}: {e}"));
        let item = must_get(ctx, key).await;
        assert_eq!(item.value, value, "{key:?} reads back what was written");
        item
    }

    fn with_etag(key: &str, value: &str, etag: &str) -> SetRequest {
        let mut req = SetRequest::new(key, value.to_string());
        req.etag = Some(etag.to_string());
        req
    }

    fn first_write(key: &str, value: &str) -> SetRequest {
        let mut req = SetRequest::new(key, value.to_string());
        req.concurrency = Concurrency::FirstWrite;
        req
    }

    fn delete_with_etag(key: &str, etag: &str) -> DeleteRequest {
        let mut req = DeleteRequest::new(key);
        req.etag = Some(etag.to_string());
        req
    }

    #[track_caller]
    fn assert_mismatch(res: Result<(), StateError>, what: &str) {
        match res {
            Err(StateError::EtagMismatch) => {}
            other => panic!("{what}: expected EtagMismatch, got {other:?}"),
        }
    }

    async fn assert_value(ctx: &Ctx, key: &str, value: &[u8]) -> Item {
        let item = must_get(ctx, key).await;
        assert_eq!(
            item.value,
            Bytes::copy_from_slice(value),
            "{key:?} has the expected value"
        );
        item
    }

    pub async fn get_missing(ctx: Arc<Ctx>) {
        assert_eq!(get(&ctx, &ctx.key("missing")).await, None);
    }

    pub async fn roundtrip_json_object(ctx: Arc<Ctx>) {
        // Odd spacing, key order and number spelling: a store that re-serialises JSON
        // (JSONB and friends) would change these bytes.
        let text =
            "{ \"z\": 1, \"a\" : [1, 2.50, \"x\", null, true],\n \"nested\": {\"k\": \"v\"} }";
        let key = ctx.key("obj");
        let mut req = SetRequest::new(&key, text);
        assert!(req.is_json);
        req.content_type = None;
        ctx.store.set(req).await.unwrap();
        assert_value(&ctx, &key, text.as_bytes()).await;
    }

    pub async fn roundtrip_json_string(ctx: Arc<Ctx>) {
        let key = ctx.key("str");
        let text = "\"hello \\\"world\\\" ünïcode\"";
        assert!(SetRequest::new(&key, text).is_json);
        set(&ctx, &key, text).await;
        let key = ctx.key("number");
        set(&ctx, &key, "42").await;
    }

    pub async fn roundtrip_binary(ctx: Arc<Ctx>) {
        let key = ctx.key("bin");
        let bytes: &[u8] = &[0xff, 0xfe, 0x00, 0x80, b'{', 0xc3, 0x28, 0x00, b'\n', 0xf0];
        assert!(!SetRequest::new(&key, bytes.to_vec()).is_json);
        set(&ctx, &key, bytes.to_vec()).await;
        let key = ctx.key("text");
        set(&ctx, &key, "plain text, not json").await;
    }

    pub async fn bulk_set_roundtrip(ctx: Arc<Ctx>) {
        let keys: Vec<String> = (0..5).map(|i| ctx.key(&format!("bulk{i}"))).collect();
        let reqs = keys
            .iter()
            .enumerate()
            .map(|(i, k)| SetRequest::new(k, format!("{{\"i\":{i}}}")))
            .collect();
        ctx.store.bulk_set(reqs).await.unwrap();
        for (i, k) in keys.iter().enumerate() {
            assert_value(&ctx, k, format!("{{\"i\":{i}}}").as_bytes()).await;
        }
    }

    pub async fn etag_changes_on_every_write(ctx: Arc<Ctx>) {
        if skip(&ctx, "etag_changes_on_every_write", "etag", caps(&ctx).etag) {
            return;
        }
        let key = ctx.key("k");
        let mut seen = BTreeSet::new();
        for round in 0..5 {
            // The same value every time: the ETag must change anyway.
            let item = set(&ctx, &key, "\"same\"").await;
            assert!(!item.etag.is_empty(), "etag is set");
            assert!(
                seen.insert(item.etag.clone()),
                "write {round} produced a new etag, got {} again",
                item.etag
            );
            // Reading does not change it.
            assert_eq!(must_get(&ctx, &key).await.etag, item.etag);
        }
        // A write with the current ETag changes it too.
        let current = must_get(&ctx, &key).await.etag;
        ctx.store
            .set(with_etag(&key, "\"next\"", &current))
            .await
            .unwrap();
        assert!(seen.insert(must_get(&ctx, &key).await.etag));
        if caps(&ctx).transactional {
            let before = must_get(&ctx, &key).await.etag;
            ctx.store
                .transact(vec![Operation::Upsert(SetRequest::new(&key, "\"tx\""))])
                .await
                .unwrap();
            let after = assert_value(&ctx, &key, b"\"tx\"").await.etag;
            assert_ne!(before, after, "a transaction's upsert changes the etag");
        }
    }

    pub async fn etag_not_reused_after_recreate(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "etag_not_reused_after_recreate",
            "etag",
            caps(&ctx).etag,
        ) {
            return;
        }
        let key = ctx.key("k");
        let old = set(&ctx, &key, "\"v1\"").await.etag;
        ctx.store.delete(DeleteRequest::new(&key)).await.unwrap();
        assert_eq!(get(&ctx, &key).await, None);
        let new = set(&ctx, &key, "\"v1\"").await.etag;
        assert_ne!(old, new, "a re-created key gets a new etag");
        assert_mismatch(
            ctx.store.set(with_etag(&key, "\"v2\"", &old)).await,
            "write with the etag of the deleted incarnation",
        );
        assert_mismatch(
            ctx.store.delete(delete_with_etag(&key, &old)).await,
            "delete with the etag of the deleted incarnation",
        );
        assert_eq!(must_get(&ctx, &key).await.etag, new);
    }

    pub async fn stale_etag_on_set_fails(ctx: Arc<Ctx>) {
        if skip(&ctx, "stale_etag_on_set_fails", "etag", caps(&ctx).etag) {
            return;
        }
        let key = ctx.key("k");
        let stale = set(&ctx, &key, "\"v1\"").await.etag;
        let current = set(&ctx, &key, "\"v2\"").await.etag;
        for concurrency in [Concurrency::LastWrite, Concurrency::FirstWrite] {
            let mut req = with_etag(&key, "\"v3\"", &stale);
            req.concurrency = concurrency;
            assert_mismatch(ctx.store.set(req).await, "set with a stale etag");
            let item = assert_value(&ctx, &key, b"\"v2\"").await;
            assert_eq!(item.etag, current, "a failed write leaves the etag alone");
        }
        // An ETag on a key that does not exist cannot match.
        let missing = ctx.key("missing");
        assert_mismatch(
            ctx.store.set(with_etag(&missing, "1", &current)).await,
            "set with an etag on a missing key",
        );
        assert_eq!(get(&ctx, &missing).await, None);
        // And the right one works, with either concurrency mode.
        let mut req = with_etag(&key, "\"v4\"", &current);
        req.concurrency = Concurrency::FirstWrite;
        ctx.store.set(req).await.unwrap();
        assert_value(&ctx, &key, b"\"v4\"").await;
    }

    pub async fn malformed_etag_changes_nothing(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "malformed_etag_changes_nothing",
            "etag",
            caps(&ctx).etag,
        ) {
            return;
        }
        let key = ctx.key("k");
        let item = set(&ctx, &key, "\"v1\"").await;
        for bad in [
            "not-an-etag",
            "🙂",
            "99999999999999999999999999999999",
            "-1",
            " ",
        ] {
            for res in [
                ctx.store.set(with_etag(&key, "\"v2\"", bad)).await,
                ctx.store.delete(delete_with_etag(&key, bad)).await,
            ] {
                match res {
                    Err(StateError::InvalidEtag(_) | StateError::EtagMismatch) => {}
                    other => {
                        panic!("etag {bad:?}: expected InvalidEtag or EtagMismatch, got {other:?}")
                    }
                }
            }
            assert_eq!(
                must_get(&ctx, &key).await,
                item,
                "etag {bad:?} changed nothing"
            );
        }
    }

    pub async fn first_write_without_etag(ctx: Arc<Ctx>) {
        let key = ctx.key("k");
        ctx.store.set(first_write(&key, "\"first\"")).await.unwrap();
        let item = assert_value(&ctx, &key, b"\"first\"").await;
        assert_mismatch(
            ctx.store.set(first_write(&key, "\"second\"")).await,
            "first-write without etag on an existing key",
        );
        assert_eq!(must_get(&ctx, &key).await, item, "nothing changed");
    }

    pub async fn last_write_without_etag_always_wins(ctx: Arc<Ctx>) {
        let key = ctx.key("k");
        for i in 0..3 {
            let value = format!("{{\"n\":{i}}}");
            ctx.store
                .set(SetRequest::new(&key, value.clone()))
                .await
                .unwrap();
            assert_value(&ctx, &key, value.as_bytes()).await;
        }
    }

    pub async fn delete_with_stale_etag_fails(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "delete_with_stale_etag_fails",
            "etag",
            caps(&ctx).etag,
        ) {
            return;
        }
        let key = ctx.key("k");
        let stale = set(&ctx, &key, "\"v1\"").await.etag;
        let item = set(&ctx, &key, "\"v2\"").await;
        assert_mismatch(
            ctx.store.delete(delete_with_etag(&key, &stale)).await,
            "delete with a stale etag",
        );
        assert_eq!(must_get(&ctx, &key).await, item, "the key is still there");
        let missing = ctx.key("missing");
        assert_mismatch(
            ctx.store
                .delete(delete_with_etag(&missing, &item.etag))
                .await,
            "delete of a missing key with an etag",
        );
    }

    pub async fn delete_with_correct_etag(ctx: Arc<Ctx>) {
        let key = ctx.key("k");
        let item = set(&ctx, &key, "\"v1\"").await;
        let req = if caps(&ctx).etag {
            delete_with_etag(&key, &item.etag)
        } else {
            DeleteRequest::new(&key)
        };
        ctx.store.delete(req).await.unwrap();
        assert_eq!(get(&ctx, &key).await, None);
    }

    pub async fn delete_missing_without_etag(ctx: Arc<Ctx>) {
        let key = ctx.key("never-written");
        ctx.store.delete(DeleteRequest::new(&key)).await.unwrap();
        let mut req = DeleteRequest::new(&key);
        req.concurrency = Concurrency::FirstWrite;
        ctx.store.delete(req).await.unwrap();
        assert_eq!(get(&ctx, &key).await, None);
    }

    pub async fn bulk_get_mixed(ctx: Arc<Ctx>) {
        let present: Vec<String> = (0..3).map(|i| ctx.key(&format!("p{i}"))).collect();
        let mut items = BTreeMap::new();
        for (i, k) in present.iter().enumerate() {
            items.insert(k.clone(), set(&ctx, k, format!("{i}")).await);
        }
        let missing: Vec<String> = (0..2).map(|i| ctx.key(&format!("m{i}"))).collect();
        let keys = vec![
            missing[0].clone(),
            present[0].clone(),
            present[1].clone(),
            missing[1].clone(),
            present[2].clone(),
        ];
        let got = ctx.store.bulk_get(&keys).await;
        assert_eq!(got.len(), keys.len(), "one answer per key");
        let got: BTreeMap<String, Option<Item>> = got
            .into_iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    r.unwrap_or_else(|e| panic!("bulk get {k:?}: {e}")),
                )
            })
            .collect();
        for k in &keys {
            assert!(got.contains_key(k), "bulk get answered {k:?}");
        }
        for k in &missing {
            assert_eq!(got[k], None, "{k:?} is missing");
        }
        for k in &present {
            assert_eq!(got[k].as_ref(), Some(&items[k]), "{k:?} as get sees it");
        }
        assert!(ctx.store.bulk_get(&[]).await.is_empty());
    }

    pub async fn transact_applies_all(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "transact_applies_all",
            "transactional",
            caps(&ctx).transactional,
        ) {
            return;
        }
        let (a, b, c) = (ctx.key("a"), ctx.key("b"), ctx.key("c"));
        let item_a = set(&ctx, &a, "1").await;
        set(&ctx, &b, "2").await;
        let mut upsert_a = SetRequest::new(&a, "10");
        if caps(&ctx).etag {
            upsert_a.etag = Some(item_a.etag.clone());
        }
        ctx.store
            .transact(vec![
                Operation::Upsert(upsert_a),
                Operation::Delete(DeleteRequest::new(&b)),
                Operation::Upsert(first_write(&c, "3")),
            ])
            .await
            .unwrap();
        let new_a = assert_value(&ctx, &a, b"10").await;
        if caps(&ctx).etag {
            assert_ne!(new_a.etag, item_a.etag);
        }
        assert_eq!(get(&ctx, &b).await, None);
        assert_value(&ctx, &c, b"3").await;
        ctx.store.transact(vec![]).await.unwrap();
    }

    pub async fn transact_with_stale_etag_applies_nothing(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "transact_with_stale_etag_applies_nothing",
            "transactional and etag",
            caps(&ctx).transactional && caps(&ctx).etag,
        ) {
            return;
        }
        let (a, b, x) = (ctx.key("a"), ctx.key("b"), ctx.key("x"));
        let stale = set(&ctx, &a, "1").await.etag;
        let item_a = set(&ctx, &a, "2").await;
        let item_b = set(&ctx, &b, "\"keep\"").await;
        let failing: Vec<(&str, Operation)> = vec![
            (
                "stale upsert",
                Operation::Upsert(with_etag(&a, "3", &stale)),
            ),
            (
                "stale delete",
                Operation::Delete(delete_with_etag(&a, &stale)),
            ),
            (
                "first-write on an existing key",
                Operation::Upsert(first_write(&a, "3")),
            ),
        ];
        for (what, bad) in failing {
            // The failing operation comes last, after changes the store may already have
            // made: all of them must be undone.
            let res = ctx
                .store
                .transact(vec![
                    Operation::Upsert(SetRequest::new(&x, "\"new\"")),
                    Operation::Delete(DeleteRequest::new(&b)),
                    Operation::Upsert(SetRequest::new(&a, "99")),
                    bad,
                ])
                .await;
            assert_mismatch(res, what);
            assert_eq!(get(&ctx, &x).await, None, "{what}: x was not created");
            assert_eq!(
                get(&ctx, &b).await.as_ref(),
                Some(&item_b),
                "{what}: b kept"
            );
            assert_eq!(
                get(&ctx, &a).await.as_ref(),
                Some(&item_a),
                "{what}: a kept"
            );
        }
        // Failing first, too.
        let res = ctx
            .store
            .transact(vec![
                Operation::Upsert(with_etag(&a, "3", &stale)),
                Operation::Upsert(SetRequest::new(&x, "\"new\"")),
            ])
            .await;
        assert_mismatch(res, "stale upsert first");
        assert_eq!(get(&ctx, &x).await, None);
    }

    pub async fn transact_applies_in_order(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "transact_applies_in_order",
            "transactional",
            caps(&ctx).transactional,
        ) {
            return;
        }
        let (a, b) = (ctx.key("a"), ctx.key("b"));
        set(&ctx, &b, "\"old\"").await;
        ctx.store
            .transact(vec![
                Operation::Upsert(SetRequest::new(&a, "1")),
                Operation::Upsert(SetRequest::new(&a, "2")),
                Operation::Delete(DeleteRequest::new(&a)),
                Operation::Delete(DeleteRequest::new(&b)),
                Operation::Upsert(SetRequest::new(&b, "\"new\"")),
            ])
            .await
            .unwrap();
        assert_eq!(get(&ctx, &a).await, None, "upsert then delete: gone");
        assert_value(&ctx, &b, b"\"new\"").await;
    }

    pub async fn ttl_expires(ctx: Arc<Ctx>) {
        if skip(&ctx, "ttl_expires", "ttl", caps(&ctx).ttl) {
            return;
        }
        let key = ctx.key("ttl");
        let before = SystemTime::now();
        let mut req = SetRequest::new(&key, "{\"ttl\":true}");
        req.ttl = Some(Duration::from_secs(1));
        ctx.store.set(req).await.unwrap();
        let item = assert_value(&ctx, &key, b"{\"ttl\":true}").await;
        let expires = item.expires_at.expect("expires_at is set with a ttl");
        assert!(
            expires >= before && expires <= SystemTime::now() + Duration::from_secs(2),
            "expires_at {expires:?} is about a second from now"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(get(&ctx, &key).await, None, "expired after 2 s");
        let got = ctx.store.bulk_get(std::slice::from_ref(&key)).await;
        assert!(
            matches!(got.as_slice(), [(_, Ok(None))]),
            "bulk get misses it too: {got:?}"
        );
        if caps(&ctx).query {
            let res = ctx.store.query(ctx.ns(), &Query::default()).await.unwrap();
            assert!(res.results.is_empty(), "query skips expired keys");
        }
        // An expired key is a missing key: first-write succeeds, and an ETag cannot match.
        if caps(&ctx).etag {
            assert_mismatch(
                ctx.store.set(with_etag(&key, "1", &item.etag)).await,
                "etag of an expired key",
            );
        }
        ctx.store.set(first_write(&key, "\"again\"")).await.unwrap();
        let item = assert_value(&ctx, &key, b"\"again\"").await;
        assert_eq!(item.expires_at, None);
    }

    pub async fn ttl_cleared_by_overwrite(ctx: Arc<Ctx>) {
        if skip(&ctx, "ttl_cleared_by_overwrite", "ttl", caps(&ctx).ttl) {
            return;
        }
        let key = ctx.key("ttl");
        let mut req = SetRequest::new(&key, "1");
        req.ttl = Some(Duration::from_secs(1));
        ctx.store.set(req).await.unwrap();
        assert!(must_get(&ctx, &key).await.expires_at.is_some());
        ctx.store.set(SetRequest::new(&key, "2")).await.unwrap();
        assert_eq!(must_get(&ctx, &key).await.expires_at, None);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_value(&ctx, &key, b"2").await;
    }

    pub async fn content_type_roundtrip(ctx: Arc<Ctx>) {
        let key = ctx.key("ct");
        let mut req = SetRequest::new(&key, "<a>xml</a>");
        req.content_type = Some("application/xml".into());
        ctx.store.set(req).await.unwrap();
        let item = assert_value(&ctx, &key, b"<a>xml</a>").await;
        assert_eq!(item.content_type.as_deref(), Some("application/xml"));
        let mut req = SetRequest::new(&key, "{}");
        req.content_type = Some("application/json; charset=utf-8".into());
        ctx.store.set(req).await.unwrap();
        assert_eq!(
            must_get(&ctx, &key).await.content_type.as_deref(),
            Some("application/json; charset=utf-8")
        );
        ctx.store.set(SetRequest::new(&key, "{}")).await.unwrap();
        assert_eq!(
            must_get(&ctx, &key).await.content_type,
            None,
            "an overwrite without content type drops the old one"
        );
    }

    pub async fn odd_keys(ctx: Arc<Ctx>) {
        let names = [
            "a key with spaces",
            "  leading and trailing  ",
            "ключ-🔑-κλειδί-鍵",
            "app||inner||key",
            "||",
            "quote' double\" back\\slash",
            "percent%_under_score*",
            "tab\tnew\nline",
            // Keys that a case-insensitive, space-padding or normalising collation would
            // take for one another: each must keep its own value.
            "Case",
            "case",
            "pad",
            "pad  ",
            "caf\u{e9}",
            "cafe\u{301}",
        ];
        let keys: Vec<String> = names.iter().map(|n| ctx.key(n)).collect();
        for (i, k) in keys.iter().enumerate() {
            set(&ctx, k, format!("{i}")).await;
        }
        for (i, k) in keys.iter().enumerate() {
            assert_value(&ctx, k, format!("{i}").as_bytes()).await;
        }
        let got = ctx.store.bulk_get(&keys).await;
        for (k, r) in got {
            assert!(r.unwrap().is_some(), "bulk get finds {k:?}");
        }
        for k in &keys {
            ctx.store.delete(DeleteRequest::new(k)).await.unwrap();
            assert_eq!(get(&ctx, k).await, None);
        }
    }

    pub async fn large_value(ctx: Arc<Ctx>) {
        let key = ctx.key("big");
        let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i * 31 % 251) as u8).collect();
        let first = set(&ctx, &key, big.clone()).await;
        assert_eq!(first.value.len(), 1 << 20);
        let text = format!("\"{}\"", "x".repeat((1 << 20) - 2));
        let second = set(&ctx, &key, text).await;
        if caps(&ctx).etag {
            assert_ne!(first.etag, second.etag);
        }
        set(&ctx, &key, "small").await;
    }

    pub async fn concurrent_etag_race_one_winner(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "concurrent_etag_race_one_winner",
            "etag",
            caps(&ctx).etag,
        ) {
            return;
        }
        const TASKS: usize = 8;
        const ROUNDS: usize = 10;
        let key = ctx.key("race");
        set(&ctx, &key, "\"start\"").await;
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let (store, key, barrier) = (ctx.store.clone(), key.clone(), barrier.clone());
            handles.push(tokio::spawn(async move {
                let mut won = Vec::new();
                for round in 0..ROUNDS {
                    barrier.wait().await;
                    let etag = store.get(&key).await.unwrap().unwrap().etag;
                    // Everyone has read the same ETag before anyone writes.
                    barrier.wait().await;
                    let value = format!("{{\"round\":{round},\"task\":{task}}}");
                    match store.set(with_etag(&key, &value, &etag)).await {
                        Ok(()) => won.push(true),
                        Err(StateError::EtagMismatch) => won.push(false),
                        Err(e) => panic!("task {task} round {round}: unexpected error {e}"),
                    }
                    barrier.wait().await;
                }
                won
            }));
        }
        let mut winners = [0usize; ROUNDS];
        for h in handles {
            for (round, won) in h.await.unwrap().into_iter().enumerate() {
                winners[round] += usize::from(won);
            }
        }
        assert_eq!(winners, [1; ROUNDS], "exactly one winner per round");
    }

    pub async fn concurrent_counter_no_lost_update(ctx: Arc<Ctx>) {
        if skip(
            &ctx,
            "concurrent_counter_no_lost_update",
            "etag",
            caps(&ctx).etag,
        ) {
            return;
        }
        const TASKS: usize = 8;
        const INCREMENTS: usize = 20;
        let key = ctx.key("counter");
        set(&ctx, &key, "0").await;
        let mut handles = Vec::new();
        for task in 0..TASKS {
            let (store, key) = (ctx.store.clone(), key.clone());
            handles.push(tokio::spawn(async move {
                let mut conflicts = 0usize;
                for _ in 0..INCREMENTS {
                    loop {
                        let item = store.get(&key).await.unwrap().unwrap();
                        let n: u64 = serde_json::from_slice(&item.value).unwrap();
                        let req = with_etag(&key, &(n + 1).to_string(), &item.etag);
                        match store.set(req).await {
                            Ok(()) => break,
                            Err(StateError::EtagMismatch) => conflicts += 1,
                            Err(e) => panic!("task {task}: unexpected error {e}"),
                        }
                    }
                }
                conflicts
            }));
        }
        let mut conflicts = 0;
        for h in handles {
            conflicts += h.await.unwrap();
        }
        let total = (TASKS * INCREMENTS).to_string();
        assert_value(&ctx, &key, total.as_bytes()).await;
        println!("counter reached {total} after {conflicts} etag conflicts");
    }

    // --- queries -------------------------------------------------------------------------

    /// Dapr's query example data set, under `<ns>people||`.
    fn people() -> Vec<(&'static str, Value)> {
        let p = |org: &str, id: u32, city: &str, state: &str| json!({"person": {"org": org, "id": id}, "city": city, "state": state});
        vec![
            ("p1", p("Dev Ops", 1036, "Seattle", "WA")),
            ("p2", p("Hardware", 1028, "Portland", "OR")),
            ("p3", p("Finance", 1071, "Sacramento", "CA")),
            ("p4", p("Dev Ops", 1042, "Spokane", "WA")),
            ("p5", p("Finance", 1007, "San Francisco", "CA")),
            ("p6", p("Dev Ops", 1015, "San Diego", "CA")),
            ("p7", p("Hardware", 1099, "Los Angeles", "CA")),
            ("p8", p("Finance", 1050, "Seattle", "WA")),
        ]
    }

    /// Writes the data set; returns the query prefix.
    async fn load_people(ctx: &Ctx) -> String {
        let prefix = format!("{}people||", ctx.ns());
        for (name, value) in people() {
            let key = ctx.key(&format!("people||{name}"));
            set(ctx, &key, serde_json::to_vec(&value).unwrap()).await;
        }
        prefix
    }

    fn query(v: Value) -> Query {
        Query::from_json(&v).unwrap()
    }

    /// Runs a query (following pages) and returns the short names in result order.
    async fn run_query(ctx: &Ctx, prefix: &str, q: &Query) -> Vec<String> {
        let mut names = Vec::new();
        let mut q = q.clone();
        for _ in 0..100 {
            let res = ctx
                .store
                .query(prefix, &q)
                .await
                .unwrap_or_else(|e| panic!("query {q:?}: {e}"));
            if let Some(limit) = q.limit {
                assert!(res.results.len() <= limit, "a page holds at most limit");
            }
            let empty = res.results.is_empty();
            for r in res.results {
                let name = r
                    .key
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("result key {:?} keeps the prefix", r.key));
                let stored: Value = serde_json::from_slice(&r.data).unwrap();
                let expected = people()
                    .into_iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v);
                if let Some(expected) = expected {
                    assert_eq!(stored, expected, "result data of {name}");
                }
                names.push(name.to_string());
            }
            match res.token {
                Some(token) if !empty => q.token = Some(token),
                _ => return names,
            }
        }
        panic!("query paging did not end after 100 pages");
    }

    fn sorted(mut names: Vec<String>) -> Vec<String> {
        names.sort();
        names
    }

    fn skip_query(ctx: &Ctx, case: &str) -> bool {
        skip(ctx, case, "query", caps(ctx).query)
    }

    pub async fn query_eq_nested(ctx: Arc<Ctx>) {
        if skip_query(&ctx, "query_eq_nested") {
            return;
        }
        let prefix = load_people(&ctx).await;
        let q = query(json!({"filter": {"EQ": {"person.org": "Dev Ops"}}}));
        assert_eq!(
            sorted(run_query(&ctx, &prefix, &q).await),
            ["p1", "p4", "p6"]
        );
        let q = query(json!({"filter": {"EQ": {"person.id": 1028}}}));
        assert_eq!(run_query(&ctx, &prefix, &q).await, ["p2"]);
        let q = query(json!({"filter": {"EQ": {"person.org": "Nobody"}}}));
        assert!(run_query(&ctx, &prefix, &q).await.is_empty());
        let all = run_query(&ctx, &prefix, &Query::default()).await;
        assert_eq!(
            sorted(all).len(),
            8,
            "no filter: everything under the prefix"
        );
    }

    pub async fn query_in(ctx: Arc<Ctx>) {
        if skip_query(&ctx, "query_in") {
            return;
        }
        let prefix = load_people(&ctx).await;
        let q = query(json!({"filter": {"IN": {"state": ["CA", "OR"]}}}));
        assert_eq!(
            sorted(run_query(&ctx, &prefix, &q).await),
            ["p2", "p3", "p5", "p6", "p7"]
        );
    }

    pub async fn query_and_or(ctx: Arc<Ctx>) {
        if skip_query(&ctx, "query_and_or") {
            return;
        }
        let prefix = load_people(&ctx).await;
        let q = query(json!({"filter": {"AND": [
            {"EQ": {"person.org": "Finance"}},
            {"EQ": {"state": "CA"}}
        ]}}));
        assert_eq!(sorted(run_query(&ctx, &prefix, &q).await), ["p3", "p5"]);
        let q = query(json!({"filter": {"OR": [
            {"EQ": {"person.org": "Hardware"}},
            {"AND": [{"EQ": {"state": "WA"}}, {"IN": {"person.org": ["Finance", "Legal"]}}]}
        ]}}));
        assert_eq!(
            sorted(run_query(&ctx, &prefix, &q).await),
            ["p2", "p7", "p8"]
        );
    }

    pub async fn query_sort(ctx: Arc<Ctx>) {
        if skip_query(&ctx, "query_sort") {
            return;
        }
        let prefix = load_people(&ctx).await;
        let asc = ["p5", "p6", "p2", "p1", "p4", "p8", "p3", "p7"];
        let q = query(json!({"sort": [{"key": "person.id", "order": "ASC"}]}));
        assert_eq!(run_query(&ctx, &prefix, &q).await, asc);
        let q = query(json!({"sort": [{"key": "person.id"}]}));
        assert_eq!(run_query(&ctx, &prefix, &q).await, asc, "ASC by default");
        let q = query(json!({"sort": [{"key": "person.id", "order": "DESC"}]}));
        let mut desc = asc;
        desc.reverse();
        assert_eq!(run_query(&ctx, &prefix, &q).await, desc);
        let q = query(json!({
            "filter": {"IN": {"state": ["WA", "OR", "CA"]}},
            "sort": [{"key": "state", "order": "DESC"}, {"key": "person.id", "order": "ASC"}]
        }));
        assert_eq!(
            run_query(&ctx, &prefix, &q).await,
            ["p1", "p4", "p8", "p2", "p5", "p6", "p3", "p7"]
        );
    }

    pub async fn query_paging(ctx: Arc<Ctx>) {
        if skip_query(&ctx, "query_paging") {
            return;
        }
        let prefix = load_people(&ctx).await;
        // Sorted: the pages continue the order exactly.
        let q = query(json!({"sort": [{"key": "person.id"}], "page": {"limit": 3}}));
        let first = ctx.store.query(&prefix, &q).await.unwrap();
        assert_eq!(first.results.len(), 3);
        assert!(first.token.is_some(), "more pages follow");
        assert_eq!(
            run_query(&ctx, &prefix, &q).await,
            ["p5", "p6", "p2", "p1", "p4", "p8", "p3", "p7"]
        );
        // Unsorted, any page size: every key exactly once.
        for limit in [1, 2, 3, 7, 8, 9] {
            let q = query(json!({"page": {"limit": limit}}));
            let names = run_query(&ctx, &prefix, &q).await;
            assert_eq!(
                sorted(names),
                ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"],
                "limit {limit}: all keys exactly once"
            );
        }
        // Paging with a filter.
        let q = query(json!({"filter": {"EQ": {"state": "CA"}}, "page": {"limit": 2}}));
        assert_eq!(
            sorted(run_query(&ctx, &prefix, &q).await),
            ["p3", "p5", "p6", "p7"]
        );
    }

    pub async fn query_prefix_isolation(ctx: Arc<Ctx>) {
        if skip_query(&ctx, "query_prefix_isolation") {
            return;
        }
        // `_` and `%` are LIKE wildcards and LIKE ignores ASCII case in some databases: a
        // store that matches prefixes with an unescaped LIKE returns the neighbours.
        let mine = format!("{}a_1%||", ctx.ns());
        let neighbours = [
            format!("{}aX1%||", ctx.ns()),
            format!("{}aX1abc||", ctx.ns()),
            format!("{}A_1%||", ctx.ns()),
            format!("{}a_1%|", ctx.ns()),
            format!("{}a_1", ctx.ns()),
            format!("x{}a_1%||", ctx.ns()),
        ];
        let value = json!({"team": "blue"}).to_string();
        let mut expected = Vec::new();
        for i in 0..3 {
            let key = format!("{mine}k{i}");
            ctx.key(key.strip_prefix(ctx.ns()).unwrap());
            set(&ctx, &key, value.clone()).await;
            expected.push(key);
        }
        for n in &neighbours {
            let key = format!("{n}k0");
            if let Some(rest) = key.strip_prefix(ctx.ns()) {
                ctx.key(rest);
            } else {
                ctx.created.lock().unwrap().insert(key.clone());
            }
            set(&ctx, &key, value.clone()).await;
        }
        for q in [
            Query::default(),
            query(json!({"filter": {"EQ": {"team": "blue"}}})),
            query(json!({"filter": {"EQ": {"team": "blue"}}, "page": {"limit": 2}})),
        ] {
            let mut keys = Vec::new();
            let mut q = q.clone();
            loop {
                let res = ctx.store.query(&mine, &q).await.unwrap();
                let empty = res.results.is_empty();
                keys.extend(res.results.into_iter().map(|r| r.key));
                match res.token {
                    Some(t) if !empty => q.token = Some(t),
                    _ => break,
                }
            }
            keys.sort();
            assert_eq!(keys, expected, "only keys under {mine:?}");
        }
    }

    pub async fn query_non_json_never_matches(ctx: Arc<Ctx>) {
        if skip_query(&ctx, "query_non_json_never_matches") {
            return;
        }
        let prefix = format!("{}mixed||", ctx.ns());
        let json_key = ctx.key("mixed||json");
        set(&ctx, &json_key, json!({"org": "Dev Ops"}).to_string()).await;
        let others: Vec<(String, Vec<u8>)> = vec![
            (
                ctx.key("mixed||binary"),
                b"\xff\x00{\"org\": \"Dev Ops\"}".to_vec(),
            ),
            (ctx.key("mixed||text"), b"org = Dev Ops".to_vec()),
            (ctx.key("mixed||jsonish"), b"{\"org\": \"Dev Ops\"".to_vec()),
            (ctx.key("mixed||string"), b"\"Dev Ops\"".to_vec()),
        ];
        for (k, v) in &others {
            set(&ctx, k, v.clone()).await;
        }
        let q = query(json!({"filter": {"EQ": {"org": "Dev Ops"}}}));
        let res = ctx.store.query(&prefix, &q).await.unwrap();
        let keys: Vec<String> = res.results.into_iter().map(|r| r.key).collect();
        assert_eq!(keys, std::slice::from_ref(&json_key));
        let q = query(json!({"filter": {"IN": {"org": ["Dev Ops", "x"]}}}));
        let res = ctx.store.query(&prefix, &q).await.unwrap();
        let keys: Vec<String> = res.results.into_iter().map(|r| r.key).collect();
        assert_eq!(keys, [json_key]);
    }
}
