//! Starting real `trellis` processes for tests.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A port that was free a moment ago (bind to 0, read, release), and that no other test
/// process was handed recently.
///
/// Between this call and the bind in the process under test the port is up for grabs; test
/// binaries run in parallel (nextest runs each test in its own process), and two of them
/// getting the same port shows up as one test talking to another test's sidecar. So every
/// port handed out is claimed for a minute or two with a marker file,
/// `<tmp>/trellis-test-ports/<port>.<minute>`, created with `create_new` (atomic across
/// processes); a port claimed in this minute or the previous one is skipped.
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768–60999 by default):
/// a port picked from that range could be taken, before the process under test binds it,
/// as the local port of any outgoing connection on the machine (the tests make thousands),
/// which showed up as "port is already in use". Nothing takes a port below the range
/// without asking for it by number.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("trellis-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 60)
        .unwrap_or(0);
    sweep_port_claims(&dir, minute);
    let mut seed = {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    };
    for _ in 0..256 {
        // xorshift: a different sequence per call and per process, no crate needed.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = 20_000 + (seed % 12_768) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        if dir
            .join(format!("{port}.{}", minute.saturating_sub(1)))
            .exists()
        {
            continue;
        }
        let claim = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(format!("{port}.{minute}")));
        match claim {
            Ok(_) => return port,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            // No usable temp dir: fall back to the plain bind-and-release.
            Err(_) => return port,
        }
    }
    panic!("no unclaimed free port in 20000-32767 after 256 tries");
}

/// Removes claims older than two minutes, once per process.
fn sweep_port_claims(dir: &Path, minute: u64) {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name();
            let claimed = name
                .to_str()
                .and_then(|n| n.rsplit_once('.'))
                .and_then(|(_, m)| m.parse::<u64>().ok());
            if claimed.is_none_or(|m| m + 2 < minute) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    });
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `GET url` until it answers `status` or `timeout` passes; false if it never did.
pub async fn wait_for_status(url: &str, status: u16, timeout: Duration) -> bool {
    wait_until(timeout, || async {
        crate::http::try_request("GET", url, &[], "")
            .await
            .is_ok_and(|r| r.status.as_u16() == status)
    })
    .await
}

/// How to start a `trellis run` process.
#[derive(Debug, Clone)]
pub struct SidecarBuilder {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    command: Vec<String>,
    cwd: Option<PathBuf>,
    http_port: u16,
    grpc_port: u16,
    data_dir: PathBuf,
}

impl SidecarBuilder {
    /// A sidecar for `app_id` sharing the registry under `data_dir` with its peers.
    pub fn new(bin: impl AsRef<Path>, app_id: &str, data_dir: &Path) -> Self {
        let http_port = free_port();
        let grpc_port = free_port();
        Self {
            bin: bin.as_ref().to_path_buf(),
            args: vec![
                "run".into(),
                "--app-id".into(),
                app_id.into(),
                "--dapr-http-port".into(),
                http_port.to_string(),
                "--dapr-grpc-port".into(),
                grpc_port.to_string(),
                "--dapr-internal-grpc-port".into(),
                "0".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
            ],
            env: Vec::new(),
            command: Vec::new(),
            cwd: None,
            http_port,
            grpc_port,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// A `trellis` invocation with exactly these arguments (for `-f`, `list`, bad flags...).
    pub fn raw(bin: impl AsRef<Path>, args: &[&str], data_dir: &Path) -> Self {
        Self {
            bin: bin.as_ref().to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            command: Vec::new(),
            cwd: None,
            http_port: 0,
            grpc_port: 0,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn app_port(self, port: u16) -> Self {
        self.arg("--app-port").arg(port.to_string())
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// The Dapr HTTP port the process will serve, for [`Sidecar::url`], when the arguments
    /// choose it themselves (a [`raw`](Self::raw) invocation, a run file's `daprHTTPPort`).
    pub fn http_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self
    }

    /// The app command, passed after `--`.
    pub fn command(mut self, cmd: &[&str]) -> Self {
        self.command = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn spawn(self) -> Sidecar {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args);
        if !self.command.is_empty() {
            cmd.arg("--").args(&self.command);
        }
        cmd.env_remove("DAPR_API_TOKEN")
            .env_remove("APP_API_TOKEN")
            .env("TRELLIS_DATA_DIR", &self.data_dir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("spawn trellis");
        let output = Output::default();
        let streams = [
            child
                .stdout
                .take()
                .map(|s| (Box::new(s) as Box<dyn std::io::Read + Send>, false)),
            child
                .stderr
                .take()
                .map(|s| (Box::new(s) as Box<dyn std::io::Read + Send>, true)),
        ];
        for (stream, is_stderr) in streams.into_iter().flatten() {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]);
                    output.push(&text, is_stderr);
                }
                output.readers_done.fetch_add(1, Ordering::SeqCst);
            });
        }
        Sidecar {
            child,
            http_port: self.http_port,
            grpc_port: self.grpc_port,
            output,
            exit: None,
        }
    }
}

