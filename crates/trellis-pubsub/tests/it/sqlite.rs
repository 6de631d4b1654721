//! The embedded SQLite broker: the conformance suite on a file and in memory, two brokers
//! on one file, lease expiry, nack delays, retention clean-up, reopening, and delivery
//! across kill -9 of a publishing and consuming process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, BufReader};
use trellis_pubsub::conformance::Setup;
use trellis_pubsub::sqlite::SqliteBroker;
use trellis_pubsub::{
    BulkPublishError, Capabilities, Delivery, Metadata, PubSub, PubSubError, PublishRequest,
    SubscribeRequest, Subscription,
};

async fn open(db: &Path, extra: &[(&str, &str)]) -> SqliteBroker {
    let mut pairs = vec![("connectionString", db.to_str().unwrap())];
    pairs.extend_from_slice(extra);
    SqliteBroker::open(&Metadata::from_pairs(pairs))
        .await
        .unwrap()
}

/// A broker on a new file in its own temporary directory, removed with the broker.
#[derive(Debug)]
pub struct TempBroker {
    broker: SqliteBroker,
    _dir: tempfile::TempDir,
}

pub async fn temp_broker(extra: &[(&str, &str)]) -> TempBroker {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(&dir.path().join("pubsub.db"), extra).await;
    TempBroker { broker, _dir: dir }
}

#[async_trait]
impl PubSub for TempBroker {
    fn capabilities(&self) -> Capabilities {
        self.broker.capabilities()
    }
    async fn publish(&self, req: PublishRequest) -> Result<(), PubSubError> {
        self.broker.publish(req).await
    }
    async fn bulk_publish(&self, reqs: Vec<PublishRequest>) -> Result<(), BulkPublishError> {
        self.broker.bulk_publish(reqs).await
    }
    async fn subscribe(&self, req: SubscribeRequest) -> Result<Box<dyn Subscription>, PubSubError> {
        self.broker.subscribe(req).await
    }
    async fn ping(&self) -> Result<(), PubSubError> {
        self.broker.ping().await
    }
}

mod conformance_file {
    // A short lease, so the redelivery cases do not wait 30 s.
    trellis_pubsub::conformance_tests!(async {
        let broker = super::temp_broker(&[("ackDeadline", "1s")]).await;
        super::Setup::new(broker).redelivery_timeout(std::time::Duration::from_secs(5))
    });
}

mod conformance_memory {
    trellis_pubsub::conformance_tests!(async {
        let md = trellis_pubsub::Metadata::from_pairs([
            ("connectionString", ":memory:"),
            ("ackDeadline", "1s"),
        ]);
        let broker = trellis_pubsub::sqlite::SqliteBroker::open(&md)
            .await
            .unwrap();
        super::Setup::new(broker).redelivery_timeout(std::time::Duration::from_secs(5))
    });
}

async fn recv(sub: &mut dyn Subscription, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(Some(res)) => Some(res.unwrap()),
        Ok(None) => panic!("subscription ended"),
        Err(_) => None,
    }
}

fn text(d: &Delivery) -> String {
    String::from_utf8(d.message.data.to_vec()).unwrap()
}

