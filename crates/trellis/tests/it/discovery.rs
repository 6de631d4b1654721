//! Service invocation between separately started `trellis` processes that find each other
//! through the file registry of a shared data directory: what reaches the app, what comes
//! back, how ids resolve, load balancing, failover, and `trellis list`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;
use trellis_test_support::{HttpResponse, Sidecar, SidecarBuilder, TestApp, try_request};

use crate::{PATIENCE, assert_dapr_error, run_to_end, sidecar, trellis};

/// Caller `a` (no app) and one or more instances of `b`, each with its own [`TestApp`].
struct Setup {
    dir: TempDir,
    apps: Vec<TestApp>,
    a: Sidecar,
    bs: Vec<Sidecar>,
}

impl Setup {
    /// One `a` and one `b` instance per name in `b_apps` (the name is the app's `x-instance`).
    async fn start(b_apps: &[&str]) -> Self {
        Self::start_with(b_apps, |a| a).await
    }

    /// Like [`start`](Self::start), with extra settings for `a`.
    async fn start_with(
        b_apps: &[&str],
        configure_a: impl FnOnce(SidecarBuilder) -> SidecarBuilder,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut apps = Vec::new();
        let mut bs = Vec::new();
        for name in b_apps {
            let app = TestApp::start(name).await;
            bs.push(sidecar("b", dir.path()).app_port(app.port()).spawn());
            apps.push(app);
        }
        let a = configure_a(sidecar("a", dir.path())).spawn();
        a.wait_healthy().await;
        for b in &bs {
            b.wait_healthy().await;
        }
        Self { dir, apps, a, bs }
    }

    /// Every process's output, for failure messages.
    fn outputs(&self) -> String {
        let mut text = format!("--- a:\n{}", self.a.output());
        for (i, b) in self.bs.iter().enumerate() {
            text.push_str(&format!("\n--- b[{i}]:\n{}", b.output()));
        }
        text
    }

