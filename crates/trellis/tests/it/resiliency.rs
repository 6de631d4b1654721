//! Resiliency policies (`kind: Resiliency`) observed end to end: real `trellis` processes,
//! a misbehaving callee (slow, failing, flapping) and a failing subscriber.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;
use trellis_test_support::{
    HttpResponse, Sidecar, SubscriberApp, TestApp, request, send_chunked, wait_until,
};

use crate::{PATIENCE, assert_dapr_error, sidecar};

/// Writes `spec` (indented under `spec:`) as a Resiliency resource into a fresh resources
/// directory under `dir`.
fn resources(dir: &Path, spec: &str) -> PathBuf {
    let path = dir.join("resources");
    std::fs::create_dir_all(&path).unwrap();
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: policies\nspec:\n{spec}"
    );
    std::fs::write(path.join("resiliency.yaml"), yaml).unwrap();
    path
}

/// Caller `a` with the Resiliency `spec`, and callee `b` serving a [`TestApp`].
struct Setup {
    _dir: TempDir,
    app: TestApp,
    a: Sidecar,
    b: Sidecar,
}

impl Setup {
    async fn start(spec: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let res = resources(dir.path(), spec);
        let app = TestApp::start("b").await;
        let b = sidecar("b", dir.path()).app_port(app.port()).spawn();
        let a = sidecar("a", dir.path())
            .arg("--resources-path")
            .arg(res.display().to_string())
            .spawn();
        a.wait_healthy().await;
        b.wait_healthy().await;
        Self {
            _dir: dir,
            app,
            a,
            b,
        }
    }

    /// `POST`s a small body to `method` on `b` through `a`.
    async fn call(&self, method: &str) -> HttpResponse {
        let url = self.a.url(&format!("/v1.0/invoke/b/method/{method}"));
        request("POST", &url, &[("content-type", "text/plain")], "hello").await
    }

