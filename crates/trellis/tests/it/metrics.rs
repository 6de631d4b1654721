//! `trellis run`'s metrics port: scraped by a real Prometheus server, several sidecars on one
//! machine each getting a port of their own, and `--enable-metrics=false`.

use std::time::Duration;

use trellis_test_support::exposition::{parse, sum};
use trellis_test_support::{Sidecar, free_port, request};

use crate::sidecar;

/// The metrics port a running sidecar reports in `GET /v1.0/metadata`.
async fn metrics_port(s: &Sidecar) -> Option<u16> {
    let md = request("GET", &s.url("/v1.0/metadata"), &[], "")
        .await
        .json();
    md["extended"]["metricsPort"].as_str()?.parse().ok()
}

async fn scrape(port: u16) -> Vec<trellis_test_support::exposition::Sample> {
    let r = request("GET", &format!("http://127.0.0.1:{port}/metrics"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    parse(&r.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_without_a_metrics_port_each_get_one() {
    let data = tempfile::tempdir().expect("tempdir");
    // Whoever holds 9090 (another test's sidecar, or nobody), both start and both serve.
    let a = sidecar("metrics-a", data.path()).spawn();
    let b = sidecar("metrics-b", data.path()).spawn();
    a.wait_healthy().await;
    b.wait_healthy().await;
    let pa = metrics_port(&a).await.expect("a's metrics port");
    let pb = metrics_port(&b).await.expect("b's metrics port");
    assert_ne!(pa, pb);
    for (s, port, id) in [(&a, pa, "metrics-a"), (&b, pb, "metrics-b")] {
        let m = scrape(port).await;
        assert_eq!(sum(&m, "trellis_build_info", &[("app_id", id)]), 1.0);
        assert!(
            s.output().contains(&format!("127.0.0.1:{port}")),
            "the startup log names the metrics address:\n{}",
            s.output()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_metrics_false_serves_none() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let s = sidecar("no-metrics", data.path())
        .arg("--enable-metrics=false")
        .arg("--metrics-port")
        .arg(port.to_string())
        .spawn();
    s.wait_healthy().await;
    assert_eq!(metrics_port(&s).await, None);
    let r = trellis_test_support::try_request(
        "GET",
        &format!("http://127.0.0.1:{port}/metrics"),
        &[],
        "",
    )
    .await;
    assert!(r.is_err(), "nothing listens on {port}");
}

/// The real Prometheus server scrapes a live sidecar and answers a query for a series
/// with the count of calls made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_live_sidecar() {
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: the prometheus binary is not installed (apt-get install prometheus)");
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let s = sidecar("scraped", data.path())
        .arg("--metrics-port")
        .arg(port.to_string())
        .spawn();
    s.wait_healthy().await;
    for _ in 0..3 {
        let r = request("GET", &s.url("/v1.0/metadata"), &[], "").await;
        assert_eq!(r.status, 200);
    }

    let config = data.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trellis\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("write the prometheus config");
    let web = free_port();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            data.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");

    let query = "dapr_http_server_request_count{app_id=\"scraped\",method=\"GET\",path=\"/v1.0/metadata\",status=\"200\"}";
    let url = format!(
        "http://127.0.0.1:{web}/api/v1/query?query={}",
        encode(query)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let found = loop {
        if let Ok(r) = trellis_test_support::try_request("GET", &url, &[], "").await {
            last = r.text();
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if json["data"]["result"][0]["value"][1] == "3" {
                break true;
            }
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = prometheus.start_kill();
    assert!(
        found,
        "prometheus never saw the 3 calls; last answer: {last}\nsidecar output:\n{}",
        s.output()
    );
}

/// Percent-encodes a query parameter value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}
