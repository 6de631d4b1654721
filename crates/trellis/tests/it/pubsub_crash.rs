//! Dapr's pub/sub durability contract, through real `trellis` processes and crashes: a
//! publish answered 204 is delivered at least once even when the publishing sidecar or the
//! subscriber app is killed with SIGKILL mid-stream; with the broker down a publish answers
//! 500 `ERR_PUBSUB_PUBLISH_MESSAGE` (never a silent 204), and delivery resumes by itself
//! once the broker is back. (kill -9 of the subscribing sidecar is in `pubsub.rs`.)
//!
//! The crash tests publish thousands of messages and print (eprintln) the duplicate rate
//! the at-least-once redeliveries cost.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use trellis_test_support::servers::{self, NATS};
use trellis_test_support::{SubscriberApp, free_port, request, try_request, wait_until};

use crate::{PATIENCE, assert_dapr_error, sidecar};

/// How long thousands of messages may take to arrive, retries after a crash included (the
/// delivery loop backs off up to 5 s between attempts). A healthy run needs a fraction.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(120);

/// Longest a single publish may take before the test calls it hung (a broker that is down
/// must fail the request, not hold it forever).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the broker-restart test keeps NATS down.
const OUTAGE: Duration = Duration::from_secs(4);

// ---- publishing --------------------------------------------------------------------------

/// Why a publisher task stopped before its last message.
#[derive(Debug)]
enum Stop {
    /// No HTTP answer (connection refused or reset): expected once its sidecar is killed.
    Transport(String),
    /// An HTTP answer other than 204: never expected from a live sidecar.
    Answer(u16, String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Transport(e) => write!(f, "no answer: {e}"),
            Stop::Answer(status, body) => write!(f, "answered {status}: {body}"),
        }
    }
}

/// Concurrent publishers of `<prefix><i>`, `i` in `0..n`, as `text/plain`, each recording
/// exactly which of its publishes were answered 204.
struct Publishers {
    acked: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<Option<Stop>>>,
}

