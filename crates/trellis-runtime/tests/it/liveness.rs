//! How the sidecar's servers notice clients that are gone without having closed their
//! connections (`trellis_runtime::server::Port`): the kernel's keepalive probes on the
//! public ports, HTTP/2 pings on the internal port. Seen from outside, in the kernel's own
//! table of TCP connections.

use std::time::Duration;

use tokio::net::TcpStream;
use trellis_test_support::wait_until;

use crate::grpc_sidecar;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn the_public_ports_have_the_kernel_probe_idle_clients() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("liveness", dir.path(), None, |_| {}).await;
    let grpc = s.grpc_addr.expect("grpc listener");
    // Connections that were opened and went quiet, as an app's idle pool does.
    let _http = TcpStream::connect(s.http_addr).await.unwrap();
    let _grpc = TcpStream::connect(grpc).await.unwrap();
    let _internal = TcpStream::connect(s.internal_addr).await.unwrap();
    for (port, addr) in [("HTTP", s.http_addr), ("gRPC", grpc)] {
        let probed = wait_until(WAIT, || async {
            keepalive_timer(addr.port()) == Some(true)
        })
        .await;
        assert!(
            probed,
            "the {port} API's side of an idle connection has no keepalive timer ({:?})",
            keepalive_timer(addr.port())
        );
    }
    // The internal port watches its peers with HTTP/2 pings instead.
    let accepted = wait_until(WAIT, || async {
        keepalive_timer(s.internal_addr.port()).is_some()
    })
    .await;
    assert!(
        accepted,
        "the internal port's connection is not in the table"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(keepalive_timer(s.internal_addr.port()), Some(false));
    s.stop().await;
}

/// Whether the server's side of the established connection on local `port` has the
/// kernel's keepalive timer running (`/proc/net/tcp`: state `01`, timer `02`); `None` when
/// there is no such connection.
fn keepalive_timer(port: u16) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?.rsplit(':').next()?;
        let established = *fields.get(3)? == "01";
        (u16::from_str_radix(local, 16).ok()? == port && established)
            .then(|| fields.get(5).is_some_and(|timer| timer.starts_with("02:")))
    })
}
