//! The trellis sidecars under test: real `trellis run` processes on loopback ports.
//!
//! [`Sidecar::start`] starts one (with or without an app, with or without its public
//! gRPC API, with or without a resources dir) and waits until it is healthy, noticing at
//! once when it exits instead. [`start_pair`] is the service-invocation shape: sidecar B
//! fronts the echo app, sidecar A is a client-side sidecar that finds B through the local
//! registry in their shared data dir, so requests go load generator → A's HTTP API → B's
//! internal port → echo app.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::load;
use crate::procs::{self, ChildGuard};

/// How long a sidecar gets to become healthy.
const START_LIMIT: Duration = Duration::from_secs(10);

/// How long sidecar A, once healthy, gets to reach the echo app through sidecar B.
const REACH_LIMIT: Duration = Duration::from_secs(5);

/// Graceful-stop allowance for a sidecar after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The invocation path on sidecar A that ends at the echo app.
pub const INVOKE_PATH: &str = "/v1.0/invoke/echo/method/echo";

const HEALTH_PATH: &str = "/v1.0/healthz";

/// The order file the release build links with (`crates/trellis/build.rs`).
const LINK_ORDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../trellis/link/startup.order");

/// How much of the link order file `bin` has, for the report: an idle sidecar's RSS depends
/// on it (docs/benchmarks.md, "Binary layout"), and edits of the runtime make it decay.
pub fn link_order(bin: &Path) -> String {
    let Ok(order) = std::fs::read_to_string(LINK_ORDER) else {
        return "link order: no order file to compare with".into();
    };
    let symbols = match Command::new("nm").arg(bin).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => return "link order: not checked (nm failed)".into(),
    };
    let (found, total) = order_share(&order, &symbols);
    let percent = (found * 100).checked_div(total).unwrap_or(0);
    let stale = if found < total {
        "; stale: scripts/link-order && cargo build --release -p trellis"
    } else {
        ""
    };
    format!("link order: {found} of {total} names found ({percent} %){stale}")
}

/// How many of the order file's names `nm`'s listing defines, and how many names it has.
fn order_share(order: &str, nm: &str) -> (usize, usize) {
    let defined: std::collections::HashSet<&str> = nm
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .collect();
    let wanted: std::collections::HashSet<&str> = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let found = wanted.iter().filter(|name| defined.contains(*name)).count();
    (found, wanted.len())
}

/// Finds the trellis binary: `--trellis-bin` if given, else builds it with
/// cargo and uses `trellis` next to the bench executable. An error means the
/// sidecar paths are skipped, with the error as the reason.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("--trellis-bin {} does not exist", path.display());
        }
        return Ok(path.to_owned());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    eprintln!(
        "building trellis: cargo build --release -p trellis (in {})",
        root.display()
    );
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "trellis"])
        .current_dir(&root)
        // stdout carries the report; build output goes to stderr.
        .stdout(std::io::stderr())
        .status()
        .context("could not run cargo")?;
    if !status.success() {
        bail!("`cargo build --release -p trellis` failed ({status})");
    }
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let bin = exe.with_file_name("trellis");
    if !bin.is_file() {
        bail!("{} not found after building", bin.display());
    }
    Ok(bin)
}

/// The workspace this bench was built from (two levels above this crate),
/// falling back to the current directory if the binary was moved elsewhere.
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if root.join("Cargo.toml").is_file() {
        root.canonicalize().unwrap_or(root)
    } else {
        PathBuf::from(".")
    }
}

/// How to start one sidecar: `trellis run --app-id <app_id> --dapr-http-port <free>
/// --dapr-grpc-port <free or 0> --dapr-internal-grpc-port 0 --data-dir <data_dir>
/// [--app-port <port> --app-protocol <protocol>] [--resources-path <dir>]`.
pub struct Spec<'a> {
    /// How notes and errors name it ("sidecar A").
    pub name: String,
    pub app_id: &'a str,
    /// The app it fronts: port and protocol (`http` or `grpc`).
    pub app: Option<(u16, &'a str)>,
    /// Whether its public gRPC API listens (on a free port); otherwise `--dapr-grpc-port 0`,
    /// as the default port (50001) may be taken by another sidecar on a shared machine.
    pub grpc: bool,
    pub data_dir: &'a Path,
    pub resources: Option<&'a Path>,
    /// A `--config` file (e.g. one that turns mTLS off).
    pub config: Option<&'a Path>,
    /// More `trellis run` flags (e.g. `--enable-metrics=false`).
    pub args: &'a [&'a str],
    /// Where its stdout and stderr go; their tail is part of any error.
    pub log: PathBuf,
}

