//! Child processes and what `/proc` says about them.
//!
//! Every party under test (echo app, sidecars, nginx) runs as its own process
//! so that its CPU time and memory can be read from `/proc/<pid>` without the
//! load generator's own work mixed in. [`ChildGuard`] makes sure none of them
//! outlives the bench, whichever way the bench exits.

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Linux reports utime/stime in clock ticks; USER_HZ is 100 on every
/// mainstream architecture and reading it needs `sysconf`, so it is fixed here.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Returns a loopback port that was free a moment ago.
///
/// The listener is dropped before the port is handed to a child, so another
/// process could grab it in between; on a bench machine that race is rare
/// and shows up as a clear start-up failure rather than wrong numbers.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    /// Spawns `cmd`, sending its stdout and stderr to `log` when given
    /// (so sidecar chatter does not interleave with the report).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<&Path>) -> Result<Self> {
        if let Some(log) = log {
            let file =
                fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
            cmd.stdout(file.try_clone()?).stderr(file);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({cmd:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if the process has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// As [`ChildGuard::stop`], but waiting on the runtime's timer, so that the bench's own
    /// tasks keep running meanwhile. A sidecar's graceful shutdown waits for its HTTP/2
    /// clients to answer the GOAWAY's ping and close their connections; when those clients
    /// live on this (single-threaded) runtime, a blocking wait would hold them still, and
    /// the sidecar would sit out its whole drain time because of the bench.
    pub async fn stop_async(&mut self, grace: Duration) -> Option<Duration> {
        let sent = self.terminate()?;
        loop {
            if let Some(done) = self.settled(sent, grace) {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sends SIGTERM and waits up to `grace` for the process to exit, then
    /// SIGKILLs it. Returns how long the graceful part took, or `None` if the
    /// process had to be killed (or was already gone). Blocks the thread: for drops and
    /// for processes no task of the bench talks to ([`ChildGuard::stop_async`] otherwise).
    pub fn stop(&mut self, grace: Duration) -> Option<Duration> {
        let sent = self.terminate()?;
        loop {
            if let Some(done) = self.settled(sent, grace) {
                return done;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGTERM, unless the process is gone already (`None`); when it went out, if it could.
    fn terminate(&mut self) -> Option<Option<Instant>> {
        if self.exited().is_some() {
            return None;
        }
        let pid = Pid::from_raw(i32::try_from(self.pid()).ok()?);
        let started = Instant::now();
        Some(kill(pid, Signal::SIGTERM).ok().map(|()| started))
    }

    /// One look at a process sent SIGTERM at `sent`: `None` while it may still exit by
    /// itself; then how long it took, or `None` inside when its grace ran out (or SIGTERM
    /// never went out) and it was killed.
    fn settled(&mut self, sent: Option<Instant>, grace: Duration) -> Option<Option<Duration>> {
        match sent {
            Some(at) if self.exited().is_some() => Some(Some(at.elapsed())),
            Some(at) if at.elapsed() < grace => None,
            _ => {
                eprintln!(
                    "{} did not exit {grace:?} after SIGTERM; killing it",
                    self.name
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
                Some(None)
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Kills stray processes (nginx workers) that might survive their parent.
/// Only pids whose `comm` still matches are signalled, so a recycled pid
/// belonging to something else is left alone.
pub fn kill_if_named(pids: &[u32], comm: &str) {
    for &pid in pids {
        let current = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if current.trim() == comm
            && let Ok(raw) = i32::try_from(pid)
        {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// Fields of `/proc/<pid>/stat` after the `(comm)` field, which may itself
/// contain spaces and parentheses, hence the search for the last `)`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// utime + stime in clock ticks (all threads of the process).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    // After `(comm)`: index 0 is field 3 (state), so utime (14) is 11, stime (15) is 12.
    let f = stat_fields(pid)?;
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Parent pid, field 4 of `/proc/<pid>/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// Pids whose parent is `parent`, found by scanning `/proc` (does not rely on
/// the optional `/proc/<pid>/task/<tid>/children` file).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_pid(pid) == Some(parent))
        .collect();
    pids.sort_unstable();
    pids
}

/// A `kB` line from `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM`.
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Current resident set size of the given processes together, in KiB.
pub fn rss_kb(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| status_kb(p, "VmRSS")).sum()
}

/// A named group of processes whose resource use is reported as one row
/// (one sidecar, or all nginx workers).
#[derive(Clone)]
pub struct Watch {
    pub label: String,
    pub pids: Vec<u32>,
}

/// What one [`Watch`] used during a measured window.
#[derive(Clone, Copy, Default)]
pub struct Usage {
    /// Average CPU over the window, in cores (1.0 = one core fully busy).
    pub cpu_cores: f64,
    /// Highest summed VmRSS seen by the sampler, in KiB.
    pub rss_max_kb: u64,
}

/// Samples the watched processes from `from` until `until` (both in the
/// future when called): CPU is the utime+stime delta over the window, RSS the
/// maximum of 100 ms samples. Blocking; run it on a blocking thread so the
/// load generator's event loop is not stalled by `/proc` reads.
pub fn monitor(watches: &[Watch], from: Instant, until: Instant) -> Vec<Usage> {
    let ticks = |w: &Watch| -> u64 { w.pids.iter().filter_map(|&p| cpu_ticks(p)).sum() };
    sleep_until(from);
    let started = Instant::now();
    let before: Vec<u64> = watches.iter().map(ticks).collect();
    let mut rss_max = vec![0u64; watches.len()];
    loop {
        for (max, w) in rss_max.iter_mut().zip(watches) {
            *max = (*max).max(rss_kb(&w.pids));
        }
        let now = Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
    let wall = started.elapsed().as_secs_f64();
    watches
        .iter()
        .zip(before)
        .zip(rss_max)
        .map(|((w, before), rss_max_kb)| Usage {
            cpu_cores: ticks(w).saturating_sub(before) as f64 / CLOCK_TICKS_PER_SEC / wall,
            rss_max_kb,
        })
        .collect()
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// Machine description for the report: online CPUs and the CPU model name.
pub fn machine() -> (usize, String) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    (cpus, model)
}

/// The 1/5/15-minute load averages: other work on a shared machine skews
/// every number here, and this is the cheapest way to see it in the report.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Other processes that used more than `min_cores` of a core over `window`, busiest first,
/// as `name (pid) N.NN core` each. A bench run beside a busy process reads low on
/// every path, and the load average alone does not say which process it is (a helper left
/// spinning once spoiled a third of a session's runs unseen).
pub fn busy_others(window: Duration, min_cores: f64) -> Vec<String> {
    let pids = || -> Vec<u32> {
        fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let me = std::process::id();
    let before: Vec<(u32, u64)> = pids()
        .into_iter()
        .filter(|&p| p != me)
        .filter_map(|p| Some((p, cpu_ticks(p)?)))
        .collect();
    std::thread::sleep(window);
    let mut busy: Vec<(f64, u32)> = before
        .into_iter()
        .filter_map(|(p, t0)| {
            let used = cpu_ticks(p)?.saturating_sub(t0) as f64 / CLOCK_TICKS_PER_SEC;
            Some((used / window.as_secs_f64(), p))
        })
        .filter(|&(cores, _)| cores > min_cores)
        .collect();
    busy.sort_by(|a, b| b.0.total_cmp(&a.0));
    busy.into_iter()
        .map(|(cores, p)| {
            let name = fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|n| n.trim().to_owned())
                .unwrap_or_else(|_| "?".to_owned());
            format!("{name} ({p}) {cores:.2} core")
        })
        .collect()
}

/// The kernel's release, as `uname -r` prints it: loopback and scheduler costs, most of
/// what a sidecar hop costs here, change with it.
pub fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Whether the bench runs as root (owner of `/proc/self` is the effective uid).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Last lines of a log file, for explaining why a child failed to start.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return format!("({} is empty)", path.display());
    }
    all[all.len().saturating_sub(lines)..].join("\n")
}
