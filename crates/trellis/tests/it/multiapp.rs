//! `trellis run -f`: several apps from one run file, calling each other, with their output
//! prefixed, stopping together on a signal but not when one of them exits; and the errors
//! for broken run files.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;
use trellis_test_support::{
    HttpResponse, PYTHON_ECHO_APP, Sidecar, free_port, try_request, wait_for_status, wait_until,
};

use crate::{PATIENCE, run_to_end, trellis};

/// One app of a run file, with the ports the test chose for it.
struct App {
    id: &'static str,
    app_port: u16,
    http_port: u16,
}

impl App {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
}

/// A run file with the Python echo app as `alpha` and `beta`, each in its own directory.
struct RunFile {
    dir: TempDir,
    apps: Vec<App>,
}

impl RunFile {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut yaml =
            String::from("version: 1\ncommon:\n  env:\n    EXIT_CODE_ON_SIGNAL: 0\napps:\n");
        let mut apps = Vec::new();
        for id in ["alpha", "beta"] {
            let app_dir = dir.path().join(format!("{id}-dir"));
            std::fs::create_dir_all(&app_dir).expect("create app dir");
            std::fs::write(app_dir.join("app.py"), PYTHON_ECHO_APP).expect("write app.py");
            let app = App {
                id,
                app_port: free_port(),
                http_port: free_port(),
            };
            yaml.push_str(&format!(
                "  - appID: {id}\n    appDirPath: ./{id}-dir\n    appPort: {}\n    daprHTTPPort: {}\n    command: [\"python3\", \"app.py\"]\n",
                app.app_port, app.http_port
            ));
            apps.push(app);
        }
        std::fs::write(dir.path().join("run.yaml"), yaml).expect("write run file");
        Self { dir, apps }
    }

    fn path(&self) -> String {
        self.dir.path().join("run.yaml").display().to_string()
    }

    /// Starts `trellis run -f` and waits until every app is healthy.
    async fn start(&self) -> Sidecar {
        let t = trellis(&["run", "-f", &self.path()], self.dir.path()).spawn();
        for app in &self.apps {
            // `?appid=` makes sure it is this run's sidecar answering on the port.
            let url = app.url(&format!("/v1.0/healthz?appid={}", app.id));
            let healthy = wait_for_status(&url, 204, PATIENCE).await;
            assert!(healthy, "{} never became healthy:\n{}", app.id, t.output());
        }
        t
    }
}

/// Sends a request; a transport error fails the test with trellis's output.
async fn call(t: &Sidecar, method: &str, url: &str) -> HttpResponse {
    try_request(method, url, &[], "")
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}\n{}", t.output()))
}

