//! The distributed lock through real `trellis` processes: four sidecars of one app sharing a
//! data directory (so one embedded `lock.db`), sixteen clients contending for one resource
//! with short leases. No two critical sections of holders that finished within their lease
//! may overlap, fencing tokens must grow in the order the sections ran, and the leases of
//! holders that stalled must be taken over by others once they expire.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use trellis_test_support::try_request;

use crate::sidecar;

/// One critical section as its client saw it.
#[derive(Debug, Clone)]
struct Section {
    client: usize,
    token: u64,
    /// When the lock request left: the lease began after this.
    asked: Instant,
    start: Instant,
    end: Instant,
    stalled: bool,
}

const EXPIRY: Duration = Duration::from_secs(1);
/// What a stalled holder sleeps: longer than its lease, so others take it over.
const STALL: Duration = Duration::from_millis(1500);
const CONTEND_FOR: Duration = Duration::from_secs(11);

impl Section {
    /// Whether the section surely ended while its lease lasted. The lease began when the
    /// store took the request, after `asked`, so `asked + EXPIRY` is the earliest it can
    /// have ended; a small margin absorbs the store's millisecond clock.
    fn within_lease(&self) -> bool {
        self.end + Duration::from_millis(20) <= self.asked + EXPIRY
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_clients_in_four_processes_never_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let sidecars: Vec<_> = (0..4)
        .map(|_| sidecar("locker", dir.path()).spawn())
        .collect();
    for s in &sidecars {
        s.wait_healthy().await;
    }
    let log = Arc::new(Mutex::new(Vec::<Section>::new()));
    let acquisitions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + CONTEND_FOR;
    let mut clients = Vec::new();
    for client in 0..16 {
        let lock = sidecars[client % 4].url("/v1.0-alpha1/lock/lockstore");
        let unlock = sidecars[client % 4].url("/v1.0-alpha1/unlock/lockstore");
        let (log, acquisitions) = (log.clone(), acquisitions.clone());
        clients.push(tokio::spawn(async move {
            let owner = format!("client-{client}");
            let body = json!({"resourceId": "shared", "lockOwner": owner, "expiryInSeconds": 1})
                .to_string();
            while Instant::now() < deadline {
                let asked = Instant::now();
                let r = try_request("POST", &lock, &[], body.clone()).await.unwrap();
                assert_eq!(r.status, 200, "{}", r.text());
                if r.json()["success"] != true {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    continue;
                }
                let start = Instant::now();
                let token: u64 = r.header("trellis-fencing-token").unwrap().parse().unwrap();
                // Every tenth holder stalls past its lease (a GC pause, a lost network):
                // the lock must go to someone else meanwhile.
                let n = acquisitions.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let stalled = n % 10 == 9;
                // Every third works most of its lease, so that a lease handed over early
                // would overlap it; the others are short, for many hand-overs.
                let n64 = n as u64;
                let work = if stalled {
                    STALL
                } else if n % 3 == 1 {
                    Duration::from_millis(600 + (n64 * 53) % 250)
                } else {
                    Duration::from_millis(20 + (n64 * 37) % 80)
                };
                tokio::time::sleep(work).await;
                let end = Instant::now();
                let section = Section {
                    client,
                    token,
                    asked,
                    start,
                    end,
                    stalled,
                };
                let within = section.within_lease();
                log.lock().unwrap().push(section);
                let unlock_body = json!({"resourceId": "shared", "lockOwner": owner}).to_string();
                let r = try_request("POST", &unlock, &[], unlock_body)
                    .await
                    .unwrap();
                let status = r.json()["status"].as_i64().unwrap();
                if within {
                    assert_eq!(status, 0, "a holder within its lease unlocks");
                } else {
                    assert!((0..=2).contains(&status), "{}", r.text());
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    for mut s in sidecars {
        s.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = s.wait_exit(crate::PATIENCE).await;
    }

    let mut log = log.lock().unwrap().clone();
    log.sort_by_key(|s| s.start);
    let safe: Vec<&Section> = log.iter().filter(|s| s.within_lease()).collect();
    assert!(
        safe.len() >= 15,
        "too few sections to judge: {}",
        safe.len()
    );
    for pair in safe.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            b.start >= a.end,
            "client {} entered {:?} before client {} left: {a:?} {b:?}",
            b.client,
            a.end - b.start,
            a.client
        );
        assert!(b.token > a.token, "tokens grow: {a:?} {b:?}");
    }
    // Every stalled holder's lease that expired while the others still contended was
    // taken over: someone else entered after it expired and before the stalled one
    // finished, with a larger token.
    let stalls: Vec<&Section> = log.iter().filter(|s| s.stalled).collect();
    assert!(!stalls.is_empty());
    let judged: Vec<&&Section> = stalls
        .iter()
        .filter(|st| st.start + EXPIRY + Duration::from_millis(300) < deadline)
        .collect();
    for st in &judged {
        let taken_over = log.iter().any(|o| {
            o.client != st.client
                && o.start > st.asked + EXPIRY
                && o.start < st.end
                && o.token > st.token
        });
        assert!(taken_over, "the expired lease of {st:?} was not taken over");
    }
    println!(
        "lock contention: {} sections ({} within their lease), {} stalls, {} taken over",
        log.len(),
        safe.len(),
        stalls.len(),
        judged.len()
    );
}