    /// Sends a request to `a`'s API; transport errors and hangs fail the test.
    async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpResponse {
        let url = self.a.url(path);
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            try_request(method, &url, headers, body.to_string()),
        )
        .await;
        match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => panic!("{method} {url} failed: {e}\n{}", self.outputs()),
            Err(_) => panic!("{method} {url} hung for 10 s\n{}", self.outputs()),
        }
    }

    /// Like [`call`](Self::call), and asserts a 200 answer from the echo app.
    async fn echo(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (HttpResponse, serde_json::Value) {
        let resp = self.call(method, path, headers, body).await;
        assert_eq!(
            resp.status.as_u16(),
            200,
            "{method} {path}: {:?}\n{}",
            resp.text(),
            self.outputs()
        );
        let json = resp.json();
        (resp, json)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_form_passes_method_query_headers_and_body() {
    let s = Setup::start(&["b1"]).await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let body = format!("body of {method}");
        let (resp, echo) = s
            .echo(
                method,
                "/v1.0/invoke/b/method/orders/42?x=1&y=two%20words",
                &[("x-test", "yes"), ("content-type", "text/plain")],
                &body,
            )
            .await;
        let ctx = format!("{method}: {echo}\n{}", s.outputs());
        assert_eq!(echo["method"], method, "{ctx}");
        assert_eq!(echo["path"], "/orders/42", "{ctx}");
        assert_eq!(echo["query"], "x=1&y=two%20words", "{ctx}");
        assert_eq!(echo["body"], body, "{ctx}");
        assert_eq!(echo["headers"]["x-test"], "yes", "{ctx}");
        assert_eq!(echo["headers"]["content-type"], "text/plain", "{ctx}");
        assert_eq!(resp.header("x-instance"), Some("b1"), "{ctx}");
        assert_eq!(
            resp.header("content-type"),
            Some("application/json"),
            "{ctx}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_form_sends_the_whole_path_as_the_method() {
    let s = Setup::start(&["b1"]).await;
    let (_, echo) = s
        .echo(
            "POST",
            "/orders/7/items?page=2",
            &[("dapr-app-id", "b")],
            "payload",
        )
        .await;
    let ctx = format!("{echo}\n{}", s.outputs());
    assert_eq!(echo["method"], "POST", "{ctx}");
    assert_eq!(echo["path"], "/orders/7/items", "{ctx}");
    assert_eq!(echo["query"], "page=2", "{ctx}");
    assert_eq!(echo["body"], "payload", "{ctx}");
    assert!(
        echo["headers"].get("dapr-app-id").is_none(),
        "the routing header is not forwarded: {ctx}"
    );
    assert_eq!(echo["headers"]["dapr-callee-app-id"], "b", "{ctx}");

    // The header wins even on a path that would be a Dapr route.
    let (_, echo) = s
        .echo("GET", "/v1.0/metadata", &[("dapr-app-id", "b")], "")
        .await;
    assert_eq!(echo["path"], "/v1.0/metadata", "{echo}\n{}", s.outputs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_and_trace_headers_reach_the_app_and_tokens_do_not() {
    // `a` requires an API token; the caller's token is for `a` only.
    let s = Setup::start_with(&["b1"], |a| a.env("DAPR_API_TOKEN", "a-secret")).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    for (form, path, extra) in [
        ("path", "/v1.0/invoke/b/method/who", None),
        ("header", "/who", Some(("dapr-app-id", "b"))),
    ] {
        let mut headers = vec![
            ("dapr-api-token", "a-secret"),
            ("dapr-caller-app-id", "spoofed"),
            ("Dapr-Callee-App-Id", "spoofed-too"),
            ("dapr-caller-namespace", "spoofed-ns"),
            ("traceparent", traceparent),
            ("tracestate", tracestate),
        ];
        headers.extend(extra);
        let (_, echo) = s.echo("GET", path, &headers, "").await;
        let h = &echo["headers"];
        let ctx = format!("{form} form: {echo}\n{}", s.outputs());
        assert_eq!(h["dapr-caller-app-id"], "a", "{ctx}");
        assert_eq!(h["dapr-callee-app-id"], "b", "{ctx}");
        assert_eq!(h["dapr-caller-namespace"], "default", "{ctx}");
        assert!(h.get("dapr-api-token").is_none(), "token leaked: {ctx}");
        assert_eq!(h["traceparent"], traceparent, "{ctx}");
        assert_eq!(h["tracestate"], tracestate, "{ctx}");
    }
    let resp = s.call("GET", "/v1.0/invoke/b/method/who", &[], "").await;
    assert_eq!(
        resp.status.as_u16(),
        401,
        "a without token: {:?}",
        resp.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_error_statuses_come_back_unchanged() {
    let s = Setup::start(&["b1"]).await;
    for code in [418u16, 404, 503] {
        let resp = s
            .call(
                "POST",
                &format!("/v1.0/invoke/b/method/status/{code}"),
                &[],
                "x",
            )
            .await;
        let ctx = format!(
            "{code}: {:?} {:?}\n{}",
            resp.headers,
            resp.text(),
            s.outputs()
        );
        assert_eq!(resp.status.as_u16(), code, "{ctx}");
        assert_eq!(resp.header("x-custom"), Some("yes"), "{ctx}");
        assert_eq!(resp.text(), format!("status {code}"), "{ctx}");
        assert!(
            !resp.text().contains("errorCode"),
            "an app's error is not wrapped: {ctx}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_and_unknown_ids() {
    let s = Setup::start(&["b1"]).await;
    let (_, echo) = s
        .echo("GET", "/v1.0/invoke/b.default/method/ns", &[], "")
        .await;
    assert_eq!(echo["path"], "/ns", "{echo}");
    let (_, echo) = s
        .echo("GET", "/ns", &[("dapr-app-id", "b.default")], "")
        .await;
    assert_eq!(echo["path"], "/ns", "{echo}");

    let resp = s
        .call("GET", "/v1.0/invoke/b.otherns/method/ns", &[], "")
        .await;
    assert_dapr_error(
        &resp,
        500,
        "ERR_DIRECT_INVOKE",
        &["b.otherns"],
        &s.outputs(),
    );
    let resp = s.call("GET", "/v1.0/invoke/nosuch/method/x", &[], "").await;
    assert_dapr_error(
        &resp,
        500,
        "ERR_DIRECT_INVOKE",
        &["failed to invoke, id: nosuch"],
        &s.outputs(),
    );
    let resp = s.call("GET", "/x", &[("dapr-app-id", "nosuch")], "").await;
    assert_dapr_error(&resp, 500, "ERR_DIRECT_INVOKE", &["nosuch"], &s.outputs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_method_reaches_the_app_root() {
    let s = Setup::start(&["b1"]).await;
    for path in ["/v1.0/invoke/b/method/", "/v1.0/invoke/b/method/?q=1"] {
        let (_, echo) = s.echo("GET", path, &[], "").await;
        assert_eq!(echo["path"], "/", "{path}: {echo}\n{}", s.outputs());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_without_an_app_is_an_invoke_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = sidecar("a", dir.path()).spawn();
    let c = sidecar("c", dir.path()).spawn();
    a.wait_healthy().await;
    c.wait_healthy().await;
    let resp = try_request("GET", &a.url("/v1.0/invoke/c/method/x"), &[], "")
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.output(), c.output()));
    assert_dapr_error(
        &resp,
        500,
        "ERR_DIRECT_INVOKE",
        &["failed to invoke, id: c", "app channel"],
        &format!("{}\n{}", a.output(), c.output()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_app_down_is_an_invoke_error() {
    let s = Setup::start(&["b1"]).await;
    // One good call first, so that `b` holds a pooled connection to its app.
    s.echo("GET", "/v1.0/invoke/b/method/before", &[], "").await;
    s.apps[0].stop();
    for _ in 0..3 {
        let resp = s.call("GET", "/v1.0/invoke/b/method/after", &[], "").await;
        assert_dapr_error(
            &resp,
            500,
            "ERR_DIRECT_INVOKE",
            &["failed to invoke, id: b", "app channel"],
            &s.outputs(),
        );
    }
}

/// Dapr's built-in retries (3, a second apart): a call sent before its callee's sidecar
/// is up reaches the callee once it is, as in Dapr's service-invocation quickstart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_before_the_callee_started_reaches_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = sidecar("a", dir.path()).spawn();
    a.wait_healthy().await;
    let port = trellis_test_support::free_port();
    let url = a.url("/v1.0/invoke/late/method/orders");
    let call = tokio::spawn(async move { try_request("POST", &url, &[], "order 1").await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The callee's sidecar first, its app half a second after.
    let late = sidecar("late", dir.path()).app_port(port).spawn();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let app = TestApp::start_on(port, "late").await;
    let resp = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call hung")
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.output(), late.output()));
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{}\n{}\n{}",
        resp.text(),
        a.output(),
        late.output()
    );
    assert_eq!(resp.json()["body"], "order 1");
    assert_eq!(app.hits(), 1, "the app saw the call once");
}

/// How many of `calls` calls each `x-instance` served.
async fn spread(s: &Setup, calls: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..calls {
        let (resp, _) = s
            .echo("GET", &format!("/v1.0/invoke/b/method/lb/{i}"), &[], "")
            .await;
        let instance = resp.header("x-instance").unwrap_or("?").to_string();
        *seen.entry(instance).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_spread_over_instances() {
    let s = Setup::start(&["b1", "b2"]).await;
    let seen = spread(&s, 20).await;
    assert!(
        seen.get("b1").copied().unwrap_or(0) > 0 && seen.get("b2").copied().unwrap_or(0) > 0,
        "both instances should get calls: {seen:?}\n{}",
        s.outputs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_when_an_instance_is_killed() {
    let mut s = Setup::start(&["b1", "b2"]).await;
    // Warm up: `a` holds connections to both instances.
    let seen = spread(&s, 4).await;
    assert_eq!(seen.len(), 2, "{seen:?}\n{}", s.outputs());

    let killed_pid = s.bs[1].pid();
    s.bs[1].signal(Signal::SIGKILL);
    // Reaped, so the instance is gone for good; `a` still holds a pooled connection to it
    // and may hold its address in its resolver cache. Every call must still succeed.
    s.bs[1].wait_exit(PATIENCE).await;
    let seen = spread(&s, 20).await;
    assert_eq!(
        seen.get("b1"),
        Some(&20),
        "every call after the kill goes to the survivor: {seen:?}\n{}",
        s.outputs()
    );
    let listed = list_json(s.dir.path()).await;
    assert!(
        !listed.iter().any(|e| e["pid"] == killed_pid),
        "the killed sidecar is not listed: {listed:?}"
    );
}

/// Writes a registry entry by hand, as a sidecar killed with `kill -9` would leave it.
fn plant_entry(data_dir: &Path, app_id: &str, pid: u32, process_start: u64, port: u16) {
    let dir = data_dir.join("registry").join("default").join(app_id);
    std::fs::create_dir_all(&dir).expect("create registry dir");
    let entry = serde_json::json!({
        "appId": app_id,
        "namespace": "default",
        "pid": pid,
        "processStart": process_start,
        "internalAddress": format!("127.0.0.1:{port}"),
        "httpAddress": format!("127.0.0.1:{port}"),
    });
    std::fs::write(dir.join(format!("{pid}-{port}.json")), entry.to_string())
        .expect("write registry entry");
}

/// The pid and start time of a process that has exited (and been reaped).
fn dead_process() -> (u32, u64) {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 1..];
    let start = after_name
        .split_whitespace()
        .nth(19)
        .and_then(|s| s.parse().ok())
        .expect("start time");
    child.kill().expect("kill sleep");
    child.wait().expect("reap sleep");
    (pid, start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_entries_of_dead_processes_are_ignored() {
    // A live listener behind the planted entries: if a sidecar dialled a dead entry, the
    // connection would show up here.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("bind trap");
    trap.set_nonblocking(true).expect("nonblocking");
    let trap_port = trap.local_addr().expect("addr").port();
    let (pid, start) = dead_process();

    let s = Setup::start(&["b1"]).await;
    plant_entry(s.dir.path(), "b", pid, start, trap_port);
    plant_entry(s.dir.path(), "ghost", pid, start, trap_port);
    // Planted before `a` ever resolved `b`, so its first lookup reads them.

    let seen = spread(&s, 10).await;
    assert_eq!(seen.get("b1"), Some(&10), "{seen:?}\n{}", s.outputs());
    let resp = s.call("GET", "/v1.0/invoke/ghost/method/x", &[], "").await;
    assert_dapr_error(&resp, 500, "ERR_DIRECT_INVOKE", &["ghost"], &s.outputs());
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a sidecar dialled the address of a dead registry entry\n{}",
        s.outputs()
    );
    let listed = list_json(s.dir.path()).await;
    assert!(
        !listed.iter().any(|e| e["pid"] == pid),
        "dead entries are not listed: {listed:?}"
    );
}

/// `trellis list -o json` for `data_dir`, parsed.
async fn list_json(data_dir: &Path) -> Vec<serde_json::Value> {
    let (code, p) = run_to_end(trellis(&["list", "-o", "json"], data_dir)).await;
    assert_eq!(code, Some(0), "trellis list failed:\n{}", p.output());
    serde_json::from_str(&p.stdout()).unwrap_or_else(|e| {
        panic!(
            "trellis list -o json printed no JSON ({e}):\n{}",
            p.output()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_running_sidecars() {
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(list_json(empty.path()).await.is_empty());

    let mut s = Setup::start(&["b1"]).await;
    let listed = list_json(s.dir.path()).await;
    let ctx = format!("{listed:#?}\n{}", s.outputs());
    assert_eq!(listed.len(), 2, "{ctx}");
    let a = listed.iter().find(|e| e["appId"] == "a").expect(&ctx);
    let b = listed.iter().find(|e| e["appId"] == "b").expect(&ctx);
    assert_eq!(a["pid"], s.a.pid(), "{ctx}");
    assert_eq!(a["namespace"], "default", "{ctx}");
    assert_eq!(
        a["httpAddress"],
        format!("127.0.0.1:{}", s.a.http_port),
        "{ctx}"
    );
    assert_eq!(
        a["grpcAddress"],
        format!("127.0.0.1:{}", s.a.grpc_port),
        "the gRPC API port is listed too: {ctx}"
    );
    assert!(a.get("appPort").is_none_or(|p| p.is_null()), "{ctx}");
    assert_eq!(b["pid"], s.bs[0].pid(), "{ctx}");
    assert_eq!(b["appPort"], s.apps[0].port(), "{ctx}");

    let (code, table) = run_to_end(trellis(&["list"], s.dir.path())).await;
    assert_eq!(code, Some(0), "{}", table.output());
    let text = table.stdout();
    assert!(text.contains("APP ID"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some("b")
                && l.contains(&s.bs[0].pid().to_string())),
        "{text}"
    );

    // A sidecar that stops takes its entry with it.
    s.a.signal(Signal::SIGTERM);
    assert_eq!(s.a.wait_exit(PATIENCE).await, Some(0), "{}", s.a.output());
    let listed = list_json(s.dir.path()).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["appId"], "b");
}