/// The process id of an app, from its sidecar's metadata.
async fn app_pid(app: &App, t: &Sidecar) -> u32 {
    let meta = call(t, "GET", &app.url("/v1.0/metadata")).await.json();
    meta["extended"]["appPID"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no appPID for {}: {meta}\n{}", app.id, t.output()))
}

async fn assert_gone(pid: u32, t: &Sidecar) {
    let gone = wait_until(Duration::from_secs(5), || async move {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    assert!(gone, "app process {pid} is still there\n{}", t.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_call_each_other_and_stop_together_on_sigint() {
    let run = RunFile::new();
    let mut t = run.start().await;
    let (alpha, beta) = (&run.apps[0], &run.apps[1]);

    // alpha's app calls beta through alpha's own sidecar (its DAPR_HTTP_PORT).
    let resp = call(
        &t,
        "GET",
        &alpha.url("/v1.0/invoke/alpha/method/call/beta/hello"),
    )
    .await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}\n{}",
        resp.text(),
        t.output()
    );
    let outer = resp.json();
    assert_eq!(outer["status"], 200, "{outer}");
    let inner: serde_json::Value = serde_json::from_str(outer["body"].as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("beta's answer is not JSON ({e}): {outer}"));
    assert_eq!(inner["app"], "beta", "{inner}");
    assert_eq!(inner["path"], "/hello", "{inner}");
    assert_eq!(inner["headers"]["dapr-caller-app-id"], "alpha", "{inner}");

    let stdout = t.stdout();
    for app in &run.apps {
        let line = format!("== APP - {} == listening on {}", app.id, app.app_port);
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?}:\n{}",
            t.output()
        );
    }

    let pids = [app_pid(alpha, &t).await, app_pid(beta, &t).await];
    t.signal(Signal::SIGINT);
    let code = t.wait_exit(PATIENCE).await;
    assert_eq!(code, Some(0), "{}", t.output());
    for app in &run.apps {
        let line = format!("== APP - {} == got SIGINT", app.id);
        assert!(
            t.stdout().contains(&line),
            "missing {line:?}:\n{}",
            t.output()
        );
    }
    for pid in pids {
        assert_gone(pid, &t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_exiting_leaves_the_others_running() {
    let run = RunFile::new();
    let mut t = run.start().await;
    let (alpha, beta) = (&run.apps[0], &run.apps[1]);
    let alpha_pid = app_pid(alpha, &t).await;

    let resp = call(&t, "POST", &alpha.url("/v1.0/invoke/alpha/method/exit/4")).await;
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}\n{}",
        resp.text(),
        t.output()
    );
    assert_gone(alpha_pid, &t).await;

    for i in 0..5 {
        let resp = call(
            &t,
            "GET",
            &beta.url(&format!("/v1.0/invoke/beta/method/still/{i}")),
        )
        .await;
        assert_eq!(
            resp.status.as_u16(),
            200,
            "beta after alpha exited: {:?}\n{}",
            resp.text(),
            t.output()
        );
    }
    assert!(
        t.stdout().contains("== APP - beta == listening on"),
        "{}",
        t.output()
    );

    t.signal(Signal::SIGTERM);
    t.wait_exit(PATIENCE).await;
    assert!(
        t.stdout().contains("== APP - beta == got SIGTERM"),
        "{}",
        t.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_file_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("app")).expect("mkdir");
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "no-version.yaml",
            "apps:\n  - appID: a\n    appDirPath: ./app\n",
            &["no-version.yaml", "version"],
        ),
        (
            "no-dir.yaml",
            "version: 1\napps:\n  - appID: a\n    command: [\"true\"]\n",
            &["no-dir.yaml", "appDirPath"],
        ),
        (
            "typo.yaml",
            "version: 1\napps:\n  - appID: a\n    appDirPath: ./app\n    comand: [\"true\"]\n",
            &["typo.yaml", "comand"],
        ),
    ];
    for (name, text, needles) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write run file");
        let path = path.display().to_string();
        let (code, p) = run_to_end(trellis(&["run", "-f", &path], dir.path())).await;
        assert!(
            matches!(code, Some(c) if c != 0),
            "{name} should fail, exited {code:?}:\n{}",
            p.output()
        );
        let stderr = p.stderr();
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{name}: stderr should mention {needle:?}:\n{stderr}"
            );
        }
    }
    let missing = dir.path().join("missing.yaml").display().to_string();
    let (code, p) = run_to_end(trellis(&["run", "-f", &missing], dir.path())).await;
    assert!(matches!(code, Some(c) if c != 0), "{}", p.output());
    assert!(p.stderr().contains("missing.yaml"), "{}", p.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_run_file_means_its_trellis_yaml() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("trellis.yaml"),
        "version: 1\napps:\n  - appID: solo\n    appDirPath: .\n    command: [\"sh\", \"-c\", \"echo hello from $APP_ID\"]\n",
    )
    .expect("write trellis.yaml");
    let path = dir.path().display().to_string();
    let (code, p) = run_to_end(trellis(&["run", "-f", &path], dir.path())).await;
    assert_eq!(code, Some(0), "{}", p.output());
    assert!(
        p.stdout()
            .lines()
            .any(|l| l == "== APP - solo == hello from solo"),
        "{}",
        p.output()
    );
}

