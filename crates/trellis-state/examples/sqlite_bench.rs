//! Throughput of the embedded SQLite store: concurrent single-key saves (durable, group
//! committed) and concurrent gets, on a file on local disk.
//!
//! ```text
//! cargo run --release -p trellis-state --example sqlite_bench -- \
//!     [--concurrency 64] [--seconds 5] [--worker-threads 1] [--read-connections 2] [--dir /tmp]
//! ```
//!
//! The database goes into a fresh temporary directory under `--dir` (default: the system
//! temporary directory; make sure it is a real disk, not tmpfs, or fsync costs nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use trellis_state::sqlite::SqliteStore;
use trellis_state::{Metadata, SetRequest, StateStore};

struct Args {
    concurrency: usize,
    seconds: u64,
    worker_threads: usize,
    read_connections: usize,
    dir: std::path::PathBuf,
    keys: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        concurrency: 64,
        seconds: 5,
        worker_threads: 1,
        read_connections: 2,
        dir: std::env::temp_dir(),
        keys: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--concurrency" => args.concurrency = num()?,
            "--seconds" => args.seconds = num()? as u64,
            "--worker-threads" => args.worker_threads = num()?,
            "--read-connections" => args.read_connections = num()?,
            "--keys" => args.keys = num()?,
            "--dir" => args.dir = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let rt = if args.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.worker_threads)
            .enable_all()
            .build()
    }
    .map_err(|e| e.to_string())?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let dir = tempfile::tempdir_in(&args.dir).map_err(|e| e.to_string())?;
    let db = dir.path().join("bench.db");
    let md = Metadata::from_pairs([
        ("connectionString", db.to_string_lossy().to_string()),
        ("readConnections", args.read_connections.to_string()),
    ]);
    let store: Arc<dyn StateStore> =
        Arc::new(SqliteStore::open(&md).await.map_err(|e| e.to_string())?);
    println!(
        "sqlite bench: {} concurrent callers, {} s per phase, tokio worker threads {}, \
         read connections {}, {} keys, db {}",
        args.concurrency,
        args.seconds,
        args.worker_threads,
        args.read_connections,
        args.keys,
        db.display()
    );
    let value = format!("{{\"payload\":\"{}\"}}", "x".repeat(100));

    // Saves: every caller overwrites keys of its own, one durable write at a time.
    let keys = args.keys;
    let saves = phase(&store, &args, move |store, task, i| {
        let value = value.clone();
        async move {
            let key = format!("bench||k{}", (task * 7919 + i) % keys);
            store
                .set(SetRequest::new(key, value))
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    report("saves", &saves);

    // Gets of keys written above, in a random order.
    let gets = phase(&store, &args, move |store, task, i| async move {
        let n = (task as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64 * 2_654_435_761);
        let key = format!("bench||k{}", n as usize % keys);
        match store.get(&key).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("{key} missing")),
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    report("gets", &gets);
    Ok(())
}

struct Outcome {
    ops: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

async fn phase<F, Fut>(store: &Arc<dyn StateStore>, args: &Args, op: F) -> Result<Outcome, String>
where
    F: Fn(Arc<dyn StateStore>, usize, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..args.concurrency {
        let (store, stop, op) = (store.clone(), stop.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                op(store.clone(), task, i).await?;
                hist.saturating_record(t.elapsed().as_micros() as u64);
                i += 1;
            }
            Ok::<_, String>(hist)
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for t in tasks {
        let h = t.await.map_err(|e| e.to_string())??;
        latency.add(&h).map_err(|e| e.to_string())?;
    }
    Ok(Outcome {
        ops: latency.len(),
        elapsed: start.elapsed(),
        latency,
    })
}

fn report(name: &str, o: &Outcome) {
    println!(
        "{name:>5}: {:>9.0} ops/s ({} ops in {:.2} s); latency p50 {} µs, p99 {} µs, max {} µs",
        o.ops as f64 / o.elapsed.as_secs_f64(),
        o.ops,
        o.elapsed.as_secs_f64(),
        o.latency.value_at_quantile(0.5),
        o.latency.value_at_quantile(0.99),
        o.latency.max()
    );
}