fn count_rows(db: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Receives and acks until nothing comes for `idle`; returns the data of every delivery.
async fn drain(sub: &mut dyn Subscription, idle: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(d) = recv(sub, idle).await {
        got.push(text(&d));
        d.ack().await.unwrap();
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_on_one_file_share_a_group() {
    const EACH: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let (a, b) = (
        Arc::new(open(&db, &[]).await),
        Arc::new(open(&db, &[]).await),
    );
    let sub = |broker: &Arc<SqliteBroker>, group: &str| {
        let (broker, group) = (broker.clone(), group.to_string());
        async move {
            broker
                .subscribe(SubscribeRequest::new("orders", group))
                .await
                .unwrap()
        }
    };
    // "shared" has a subscriber on each broker; "only-a" and "only-b" one each.
    let subs = vec![
        ("shared", sub(&a, "shared").await),
        ("shared", sub(&b, "shared").await),
        ("only-a", sub(&a, "only-a").await),
        ("only-b", sub(&b, "only-b").await),
    ];
    let received: Arc<Mutex<BTreeMap<&str, Vec<String>>>> = Arc::default();
    let mut consumers = Vec::new();
    for (group, mut sub) in subs {
        let received = received.clone();
        consumers.push(tokio::spawn(async move {
            let got = drain(sub.as_mut(), Duration::from_secs(3)).await;
            received
                .lock()
                .unwrap()
                .entry(group)
                .or_default()
                .extend(got.iter().cloned());
            got.len()
        }));
    }
    let mut publishers = Vec::new();
    for (name, broker) in [("a", a.clone()), ("b", b.clone())] {
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let req = PublishRequest::new("orders", format!("{name}{i}"));
                broker.publish(req).await.unwrap();
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut per_consumer = Vec::new();
    for c in consumers {
        per_consumer.push(c.await.unwrap());
    }
    let all: BTreeSet<String> = (0..EACH)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    let received = received.lock().unwrap();
    for (group, got) in received.iter() {
        let unique: BTreeSet<String> = got.iter().cloned().collect();
        assert_eq!(unique.len(), got.len(), "{group}: duplicates");
        assert_eq!(unique, all, "{group}: every message");
    }
    println!(
        "group shared: {} via broker a, {} via broker b",
        per_consumer[0], per_consumer[1]
    );
    assert!(per_consumer[0] > 0 && per_consumer[1] > 0, "both shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_notice_other_brokers_publishes_by_polling() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let (a, b) = (open(&db, &[]).await, open(&db, &[]).await);
    let mut sub = a.subscribe(SubscribeRequest::new("t", "g")).await.unwrap();
    for i in 0..5 {
        // Idle first, so the subscriber is waiting, not fetching.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        b.publish(PublishRequest::new("t", format!("{i}")))
            .await
            .unwrap();
        let d = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
        // Far below the idle refetch (2 s): the poller woke it.
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(text(&d), i.to_string());
        d.ack().await.unwrap();
    }
}

/// With polling all but off, another broker's publishes still arrive at once: its writer
/// rings the doorbell file after each commit and the watching poller looks.
#[tokio::test]
async fn the_doorbell_wakes_subscribers_of_other_brokers_without_polling() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let a = open(&db, &[("pollInterval", "1h")]).await;
    let b = open(&db, &[]).await;
    let mut sub = a.subscribe(SubscribeRequest::new("t", "g")).await.unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        b.publish(PublishRequest::new("t", format!("{i}")))
            .await
            .unwrap();
        let d = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
        worst = worst.max(t.elapsed());
        assert_eq!(text(&d), i.to_string());
        d.ack().await.unwrap();
    }
    // Far below the idle refetch (2 s) and the poll (1 h).
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    println!("publish to delivery across brokers, worst of 5: {worst:?}");
}

#[tokio::test]
async fn expired_lease_is_redelivered_after_the_deadline() {
    let broker = temp_broker(&[("ackDeadline", "600ms")]).await;
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    broker.publish(PublishRequest::new("t", "x")).await.unwrap();
    let d = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
    let leased = Instant::now();
    // As if the process died holding it: no drop, so no early nack.
    std::mem::forget(d);
    let again = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
    let waited = leased.elapsed();
    // The 600 ms lease started a little before `leased`.
    assert!(
        waited >= Duration::from_millis(450),
        "redelivered after {waited:?}"
    );
    assert_eq!(again.message.delivery_attempt, 2);
    again.ack().await.unwrap();
    assert!(
        recv(sub.as_mut(), Duration::from_millis(900))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn nack_delay_is_honoured() {
    let broker = temp_broker(&[]).await;
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    broker.publish(PublishRequest::new("t", "x")).await.unwrap();
    broker.publish(PublishRequest::new("t", "y")).await.unwrap();
    let x = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
    let nacked = Instant::now();
    x.nack(Duration::from_millis(400)).await.unwrap();
    // The later message is not held up by the nacked one.
    let y = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
    assert_eq!(text(&y), "y");
    y.ack().await.unwrap();
    let x = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
    assert!(
        nacked.elapsed() >= Duration::from_millis(390),
        "{:?}",
        nacked.elapsed()
    );
    assert_eq!((text(&x).as_str(), x.message.delivery_attempt), ("x", 2));
    x.ack().await.unwrap();
}

#[tokio::test]
async fn retention_deletes_what_every_group_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let extra = [("retention", "0"), ("cleanupInterval", "100ms")];
    let broker = open(&db, &extra).await;
    let mut a = broker
        .subscribe(SubscribeRequest::new("t", "a"))
        .await
        .unwrap();
    let mut b = broker
        .subscribe(SubscribeRequest::new("t", "b"))
        .await
        .unwrap();
    let reqs = (0..2500)
        .map(|i| PublishRequest::new("t", format!("{i}")))
        .collect();
    broker.bulk_publish(reqs).await.unwrap();
    let mut expiring = PublishRequest::new("other", "ttl");
    expiring.ttl = Some(Duration::from_millis(200));
    broker.publish(expiring).await.unwrap();
    assert_eq!(
        drain(a.as_mut(), Duration::from_millis(500)).await.len(),
        2500
    );
    // Group b has not acknowledged anything: everything stays, except the expired one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count_rows(&db, "pubsub_messages"), 2500);
    assert_eq!(
        drain(b.as_mut(), Duration::from_millis(500)).await.len(),
        2500
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_rows(&db, "pubsub_messages") > 0 {
        assert!(
            Instant::now() < deadline,
            "acknowledged messages not deleted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count_rows(&db, "pubsub_inflight"), 0);
    // Ids keep growing after the table emptied: a group's frontier stays meaningful.
    broker
        .publish(PublishRequest::new("t", "new"))
        .await
        .unwrap();
    let d = recv(a.as_mut(), Duration::from_secs(5)).await.unwrap();
    assert_eq!(text(&d), "new");
    assert!(d.message.id.parse::<i64>().unwrap() > 2500);
}

#[tokio::test]
async fn messages_and_groups_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let broker = open(&db, &[]).await;
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    sub.close().await.unwrap();
    drop(sub);
    for i in 0..10 {
        broker
            .publish(PublishRequest::new("t", format!("{i}")))
            .await
            .unwrap();
    }
    // Leased by a subscriber that is dropped with the broker's threads' last user.
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    let first = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
    first.ack().await.unwrap();
    drop((sub, broker));
    let broker = open(&db, &[]).await;
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    let got = drain(sub.as_mut(), Duration::from_millis(500)).await;
    assert_eq!(got, (1..10).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[tokio::test]
async fn slow_consumer_does_not_outlive_its_leases() {
    // Prefetched leases that sat in the buffer for over half the deadline are given back
    // and fetched afresh instead of handed out nearly expired.
    let broker = temp_broker(&[("ackDeadline", "1s"), ("prefetch", "8")]).await;
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    let reqs = (0..8)
        .map(|i| PublishRequest::new("t", format!("{i}")))
        .collect();
    broker.bulk_publish(reqs).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..8 {
        let d = recv(sub.as_mut(), Duration::from_secs(5)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        got.push((text(&d), d.message.delivery_attempt));
        d.ack().await.unwrap();
    }
    let data: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
    assert_eq!(data, ["0", "1", "2", "3", "4", "5", "6", "7"]);
    // Given-back leases were never delivered, so they do not count as attempts.
    assert!(got.iter().all(|g| g.1 == 1), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_next_loses_nothing() {
    // The default 30 s lease: a lease lost with a cancelled `next` would stall the drain.
    let broker = temp_broker(&[]).await;
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    let reqs = (0..200)
        .map(|i| PublishRequest::new("t", format!("{i}")))
        .collect();
    broker.bulk_publish(reqs).await.unwrap();
    let mut got = BTreeSet::new();
    for i in 0..2000u64 {
        // Cancelled at all sorts of points: while fetching, while waiting.
        let budget = Duration::from_micros(10 + (i * 37) % 500);
        if let Ok(Some(d)) = tokio::time::timeout(budget, sub.next()).await {
            let d = d.unwrap();
            got.insert(text(&d));
            d.ack().await.unwrap();
        }
    }
    // Dropped mid-fetch as well.
    drop(sub);
    let mut sub = broker
        .subscribe(SubscribeRequest::new("t", "g"))
        .await
        .unwrap();
    got.extend(drain(sub.as_mut(), Duration::from_secs(3)).await);
    assert_eq!(got.len(), 200, "a lease was lost with a cancelled next");
}

#[tokio::test]
async fn bad_metadata_is_reported() {
    let err = SqliteBroker::open(&Metadata::default()).await.unwrap_err();
    assert!(err.to_string().contains("connectionString"), "{err}");
    let md = Metadata::from_pairs([("connectionString", ":memory:"), ("ackDeadline", "soon")]);
    let err = SqliteBroker::open(&md).await.unwrap_err();
    assert!(err.to_string().contains("ackDeadline"), "{err}");
}

// --- other processes --------------------------------------------------------------------

const CHILD_DB: &str = "TRELLIS_PUBSUB_TEST_DB";
/// The child's lease, short so the parent gets the child's unsettled messages soon.
const CHILD_ACK_DEADLINE: &str = "1s";

/// Runs this test binary again, as [`child_process`] in the given mode.
fn spawn_child(mode: &str, db: &Path) -> tokio::process::Child {
    trellis_test_support::respawn_test("sqlite::child_process", mode, &[(CHILD_DB, db.as_os_str())])
        .unwrap()
}

/// Not a test of its own: the body of the child processes the tests below start. Run
/// normally (without the environment variable), it does nothing.
#[test]
fn child_process() {
    let Some((mode, rt)) = trellis_test_support::child_mode() else {
        return;
    };
    let db = std::env::var(CHILD_DB).unwrap();
    rt.block_on(async move {
        let broker = Arc::new(open(Path::new(&db), &[("ackDeadline", CHILD_ACK_DEADLINE)]).await);
        assert_eq!(mode, "publish-and-consume", "unknown child mode");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        // Publishes until killed, printing each message once its publish was acknowledged.
        for t in 0..16 {
            let broker = broker.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let key = format!("k{t}-{i}");
                    broker
                        .publish(PublishRequest::new("events", key.clone()))
                        .await
                        .unwrap();
                    println!("published {key}");
                    i += 1;
                }
            }));
        }
        // Consumes at the same time, printing what it received and what it acknowledged.
        let mut sub = broker
            .subscribe(SubscribeRequest::new("events", "g"))
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                let d = d.unwrap();
                let key = text(&d);
                println!("delivered {key}");
                // Printed before the ack: if the kill comes between the ack's commit and
                // the next line, the parent still knows this one may be settled.
                println!("acking {key}");
                d.ack().await.unwrap();
                println!("acked {key}");
            }
        }));
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_survive_kill_9() {
    const KILL_AFTER: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pubsub.db");
    // The group exists before anything is published, so it is owed every message.
    {
        let broker = open(&db, &[]).await;
        let mut sub = broker
            .subscribe(SubscribeRequest::new("events", "g"))
            .await
            .unwrap();
        sub.close().await.unwrap();
    }
    let mut child = spawn_child("publish-and-consume", &db);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut published, mut child_delivered) = (BTreeSet::new(), Vec::new());
    let (mut child_acking, mut child_acked) = (BTreeSet::new(), BTreeSet::new());
    // Lines keep coming after the kill until the pipe is drained: those happened before
    // the process died, so they count too.
    while let Some(line) = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the child works")
        .unwrap()
    {
        if let Some(key) = line.strip_prefix("published ") {
            published.insert(key.to_string());
            if published.len() == KILL_AFTER {
                child.start_kill().unwrap();
            }
        } else if let Some(key) = line.strip_prefix("delivered ") {
            child_delivered.push(key.to_string());
        } else if let Some(key) = line.strip_prefix("acking ") {
            child_acking.insert(key.to_string());
        } else if let Some(key) = line.strip_prefix("acked ") {
            child_acked.insert(key.to_string());
        }
    }
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed mid-stream: {status}");
    assert!(published.len() >= KILL_AFTER);

    // Whatever the child held unsettled comes back once its 1 s leases run out.
    let broker = open(&db, &[]).await;
    let mut sub = broker
        .subscribe(SubscribeRequest::new("events", "g"))
        .await
        .unwrap();
    let received = drain(sub.as_mut(), Duration::from_secs(3)).await;

    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for key in child_delivered.iter().chain(&received) {
        *times.entry(key.as_str()).or_default() += 1;
    }
    let lost: Vec<&String> = published
        .iter()
        .filter(|k| !child_acking.contains(*k) && !received.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged publishes never delivered, e.g. {:?}",
        lost.len(),
        published.len(),
        &lost[..lost.len().min(5)]
    );
    let acked_then_redelivered: Vec<&String> = received
        .iter()
        .filter(|k| child_acked.contains(*k))
        .collect();
    assert!(
        acked_then_redelivered.is_empty(),
        "acknowledged by the child, delivered again: {acked_then_redelivered:?}"
    );
    let duplicates = times.values().filter(|n| **n > 1).count();
    println!(
        "kill -9: {} publishes acknowledged; the child received {} and acknowledged {}; \
         afterwards {} received; {} of {} messages delivered more than once ({:.3}%)",
        published.len(),
        child_delivered.len(),
        child_acked.len(),
        received.len(),
        duplicates,
        times.len(),
        100.0 * duplicates as f64 / times.len().max(1) as f64
    );
}