/// The README's first command: the quickstart runs, `checkout` gets every order confirmed
/// through `order-processor`, which keeps them in the embedded state store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_example_works() {
    let work = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    for app in ["checkout", "order-processor"] {
        std::fs::create_dir_all(work.path().join(app)).unwrap();
        std::fs::copy(
            example.join(app).join("app.py"),
            work.path().join(app).join("app.py"),
        )
        .unwrap();
    }
    // Same file, but on a port of this test's own so parallel runs cannot collide.
    let port = trellis_test_support::free_port();
    let run_file = std::fs::read_to_string(example.join("trellis.yaml"))
        .unwrap()
        .replace("appPort: 6001", &format!("appPort: {port}"));
    std::fs::write(work.path().join("trellis.yaml"), run_file).unwrap();

    let data = tempfile::tempdir().unwrap();
    let run = trellis(
        &[
            "run",
            "-f",
            &work.path().join("trellis.yaml").display().to_string(),
        ],
        data.path(),
    )
    .spawn();
    run.wait_output("all orders sent", PATIENCE).await;
    let out = run.output();
    for n in 1..=10 {
        assert!(
            out.contains(&format!("== APP - checkout == order {n}: confirmed")),
            "order {n} in:\n{out}"
        );
    }
    assert!(
        out.contains("order 10 received from checkout, stored as {'orderId': 10}"),
        "{out}"
    );
    // checkout ends on its own (after its last line, so wait for the runner to see it);
    // Ctrl-C then stops order-processor without a Python traceback, and the runner says
    // which app stopped how.
    run.wait_output("app exited successfully app_id=\"checkout\"", PATIENCE)
        .await;
    let mut run = run;
    run.signal(Signal::SIGINT);
    assert_eq!(run.wait_exit(PATIENCE).await, Some(0), "{}", run.output());
    let out = run.output();
    assert!(!out.contains("Traceback"), "{out}");
    assert!(
        out.contains("== APP - order-processor == order-processor stopped"),
        "{out}"
    );
    let stopped = out
        .lines()
        .find(|l| l.contains("app stopped") && l.contains("order-processor"))
        .unwrap_or_else(|| panic!("no stop line for order-processor in:\n{out}"));
    assert!(
        stopped.contains("signal=SIGINT") && stopped.contains("ended_by=\"exit code 0\""),
        "{stopped}"
    );
}

/// Relative file paths in component metadata mean the app's directory (Dapr resolves them
/// against daprd's, which `dapr run -f` starts there), and Dapr's older type names load:
/// `state.postgres` for `state.postgresql`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_component_paths_and_older_type_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app_dir = dir.path().join("kv-dir");
    std::fs::create_dir_all(app_dir.join(".dapr/resources")).expect("create dirs");
    std::fs::write(app_dir.join("app.py"), PYTHON_ECHO_APP).expect("write app.py");
    let table = trellis_test_support::servers::unique("alias_state").to_lowercase();
    std::fs::write(
        app_dir.join(".dapr/resources/components.yaml"),
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: local\nspec:\n  \
             type: state.sqlite\n  version: v1\n  metadata:\n  - name: connectionString\n    \
             value: data/local.db\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\n\
             metadata:\n  name: pg\nspec:\n  type: state.postgres\n  version: v1\n  metadata:\n  \
             - name: connectionString\n    value: \"host=127.0.0.1 user=postgres dbname=test\"\n  \
             - name: tableName\n    value: {table}\n"
        ),
    )
    .expect("write components");
    std::fs::create_dir_all(app_dir.join("data")).expect("create data dir");
    let (app_port, http_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("run.yaml"),
        format!(
            "version: 1\ncommon:\n  env:\n    EXIT_CODE_ON_SIGNAL: 0\napps:\n  - appID: kv\n    \
             appDirPath: ./kv-dir\n    appPort: {app_port}\n    daprHTTPPort: {http_port}\n    \
             command: [\"python3\", \"app.py\"]\n"
        ),
    )
    .expect("write run file");
    let run_file = dir.path().join("run.yaml").display().to_string();
    let mut t = trellis(&["run", "-f", &run_file], dir.path()).spawn();
    let base = format!("http://127.0.0.1:{http_port}");
    let healthy = wait_for_status(&format!("{base}/v1.0/healthz"), 204, PATIENCE).await;
    assert!(healthy, "never healthy:\n{}", t.output());
    for store in ["local", "pg"] {
        let url = format!("{base}/v1.0/state/{store}");
        let body = r#"[{"key":"k","value":"v"}]"#;
        let resp = trellis_test_support::request("POST", &url, &[], body).await;
        assert_eq!(
            resp.status.as_u16(),
            204,
            "{store}: {}\n{}",
            resp.text(),
            t.output()
        );
        let resp = trellis_test_support::request("GET", &format!("{url}/k"), &[], "").await;
        assert_eq!(resp.text(), "\"v\"", "{store}\n{}", t.output());
    }
    assert!(
        app_dir.join("data/local.db").exists(),
        "the relative connectionString is under the app's directory\n{}",
        t.output()
    );
    t.signal(Signal::SIGTERM);
    let _ = t.wait_exit(PATIENCE).await;
}