/// What a process printed: both streams interleaved, and each on its own.
#[derive(Debug, Clone, Default)]
struct Output {
    texts: Arc<Mutex<Texts>>,
    /// How many of the two pipe readers have seen end-of-file.
    readers_done: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Texts {
    all: String,
    stdout: String,
    stderr: String,
}

impl Output {
    fn push(&self, text: &str, is_stderr: bool) {
        let mut texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        texts.all.push_str(text);
        if is_stderr {
            texts.stderr.push_str(text);
        } else {
            texts.stdout.push_str(text);
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Texts) -> T) -> T {
        f(&self.texts.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A running `trellis` process; killed when dropped.
#[derive(Debug)]
pub struct Sidecar {
    child: Child,
    pub http_port: u16,
    /// The Dapr gRPC port, when the builder chose it (0 otherwise).
    pub grpc_port: u16,
    output: Output,
    exit: Option<std::process::ExitStatus>,
}

impl Sidecar {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<dapr-http-port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.http_port, path)
    }

    /// Everything the process printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> String {
        self.output.read(|t| t.all.clone())
    }

    /// What the process printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.output.read(|t| t.stdout.clone())
    }

    /// What the process printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.output.read(|t| t.stderr.clone())
    }

    /// Waits for `GET /v1.0/healthz` to answer 204; panics with the output if it doesn't.
    pub async fn wait_healthy(&self) {
        self.wait_status("/v1.0/healthz", 204, Duration::from_secs(15))
            .await;
    }

    /// Waits until `path` answers `status`.
    pub async fn wait_status(&self, path: &str, status: u16, timeout: Duration) {
        let url = self.url(path);
        let ok = wait_until(timeout, || {
            let url = url.clone();
            async move {
                crate::http::try_request("GET", &url, &[], "")
                    .await
                    .is_ok_and(|r| r.status.as_u16() == status)
            }
        })
        .await;
        assert!(
            ok,
            "{path} never answered {status}; output:\n{}",
            self.output()
        );
    }

    /// Waits until the output contains `needle`.
    pub async fn wait_output(&self, needle: &str, timeout: Duration) {
        let ok = wait_until(timeout, || async { self.output().contains(needle) }).await;
        assert!(
            ok,
            "output never contained {needle:?}; output:\n{}",
            self.output()
        );
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    /// Once it returns, [`output`](Self::output) holds everything the process printed (up
    /// to a short grace period for the pipes to drain).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit {
                let output = self.output.clone();
                wait_until(Duration::from_secs(2), || {
                    let done = output.readers_done.load(Ordering::SeqCst);
                    async move { done >= 2 }
                })
                .await;
                return status.code();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
                continue;
            }
            assert!(
                Instant::now() < deadline,
                "trellis did not exit within {timeout:?}; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the process in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        // SIGTERM first so that trellis stops its app too; SIGKILL would orphan it.
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process in KiB, 0 if unknown.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
