//! The state API through real `trellis` processes: the embedded default store survives
//! `kill -9` with every acknowledged write, and separate processes share it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::signal::Signal;
use trellis_test_support::try_request;

use crate::{PATIENCE, sidecar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = sidecar("durable", dir.path()).spawn();
    s.wait_healthy().await;

    // Four writers save keys as fast as they can; the process is killed mid-stream. Every
    // write that got its 204 must be there after a restart.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (url, acked, count) = (
            s.url("/v1.0/state/statestore"),
            acked.clone(),
            count.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("w{w}-{i}");
                let body = format!(r#"[{{"key":"{key}","value":{{"i":{i}}}}}]"#);
                match try_request("POST", &url, &[], body).await {
                    Ok(r) if r.status == 204 => {
                        acked.lock().unwrap().push(key);
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => return,
                }
            }
        }));
    }
    let enough = trellis_test_support::wait_until(PATIENCE, || async {
        count.load(Ordering::SeqCst) >= 300
    })
    .await;
    assert!(enough, "writes too slow; output:\n{}", s.output());
    s.signal(Signal::SIGKILL);
    for w in writers {
        let _ = w.await;
    }
    let _ = s.wait_exit(PATIENCE).await;
    let acked = acked.lock().unwrap().clone();

    let s = sidecar("durable", dir.path()).spawn();
    s.wait_healthy().await;
    let mut missing = Vec::new();
    for chunk in acked.chunks(200) {
        let body = serde_json::json!({ "keys": chunk }).to_string();
        let r = try_request("POST", &s.url("/v1.0/state/statestore/bulk"), &[], body)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        for item in r.json().as_array().unwrap() {
            if item.get("data").is_none() {
                missing.push(item["key"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    println!(
        "kill -9 durability: {} acknowledged writes, none lost",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_share_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let one = sidecar("shared-app", dir.path()).spawn();
    let two = sidecar("shared-app", dir.path()).spawn();
    let other = sidecar("other-app", dir.path()).spawn();
    one.wait_healthy().await;
    two.wait_healthy().await;
    other.wait_healthy().await;
    let r = try_request(
        "POST",
        &one.url("/v1.0/state/statestore"),
        &[],
        r#"[{"key":"k","value":{"from":"one"}}]"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    let r = try_request("GET", &two.url("/v1.0/state/statestore/k"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "same app id, other process: {}", r.text());
    assert_eq!(r.json()["from"], "one");
    let r = try_request("GET", &other.url("/v1.0/state/statestore/k"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 204, "another app id does not see it");
}