impl Publishers {
    fn start(url: &str, prefix: &str, n: usize, workers: usize) -> Self {
        let acked = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let tasks = (0..workers)
            .map(|w| {
                let (url, prefix, acked) = (url.to_string(), prefix.to_string(), acked.clone());
                tokio::spawn(async move {
                    for i in (w..n).step_by(workers) {
                        let body = format!("{prefix}{i}");
                        let sent = tokio::time::timeout(
                            PUBLISH_TIMEOUT,
                            try_request(
                                "POST",
                                &url,
                                &[("content-type", "text/plain")],
                                body.clone(),
                            ),
                        )
                        .await
                        .unwrap_or_else(|_| Err(format!("no answer within {PUBLISH_TIMEOUT:?}")));
                        match sent {
                            Ok(r) if r.status == 204 => acked.lock().unwrap().push(body),
                            Ok(r) => return Some(Stop::Answer(r.status.as_u16(), r.text())),
                            Err(e) => return Some(Stop::Transport(e)),
                        }
                    }
                    None
                })
            })
            .collect();
        Self { acked, tasks }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits for every task; returns the acknowledged messages and why tasks stopped early.
    async fn finish(self) -> (HashSet<String>, Vec<Stop>) {
        let mut stops = Vec::new();
        for t in self.tasks {
            stops.extend(t.await.unwrap());
        }
        let acked = self.acked.lock().unwrap().iter().cloned().collect();
        (acked, stops)
    }
}

/// Prints the run's numbers in the style of `pubsub.rs`: `deliveries` are the data of every
/// delivery the subscriber got (repeats included), restricted to messages of this run.
fn report(what: &str, acked: &HashSet<String>, deliveries: &[String]) {
    let distinct: HashSet<&String> = deliveries.iter().collect();
    let extra = deliveries.len() - distinct.len();
    let unacked = distinct.iter().filter(|d| !acked.contains(**d)).count();
    eprintln!(
        "{what}: {} acknowledged messages, {} deliveries of {} distinct messages ({unacked} of \
         them not acknowledged to the publisher), {extra} duplicates, duplicate rate {:.2}%",
        acked.len(),
        deliveries.len(),
        distinct.len(),
        extra as f64 * 100.0 / distinct.len().max(1) as f64
    );
}

/// Up to 20 of the `expected` messages not in `got`, sorted, for failure messages.
fn missing(expected: &HashSet<String>, got: &HashSet<String>) -> Vec<String> {
    let mut m: Vec<String> = expected.difference(got).cloned().collect();
    m.sort();
    m.truncate(20);
    m
}

// ---- kill -9 of the publishing sidecar -----------------------------------------------------

/// The data of every delivery `app` got on `path` that starts with `prefix`.
fn delivered(app: &SubscriberApp, path: &str, prefix: &str) -> Vec<String> {
    app.received_on(path)
        .iter()
        .filter_map(|r| r.json()["data"].as_str().map(str::to_string))
        .filter(|d| d.starts_with(prefix))
        .collect()
}

/// kill -9 of the publishing sidecar while several publishers are mid-stream: every publish
/// it answered 204 reaches the subscriber (sidecar B and its app) at least once; a new
/// sidecar on the same data directory publishes again. Uses the embedded broker, so this is
/// the broker's fsync-before-204 seen from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_of_the_publisher() {
    const N: usize = 3000;
    const WORKERS: usize = 6;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"}
    ])))
    .await;
    let b = sidecar("app-b", dir.path()).app_port(app.port()).spawn();
    b.wait_healthy().await;
    let mut a = sidecar("app-a", dir.path()).spawn();
    a.wait_healthy().await;

    // B's consumer group starts when its sidecar subscribes: publish until it is there.
    let url = a.url("/v1.0/publish/pubsub/orders");
    let joined = wait_until(PATIENCE, || async {
        let r = request("POST", &url, &[("content-type", "text/plain")], "warm-up").await;
        assert_eq!(r.status, 204, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
        !app.received_on("/orders").is_empty()
    })
    .await;
    assert!(joined, "B never received; B's output:\n{}", b.output());

    let publishers = Publishers::start(&url, "m", N, WORKERS);
    let some = wait_until(PATIENCE, || async { publishers.acked_count() >= N / 2 }).await;
    assert!(
        some,
        "publishing too slow: {} acknowledged\nA's output:\n{}",
        publishers.acked_count(),
        a.output()
    );
    a.signal(Signal::SIGKILL);
    assert_eq!(a.wait_exit(PATIENCE).await, None, "A was not killed");
    let (acked, stops) = publishers.finish().await;
    // The kill must have cut the stream: otherwise this test proved nothing.
    assert!(
        acked.len() < N,
        "all {N} publishes finished before the kill"
    );
    for stop in &stops {
        assert!(
            matches!(stop, Stop::Transport(_)),
            "a publisher got an HTTP error from A: {stop}\nA's output:\n{}",
            a.output()
        );
    }
    if let Some(first) = stops.first() {
        eprintln!("a publisher after the kill: {first}");
    }

    // A comes back on the same data directory and publishes again.
    let a = sidecar("app-a", dir.path()).spawn();
    a.wait_healthy().await;
    let url = a.url("/v1.0/publish/pubsub/orders");
    let mut expected = acked.clone();
    for i in 0..20 {
        let m = format!("m-after-{i}");
        let r = request("POST", &url, &[("content-type", "text/plain")], m.clone()).await;
        assert_eq!(r.status, 204, "publish after the restart: {}", r.text());
        expected.insert(m);
    }

    let got = || {
        delivered(&app, "/orders", "m")
            .into_iter()
            .collect::<HashSet<_>>()
    };
    let all = wait_until(DELIVERY_PATIENCE, || async { got().is_superset(&expected) }).await;
    assert!(
        all,
        "{} of {} acknowledged messages never arrived, e.g. {:?}\nB's output:\n{}",
        expected.difference(&got()).count(),
        expected.len(),
        missing(&expected, &got()),
        b.output()
    );
    report(
        &format!(
            "kill -9 of the publisher's sidecar ({N} attempted, {WORKERS} publishers, {} stopped \
             by the kill)",
            stops.len()
        ),
        &expected,
        &delivered(&app, "/orders", "m"),
    );
    eprintln!("took {:?}", started.elapsed());
}

// ---- kill -9 of the subscriber app ---------------------------------------------------------

/// The Python subscriber app (`durable_subscriber.py`) as its own OS process, killed when
/// dropped. Its stdout and stderr go to a log file, for failure messages.
struct PythonSubscriber {
    child: Child,
    log: PathBuf,
}