    fn outputs(&self) -> String {
        format!("--- a:\n{}\n--- b:\n{}", self.a.output(), self.b.output())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_policy_cuts_a_slow_callee() {
    let s = Setup::start(
        "  policies:\n    timeouts:\n      fast: 500ms\n  targets:\n    apps:\n      b:\n        timeout: fast\n",
    )
    .await;
    let quick = s.call("slow/10").await;
    assert_eq!(quick.status.as_u16(), 200, "{}", s.outputs());

    let started = Instant::now();
    let cut = s.call("slow/5000").await;
    let took = started.elapsed();
    assert_dapr_error(
        &cut,
        500,
        "ERR_DIRECT_INVOKE",
        &["failed to invoke, id: b", "context deadline exceeded"],
        &s.outputs(),
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "the call took {took:?}; the timeout is 500ms"
    );

    // Over gRPC (InvokeService) the same policy answers DEADLINE_EXCEEDED, as Dapr does.
    let endpoint = format!("http://127.0.0.1:{}", s.a.grpc_port);
    let mut client = trellis_proto::runtime::dapr_client::DaprClient::connect(endpoint)
        .await
        .unwrap();
    let err = client
        .invoke_service(trellis_proto::runtime::InvokeServiceRequest {
            id: "b".into(),
            message: Some(trellis_proto::common::InvokeRequest {
                method: "slow/5000".into(),
                http_extension: Some(trellis_proto::common::HttpExtension {
                    verb: trellis_proto::common::http_extension::Verb::Get as i32,
                    querystring: String::new(),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        err.message().contains("context deadline exceeded"),
        "{err:?}"
    );
}

const RETRY: &str = "  policies:
    retries:
      flappy:
        policy: constant
        duration: 100ms
        maxRetries: 3
        matching:
          httpStatusCodes: 500-599
  targets:
    apps:
      b:
        retry: flappy
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_policy_resends_to_a_flapping_callee() {
    let s = Setup::start(RETRY).await;
    // Two failures, then an answer: the caller sees only the answer.
    let resp = s.call("flaky/2/a").await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}\n{}",
        resp.text(),
        s.outputs()
    );
    assert_eq!(resp.text(), "ok after 2");
    assert_eq!(s.app.hits_on("/flaky/2/a"), 3);

    // maxRetries 3: four attempts, then the callee's last answer as it was.
    let resp = s.call("flaky/10/b").await;
    assert_eq!(resp.status.as_u16(), 503, "{:?}", resp.text());
    assert_eq!(resp.text(), "flaky failure 4");
    assert_eq!(s.app.hits_on("/flaky/10/b"), 4);

    // A status outside `matching` is not retried.
    let resp = s.call("status/404").await;
    assert_eq!(resp.status.as_u16(), 404);
    assert_eq!(s.app.hits_on("/status/404"), 1);

    // A streamed body cannot be sent again: one attempt, and the answer says why.
    let url = s.a.url("/v1.0/invoke/b/method/flaky/5/streamed");
    let resp = send_chunked("POST", &url, &[], 100_000, 8192)
        .await
        .unwrap();
    assert_eq!(
        resp.status.as_u16(),
        503,
        "{:?}\n{}",
        resp.text(),
        s.outputs()
    );
    assert_eq!(s.app.hits_on("/flaky/5/streamed"), 1);
    let why = resp.header("trellis-not-retried").unwrap_or_default();
    assert!(why.contains("streamed"), "header: {why:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_fails_fast_without_calling_the_callee() {
    let s = Setup::start(
        "  policies:\n    circuitBreakers:\n      cb:\n        maxRequests: 1\n        timeout: 2s\n        trip: consecutiveFailures > 1\n  targets:\n    apps:\n      b:\n        circuitBreaker: cb\n",
    )
    .await;
    // The callee fails twice: the breaker opens.
    for _ in 0..2 {
        let resp = s.call("flaky/2/cb").await;
        assert_eq!(
            resp.status.as_u16(),
            503,
            "{:?}\n{}",
            resp.text(),
            s.outputs()
        );
    }
    let refused = s.call("flaky/2/cb").await;
    assert_dapr_error(
        &refused,
        500,
        "ERR_DIRECT_INVOKE",
        &["circuit breaker is open"],
        &s.outputs(),
    );
    assert_eq!(
        s.app.hits_on("/flaky/2/cb"),
        2,
        "an open breaker calls nobody"
    );
    // Another method has its own breaker.
    assert_eq!(s.call("status/200").await.status.as_u16(), 200);

    // After its timeout the breaker half-opens; the one call it lets through succeeds and
    // closes it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = s.call("flaky/2/cb").await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}\n{}",
        resp.text(),
        s.outputs()
    );
    assert_eq!(s.call("flaky/2/cb").await.status.as_u16(), 200);
    assert_eq!(s.app.hits_on("/flaky/2/cb"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_policy_retries_deliveries_then_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources(
        dir.path(),
        "  policies:\n    retries:\n      inbound:\n        policy: constant\n        duration: 300ms\n        maxRetries: 3\n  targets:\n    components:\n      pubsub:\n        inbound:\n          retry: inbound\n",
    );
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders", "deadLetterTopic": "orders-dead"},
        {"pubsubname": "pubsub", "topic": "orders-dead", "route": "/dead"}
    ])))
    .await;
    app.respond("/orders", &[(500, "")]);
    let b = sidecar("b", dir.path())
        .app_port(app.port())
        .arg("--resources-path")
        .arg(res.display().to_string())
        .spawn();
    b.wait_healthy().await;
    let url = b.url("/v1.0/publish/pubsub/orders");
    let published = request("POST", &url, &[("content-type", "text/plain")], "order 1").await;
    assert_eq!(published.status.as_u16(), 204, "{:?}", published.text());

    let dead = app.wait_for("/dead", 1, PATIENCE).await;
    assert_eq!(dead.len(), 1, "nothing dead-lettered\n{}", b.output());
    assert_eq!(dead[0].json()["data"], "order 1");
    // maxRetries 3: the first delivery and three retries, not the built-in ten attempts.
    let tries = app.received_on("/orders");
    assert_eq!(tries.len(), 4, "{}", b.output());
    // And nothing more arrives for it.
    let more = wait_until(Duration::from_secs(1), || async {
        app.received_on("/orders").len() > 4
    })
    .await;
    assert!(!more, "delivered again after dead-lettering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_policy_fails_the_start_and_an_unknown_component_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources(
        dir.path(),
        "  policies:\n    timeouts:\n      t: 1s\n  targets:\n    apps:\n      b:\n        retry: nosuch\n",
    );
    let (code, x) = crate::run_to_end(
        sidecar("x", dir.path())
            .arg("--resources-path")
            .arg(res.display().to_string()),
    )
    .await;
    assert_ne!(code, Some(0), "{}", x.output());
    let out = x.output();
    for needle in ["resiliency.yaml", "spec.targets.apps.b.retry", "\"nosuch\""] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }

    let res = resources(
        dir.path(),
        "  policies:\n    timeouts:\n      t: 1s\n  targets:\n    components:\n      nosuchstore:\n        outbound:\n          timeout: t\n",
    );
    let x = sidecar("x", dir.path())
        .arg("--resources-path")
        .arg(res.display().to_string())
        .spawn();
    x.wait_healthy().await;
    x.wait_output("spec.targets.components.nosuchstore", PATIENCE)
        .await;
}

/// Sends `POST /slow/1500` to `b` through `caller` while one instance of `b` is killed
/// (`kill -9` of its sidecar) with the call in flight; returns the answer.
async fn call_while_its_callee_dies(
    caller: &Sidecar,
    apps: &[TestApp],
    bs: &mut [Sidecar],
) -> HttpResponse {
    let url = caller.url("/v1.0/invoke/b/method/slow/1500");
    let before: Vec<usize> = apps.iter().map(|a| a.hits_on("/slow/1500")).collect();
    let call =
        tokio::spawn(
            async move { request("POST", &url, &[("content-type", "text/plain")], "x").await },
        );
    let mut victim = None;
    let reached = wait_until(PATIENCE, || {
        let hit = apps
            .iter()
            .zip(&before)
            .position(|(a, n)| a.hits_on("/slow/1500") > *n);
        victim = hit;
        async move { hit.is_some() }
    })
    .await;
    assert!(reached, "no instance got the call");
    if let Some(i) = victim {
        bs[i].signal(nix::sys::signal::Signal::SIGKILL);
        bs[i].wait_exit(PATIENCE).await;
    }
    call.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_to_a_killed_callee_is_retried_elsewhere_only_under_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let res = resources(dir.path(), RETRY);
    let mut apps = Vec::new();
    let mut bs = Vec::new();
    for name in ["b1", "b2", "b3"] {
        let app = TestApp::start(name).await;
        bs.push(sidecar("b", dir.path()).app_port(app.port()).spawn());
        apps.push(app);
    }
    let plain = sidecar("plain", dir.path()).spawn();
    let guarded = sidecar("guarded", dir.path())
        .arg("--resources-path")
        .arg(res.display().to_string())
        .spawn();
    for s in bs.iter().chain([&plain, &guarded]) {
        s.wait_healthy().await;
    }
    // Without a policy, a call that may have reached the app is not sent again.
    let lost = call_while_its_callee_dies(&plain, &apps, &mut bs).await;
    assert_dapr_error(
        &lost,
        500,
        "ERR_DIRECT_INVOKE",
        &["failed to invoke, id: b"],
        &plain.output(),
    );
    // With one, it is sent to an instance still there.
    let saved = call_while_its_callee_dies(&guarded, &apps, &mut bs).await;
    assert_eq!(
        saved.status.as_u16(),
        200,
        "{:?}\n{}",
        saved.text(),
        guarded.output()
    );
    assert_eq!(saved.text(), "slow");
}

/// A `state.redis` component named `statestore` on `port`, with `spec` as Resiliency (none
/// when empty), in a fresh resources directory under `dir/name`.
fn redis_store(dir: &Path, name: &str, port: u16, spec: &str) -> PathBuf {
    let dir = dir.join(name);
    let path = match spec {
        "" => {
            let path = dir.join("resources");
            std::fs::create_dir_all(&path).unwrap();
            path
        }
        spec => resources(&dir, spec),
    };
    let component = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - name: redisHost\n    value: 127.0.0.1:{port}\n"
    );
    std::fs::write(path.join("statestore.yaml"), component).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_policy_rides_out_a_store_that_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis =
        trellis_test_support::servers::OwnRedis::start(trellis_test_support::free_port());
    let spec = "  policies:\n    retries:\n      store:\n        policy: constant\n        duration: 200ms\n        maxRetries: 50\n  targets:\n    components:\n      statestore:\n        outbound:\n          retry: store\n";
    let guarded_res = redis_store(dir.path(), "guarded", redis.port, spec);
    let plain_res = redis_store(dir.path(), "plain", redis.port, "");
    let start = |id: &str, res: &Path| {
        sidecar(id, dir.path())
            .arg("--resources-path")
            .arg(res.display().to_string())
            .spawn()
    };
    let guarded = start("guarded", &guarded_res);
    let plain = start("plain", &plain_res);
    guarded.wait_healthy().await;
    plain.wait_healthy().await;
    let save = |s: &Sidecar, value: &str| {
        let url = s.url("/v1.0/state/statestore");
        let body = json!([{"key": "k", "value": value}]).to_string();
        async move { request("POST", &url, &[("content-type", "application/json")], body).await }
    };
    assert_eq!(
        save(&guarded, "before").await.status.as_u16(),
        204,
        "{}",
        guarded.output()
    );

    redis.kill();
    // Without a policy the save fails at once.
    let failed = save(&plain, "lost").await;
    assert_dapr_error(&failed, 500, "ERR_STATE_SAVE", &[], &plain.output());
    // With one it is retried until the store is back.
    let pending = tokio::spawn({
        let url = guarded.url("/v1.0/state/statestore");
        let body = json!([{"key": "k", "value": "after"}]).to_string();
        async move { request("POST", &url, &[("content-type", "application/json")], body).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!pending.is_finished(), "the save should wait for the store");
    redis.restart();
    let saved = pending.await.unwrap();
    assert_eq!(
        saved.status.as_u16(),
        204,
        "{:?}\n{}",
        saved.text(),
        guarded.output()
    );
    let read = request("GET", &guarded.url("/v1.0/state/statestore/k"), &[], "").await;
    assert_eq!(read.text(), "\"after\"", "{}", guarded.output());
}
