//! The database and broker servers tests run against (PostgreSQL, MariaDB, Redis on this
//! machine), unique names for test tables, and stopping a server with the guarantee that it
//! is started again.

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

pub const RABBITMQ: Server = Server {
    name: "rabbitmq",
    port: 5672,
    stop: "rabbitmqctl stop",
    start: "rabbitmq-server -detached",
    ready: "rabbitmqctl -q status",
};

pub const NATS: Server = Server {
    name: "nats-server",
    port: 4222,
    stop: "pkill -x nats-server",
    start: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
            -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log",
    ready: "true",
};

pub const MOSQUITTO: Server = Server {
    name: "mosquitto",
    port: 1883,
    stop: "pkill -x mosquitto",
    start: "mosquitto -d -c /etc/mosquitto/mosquitto.conf",
    ready: "true",
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
/// whole machine). Under `cargo test` they would break their neighbours, so there they
/// fail at once with this message, rather than pass without having run.
pub fn require_nextest(test: &str) {
    assert!(
        std::env::var_os("NEXTEST").is_some(),
        "{test} restarts a server that other tests use, so it runs only under `cargo nextest \
         run` (which runs it alone); under `cargo test`, leave it out: `-- --skip _restart_`"
    );
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

/// A Redis server of a test's own, on its own port (nothing else uses it), that the test
/// may stop and start again at will: a store going away under a sidecar. It holds no data
/// on disk; it is killed when dropped.
#[derive(Debug)]
pub struct OwnRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    /// Starts `redis-server` on `port` and waits until it answers.
    pub fn start(port: u16) -> Self {
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    /// Starts it again after [`OwnRedis::kill`] (empty: it keeps nothing).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            return;
        }
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let ready = format!("test \"$(redis-cli -p {port} ping)\" = PONG");
        wait_for("a test's own redis-server", Duration::from_secs(30), || {
            port_open(self.port) && sh(&ready)
        });
    }

    /// Kills it (`kill -9`) and waits until its port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for("redis-server to go away", Duration::from_secs(30), || {
            !port_open(self.port)
        });
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