impl PythonSubscriber {
    /// Starts the app on `port`, subscribing to `topic` of `pubsub`, appending each event's
    /// data to `out`; returns once it listens.
    async fn start(port: u16, topic: &str, out: &Path, log: PathBuf) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/durable_subscriber.py");
        let log_file = File::create(&log).unwrap();
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg("pubsub")
            .arg(topic)
            .arg(out)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawn python3");
        let mut app = Self { child, log };
        // A manual poll rather than `wait_until`: an app that died (port taken, say) fails
        // the test at once, with its traceback.
        let deadline = Instant::now() + PATIENCE;
        while !app.output().contains("listening on") {
            let exited = app.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the subscriber app did not start on port {port} ({exited:?}):\n{}",
                app.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        app
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL (what `Child::kill` sends on Unix), and reaps it.
    fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PythonSubscriber {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// Every line the subscriber app wrote, in order.
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// kill -9 of the subscriber *app* (a separate process) mid-stream, while publishing goes
/// on: the sidecar keeps retrying, reconnects to the app restarted on the same port, and
/// every acknowledged message lands in the app's file at least once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_of_the_subscriber_app() {
    const N: usize = 2000;
    const WORKERS: usize = 4;
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("received.txt");
    let port = free_port();
    let mut app = PythonSubscriber::start(port, "orders", &out, dir.path().join("app-1.log")).await;
    let b = sidecar("app-b", dir.path()).app_port(port).spawn();
    b.wait_healthy().await;

    // Published through the subscriber's own sidecar, which stays up throughout. Its
    // consumer group starts when it subscribes: publish until the app got one.
    let url = b.url("/v1.0/publish/pubsub/orders");
    let joined = wait_until(PATIENCE, || async {
        let r = request("POST", &url, &[("content-type", "text/plain")], "warm-up").await;
        assert_eq!(r.status, 204, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
        !lines(&out).is_empty()
    })
    .await;
    assert!(
        joined,
        "the app never received; sidecar's output:\n{}\napp's output:\n{}",
        b.output(),
        app.output()
    );

    let ours = |path: &Path| -> Vec<String> {
        lines(path)
            .into_iter()
            .filter(|l| l.starts_with('m'))
            .collect()
    };
    let publishers = Publishers::start(&url, "m", N, WORKERS);
    let some = wait_until(PATIENCE, || async { ours(&out).len() >= N / 4 }).await;
    assert!(some, "too slow: {} received", ours(&out).len());
    app.kill_9();
    let at_kill: HashSet<String> = ours(&out).into_iter().collect();
    // The app stays down while the rest is published: the sidecar's deliveries fail and
    // back off in the meantime.
    let (acked, stops) = publishers.finish().await;
    assert!(
        stops.is_empty(),
        "publishing through the sidecar failed while only the app was down: {}\n\
         sidecar's output:\n{}",
        stops
            .iter()
            .map(Stop::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        b.output()
    );
    assert_eq!(acked.len(), N);
    assert!(
        at_kill.len() < N,
        "all {N} messages arrived before the kill"
    );
    let down_at_kill = N - at_kill.len();

    let app = PythonSubscriber::start(port, "orders", &out, dir.path().join("app-2.log")).await;
    let got = || ours(&out).into_iter().collect::<HashSet<_>>();
    let all = wait_until(DELIVERY_PATIENCE, || async { got().is_superset(&acked) }).await;
    assert!(
        all,
        "{} of {N} acknowledged messages never reached the restarted app, e.g. {:?}\n\
         sidecar's output:\n{}\napp's output:\n{}",
        acked.difference(&got()).count(),
        missing(&acked, &got()),
        b.output(),
        app.output()
    );
    report(
        &format!(
            "kill -9 of the subscriber app ({N} published, {down_at_kill} not yet received when \
             it was killed)"
        ),
        &acked,
        &ours(&out),
    );
    eprintln!("took {:?}", started.elapsed());
}

// ---- broker restart --------------------------------------------------------------------------

/// NATS (JetStream) stopped and started under two running sidecars: while it is down a
/// publish answers 500 `ERR_PUBSUB_PUBLISH_MESSAGE`, never 204; once it is back, publishing
/// succeeds again and the subscriber's sidecar delivers what was published after the
/// restart, neither sidecar restarted. Runs alone under nextest (`_restart_`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_restart_publish_fails_with_500_then_delivery_resumes() {
    servers::require_nextest("jetstream_restart_publish_fails_with_500_then_delivery_resumes");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let resources = dir.path().join("resources");
    std::fs::create_dir_all(&resources).unwrap();
    // A short ackWait: a delivery the broker handed out just before it went down comes back
    // within seconds.
    std::fs::write(
        resources.join("pubsub.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: pubsub\nspec:\n  \
         type: pubsub.jetstream\n  version: v1\n  metadata:\n  - name: natsURL\n    value: \
         nats://127.0.0.1:4222\n  - name: ackWait\n    value: 5s\n",
    )
    .unwrap();
    let res = resources.display().to_string();
    let topic = servers::unique("crash_js");
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": topic, "route": "/orders"}
    ])))
    .await;
    let b = sidecar("app-b", dir.path())
        .app_port(app.port())
        .arg("--resources-path")
        .arg(res.clone())
        .spawn();
    b.wait_healthy().await;
    let a = sidecar("app-a", dir.path())
        .arg("--resources-path")
        .arg(res.clone())
        .spawn();
    a.wait_healthy().await;
    let url = a.url(&format!("/v1.0/publish/pubsub/{topic}"));
    let outputs = || format!("A's output:\n{}\nB's output:\n{}", a.output(), b.output());
    let publish = |body: String| {
        let url = url.clone();
        async move {
            tokio::time::timeout(
                PUBLISH_TIMEOUT,
                try_request("POST", &url, &[("content-type", "text/plain")], body),
            )
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PUBLISH_TIMEOUT:?}")))
        }
    };

    // B's durable consumer starts with what is published after it subscribed.
    let joined = wait_until(PATIENCE, || async {
        let r = publish("warm-up".into()).await.unwrap();
        assert_eq!(r.status, 204, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
        !app.received_on("/orders").is_empty()
    })
    .await;
    assert!(joined, "B never received\n{}", outputs());
    let before: HashSet<String> = (0..20).map(|i| format!("before {i}")).collect();
    for m in &before {
        let r = publish(m.clone()).await.unwrap();
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let got = || delivered(&app, "/orders", "");
    let arrived = wait_until(PATIENCE, || async {
        got()
            .into_iter()
            .collect::<HashSet<_>>()
            .is_superset(&before)
    })
    .await;
    assert!(
        arrived,
        "before the restart: missing {:?}\n{}",
        missing(&before, &got().into_iter().collect()),
        outputs()
    );

    // The guard starts NATS again when dropped, also if this test fails.
    let stopped = tokio::task::spawn_blocking(|| NATS.stop()).await.unwrap();
    // Every publish during the outage fails: a few seconds of them, long enough for the
    // NATS client to back off its reconnects and for B's pull requests to fail.
    let down = Instant::now();
    let mut while_down = 0;
    while down.elapsed() < OUTAGE {
        let t = Instant::now();
        let r = publish(format!("while-down {while_down}"))
            .await
            .unwrap_or_else(|e| panic!("publish while NATS is down: {e}\n{}", outputs()));
        assert_dapr_error(&r, 500, "ERR_PUBSUB_PUBLISH_MESSAGE", &[&topic], &outputs());
        if while_down == 0 {
            eprintln!(
                "publish with NATS down: {} after {:?}: {}",
                r.status,
                t.elapsed(),
                r.text()
            );
        }
        while_down += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{while_down} publishes while NATS was down, all 500");

    let t = Instant::now();
    let _stopped = tokio::task::spawn_blocking(move || {
        let mut s = stopped;
        s.start();
        s
    })
    .await
    .unwrap();
    eprintln!("NATS back after {:?}", t.elapsed());

    // The sidecar reconnects by itself: publishes succeed again within a bound. Failures on
    // the way are 500s with the Dapr code (never 204 for something not stored).
    let t = Instant::now();
    let failures = AtomicUsize::new(0);
    let recovered = wait_until(Duration::from_secs(60), || async {
        let r = publish("reconnect probe".into()).await.unwrap();
        if r.status == 204 {
            return true;
        }
        assert_dapr_error(&r, 500, "ERR_PUBSUB_PUBLISH_MESSAGE", &[], &outputs());
        failures.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(250)).await;
        false
    })
    .await;
    assert!(
        recovered,
        "publishing never recovered after NATS came back\n{}",
        outputs()
    );
    eprintln!(
        "publishing recovered {:?} after NATS was back ({} failed publishes on the way)",
        t.elapsed(),
        failures.load(Ordering::Relaxed)
    );

    let after: HashSet<String> = (0..20).map(|i| format!("after {i}")).collect();
    for m in &after {
        let r = publish(m.clone()).await.unwrap();
        assert_eq!(r.status, 204, "{}\n{}", r.text(), outputs());
    }
    let t = Instant::now();
    let arrived = wait_until(Duration::from_secs(60), || async {
        got()
            .into_iter()
            .collect::<HashSet<_>>()
            .is_superset(&after)
    })
    .await;
    assert!(
        arrived,
        "B did not resume delivery after NATS came back: missing {:?}\n{}",
        missing(&after, &got().into_iter().collect()),
        outputs()
    );
    // A failed publish promises nothing either way; count what the client still sent.
    let late = got().iter().filter(|d| d.starts_with("while-down")).count();
    eprintln!("{late} of the {while_down} publishes answered 500 were delivered anyway");
    eprintln!(
        "delivery resumed {:?} after the last publish; whole test {:?}",
        t.elapsed(),
        started.elapsed()
    );
}
