//! The conformance suite every [`PubSub`] backend passes.
//!
//! A backend's test file invokes one macro with a future that builds the broker:
//!
//! ```ignore
//! mod sqlite_conformance {
//!     trellis_pubsub::conformance_tests!(async {
//!         let broker = SqliteBroker::open(&metadata()).await.unwrap();
//!         // The broker's lease (ackDeadline) is 1 s: say so, so the suite waits long
//!         // enough for redeliveries, and no longer.
//!         trellis_pubsub::conformance::Setup::new(broker)
//!             .redelivery_timeout(std::time::Duration::from_secs(5))
//!     });
//! }
//! ```
//!
//! It expands to one `#[tokio::test]` per case (multi-threaded; the calling crate needs
//! `tokio` with the `macros` and `rt-multi-thread` features), so a failure names the broken
//! behaviour. The future may produce an `impl PubSub`, an `Arc` of one, an
//! `Arc<dyn PubSub>`, a [`Setup`] (a broker plus the suite's timeouts), or an `Option` of
//! any of those (`None` fails the case: a case that cannot run must not pass).
//!
//! Every case uses topic and group names of its own, made unique per run
//! (`conf-<random>-<case>-<name>`), so the cases run in parallel, and the suite runs
//! repeatedly, against one shared broker.
//!
//! Cases that need a capability (`ordered`, `ttl`) exist only for a broker that has it: a
//! broker without one says so in the invocation, `conformance_tests!(make, lacks: [ttl])`,
//! and the case is not generated, so the test runner lists no test that proves nothing
//! (nextest has no "skipped at run time"). `replay` (does a new group get what the topic
//! already holds?) generates no case of its own: `new_group_starts_where_the_broker_says`
//! checks whichever answer the broker declares. The generated
//! `declared_capabilities_match_the_broker` test keeps that list truthful: it fails when
//! the broker's [`Capabilities`](crate::Capabilities) and `lacks` disagree.
//!
//! The cases are plain `pub async fn`s in [`cases`], so a backend can also call one directly.

use std::sync::Arc;
use std::time::Duration;

use crate::{Delivery, PubSub, PublishRequest, SubscribeRequest, Subscription};

/// The broker under test and how long the suite waits for it.
#[derive(Debug, Clone)]
pub struct Setup {
    pub broker: Arc<dyn PubSub>,
    /// How long a message that should arrive may take (default 10 s).
    pub receive_timeout: Duration,
    /// How long a delivery that was dropped unsettled, or whose subscription went away,
    /// may take to be delivered again: the broker's ack deadline or lease time, plus some
    /// slack (default 40 s, for a 30 s deadline). Set the broker's deadline short in tests.
    pub redelivery_timeout: Duration,
    /// How long the suite watches for a message that must not arrive (default 500 ms).
    pub quiet_period: Duration,
}

impl Setup {
    pub fn new(broker: impl IntoBroker) -> Self {
        Setup {
            broker: broker.into_broker(),
            receive_timeout: Duration::from_secs(10),
            redelivery_timeout: Duration::from_secs(40),
            quiet_period: Duration::from_millis(500),
        }
    }

    pub fn receive_timeout(mut self, d: Duration) -> Self {
        self.receive_timeout = d;
        self
    }

    pub fn redelivery_timeout(mut self, d: Duration) -> Self {
        self.redelivery_timeout = d;
        self
    }

    pub fn quiet_period(mut self, d: Duration) -> Self {
        self.quiet_period = d;
        self
    }
}

/// A broker in any of the forms a factory may produce.
pub trait IntoBroker {
    fn into_broker(self) -> Arc<dyn PubSub>;
}

impl<T: PubSub + 'static> IntoBroker for T {
    fn into_broker(self) -> Arc<dyn PubSub> {
        Arc::new(self)
    }
}

