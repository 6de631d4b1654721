//! The scenario under test: two real `trellis` sidecar processes.
//!
//! Sidecar B fronts the echo app; sidecar A is a client-side sidecar that
//! finds B through the local registry in their shared data dir. Requests go
//! load generator → A's HTTP API → B's internal port → echo app.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load;
use crate::procs::{self, ChildGuard};

/// How long a sidecar gets to become healthy (and A to reach B) before the
/// trellis scenario is skipped.
const START_LIMIT: Duration = Duration::from_secs(5);

/// Graceful-stop allowance for a sidecar after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The invocation path on sidecar A that ends at the echo app.
pub const INVOKE_PATH: &str = "/v1.0/invoke/echo/method/echo";

const HEALTH_PATH: &str = "/v1.0/healthz";

/// Finds the trellis binary: `--trellis-bin` if given, else builds it with
/// cargo and uses `trellis` next to the bench executable. An error means the
/// trellis scenario is skipped, with the error as the reason.
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

/// Sidecars A and B, running and connected. Stopped on drop.
pub struct Sidecars {
    pub a: ChildGuard,
    pub b: ChildGuard,
    pub port_a: u16,
    /// Spawn of sidecar A to its first 204 from healthz.
    pub first_start: Duration,
}

/// Starts B, then A, and waits until an invocation through both succeeds.
/// Logs go to `<dir>/sidecar-{a,b}.log`; their tails are part of any error.
pub async fn start(bin: &Path, dir: &Path, data_dir: &Path, echo_port: u16) -> Result<Sidecars> {
    let port_b = procs::free_port()?;
    let log_b = dir.join("sidecar-b.log");
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--app-id", "echo", "--app-port"])
        .arg(echo_port.to_string())
        .arg("--dapr-http-port")
        .arg(port_b.to_string())
        .args(["--dapr-grpc-port", "0", "--dapr-internal-grpc-port", "0"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null());
    let mut b = ChildGuard::spawn("sidecar B", &mut cmd, Some(&log_b))?;
    wait_healthy(&mut b, port_b, &log_b).await?;

    let port_a = procs::free_port()?;
    let log_a = dir.join("sidecar-a.log");
    let started = Instant::now();
    let mut a = spawn_a(bin, port_a, data_dir, &log_a)?;
    wait_healthy(&mut a, port_a, &log_a).await?;
    let first_start = started.elapsed();

    if let Err(e) = load::wait_for_status(port_a, "POST", INVOKE_PATH, 200, START_LIMIT).await {
        bail!(
            "sidecar A is healthy but cannot reach the echo app through sidecar B: {e:#}\n\
             --- sidecar A log ---\n{}\n--- sidecar B log ---\n{}",
            procs::log_tail(&log_a, 10),
            procs::log_tail(&log_b, 10)
        );
    }
    Ok(Sidecars {
        a,
        b,
        port_a,
        first_start,
    })
}

fn spawn_a(bin: &Path, port: u16, data_dir: &Path, log: &Path) -> Result<ChildGuard> {
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--app-id", "bench-client", "--dapr-http-port"])
        .arg(port.to_string())
        // gRPC port 0 as well: the default public port (50001) may be taken
        // by another sidecar on a shared machine.
        .args(["--dapr-grpc-port", "0", "--dapr-internal-grpc-port", "0"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null());
    ChildGuard::spawn("sidecar A", &mut cmd, Some(log))
}

async fn wait_healthy(child: &mut ChildGuard, port: u16, log: &Path) -> Result<()> {
    if let Err(e) = load::wait_for_status(port, "GET", HEALTH_PATH, 204, START_LIMIT).await {
        let exited = child
            .exited()
            .map(|s| format!(" (exited: {s})"))
            .unwrap_or_default();
        bail!("{e:#}{exited}\n--- log ---\n{}", procs::log_tail(log, 10));
    }
    Ok(())
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
    let log = dir.join("sidecar-a-cycles.log");
    for i in 0..cycles {
        let port = procs::free_port()?;
        let started = Instant::now();
        let mut a = spawn_a(bin, port, data_dir, &log)?;
        wait_healthy(&mut a, port, &log).await?;
        out.start.push(started.elapsed());
        let stopped = a.stop(STOP_GRACE).with_context(|| {
            format!("cycle {i}: sidecar A did not exit within {STOP_GRACE:?} of SIGTERM")
        })?;
        out.stop.push(stopped);
        eprintln!(
            "  start/stop cycle {}/{cycles}: healthy after {:.1} ms, stopped in {:.1} ms",
            i + 1,
            out.start[i].as_secs_f64() * 1e3,
            stopped.as_secs_f64() * 1e3
        );
    }
    Ok(out)
}

impl Sidecars {
    /// Graceful stop of A alone (it goes first: it is B's client).
    pub fn stop_a(&mut self) -> Option<String> {
        stop_gracefully("sidecar A", &mut self.a)
    }

    /// Graceful stop of whichever sidecars still run. Returns a note for
    /// each one that had to be killed.
    pub fn stop(&mut self) -> Vec<String> {
        [
            stop_gracefully("sidecar A", &mut self.a),
            stop_gracefully("sidecar B", &mut self.b),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

fn stop_gracefully(name: &str, child: &mut ChildGuard) -> Option<String> {
    (child.exited().is_none() && child.stop(STOP_GRACE).is_none())
        .then(|| format!("{name} did not exit within {STOP_GRACE:?} of SIGTERM and was killed"))
}

/// A single sidecar for the `state` bench: `trellis run --app-id bench`
/// with no app, its own data dir and (optionally) a components dir.
pub struct StateSidecar {
    pub child: ChildGuard,
    pub port: u16,
    pub log: PathBuf,
}

impl StateSidecar {
    /// Graceful stop; a note if it had to be killed.
    pub fn stop(&mut self) -> Option<String> {
        stop_gracefully("sidecar", &mut self.child)
    }
}

/// Why a state sidecar did not come up.
pub enum StartError {
    /// `trellis run` refused the component type (the binary was built
    /// without that backend); the text is trellis's own error line.
    Rejected(String),
    Other(anyhow::Error),
}

/// Starts `trellis run --app-id bench ...` and waits for its healthz 204.
/// Unlike [`start`], it notices at once when the process exits (a rejected
/// component is an immediate exit), instead of polling until the limit.
pub async fn start_state(
    bin: &Path,
    data_dir: &Path,
    resources: Option<&Path>,
    log: &Path,
) -> Result<StateSidecar, StartError> {
    let fail = StartError::Other;
    let port = procs::free_port().map_err(fail)?;
    let mut cmd = Command::new(bin);
    cmd.args(["run", "--app-id", "bench", "--dapr-http-port"])
        .arg(port.to_string())
        .args(["--dapr-grpc-port", "0", "--dapr-internal-grpc-port", "0"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null());
    if let Some(dir) = resources {
        cmd.arg("--resources-path").arg(dir);
    }
    let mut child = ChildGuard::spawn("sidecar", &mut cmd, Some(log)).map_err(fail)?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.exited() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("unknown component type")) {
                return Err(StartError::Rejected(line.trim().to_owned()));
            }
            return Err(StartError::Other(anyhow::anyhow!(
                "sidecar exited ({status}) before becoming healthy\n--- log ---\n{}",
                procs::log_tail(log, 10)
            )));
        }
        let limit = Duration::from_millis(50);
        if load::wait_for_status(port, "GET", HEALTH_PATH, 204, limit)
            .await
            .is_ok()
        {
            return Ok(StateSidecar {
                child,
                port,
                log: log.to_owned(),
            });
        }
        if started.elapsed() > START_LIMIT {
            return Err(StartError::Other(anyhow::anyhow!(
                "sidecar not healthy within {START_LIMIT:?}\n--- log ---\n{}",
                procs::log_tail(log, 10)
            )));
        }
    }
}
