//! The reference point: two nginx reverse-proxy hops in front of the echo
//! app, the same shape as sidecar A → sidecar B → app.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::load;
use crate::procs::{self, ChildGuard};

/// Two workers, not one: the two sidecars are two processes that can each
/// use both cores, so a single nginx worker (one event loop serving both
/// hops) would cap nginx at one core in the max-throughput phase and make it
/// look worse than it is. Two workers on two cores is also what
/// `worker_processes auto` would pick here. Both workers serve both hops,
/// so their CPU and memory are reported summed.
const WORKERS: usize = 2;

/// A running nginx with both hops configured; stopped on drop.
pub struct Nginx {
    master: ChildGuard,
    /// Port of hop 1, where the load goes.
    pub port: u16,
    pub workers: Vec<u32>,
    pub version: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master takes the workers down with it; the explicit
        // kill only matters if the master died some other way first.
        self.master.stop(Duration::from_secs(3));
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

/// Starts nginx from a config in `dir` and waits until hop 1 → hop 2 →
/// echo app answers.
pub async fn start(binary: &Path, dir: &Path, echo_port: u16) -> Result<Nginx> {
    let (hop1, hop2) = (procs::free_port()?, procs::free_port()?);
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config(dir, hop1, hop2, echo_port)).context("writing nginx.conf")?;

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

    if let Err(e) = load::wait_for_status(hop1, "GET", "/", 200, Duration::from_secs(5)).await {
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
    while workers.len() < WORKERS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        workers = procs::children_of(master.pid());
    }
    if workers.is_empty() {
        bail!("nginx is answering but no worker processes were found");
    }

    Ok(Nginx {
        master,
        port: hop1,
        workers,
        version: version(binary),
    })
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

fn config(dir: &Path, hop1: u16, hop2: u16, echo: u16) -> String {
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
worker_processes {WORKERS};
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

    upstream hop2 {{
        server 127.0.0.1:{hop2};
        keepalive 32;
        keepalive_requests 1000000;
    }}

    upstream echo {{
        server 127.0.0.1:{echo};
        keepalive 32;
        keepalive_requests 1000000;
    }}

    # Hop 1: plays sidecar A.
    server {{
        listen 127.0.0.1:{hop1};
        location / {{
            proxy_pass http://hop2;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}

    # Hop 2: plays sidecar B.
    server {{
        listen 127.0.0.1:{hop2};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#
    );
    conf
}