impl<T: PubSub + 'static> IntoBroker for Arc<T> {
    fn into_broker(self) -> Arc<dyn PubSub> {
        self
    }
}

impl IntoBroker for Arc<dyn PubSub> {
    fn into_broker(self) -> Arc<dyn PubSub> {
        self
    }
}

/// What a factory may produce; see the module docs.
pub trait IntoSetup {
    fn into_setup(self) -> Option<Setup>;
}

impl<T: IntoBroker> IntoSetup for T {
    fn into_setup(self) -> Option<Setup> {
        Some(Setup::new(self))
    }
}

impl IntoSetup for Setup {
    fn into_setup(self) -> Option<Setup> {
        Some(self)
    }
}

impl<T: IntoSetup> IntoSetup for Option<T> {
    fn into_setup(self) -> Option<Setup> {
        self.and_then(IntoSetup::into_setup)
    }
}

/// One case's broker and names.
#[derive(Debug)]
pub struct Ctx {
    pub setup: Setup,
    prefix: String,
}

impl Ctx {
    pub fn new(setup: Setup, case: &str) -> Self {
        Self {
            setup,
            prefix: format!("conf-{:016x}-{case}", random_u64()),
        }
    }

    pub fn broker(&self) -> &dyn PubSub {
        self.setup.broker.as_ref()
    }

    /// A topic name unique to this case and run.
    pub fn topic(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A consumer group name unique to this case and run.
    pub fn group(&self, name: &str) -> String {
        format!("{}-g-{name}", self.prefix)
    }

    pub async fn subscribe(&self, topic: &str, group: &str) -> Box<dyn Subscription> {
        self.broker()
            .subscribe(SubscribeRequest::new(topic, group))
            .await
            .unwrap_or_else(|e| panic!("subscribe to {topic} as {group}: {e}"))
    }

    pub async fn publish(&self, req: PublishRequest) {
        let topic = req.topic.clone();
        self.broker()
            .publish(req)
            .await
            .unwrap_or_else(|e| panic!("publish to {topic}: {e}"));
    }

    /// The next delivery, failing the case if none comes within the receive timeout.
    pub async fn recv(&self, sub: &mut dyn Subscription) -> Delivery {
        self.recv_within(sub, self.setup.receive_timeout).await
    }

    pub async fn recv_within(&self, sub: &mut dyn Subscription, within: Duration) -> Delivery {
        match tokio::time::timeout(within, sub.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => panic!("receive failed: {e}"),
            Ok(None) => panic!("the subscription ended"),
            Err(_) => panic!("no message within {within:?}"),
        }
    }

    /// `n` deliveries, each acknowledged; returns their messages' data, in arrival order.
    pub async fn recv_ack(&self, sub: &mut dyn Subscription, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let d = self.recv(sub).await;
            out.push(text(&d));
            d.ack().await.unwrap_or_else(|e| panic!("ack: {e}"));
        }
        out
    }

    /// Fails the case if anything is delivered within the quiet period.
    pub async fn expect_nothing(&self, sub: &mut dyn Subscription) {
        if let Ok(Some(res)) = tokio::time::timeout(self.setup.quiet_period, sub.next()).await {
            match res {
                Ok(d) => panic!(
                    "unexpected delivery of {:?} (attempt {})",
                    text(&d),
                    d.message.delivery_attempt
                ),
                Err(e) => panic!("receive failed: {e}"),
            }
        }
    }
}

/// A delivery's data as text (the suite publishes text, apart from the binary case).
pub fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.message.data).into_owned()
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

/// Runs one case; used by [`conformance_tests!`](crate::conformance_tests).
pub async fn run<M, S, C, CF>(case_name: &str, make: M, case: C)
where
    M: std::future::Future<Output = S>,
    S: IntoSetup,
    C: FnOnce(Arc<Ctx>) -> CF,
    CF: std::future::Future<Output = ()>,
{
    let Some(setup) = make.await.into_setup() else {
        panic!("{case_name}: the broker factory returned None, so there is nothing to test");
    };
    case(Arc::new(Ctx::new(setup, case_name))).await;
}

