//! The database servers the networked backends are tested against (PostgreSQL, MariaDB,
//! Redis on this machine), unique names for test tables, and stopping a server with the
//! guarantee that it is started again.

// Each backend's feature uses its own server; with one feature on, the others are unused.
#![allow(dead_code)]

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A name no other test (in this run, a parallel run or an earlier one) uses: tables and
/// key prefixes of backend-specific tests.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}_{}_{n}_{nanos:x}", std::process::id())
}

/// A database server this machine runs, with its own stop and start commands.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    pub name: &'static str,
    pub port: u16,
    pub stop: &'static str,
    pub start: &'static str,
    /// A command that succeeds once the server accepts queries.
    pub ready: &'static str,
}

pub const POSTGRES: Server = Server {
    name: "postgresql",
    port: 5432,
    stop: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main stop",
    start: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ready: "pg_isready -q -h 127.0.0.1 -p 5432",
};

pub const MARIADB: Server = Server {
    name: "mariadb",
    port: 3306,
    stop: "mysqladmin -uroot shutdown",
    start: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    ready: "mysqladmin -uroot -h127.0.0.1 -P3306 --connect-timeout=2 ping",
};

pub const REDIS: Server = Server {
    name: "redis",
    port: 6379,
    stop: "redis-cli -p 6379 shutdown nosave",
    start: "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" \
            --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ready: "test \"$(redis-cli -p 6379 ping)\" = PONG",
};

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Restart tests stop a server that every other test of that backend is using; only
/// nextest runs them alone (`.config/nextest.toml` gives tests named `*_restart_*` the
/// whole machine). Under `cargo test` they would break their neighbours, so they skip.
pub fn may_restart_servers(test: &str) -> bool {
    let ok = std::env::var_os("NEXTEST").is_some();
    if !ok {
        println!("skipped {test}: server restarts run only under cargo nextest (run alone)");
    }
    ok
}

impl Server {
    /// Stops the server; it is started again when the guard is dropped (also when the test
    /// fails), or earlier with [`Stopped::start`].
    pub fn stop(self) -> Stopped {
        let guard = Stopped {
            server: self,
            running: false,
        };
        // Even a failed stop command must leave the guard behind, to start it again.
        sh(self.stop);
        wait_for(
            &format!("{} to stop", self.name),
            Duration::from_secs(60),
            || !port_open(self.port),
        );
        guard
    }
}

#[derive(Debug)]
pub struct Stopped {
    server: Server,
    running: bool,
}

impl Stopped {
    /// Starts the server and waits until it answers queries.
    pub fn start(&mut self) {
        if self.running {
            return;
        }
        let s = self.server;
        sh(s.start);
        wait_for(
            &format!("{} to accept queries", s.name),
            Duration::from_secs(120),
            || port_open(s.port) && sh(s.ready),
        );
        self.running = true;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.running {
            // No panic while unwinding: starting is all that matters here.
            let s = self.server;
            sh(s.start);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !(port_open(s.port) && sh(s.ready)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            self.running = true;
        }
    }
}

/// The recovery check every backend runs: with `server` stopped, calls on `store` fail fast
/// with the backend's error; once it is back, the same store works again (no reopening).
/// `persistent` says whether the server keeps data across the restart (Redis here does not).
pub async fn check_restart_recovery(
    server: Server,
    store: &dyn trellis_state::StateStore,
    key: &str,
    timeout: Duration,
    persistent: bool,
) {
    use trellis_state::{SetRequest, StateError};

    store
        .set(SetRequest::new(key, "\"before\""))
        .await
        .expect("set before the restart");
    let mut stopped = tokio::task::block_in_place(|| server.stop());

    // A generous margin over the timeout: the point is "no hang", not exact timing.
    let limit = timeout + Duration::from_secs(2);
    for round in 0..3 {
        let started = Instant::now();
        let got = store.get(key).await;
        let took = started.elapsed();
        match got {
            Err(StateError::Backend(text)) => assert!(!text.is_empty()),
            other => panic!("get with {} down (round {round}): {other:?}", server.name),
        }
        assert!(took < limit, "get with the server down took {took:?}");
        let started = Instant::now();
        let set = store.set(SetRequest::new(key, "\"during\"")).await;
        let took = started.elapsed();
        assert!(
            matches!(set, Err(StateError::Backend(_))),
            "set with {} down: {set:?}",
            server.name
        );
        assert!(took < limit, "set with the server down took {took:?}");
        assert!(store.ping().await.is_err(), "ping with the server down");
    }

    tokio::task::block_in_place(|| stopped.start());
    let started = Instant::now();
    let mut failures = Vec::new();
    let item = loop {
        match store.get(key).await {
            Ok(item) => break item,
            Err(e) => {
                failures.push(e.to_string());
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{} is back but the store still fails: {failures:?}",
                    server.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The server accepted queries before the loop started: the pool (or connection manager)
    // must have dropped its dead connections by itself, not failed a call to find out.
    assert!(
        failures.is_empty(),
        "calls failed after {} was back: {failures:?}",
        server.name
    );
    if persistent {
        let item = item.expect("the value written before the restart survives it");
        assert_eq!(&item.value[..], b"\"before\"");
    }
    store
        .set(SetRequest::new(key, "\"after\""))
        .await
        .expect("set after the restart");
    let item = store.get(key).await.expect("get after the restart");
    assert_eq!(
        item.map(|i| i.value),
        Some(bytes::Bytes::from_static(b"\"after\""))
    );
    store.ping().await.expect("ping after the restart");
}

/// A bulk read that names a key twice (and a missing key) answers every entry in order.
pub async fn check_bulk_get_duplicates(store: &dyn trellis_state::StateStore, prefix: &str) {
    use trellis_state::{DeleteRequest, SetRequest};

    let (a, missing) = (format!("{prefix}a"), format!("{prefix}missing"));
    store.set(SetRequest::new(&a, "1")).await.expect("set");
    let keys = [a.clone(), missing.clone(), a.clone()];
    let got = store.bulk_get(&keys).await;
    let answers: Vec<(String, Option<Vec<u8>>)> = got
        .into_iter()
        .map(|(k, r)| (k, r.expect("bulk get").map(|i| i.value.to_vec())))
        .collect();
    assert_eq!(
        answers,
        [
            (a.clone(), Some(b"1".to_vec())),
            (missing, None),
            (a.clone(), Some(b"1".to_vec())),
        ]
    );
    store.delete(DeleteRequest::new(&a)).await.expect("delete");
}
