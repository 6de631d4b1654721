//! `trellis run` as an app launcher: the environment and output of the app, readiness,
//! exit codes, signals, the shutdown API, API tokens, health-check flags, body limits, and
//! the errors for bad flags, busy ports, missing commands and broken resource files.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;
use trellis_test_support::{
    PYTHON_ECHO_APP, Sidecar, SidecarBuilder, TestApp, free_port, request, send_chunked,
    try_request, wait_for_status, wait_until,
};

use crate::{PATIENCE, assert_dapr_error, run_to_end, sidecar, trellis};

/// A directory holding the Python echo app as `app.py`.
fn python_app_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.py"), PYTHON_ECHO_APP).expect("write app.py");
    dir
}

/// `trellis run --app-id <id> --app-port <free> -- <command>`, run in `app_dir`.
fn launch(id: &str, data: &Path, app_dir: &Path, command: &[&str]) -> (SidecarBuilder, u16) {
    let port = free_port();
    let builder = sidecar(id, data)
        .app_port(port)
        .cwd(app_dir)
        .command(command);
    (builder, port)
}

/// Starts the Python echo app as `x` and waits until it is healthy.
async fn python(
    configure: impl FnOnce(SidecarBuilder) -> SidecarBuilder,
) -> (TempDir, TempDir, Sidecar, u16) {
    let data = tempfile::tempdir().expect("tempdir");
    let app = python_app_dir();
    let (builder, port) = launch("x", data.path(), app.path(), &["python3", "app.py"]);
    let x = configure(builder).spawn();
    x.wait_healthy().await;
    (data, app, x, port)
}