/// Expands to one `#[tokio::test]` per conformance case the broker can run; see
/// [`conformance`](crate::conformance). `lacks: [ordered, ttl]` leaves out the cases of
/// capabilities the broker does not have.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!($make, lacks: []);
    };
    ($make:expr, lacks: [$($lack:ident),* $(,)?]) => {
        $crate::__pubsub_conformance_cases! { $make;
            roundtrip_keeps_data_content_type_and_metadata,
            every_group_gets_every_message,
            consumers_of_a_group_share_without_duplicates,
            nack_redelivers_with_next_attempt,
            unsettled_delivery_is_redelivered,
            group_keeps_messages_while_nobody_subscribes,
            new_group_starts_where_the_broker_says,
            close_ends_the_subscription,
            bulk_publish_delivers_all,
            bulk_publish_reports_failed_entries,
            invalid_requests_are_rejected,
        }
        $crate::__pubsub_unless_lacking! { ordered; [$($lack),*];
            $crate::__pubsub_conformance_cases! { $make; single_consumer_receives_in_order }
        }
        $crate::__pubsub_unless_lacking! { ttl; [$($lack),*];
            $crate::__pubsub_conformance_cases! { $make; ttl_expired_messages_are_not_delivered }
        }

        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn declared_capabilities_match_the_broker() {
            $crate::conformance::check_declared(&[$(stringify!($lack)),*], $make).await;
        }
    };
}

/// Expands its body unless the capability is in the list (one rule per capability, since
/// `macro_rules` cannot compare two identifiers).
#[doc(hidden)]
#[macro_export]
macro_rules! __pubsub_unless_lacking {
    (ordered; [ordered $(, $rest:ident)*]; $($body:tt)*) => {};
    (ttl; [ttl $(, $rest:ident)*]; $($body:tt)*) => {};
    ($cap:ident; [$other:ident $(, $rest:ident)*]; $($body:tt)*) => {
        $crate::__pubsub_unless_lacking! { $cap; [$($rest),*]; $($body)* }
    };
    ($cap:ident; []; $($body:tt)*) => { $($body)* };
}

/// The capabilities a `lacks:` list may name, with the broker's answer for each.
fn capability_flags(caps: crate::Capabilities) -> [(&'static str, bool); 3] {
    [
        ("ordered", caps.ordered),
        ("ttl", caps.ttl),
        ("replay", caps.replay),
    ]
}

/// Fails unless the broker reports exactly the capabilities the invocation did not list
/// under `lacks`; used by [`conformance_tests!`](crate::conformance_tests).
pub async fn check_declared<S: IntoSetup>(
    lacks: &[&str],
    make: impl std::future::Future<Output = S>,
) {
    let known = capability_flags(crate::Capabilities::default()).map(|(name, _)| name);
    for lack in lacks {
        assert!(
            known.contains(lack),
            "unknown capability {lack:?} in lacks (known: {known:?})"
        );
    }
    let Some(setup) = make.await.into_setup() else {
        panic!("the broker factory returned None, so there is nothing to test");
    };
    for (name, has) in capability_flags(setup.broker.capabilities()) {
        let declared_lacking = lacks.contains(&name);
        assert_ne!(
            has,
            declared_lacking,
            "the broker {} {name}, but the conformance_tests! invocation {}",
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
macro_rules! __pubsub_conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::run(
                    stringify!($case),
                    $make,
                    $crate::conformance::cases::$case,
                )
                .await;
            }
        )*
    };
}

