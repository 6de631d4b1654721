//! The reference point: two nginx reverse-proxy hops in front of the echo
//! app, the same shape as sidecar A → sidecar B → app, in two layouts ([`Layout`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load;
use crate::procs::{self, ChildGuard};

/// How the two hops are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One nginx with two workers, both serving both hops: the baseline issue 14 names.
    /// Two workers, not one: the two sidecars are two processes that can each use both
    /// cores, so a single worker would cap nginx at one core in the max-throughput phase
    /// and make it look worse than it is; two is also what `worker_processes auto` picks
    /// here. A worker often finds hop 2's event ready in the same wake-up as hop 1's, which
    /// two sidecars, being two processes, never can.
    Shared,
    /// One nginx per hop, one worker each: the shape of two sidecars (and of two hops on
    /// two machines), each paying its own wake-ups.
    ProcessPerHop,
}

/// The running nginx processes with both hops configured; stopped on drop.
pub struct Nginx {
    masters: Vec<ChildGuard>,
    /// Port of hop 1, where the load goes.
    pub port: u16,
    /// Every worker of every master.
    pub workers: Vec<u32>,
    pub version: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to a master takes its workers down with it; the explicit
        // kill only matters if a master died some other way first.
        for master in &mut self.masters {
            master.stop(Duration::from_secs(3));
        }
        procs::kill_if_named(&self.workers, "nginx");
    }
}

/// Finds nginx, installing Debian's package if it is missing.
pub fn ensure_installed() -> Result<PathBuf> {
    if let Some(path) = find_binary() {
        return Ok(path);
    }
    eprintln!("nginx not found; running `apt-get install -y nginx` for the nginx baseline");
    let status = Command::new("apt-get")
        .args(["install", "-y", "nginx"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        // stdout carries the report; apt's chatter goes to stderr.
        .stdout(std::io::stderr())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("`apt-get install -y nginx` failed ({status}); `apt-get update` may help");
    }
    find_binary().context("nginx still not found after installing it")
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// Starts nginx in `layout` from configs in `dir`; returns once hop 1 → hop 2 → echo app
/// answers.
pub async fn start(binary: &Path, dir: &Path, echo_port: u16, layout: Layout) -> Result<Nginx> {
    let (hop1, hop2) = (procs::free_port()?, procs::free_port()?);
    let mut masters = Vec::new();
    let mut workers = Vec::new();
    match layout {
        Layout::Shared => {
            let (master, w) = launch(binary, dir, 2, &[(hop1, hop2), (hop2, echo_port)]).await?;
            masters.push(master);
            workers.extend(w);
        }
        Layout::ProcessPerHop => {
            for (name, hop) in [("hop2", (hop2, echo_port)), ("hop1", (hop1, hop2))] {
                let dir = dir.join(name);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let (master, w) = launch(binary, &dir, 1, &[hop]).await?;
                masters.push(master);
                workers.extend(w);
            }
        }
    }
    Ok(Nginx {
        masters,
        port: hop1,
        workers,
        version: version(binary),
    })
}

/// One nginx master with `worker_count` workers proxying each `(listen, upstream)` pair,
/// once its first listener answers; returns it and its workers.
async fn launch(
    binary: &Path,
    dir: &Path,
    worker_count: usize,
    hops: &[(u16, u16)],
) -> Result<(ChildGuard, Vec<u32>)> {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, worker_count, hops)).context("writing nginx.conf")?;
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        // -e: the compiled-in error log (/var/log/nginx) is opened before the
        // config is read; keep even that inside the temp dir.
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null());
    let mut master = ChildGuard::spawn("nginx", &mut cmd, Some(&dir.join("nginx.out")))?;
    let (first, _) = hops[0];
    // Upstreams start first (hop 2 before hop 1), so each answers through to the app.
    if let Err(e) = load::wait_for_status(first, "GET", "/", 200, Duration::from_secs(5)).await {
        let status = master
            .exited()
            .map(|s| format!(" (nginx exited: {s})"))
            .unwrap_or_default();
        bail!(
            "{e:#}{status}\n{}\n{}",
            procs::log_tail(&dir.join("nginx.out"), 10),
            procs::log_tail(&dir.join("error.log"), 10)
        );
    }
    // Workers are forked right after start-up; give them a moment to appear.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut workers = procs::children_of(master.pid());
    while workers.len() < worker_count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        workers = procs::children_of(master.pid());
    }
    if workers.is_empty() {
        bail!("nginx is answering but no worker processes were found");
    }
    Ok((master, workers))
}

/// `nginx -v` prints e.g. "nginx version: nginx/1.22.1" on stderr.
fn version(binary: &Path) -> String {
    Command::new(binary)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .and_then(|v| v.rsplit(' ').next().map(str::to_owned))
        .unwrap_or_else(|| "nginx (unknown version)".to_owned())
}

fn config(dir: &Path, worker_count: usize, hops: &[(u16, u16)]) -> String {
    let d = dir.display();
    let mut conf = String::new();
    if procs::running_as_root() {
        // Workers would otherwise switch to `nobody`; run them as the same
        // user as the sidecars (and able to use the 0700 temp dir).
        conf.push_str("user root;\n");
    }
    let _ = write!(
        conf,
        r#"daemon off;
master_process on;
worker_processes {worker_count};
error_log {d}/error.log warn;
pid {d}/nginx.pid;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    # nginx closes a keep-alive connection after 1000 requests by default;
    # the sidecars have no such limit, and reconnects would show up as
    # latency spikes that have nothing to do with proxying.
    keepalive_requests 1000000;
    keepalive_timeout 300s;
"#
    );
    for (listen, upstream) in hops {
        let _ = write!(
            conf,
            r#"
    upstream up{listen} {{
        server 127.0.0.1:{upstream};
        keepalive 32;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://up{listen};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"#
        );
    }
    conf.push_str("}\n");
    conf
}