/// The app's process id, from the metadata API's `extended.appPID`.
async fn app_pid(x: &Sidecar, headers: &[(&str, &str)]) -> u32 {
    let meta = request("GET", &x.url("/v1.0/metadata"), headers, "")
        .await
        .json();
    meta["extended"]["appPID"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no extended.appPID in {meta}\n{}", x.output()))
}

/// Asserts that process `pid` is gone (and was reaped) soon.
async fn assert_gone(pid: u32, x: &Sidecar) {
    let gone = wait_until(Duration::from_secs(5), || async move {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    assert!(gone, "app process {pid} is still there\n{}", x.output());
}

/// Whether process `pid` has ended (gone, or a zombie its new parent has not reaped).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses: `<pid> (<comm>) <state> ...`.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_dies_when_trellis_is_killed() {
    // The default current-thread runtime, and a multi-thread one (the forking thread matters).
    for threads in ["1", "2"] {
        let (_data, _app, mut x, _) = python(|b| b.arg("--worker-threads").arg(threads)).await;
        let pid = app_pid(&x, &[]).await;
        assert!(!ended(pid), "the app should be running");
        x.signal(Signal::SIGKILL);
        x.wait_exit(PATIENCE).await;
        let died = wait_until(Duration::from_secs(5), || async move { ended(pid) }).await;
        assert!(
            died,
            "app {pid} outlived its killed trellis ({threads} threads)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_gets_its_environment_and_its_output_is_prefixed() {
    let (_data, _app, x, port) = python(|b| b).await;
    let resp = request("GET", &x.url("/v1.0/invoke/x/method/env"), &[], "").await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}\n{}",
        resp.text(),
        x.output()
    );
    let env = resp.json();
    let ctx = format!("{env:#}\n{}", x.output());
    let http = x.http_port.to_string();
    let app_port = port.to_string();
    assert_eq!(env["DAPR_HTTP_PORT"], http.as_str(), "{ctx}");
    assert_eq!(env["TRELLIS_HTTP_PORT"], http.as_str(), "{ctx}");
    assert!(
        env["DAPR_GRPC_PORT"]
            .as_str()
            .is_some_and(|p| p.parse::<u16>().is_ok()),
        "{ctx}"
    );
    assert_eq!(env["APP_ID"], "x", "{ctx}");
    assert_eq!(env["APP_PORT"], app_port.as_str(), "{ctx}");
    assert_eq!(env["APP_PROTOCOL"], "http", "{ctx}");

    // Calling its own app id goes straight to the app, still with Dapr's identity headers.
    let resp = request(
        "GET",
        &x.url("/v1.0/invoke/x/method/self"),
        &[("dapr-caller-app-id", "spoofed")],
        "",
    )
    .await;
    let echo = resp.json();
    assert_eq!(echo["path"], "/self", "{echo}");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "x", "{echo}");
    assert_eq!(echo["headers"]["dapr-callee-app-id"], "x", "{echo}");
    assert!(
        x.stdout()
            .lines()
            .any(|l| l == format!("== APP - x == listening on {port}")),
        "the app's output lines carry the prefix:\n{}",
        x.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_ready_when_the_app_listens() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = python_app_dir();
    // The app starts listening only once the test creates `go`.
    let gate = "while [ ! -e go ]; do sleep 0.02; done; exec python3 app.py";
    let (builder, _) = launch("x", data.path(), app.path(), &["sh", "-c", gate]);
    let x = builder.spawn();
    let url = x.url("/v1.0/healthz");
    let answered = wait_until(PATIENCE, || async {
        try_request("GET", &url, &[], "").await.is_ok()
    })
    .await;
    assert!(answered, "the API never came up\n{}", x.output());

    let resp = request("GET", &url, &[], "").await;
    assert_dapr_error(&resp, 500, "ERR_HEALTH_NOT_READY", &[], &x.output());
    let outbound = request("GET", &x.url("/v1.0/healthz/outbound"), &[], "").await;
    assert_eq!(
        outbound.status.as_u16(),
        204,
        "outbound is ready before the app\n{}",
        x.output()
    );

    std::fs::write(app.path().join("go"), "").expect("create gate");
    x.wait_healthy().await;
    let resp = request("GET", &x.url("/v1.0/invoke/x/method/hi"), &[], "").await;
    assert_eq!(resp.status.as_u16(), 200, "{}", x.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trellis_exits_with_the_app_exit_code() {
    let (_data, _app, mut x, _) = python(|b| b).await;
    let pid = app_pid(&x, &[]).await;
    let resp = request("POST", &x.url("/v1.0/invoke/x/method/exit/3"), &[], "").await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}\n{}",
        resp.text(),
        x.output()
    );
    assert_eq!(x.wait_exit(PATIENCE).await, Some(3), "{}", x.output());
    assert_gone(pid, &x).await;

    // Output on both streams is prefixed, a last line without a newline too.
    let data = tempfile::tempdir().expect("tempdir");
    let script = "echo to-out; echo to-err >&2; printf no-newline; exit 7";
    let (code, p) = run_to_end(sidecar("sh", data.path()).command(&["sh", "-c", script])).await;
    assert_eq!(code, Some(7), "{}", p.output());
    let (out, err) = (p.stdout(), p.stderr());
    assert!(
        out.lines().any(|l| l == "== APP - sh == to-out"),
        "{}",
        p.output()
    );
    assert!(
        out.lines().any(|l| l == "== APP - sh == no-newline"),
        "{}",
        p.output()
    );
    assert!(
        err.lines().any(|l| l == "== APP - sh == to-err"),
        "{}",
        p.output()
    );

    // An app killed by a signal: 128 + the signal number, as a shell reports it.
    let (code, p) =
        run_to_end(sidecar("sh", data.path()).command(&["sh", "-c", "kill -9 $$"])).await;
    assert_eq!(code, Some(128 + 9), "{}", p.output());
}

/// Sends `signal` to trellis and checks the app got it and trellis exits with its code.
async fn signal_is_forwarded(signal: Signal, printed: &str) {
    let (_data, _app, mut x, _) = python(|b| b.env("EXIT_CODE_ON_SIGNAL", "5")).await;
    x.wait_output("listening on", PATIENCE).await;
    let pid = app_pid(&x, &[]).await;
    x.signal(signal);
    assert_eq!(x.wait_exit(PATIENCE).await, Some(5), "{}", x.output());
    assert!(
        x.stdout().contains(&format!("== APP - x == {printed}")),
        "the app should print {printed:?}:\n{}",
        x.output()
    );
    assert_gone(pid, &x).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_forwarded_to_the_app() {
    signal_is_forwarded(Signal::SIGTERM, "got SIGTERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_is_forwarded_to_the_app() {
    signal_is_forwarded(Signal::SIGINT, "got SIGINT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_api_stops_sidecar_and_app() {
    let (data, _app, mut x, _) = python(|b| b).await;
    let pid = app_pid(&x, &[]).await;
    let resp = request("POST", &x.url("/v1.0/shutdown"), &[], "").await;
    assert_eq!(
        resp.status.as_u16(),
        204,
        "{:?}\n{}",
        resp.text(),
        x.output()
    );
    assert_eq!(x.wait_exit(PATIENCE).await, Some(0), "{}", x.output());
    assert!(
        x.stdout().contains("== APP - x == got SIGTERM"),
        "{}",
        x.output()
    );
    assert_gone(pid, &x).await;
    let registry = data.path().join("registry/default/x");
    let left: Vec<_> = std::fs::read_dir(&registry)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "registry entries left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_guards_the_api_and_app_token_reaches_the_app() {
    let (_data, _app, x, _) = python(|b| {
        b.env("DAPR_API_TOKEN", "api-secret")
            .env("APP_API_TOKEN", "app-secret")
    })
    .await;
    let ctx = x.output();
    // Health routes need no token (wait_healthy already relied on that).
    for path in ["/v1.0/healthz", "/v1.0/healthz/outbound"] {
        let resp = request("GET", &x.url(path), &[], "").await;
        assert_eq!(resp.status.as_u16(), 204, "{path}\n{ctx}");
    }
    for (method, path) in [
        ("GET", "/v1.0/metadata"),
        ("POST", "/v1.0/invoke/x/method/echo"),
        ("POST", "/v1.0/shutdown"),
    ] {
        for headers in [vec![], vec![("dapr-api-token", "wrong")]] {
            let resp = request(method, &x.url(path), &headers, "").await;
            assert_eq!(
                resp.status.as_u16(),
                401,
                "{method} {path} with {headers:?}: {:?}\n{ctx}",
                resp.text()
            );
            assert!(
                resp.text().contains("invalid api token"),
                "{:?}",
                resp.text()
            );
        }
    }
    let token = [("dapr-api-token", "api-secret")];
    let resp = request("GET", &x.url("/v1.0/metadata"), &token, "").await;
    assert_eq!(resp.status.as_u16(), 200, "{:?}\n{ctx}", resp.text());
    for (path, extra) in [
        ("/v1.0/invoke/x/method/echo", None),
        ("/echo", Some(("dapr-app-id", "x"))),
    ] {
        let mut headers = token.to_vec();
        headers.extend(extra);
        let resp = request("POST", &x.url(path), &headers, "hi").await;
        assert_eq!(
            resp.status.as_u16(),
            200,
            "{path}: {:?}\n{}",
            resp.text(),
            x.output()
        );
        let echo = resp.json();
        assert_eq!(
            echo["headers"]["dapr-api-token"], "app-secret",
            "the app gets APP_API_TOKEN, never the caller's token: {echo}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_health_check_flags() {
    // The echo app answers 200 on any path, so its health check passes.
    let (_data, _app, x, _) = python(|b| {
        b.arg("--app-health-check-path")
            .arg("/healthz")
            .arg("--app-health-probe-interval")
            .arg("1")
            .arg("--app-health-probe-timeout")
            .arg("500")
            .arg("--app-health-threshold")
            .arg("2")
    })
    .await;
    let resp = request("GET", &x.url("/v1.0/invoke/x/method/hi"), &[], "").await;
    assert_eq!(resp.status.as_u16(), 200, "{}", x.output());

    // An app whose health path fails is never ready, however long it has been listening.
    let data = tempfile::tempdir().expect("tempdir");
    let app = TestApp::start("sick").await;
    let y = sidecar("y", data.path())
        .app_port(app.port())
        .arg("--app-health-check-path")
        .arg("/status/503")
        .spawn();
    let probed = wait_until(PATIENCE, || async { app.hits() >= 3 }).await;
    assert!(probed, "the health path was never probed\n{}", y.output());
    let resp = request("GET", &y.url("/v1.0/healthz"), &[], "").await;
    assert_dapr_error(&resp, 500, "ERR_HEALTH_NOT_READY", &[], &y.output());
}

/// Runs `trellis <args>` expecting a quick failure with every needle on stderr.
async fn assert_fails(args: &[&str], data: &Path, needles: &[&str]) {
    let (code, p) = run_to_end(trellis(args, data)).await;
    assert!(
        matches!(code, Some(c) if c != 0),
        "trellis {args:?} should fail, exited {code:?}:\n{}",
        p.output()
    );
    let stderr = p.stderr();
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "trellis {args:?}: stderr should mention {needle:?}:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_rejected_with_clear_messages() {
    let data = tempfile::tempdir().expect("tempdir");
    let d = data.path();
    let cases: &[(&[&str], &[&str])] = &[
        (&["run", "--app-id", "x", "--bogus"], &["--bogus"]),
        (
            &["run", "--app-id", "x", "--app-protocol", "ftp"],
            &["ftp", "--app-protocol"],
        ),
        (
            &["run", "--app-id", "a.b"],
            &["--app-id", "\"a.b\"", "'.' is not allowed"],
        ),
        (
            &["run", "--app-id", "a/x"],
            &["--app-id", "'/' is not allowed", "1 to 63 letters"],
        ),
        (
            &[
                "run",
                "--app-id",
                "x",
                "--app-health-check-path",
                "/healthz",
            ],
            &["--app-port"],
        ),
        (
            &["run", "-f", "trellis.yaml", "--app-id", "x"],
            &["--app-id", "cannot be used with"],
        ),
        (
            &["run", "--app-id", "x", "--max-body-size", "4Xi"],
            &["4Xi"],
        ),
        (&["run"], &["--app-id"]),
    ];
    for (args, needles) in cases {
        assert_fails(args, d, needles).await;
    }
    let (code, p) =
        run_to_end(trellis(&["run", "--app-id", "x"], d).env("NAMESPACE", "../ns")).await;
    assert_eq!(code, Some(1), "{}", p.output());
    assert!(
        p.stderr()
            .contains("NAMESPACE: invalid namespace \"../ns\""),
        "{}",
        p.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_ports_are_named() {
    let data = tempfile::tempdir().expect("tempdir");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    for flag in [
        "--dapr-http-port",
        "--dapr-internal-grpc-port",
        "--metrics-port",
    ] {
        let http = if flag == "--dapr-http-port" {
            port.clone()
        } else {
            "0".to_string()
        };
        // The gRPC port on a free one too: the default (50001) lies in the ephemeral range,
        // where another test's connection may hold it, and only `flag` may be busy here.
        let mut args = vec![
            "run",
            "--app-id",
            "x",
            "--dapr-http-port",
            &http,
            "--dapr-grpc-port",
            "0",
        ];
        if flag != "--dapr-http-port" {
            args.extend([flag, &port]);
        }
        assert_fails(&args, data.path(), &[&port, "in use", flag]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_app_command_is_reported_and_cleaned_up() {
    let data = tempfile::tempdir().expect("tempdir");
    let http = free_port().to_string();
    assert_fails(
        &[
            "run",
            "--app-id",
            "x",
            "--dapr-http-port",
            &http,
            "--",
            "/nonexistent/trellis-test-app",
        ],
        data.path(),
        &["/nonexistent/trellis-test-app", "cannot start"],
    )
    .await;
    let (code, list) = run_to_end(trellis(&["list", "-o", "json"], data.path())).await;
    assert_eq!(code, Some(0), "{}", list.output());
    assert_eq!(
        list.stdout().trim(),
        "[]",
        "no registry entry is left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_resource_files_are_all_reported() {
    let data = tempfile::tempdir().expect("tempdir");
    let resources = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        resources.path().join("first-broken.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: [unclosed\n",
    )
    .expect("write");
    std::fs::write(
        resources.path().join("second-broken.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: store\nspec:\n  version: v1\n",
    )
    .expect("write");
    let path = resources.path().display().to_string();
    let http = free_port().to_string();
    let args = [
        "run",
        "--app-id",
        "x",
        "--dapr-http-port",
        &http,
        "--resources-path",
        &path,
    ];
    assert_fails(
        &args,
        data.path(),
        &["first-broken.yaml", "second-broken.yaml"],
    )
    .await;

    let unknown = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        unknown.path().join("store.yaml"),
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: store\nspec:\n  type: state.nosuchstore\n  version: v1\n",
    )
    .expect("write");
    let path = unknown.path().display().to_string();
    let args = [
        "run",
        "--app-id",
        "x",
        "--dapr-http-port",
        &http,
        "--resources-path",
        &path,
    ];
    assert_fails(&args, data.path(), &["state.nosuchstore", "store.yaml"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = TestApp::start("b1").await;
    let b = sidecar("b", data.path()).app_port(app.port()).spawn();
    let a = sidecar("a", data.path())
        .arg("--dapr-http-max-request-size")
        .arg("1")
        .spawn();
    a.wait_healthy().await;
    b.wait_healthy().await;
    let ctx = || format!("--- a:\n{}\n--- b:\n{}", a.output(), b.output());
    let url = a.url("/v1.0/invoke/b/method/upload");

    // Under the limit: fine.
    let resp = request("POST", &url, &[], vec![b'u'; 512 * 1024]).await;
    assert_eq!(resp.status.as_u16(), 200, "{:?}\n{}", resp.text(), ctx());
    assert_eq!(resp.json()["received"], 512 * 1024);

    // A declared length over the limit is refused up front.
    let two_mb = vec![b'u'; 2 << 20];
    let resp = try_request("POST", &url, &[], two_mb)
        .await
        .unwrap_or_else(|e| panic!("expected a 413 response, got {e}\n{}", ctx()));
    assert_dapr_error(&resp, 413, "ERR_BODY_READ", &[], &ctx());

    // Without a declared length the limit trips while streaming; that must not succeed.
    let result = send_chunked("POST", &url, &[], 2 << 20, 64 * 1024).await;
    println!("chunked over-limit upload: {result:?}");
    if let Ok(resp) = &result {
        assert!(
            !resp.status.is_success(),
            "an over-limit chunked body must fail, got {} {:?}\n{}",
            resp.status,
            resp.text(),
            ctx()
        );
    }
    // Either way both sidecars keep working.
    let resp = request("POST", &url, &[], "small").await;
    assert_eq!(resp.status.as_u16(), 200, "{:?}\n{}", resp.text(), ctx());
    assert!(wait_for_status(&a.url("/v1.0/healthz"), 204, PATIENCE).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_over_the_limit_are_body_read_errors() {
    let data = tempfile::tempdir().expect("tempdir");
    let app = TestApp::start("b1").await;
    let b = sidecar("b", data.path())
        .app_port(app.port())
        .arg("--dapr-http-max-request-size")
        .arg("1")
        .spawn();
    let a = sidecar("a", data.path())
        .arg("--dapr-http-max-request-size")
        .arg("1")
        .spawn();
    a.wait_healthy().await;
    b.wait_healthy().await;
    let ctx = || format!("--- a:\n{}\n--- b:\n{}", a.output(), b.output());
    // `b` calling its own app, and `a` calling `b`'s app: the same over-limit chunked body
    // must be reported the same way as a declared over-limit length (413 ERR_BODY_READ).
    // BUG: through a second sidecar the limit error is lost in the HTTP/2 forwarding and
    // comes back as 500 ERR_DIRECT_INVOKE "...failed after it was sent: http2 error".
    for (who, url) in [
        ("self-invocation", b.url("/v1.0/invoke/b/method/upload")),
        ("a -> b", a.url("/v1.0/invoke/b/method/upload")),
    ] {
        let resp = send_chunked("POST", &url, &[], 2 << 20, 64 * 1024)
            .await
            .unwrap_or_else(|e| panic!("{who}: expected a 413 response, got {e}\n{}", ctx()));
        assert_dapr_error(
            &resp,
            413,
            "ERR_BODY_READ",
            &["stream too large"],
            &format!("{who}\n{}", ctx()),
        );
    }
}

/// A component's `metadata.namespace` is ignored while `NAMESPACE` is unset (Dapr's
/// quickstarts carry `namespace: quickstarts`) and filters components once it is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_namespaces_filter_only_when_namespace_is_set() {
    let data = tempfile::tempdir().expect("tempdir");
    let resources = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        resources.path().join("kv.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: kv\n  namespace: quickstarts\nspec:\n  type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n",
            data.path().join("kv.db").display()
        ),
    )
    .expect("write");
    let path = resources.path().display().to_string();
    for (namespace, loaded) in [
        (None, true),
        (Some("quickstarts"), true),
        (Some("other"), false),
    ] {
        let mut builder = sidecar("ns-app", data.path())
            .arg("--resources-path")
            .arg(&path);
        if let Some(ns) = namespace {
            builder = builder.env("NAMESPACE", ns);
        }
        let mut s = builder.spawn();
        s.wait_healthy().await;
        let meta = request("GET", &s.url("/v1.0/metadata"), &[], "")
            .await
            .json();
        let names: Vec<String> = meta["components"]
            .as_array()
            .expect("components")
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        assert_eq!(
            names.iter().any(|n| n == "kv"),
            loaded,
            "NAMESPACE={namespace:?}: components {names:?}\n{}",
            s.output()
        );
        s.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = s.wait_exit(PATIENCE).await;
    }
}
