//! Throughput of the embedded SQLite broker with durable (fsynced) publishes of 1 KiB
//! messages: single publishes from concurrent publishers (group committed), bulk publishes,
//! draining the backlog (fetch → deliver → ack), and publishing and consuming at once
//! (with the publish→receive latency).
//!
//! ```text
//! cargo run --release -p trellis-pubsub --example throughput -- \
//!     [--messages 100000] [--size 1024] [--concurrency 64] [--bulk 1000] \
//!     [--consumers 2] [--acks-in-flight 256] [--prefetch 256] [--dir /var/tmp]
//! ```
//!
//! The database goes into a fresh temporary directory under `--dir` (default: the system
//! temporary directory; make sure it is a real disk, not tmpfs, or fsync costs nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use trellis_pubsub::sqlite::SqliteBroker;
use trellis_pubsub::{Metadata, PubSub, PublishRequest, SubscribeRequest};

struct Args {
    messages: usize,
    size: usize,
    concurrency: usize,
    bulk: usize,
    consumers: usize,
    acks_in_flight: usize,
    prefetch: usize,
    dir: std::path::PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        messages: 100_000,
        size: 1024,
        concurrency: 64,
        bulk: 1000,
        consumers: 2,
        acks_in_flight: 256,
        prefetch: 256,
        dir: std::env::temp_dir(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--messages" => args.messages = num()?,
            "--size" => args.size = num()?,
            "--concurrency" => args.concurrency = num()?.max(1),
            "--bulk" => args.bulk = num()?.max(1),
            "--consumers" => args.consumers = num()?.max(1),
            "--acks-in-flight" => args.acks_in_flight = num()?.max(1),
            "--prefetch" => args.prefetch = num()?.max(1),
            "--dir" => args.dir = value.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn rate(n: usize, d: Duration) -> String {
    format!(
        "{n:>7} msgs in {:>6.2} s = {:>8.0} msgs/s",
        d.as_secs_f64(),
        n as f64 / d.as_secs_f64()
    )
}

/// Publishes `total` messages to `topic` from `concurrency` tasks, `per_call` per call
/// (1 = `publish`, more = `bulk_publish`).
async fn publish(
    broker: &Arc<SqliteBroker>,
    topic: &str,
    payload: &bytes::Bytes,
    total: usize,
    concurrency: usize,
    per_call: usize,
) -> Result<(), String> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (broker, next, payload, topic) = (
            broker.clone(),
            next.clone(),
            payload.clone(),
            topic.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(per_call, Ordering::Relaxed);
                if start >= total {
                    return Ok::<(), String>(());
                }
                let n = per_call.min(total - start);
                let req = || PublishRequest::new(topic.as_str(), payload.clone());
                if n == 1 {
                    broker.publish(req()).await.map_err(|e| e.to_string())?;
                } else {
                    let reqs = (0..n).map(|_| req()).collect();
                    broker.bulk_publish(reqs).await.map_err(|e| e.to_string())?;
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Receives `total` messages of `group` with `consumers` subscriptions, acknowledging up to
/// `acks_in_flight` at once per consumer (as the runtime does while the app handles
/// several messages at once). Returns the publish→receive latencies in ms.
async fn consume(
    broker: &Arc<SqliteBroker>,
    topic: &str,
    group: &str,
    total: usize,
    consumers: usize,
    acks_in_flight: usize,
) -> Result<Histogram<u64>, String> {
    let received = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let mut sub = broker
            .subscribe(SubscribeRequest::new(topic, group))
            .await
            .map_err(|e| e.to_string())?;
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
            let acks = Arc::new(Semaphore::new(acks_in_flight));
            while received.load(Ordering::Relaxed) < total {
                let next = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
                let Ok(Some(d)) = next else { continue };
                let d = d.map_err(|e| e.to_string())?;
                let latency = SystemTime::now()
                    .duration_since(d.message.published_at)
                    .unwrap_or_default();
                let _ = hist.record(latency.as_millis() as u64);
                let permit = acks
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?;
                let received = received.clone();
                tokio::spawn(async move {
                    if d.ack().await.is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    drop(permit);
                });
            }
            // Every outstanding ack has finished once all permits are back.
            let _ = acks.acquire_many(acks_in_flight as u32).await;
            sub.close().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(hist)
        }));
    }
    let mut hist = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    for t in tasks {
        let h = t.await.map_err(|e| e.to_string())??;
        hist.add(h).map_err(|e| e.to_string())?;
    }
    Ok(hist)
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let dir = tempfile::tempdir_in(&args.dir).map_err(|e| e.to_string())?;
    let db = dir.path().join("pubsub.db");
    let md = Metadata::from_pairs([
        ("connectionString", db.to_string_lossy().into_owned()),
        ("prefetch", args.prefetch.to_string()),
    ]);
    let broker = Arc::new(SqliteBroker::open(&md).await.map_err(|e| e.to_string())?);
    let payload = bytes::Bytes::from(vec![b'x'; args.size]);
    println!(
        "{} B messages, {} per phase, database {}",
        args.size,
        args.messages,
        db.display()
    );

    // The group exists first, so it is owed everything published below.
    let mut sub = broker
        .subscribe(SubscribeRequest::new("backlog", "g"))
        .await
        .map_err(|e| e.to_string())?;
    sub.close().await.map_err(|e| e.to_string())?;
    drop(sub);

    let t = Instant::now();
    publish(
        &broker,
        "backlog",
        &payload,
        args.messages,
        args.concurrency,
        1,
    )
    .await?;
    println!(
        "publish, {:>4} concurrent publishers:      {}",
        args.concurrency,
        rate(args.messages, t.elapsed())
    );

    let t = Instant::now();
    publish(&broker, "backlog", &payload, args.messages, 4, args.bulk).await?;
    println!(
        "bulk publish, {:>4} per call, 4 at once:  {}",
        args.bulk,
        rate(args.messages, t.elapsed())
    );

    let backlog = 2 * args.messages;
    let t = Instant::now();
    consume(
        &broker,
        "backlog",
        "g",
        backlog,
        args.consumers,
        args.acks_in_flight,
    )
    .await?;
    println!(
        "drain backlog, {} consumers (fetch+ack):  {}",
        args.consumers,
        rate(backlog, t.elapsed())
    );

    // Publishing (bulk) and consuming at once.
    let mut sub = broker
        .subscribe(SubscribeRequest::new("live", "g"))
        .await
        .map_err(|e| e.to_string())?;
    sub.close().await.map_err(|e| e.to_string())?;
    drop(sub);
    let t = Instant::now();
    let consumer = {
        let broker = broker.clone();
        let (n, c, a) = (args.messages, args.consumers, args.acks_in_flight);
        tokio::spawn(async move { consume(&broker, "live", "g", n, c, a).await })
    };
    publish(&broker, "live", &payload, args.messages, 4, 100).await?;
    let published = t.elapsed();
    let hist = consumer.await.map_err(|e| e.to_string())??;
    let done = t.elapsed();
    println!(
        "live: bulk publish (100 per call)           {}",
        rate(args.messages, published)
    );
    println!(
        "live: delivered and acked                   {}; publish→receive p50 {} ms, \
         p99 {} ms, max {} ms",
        rate(args.messages, done),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    Ok(())
}