/// The cases; each takes its [`Ctx`] and panics on a violation.
// Test code: a failed unwrap is a failed case, with its location.
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub mod cases {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;

    use super::{Ctx, text};
    use crate::{PubSubError, PublishRequest, SubscribeRequest};

    fn msg(topic: &str, data: impl Into<Bytes>) -> PublishRequest {
        PublishRequest::new(topic, data)
    }

    pub async fn roundtrip_keeps_data_content_type_and_metadata(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let mut sub = ctx.subscribe(&topic, &ctx.group("g")).await;
        let started = SystemTime::now();

        let mut json = msg(&topic, r#"{"order":1,"text":"grüße"}"#);
        json.content_type = Some("application/json".into());
        json.metadata = BTreeMap::from([
            ("traceparent".to_string(), "00-abc-def-01".to_string()),
            ("k".to_string(), "v with spaces".to_string()),
        ]);
        let mut binary = msg(&topic, (0..=255u8).collect::<Vec<u8>>());
        binary.content_type = Some("application/octet-stream".into());
        let mut empty = msg(&topic, Bytes::new());
        empty.content_type = Some("text/plain".into());
        empty.metadata = BTreeMap::from([("only".to_string(), "metadata".to_string())]);
        let sent = [json, binary, empty];
        for req in &sent {
            ctx.publish(req.clone()).await;
        }

        let mut ids = BTreeSet::new();
        for _ in 0..sent.len() {
            let d = ctx.recv(sub.as_mut()).await;
            let m = &d.message;
            let req = sent
                .iter()
                .find(|r| r.data == m.data)
                .unwrap_or_else(|| panic!("received data nobody sent: {:?}", m.data));
            assert_eq!(m.topic, topic);
            assert_eq!(m.content_type, req.content_type, "content type");
            assert_eq!(m.metadata, req.metadata, "metadata");
            assert_eq!(m.delivery_attempt, 1);
            assert!(!m.id.is_empty(), "message id");
            assert!(ids.insert(m.id.clone()), "message id {} twice", m.id);
            // Clocks of broker and test may differ a little.
            let slack = Duration::from_secs(300);
            assert!(
                m.published_at + slack >= started && m.published_at <= SystemTime::now() + slack,
                "published_at {:?} is not about now",
                m.published_at
            );
            d.ack().await.unwrap();
        }
        ctx.expect_nothing(sub.as_mut()).await;
    }

    pub async fn every_group_gets_every_message(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let mut a = ctx.subscribe(&topic, &ctx.group("a")).await;
        let mut b = ctx.subscribe(&topic, &ctx.group("b")).await;
        let sent: BTreeSet<String> = (0..20).map(|i| format!("m{i}")).collect();
        for m in &sent {
            ctx.publish(msg(&topic, m.clone())).await;
        }
        for sub in [&mut a, &mut b] {
            let got = ctx.recv_ack(sub.as_mut(), sent.len()).await;
            let unique: BTreeSet<String> = got.iter().cloned().collect();
            assert_eq!(unique.len(), got.len(), "duplicates: {got:?}");
            assert_eq!(unique, sent);
        }
        ctx.expect_nothing(a.as_mut()).await;
        ctx.expect_nothing(b.as_mut()).await;
    }

    pub async fn consumers_of_a_group_share_without_duplicates(ctx: Arc<Ctx>) {
        const PUBLISHERS: usize = 4;
        const EACH: usize = 50;
        const TOTAL: usize = PUBLISHERS * EACH;
        let topic = ctx.topic("t");
        let group = ctx.group("g");
        let subs = [
            ctx.subscribe(&topic, &group).await,
            ctx.subscribe(&topic, &group).await,
        ];
        let seen: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let mut consumers = Vec::new();
        for (n, mut sub) in subs.into_iter().enumerate() {
            let (ctx, seen) = (ctx.clone(), seen.clone());
            consumers.push(tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + ctx.setup.receive_timeout * 3;
                let mut mine = 0;
                loop {
                    let done = seen.lock().unwrap().len() >= TOTAL;
                    if done || tokio::time::Instant::now() > deadline {
                        break;
                    }
                    let Ok(next) = tokio::time::timeout(ctx.setup.quiet_period, sub.next()).await
                    else {
                        continue;
                    };
                    let d = match next {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => panic!("consumer {n}: receive failed: {e}"),
                        None => panic!("consumer {n}: the subscription ended"),
                    };
                    *seen.lock().unwrap().entry(text(&d)).or_default() += 1;
                    mine += 1;
                    d.ack().await.unwrap();
                }
                (sub, mine)
            }));
        }
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let (ctx, topic) = (ctx.clone(), topic.clone());
            publishers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    ctx.publish(msg(&topic, format!("p{p}-{i}"))).await;
                }
            }));
        }
        for p in publishers {
            p.await.unwrap();
        }
        let mut subs = Vec::new();
        let mut split = Vec::new();
        for c in consumers {
            let (sub, mine) = c.await.unwrap();
            subs.push(sub);
            split.push(mine);
        }
        for sub in &mut subs {
            ctx.expect_nothing(sub.as_mut()).await;
        }
        let seen = seen.lock().unwrap();
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dups.is_empty(), "delivered more than once: {dups:?}");
        assert_eq!(seen.len(), TOTAL, "received {} of {TOTAL}", seen.len());
        println!("the two consumers received {split:?} of {TOTAL}");
    }

    pub async fn nack_redelivers_with_next_attempt(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let mut sub = ctx.subscribe(&topic, &ctx.group("g")).await;
        let mut req = msg(&topic, "again");
        req.content_type = Some("text/plain".into());
        req.metadata = BTreeMap::from([("k".to_string(), "v".to_string())]);
        ctx.publish(req.clone()).await;

        let first = ctx.recv(sub.as_mut()).await;
        assert_eq!(first.message.delivery_attempt, 1);
        let id = first.message.id.clone();
        first.nack(Duration::ZERO).await.unwrap();

        let second = ctx.recv(sub.as_mut()).await;
        assert_eq!(second.message.id, id, "the same message");
        assert_eq!(second.message.data, req.data);
        assert_eq!(second.message.content_type, req.content_type);
        assert_eq!(second.message.metadata, req.metadata);
        assert_eq!(second.message.delivery_attempt, 2);
        // With a delay: where the broker can delay it comes later, but it comes.
        let delay = Duration::from_millis(300);
        second.nack(delay).await.unwrap();

        let third = ctx
            .recv_within(sub.as_mut(), ctx.setup.receive_timeout + delay)
            .await;
        assert_eq!(third.message.id, id);
        assert_eq!(third.message.delivery_attempt, 3);
        third.ack().await.unwrap();
        ctx.expect_nothing(sub.as_mut()).await;
    }

    pub async fn unsettled_delivery_is_redelivered(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let group = ctx.group("g");
        let mut sub = ctx.subscribe(&topic, &group).await;
        ctx.publish(msg(&topic, "dropped")).await;

        // The handler fails without settling: the delivery is dropped.
        let first = ctx.recv(sub.as_mut()).await;
        let id = first.message.id.clone();
        drop(first);
        let timeout = ctx.setup.redelivery_timeout;
        let second = ctx.recv_within(sub.as_mut(), timeout).await;
        assert_eq!(second.message.id, id);
        assert_eq!(second.message.data, "dropped");
        assert!(second.message.delivery_attempt >= 2, "attempt counts up");
        let attempt = second.message.delivery_attempt;

        // The subscriber goes away holding it unsettled: another subscriber of the group
        // gets it.
        drop(second);
        drop(sub);
        let mut other = ctx.subscribe(&topic, &group).await;
        let third = ctx.recv_within(other.as_mut(), timeout).await;
        assert_eq!(third.message.id, id);
        assert!(
            third.message.delivery_attempt > attempt,
            "attempt counts up"
        );
        third.ack().await.unwrap();
        ctx.expect_nothing(other.as_mut()).await;
    }

    pub async fn group_keeps_messages_while_nobody_subscribes(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let group = ctx.group("g");
        let mut sub = ctx.subscribe(&topic, &group).await;
        ctx.publish(msg(&topic, "before")).await;
        assert_eq!(ctx.recv_ack(sub.as_mut(), 1).await, ["before"]);
        sub.close().await.unwrap();
        drop(sub);

        let sent: BTreeSet<String> = (0..5).map(|i| format!("while-away-{i}")).collect();
        for m in &sent {
            ctx.publish(msg(&topic, m.clone())).await;
        }
        let mut sub = ctx.subscribe(&topic, &group).await;
        let got: BTreeSet<String> = ctx
            .recv_ack(sub.as_mut(), sent.len())
            .await
            .into_iter()
            .collect();
        assert_eq!(got, sent);
        ctx.expect_nothing(sub.as_mut()).await;
    }

    /// A broker that replays gives a new group what was published before any subscriber
    /// existed (the publisher-first race of a multi-app run); one that does not gives it
    /// only what comes after its first subscribe.
    pub async fn new_group_starts_where_the_broker_says(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        if ctx.broker().capabilities().replay {
            ctx.publish(msg(&topic, "before")).await;
            let mut late = ctx.subscribe(&topic, &ctx.group("late")).await;
            ctx.publish(msg(&topic, "after")).await;
            let got: BTreeSet<String> = ctx.recv_ack(late.as_mut(), 2).await.into_iter().collect();
            assert_eq!(got, BTreeSet::from(["before".into(), "after".into()]));
            ctx.expect_nothing(late.as_mut()).await;
            return;
        }
        // Someone subscribes, so that the topic exists for brokers that need that.
        let mut early = ctx.subscribe(&topic, &ctx.group("early")).await;
        ctx.publish(msg(&topic, "before")).await;
        let mut late = ctx.subscribe(&topic, &ctx.group("late")).await;
        ctx.publish(msg(&topic, "after")).await;
        assert_eq!(ctx.recv_ack(late.as_mut(), 1).await, ["after"]);
        ctx.expect_nothing(late.as_mut()).await;
        let got: BTreeSet<String> = ctx.recv_ack(early.as_mut(), 2).await.into_iter().collect();
        assert_eq!(got, BTreeSet::from(["before".into(), "after".into()]));
    }

    pub async fn close_ends_the_subscription(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let group = ctx.group("g");
        let mut sub = ctx.subscribe(&topic, &group).await;
        ctx.publish(msg(&topic, "held")).await;
        let held = ctx.recv(sub.as_mut()).await;
        sub.close().await.unwrap();
        let next = tokio::time::timeout(ctx.setup.receive_timeout, sub.next())
            .await
            .expect("next() after close returns at once");
        assert!(next.is_none(), "next() after close is None");
        // A delivery received before the close can still be settled.
        held.ack().await.unwrap();
        let mut again = ctx.subscribe(&topic, &group).await;
        ctx.expect_nothing(again.as_mut()).await;
    }

    pub async fn bulk_publish_delivers_all(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let mut sub = ctx.subscribe(&topic, &ctx.group("g")).await;
        let reqs: Vec<PublishRequest> = (0..50)
            .map(|i| {
                let mut req = msg(&topic, format!("bulk-{i}"));
                req.content_type = Some("text/plain".into());
                req.metadata = BTreeMap::from([("i".to_string(), i.to_string())]);
                req
            })
            .collect();
        ctx.broker().bulk_publish(reqs).await.unwrap();
        let mut got = BTreeSet::new();
        for _ in 0..50 {
            let d = ctx.recv(sub.as_mut()).await;
            let data = text(&d);
            assert_eq!(
                d.message.metadata.get("i").map(|i| format!("bulk-{i}")),
                Some(data.clone()),
                "metadata travels with its entry"
            );
            assert!(got.insert(data), "duplicate");
            d.ack().await.unwrap();
        }
        ctx.expect_nothing(sub.as_mut()).await;
    }

    pub async fn bulk_publish_reports_failed_entries(ctx: Arc<Ctx>) {
        let topic = ctx.topic("t");
        let mut sub = ctx.subscribe(&topic, &ctx.group("g")).await;
        let reqs = vec![
            msg(&topic, "first"),
            msg("", "no topic"),
            msg(&topic, "third"),
        ];
        let err = ctx.broker().bulk_publish(reqs).await.unwrap_err();
        let failed: Vec<usize> = err.failed.iter().map(|f| f.0).collect();
        assert_eq!(failed, [1], "{err}");
        assert!(
            matches!(err.failed[0].1, PubSubError::InvalidRequest(_)),
            "{err}"
        );
        let got: BTreeSet<String> = ctx.recv_ack(sub.as_mut(), 2).await.into_iter().collect();
        assert_eq!(got, BTreeSet::from(["first".into(), "third".into()]));
        ctx.expect_nothing(sub.as_mut()).await;
    }

    pub async fn single_consumer_receives_in_order(ctx: Arc<Ctx>) {
        assert!(
            ctx.broker().capabilities().ordered,
            "run only for ordered brokers"
        );
        const N: usize = 1000;
        let topic = ctx.topic("t");
        let mut sub = ctx.subscribe(&topic, &ctx.group("g")).await;
        let publisher = {
            let (ctx, topic) = (ctx.clone(), topic.clone());
            tokio::spawn(async move {
                for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
                    let reqs = chunk.iter().map(|i| msg(&topic, i.to_string())).collect();
                    ctx.broker().bulk_publish(reqs).await.unwrap();
                }
            })
        };
        // Received while publishing goes on, so order is checked across fetches too.
        for expected in 0..N {
            let d = ctx.recv(sub.as_mut()).await;
            assert_eq!(text(&d), expected.to_string(), "out of order");
            assert_eq!(d.message.delivery_attempt, 1);
            d.ack().await.unwrap();
        }
        publisher.await.unwrap();
        ctx.expect_nothing(sub.as_mut()).await;
    }

    pub async fn ttl_expired_messages_are_not_delivered(ctx: Arc<Ctx>) {
        assert!(
            ctx.broker().capabilities().ttl,
            "run only for brokers with ttl"
        );
        let topic = ctx.topic("t");
        let group = ctx.group("g");
        // The group exists, but nobody receives while the short TTL runs out.
        let mut sub = ctx.subscribe(&topic, &group).await;
        sub.close().await.unwrap();
        drop(sub);
        let with_ttl = |data: &str, ttl: Duration| {
            let mut req = msg(&topic, data.to_string());
            req.ttl = Some(ttl);
            req
        };
        ctx.publish(with_ttl("short", Duration::from_millis(500)))
            .await;
        ctx.publish(with_ttl("long", Duration::from_secs(600)))
            .await;
        ctx.publish(msg(&topic, "forever")).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut sub = ctx.subscribe(&topic, &group).await;
        let got: BTreeSet<String> = ctx.recv_ack(sub.as_mut(), 2).await.into_iter().collect();
        assert_eq!(got, BTreeSet::from(["long".into(), "forever".into()]));
        ctx.expect_nothing(sub.as_mut()).await;
    }

    pub async fn invalid_requests_are_rejected(ctx: Arc<Ctx>) {
        let err = ctx.broker().publish(msg("", "x")).await.unwrap_err();
        assert!(matches!(err, PubSubError::InvalidRequest(_)), "{err}");
        let req = SubscribeRequest::new(ctx.topic("t"), "");
        let Err(err) = ctx.broker().subscribe(req).await else {
            panic!("subscribe without a consumer group succeeded");
        };
        assert!(matches!(err, PubSubError::InvalidRequest(_)), "{err}");
    }
}
