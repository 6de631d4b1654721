//! Large bodies stream through two sidecars (caller `a` → callee `b` → app) without being
//! buffered: a 1 GiB upload and a 1 GiB download, with both sidecars' memory sampled during
//! the transfer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use trellis_test_support::process::rss_kib;
use trellis_test_support::{Sidecar, TestApp, download, request, send_chunked};

use crate::sidecar;

const GIB: u64 = 1 << 30;
/// How far above its idle resident memory a sidecar may go while streaming.
const MAX_GROWTH_KIB: u64 = 32 * 1024;
/// Debug builds move roughly 100-300 MB/s through two sidecars on a loaded machine.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

struct Pair {
    _dir: TempDir,
    app: TestApp,
    a: Sidecar,
    b: Sidecar,
}

impl Pair {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = TestApp::start("b1").await;
        let b = sidecar("b", dir.path()).app_port(app.port()).spawn();
        // 2048 MB, so that a 1 GiB body is allowed.
        let a = sidecar("a", dir.path())
            .arg("--dapr-http-max-request-size")
            .arg("2048")
            .spawn();
        a.wait_healthy().await;
        b.wait_healthy().await;
        let pair = Self {
            _dir: dir,
            app,
            a,
            b,
        };
        // Warm up every connection on the way, so "idle" includes the pools.
        let resp = request(
            "POST",
            &pair.a.url("/v1.0/invoke/b/method/upload"),
            &[],
            "warm",
        )
        .await;
        assert_eq!(
            resp.status.as_u16(),
            200,
            "{:?}\n{}",
            resp.text(),
            pair.outputs()
        );
        pair
    }

    fn outputs(&self) -> String {
        format!("--- a:\n{}\n--- b:\n{}", self.a.output(), self.b.output())
    }
}

/// Samples the resident memory of some processes every 50 ms until dropped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
    idle: Vec<u64>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> Self {
        let idle: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut max = vec![0u64; pids.len()];
            while !flag.load(Ordering::Relaxed) {
                for (m, &pid) in max.iter_mut().zip(&pids) {
                    *m = (*m).max(rss_kib(pid));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        });
        Self { stop, task, idle }
    }

    /// Stops sampling; returns (idle, max) per process in KiB.
    async fn finish(self) -> Vec<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let max = self.task.await.expect("sampler task");
        self.idle.into_iter().zip(max).collect()
    }
}

/// Prints the figures and asserts each sidecar stayed within its memory budget.
fn check_memory(
    what: &str,
    names: &[&str],
    figures: &[(u64, u64)],
    elapsed: Duration,
    outputs: &str,
) {
    let secs = elapsed.as_secs_f64();
    println!(
        "{what}: 1 GiB in {secs:.1} s ({:.0} MiB/s)",
        1024.0 / secs.max(f64::EPSILON)
    );
    for (name, (idle, max)) in names.iter().zip(figures) {
        println!(
            "{what}: {name}: idle RSS {idle} KiB, max {max} KiB, growth {} KiB",
            max.saturating_sub(*idle)
        );
    }
    for (name, (idle, max)) in names.iter().zip(figures) {
        assert!(
            *idle > 0 && *max > 0,
            "{what}: could not read {name}'s RSS\n{outputs}"
        );
        assert!(
            max.saturating_sub(*idle) < MAX_GROWTH_KIB,
            "{what}: {name} grew from {idle} KiB to {max} KiB (budget {MAX_GROWTH_KIB} KiB): bodies are buffered?\n{outputs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_upload_streams_through_two_sidecars() {
    let p = Pair::start().await;
    let sampler = RssSampler::start(vec![p.a.pid(), p.b.pid()]);
    let started = Instant::now();
    let url = p.a.url("/v1.0/invoke/b/method/upload");
    let result = tokio::time::timeout(
        TRANSFER_TIMEOUT,
        send_chunked("POST", &url, &[], GIB, 64 * 1024),
    )
    .await;
    let elapsed = started.elapsed();
    let figures = sampler.finish().await;
    let resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => panic!("upload failed after {elapsed:?}: {e}\n{}", p.outputs()),
        Err(_) => panic!("upload took over {TRANSFER_TIMEOUT:?}\n{}", p.outputs()),
    };
    assert_eq!(
        resp.status.as_u16(),
        200,
        "{:?}\n{}",
        resp.text(),
        p.outputs()
    );
    assert_eq!(
        resp.json()["received"],
        GIB,
        "the app must receive exactly 1 GiB\n{}",
        p.outputs()
    );
    assert_eq!(p.app.hits(), 2, "warm-up plus one upload");
    check_memory("upload", &["a", "b"], &figures, elapsed, &p.outputs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_streams_through_two_sidecars() {
    let p = Pair::start().await;
    let sampler = RssSampler::start(vec![p.a.pid(), p.b.pid()]);
    let started = Instant::now();
    let url = p.a.url(&format!("/v1.0/invoke/b/method/download/{GIB}"));
    let result = tokio::time::timeout(TRANSFER_TIMEOUT, download(&url)).await;
    let elapsed = started.elapsed();
    let figures = sampler.finish().await;
    let got = match result {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => panic!("download failed after {elapsed:?}: {e}\n{}", p.outputs()),
        Err(_) => panic!("download took over {TRANSFER_TIMEOUT:?}\n{}", p.outputs()),
    };
    assert_eq!(got.status.as_u16(), 200, "{}", p.outputs());
    assert_eq!(got.bytes, GIB, "exactly 1 GiB arrives\n{}", p.outputs());
    check_memory("download", &["a", "b"], &figures, elapsed, &p.outputs());
}