impl<'a> Spec<'a> {
    pub fn new(name: impl Into<String>, app_id: &'a str, data_dir: &'a Path, log: PathBuf) -> Self {
        Self {
            name: name.into(),
            app_id,
            app: None,
            grpc: false,
            data_dir,
            resources: None,
            config: None,
            args: &[],
            log,
        }
    }
}

/// One running sidecar; stopped (SIGTERM, then SIGKILL) on drop.
pub struct Sidecar {
    pub name: String,
    pub child: ChildGuard,
    /// Its HTTP API port.
    pub port: u16,
    /// Its public gRPC API port, when [`Spec::grpc`] asked for one.
    pub grpc_port: Option<u16>,
    pub log: PathBuf,
    /// From spawning the process to its first 204 from healthz.
    pub started_in: Duration,
    /// Whether [`Self::stop`] stopped it (so its exit is no surprise).
    stopped: bool,
}

/// Why a sidecar did not come up.
pub enum StartError {
    /// `trellis run` refused a component type (the binary was built without that
    /// backend); the text is trellis's own error line.
    Rejected(String),
    Other(anyhow::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Rejected(line) => write!(f, "trellis run rejected a component: {line}"),
            StartError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for StartError {}

impl Sidecar {
    /// Starts the sidecar and waits for its healthz 204 (which, with an app, also means
    /// the app's port accepted a connection).
    pub async fn start(bin: &Path, spec: Spec<'_>) -> Result<Self, StartError> {
        let fail = StartError::Other;
        let port = procs::free_port().map_err(fail)?;
        let grpc_port = if spec.grpc {
            Some(procs::free_port().map_err(fail)?)
        } else {
            None
        };
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--app-id", spec.app_id, "--dapr-http-port"])
            .arg(port.to_string())
            .arg("--dapr-grpc-port")
            .arg(grpc_port.unwrap_or(0).to_string())
            .args(["--dapr-internal-grpc-port", "0", "--data-dir"])
            .arg(spec.data_dir)
            .stdin(Stdio::null());
        if let Some((app_port, protocol)) = spec.app {
            cmd.arg("--app-port")
                .arg(app_port.to_string())
                .args(["--app-protocol", protocol]);
        }
        if let Some(dir) = spec.resources {
            cmd.arg("--resources-path").arg(dir);
        }
        if let Some(file) = spec.config {
            cmd.arg("--config").arg(file);
        }
        cmd.args(spec.args);
        let (name, log) = (spec.name, spec.log);
        let started = Instant::now();
        let mut child = ChildGuard::spawn(&name, &mut cmd, Some(&log)).map_err(fail)?;
        loop {
            if let Some(status) = child.exited() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().find(|l| l.contains("unknown component type")) {
                    return Err(StartError::Rejected(line.trim().to_owned()));
                }
                return Err(fail(anyhow!(
                    "{name} exited ({status}) before becoming healthy\n--- log ---\n{}",
                    procs::log_tail(&log, 10)
                )));
            }
            let limit = Duration::from_millis(50);
            if load::wait_for_status(port, "GET", HEALTH_PATH, 204, limit)
                .await
                .is_ok()
            {
                return Ok(Self {
                    name,
                    child,
                    port,
                    grpc_port,
                    log,
                    started_in: started.elapsed(),
                    stopped: false,
                });
            }
            if started.elapsed() > START_LIMIT {
                return Err(fail(anyhow!(
                    "{name} not healthy within {START_LIMIT:?}\n--- log ---\n{}",
                    procs::log_tail(&log, 10)
                )));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// A note when it exited during the run, with its log's tail.
    pub fn exited_note(&mut self) -> Option<String> {
        if self.stopped {
            return None;
        }
        let status = self.child.exited()?;
        Some(format!(
            "{} exited during the run ({status}); its numbers are suspect; log tail:\n{}",
            self.name,
            procs::log_tail(&self.log, 5)
        ))
    }

    /// Graceful stop; a note when it had exited early or had to be killed. The bench's
    /// tasks run while it waits (see [`procs::ChildGuard::stop_async`]).
    pub async fn stop(&mut self) -> Option<String> {
        if let Some(note) = self.exited_note() {
            return Some(note);
        }
        if std::mem::replace(&mut self.stopped, true) {
            return None;
        }
        self.child.stop_async(STOP_GRACE).await.is_none().then(|| {
            format!(
                "{} did not exit within {STOP_GRACE:?} of SIGTERM and was killed",
                self.name
            )
        })
    }
}

/// Sidecars A and B, running and connected. Stopped on drop.
pub struct Sidecars {
    pub a: Sidecar,
    pub b: Sidecar,
}

/// Starts B (app id `echo`, fronting the echo app), then A (app id `bench-client`), and
/// waits until an invocation through both succeeds. Logs go to `<dir>/sidecar-{a,b}.log`.
pub async fn start_pair(
    bin: &Path,
    dir: &Path,
    data_dir: &Path,
    echo_port: u16,
    config: Option<&Path>,
) -> Result<Sidecars> {
    start_pair_with(bin, dir, data_dir, echo_port, config, &[]).await
}

/// As [`start_pair`], both sidecars started with the extra flags `args`.
pub async fn start_pair_with(
    bin: &Path,
    dir: &Path,
    data_dir: &Path,
    echo_port: u16,
    config: Option<&Path>,
    args: &[&str],
) -> Result<Sidecars> {
    let mut b = Spec::new("sidecar B", "echo", data_dir, dir.join("sidecar-b.log"));
    b.app = Some((echo_port, "http"));
    b.config = config;
    b.args = args;
    let b = Sidecar::start(bin, b).await?;
    let mut a = spec_a(dir, data_dir, "sidecar-a.log");
    a.config = config;
    a.args = args;
    let a = Sidecar::start(bin, a).await?;
    if let Err(e) = load::wait_for_status(a.port, "POST", INVOKE_PATH, 200, REACH_LIMIT).await {
        bail!(
            "sidecar A is healthy but cannot reach the echo app through sidecar B: {e:#}\n\
             --- sidecar A log ---\n{}\n--- sidecar B log ---\n{}",
            procs::log_tail(&a.log, 10),
            procs::log_tail(&b.log, 10)
        );
    }
    Ok(Sidecars { a, b })
}

fn spec_a<'a>(dir: &Path, data_dir: &'a Path, log: &str) -> Spec<'a> {
    Spec::new("sidecar A", "bench-client", data_dir, dir.join(log))
}

impl Sidecars {
    /// Graceful stop of whichever sidecars still run, A first (it is B's client). Returns
    /// a note for each one that had exited early or had to be killed.
    pub async fn stop(&mut self) -> Vec<String> {
        [self.a.stop().await, self.b.stop().await]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Start-to-healthy and SIGTERM-to-exit times of sidecar A, over `cycles`
/// start/stop cycles (run while B is still up, so A starts into a registry
/// that has a peer, as in the measured scenario).
pub struct Cycles {
    pub start: Vec<Duration>,
    pub stop: Vec<Duration>,
}

pub async fn start_stop_cycles(
    bin: &Path,
    dir: &Path,
    data_dir: &Path,
    cycles: usize,
) -> Result<Cycles> {
    let mut out = Cycles {
        start: Vec::with_capacity(cycles),
        stop: Vec::with_capacity(cycles),
    };
    for i in 0..cycles {
        let mut a = Sidecar::start(bin, spec_a(dir, data_dir, "sidecar-a-cycles.log")).await?;
        out.start.push(a.started_in);
        let stopped = a.child.stop(STOP_GRACE).with_context(|| {
            format!("cycle {i}: sidecar A did not exit within {STOP_GRACE:?} of SIGTERM")
        })?;
        out.stop.push(stopped);
        eprintln!(
            "  start/stop cycle {}/{cycles}: healthy after {:.1} ms, stopped in {:.1} ms",
            i + 1,
            a.started_in.as_secs_f64() * 1e3,
            stopped.as_secs_f64() * 1e3
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_the_order_names_the_binary_defines() {
        let order = "main\n_ZN4core3fmt5write\ngone.llvm.123\n";
        let nm = "0000000000001000 T main\n0000000000002000 t _ZN4core3fmt5write\n                 U malloc\n";
        assert_eq!(super::order_share(order, nm), (2, 3));
    }
}
