//! Serving a tower service on a listener the caller bound, with graceful shutdown.
//!
//! All of the sidecar's servers (the public Dapr APIs, metrics, and the internal
//! sidecar-to-sidecar port) go through here: HTTP/1.1 and HTTP/2 (prior knowledge, as peers
//! use) on one port, `TCP_NODELAY` on every connection (small responses must not wait for
//! Nagle), and on shutdown: stop accepting, let in-flight requests finish within the drain
//! time, then drop what is left. The internal port may also require mTLS, and it watches its
//! peers with HTTP/2 pings where the public ports have the kernel probe theirs ([`Port`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt as _};

use one_task::{Driver, StreamExec};

mod one_task;

/// Which of the sidecar's ports a server is, which decides how it notices a client that is
/// gone without having closed its connection (its host lost power, or the network between
/// them failed), so that the connection's streams (a subscription, a workflow worker's
/// stream, proxied calls) end instead of piling up.
pub enum Port {
    /// A public API (HTTP, gRPC, metrics). Its clients are apps, almost always on the same
    /// host, whose death the kernel reports at once. For the rare one that is not, the
    /// kernel probes idle connections and bounds how long an answer may make no progress
    /// ([`tcp_liveness`], set on each connection as it is accepted). That costs nothing per
    /// request, where hyper's HTTP/2 ping bookkeeping runs on every frame
    /// of every connection: about 1,200 instructions of each gRPC call
    /// (docs/benchmarks.md). It also covers HTTP/1.1 connections, which have no ping. A
    /// client's own pings are answered either way.
    Public,
    /// The public gRPC API, whose clients are watched as [`Port::Public`]'s are. They all
    /// speak HTTP/2, and each connection runs with its streams on one task, its answers
    /// written once per turn ([`one_task`]): a unary call then crosses no task and leaves in
    /// one write, where hyper would spawn a task per stream and h2 write most answers in two
    /// (docs/benchmarks.md, "One task per gRPC connection"). The HTTP port, where most
    /// clients speak HTTP/1.1, did not gain from it when measured.
    Grpc,
    /// The internal port: an HTTP/2 PING every [`PING_INTERVAL`], the connection closed
    /// after [`PING_TIMEOUT`] without an answer. Its clients are other sidecars, usually on
    /// other hosts, each holding one multiplexed connection for many calls; they ping this
    /// side the same way. Every connection first goes through a TLS handshake when an
    /// acceptor is given (mTLS). The handshake runs in the connection's own task, so a slow
    /// or hostile client never holds up accepting others; the peer's verified identity goes
    /// into every request of the connection as a [`PeerIdentity`] extension. A connection
    /// that negotiated HTTP/2 under mTLS (proxied gRPC calls, streamed bodies) runs on one
    /// task as [`Port::Grpc`]'s do, so an answer and its trailers leave in one write (one
    /// TLS record) instead of two; HTTP/1.1 ones (the pooled small calls) write an answer
    /// once already, and a driver only added work to them. Plaintext (loopback only) is
    /// not told apart by protocol and takes hyper's own path.
    Internal(Option<trellis_mtls::TlsAcceptor>),
}

/// See [`Port::Internal`].
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` as `port` until `shutdown` resolves, then drains for up
/// to `drain`.
pub async fn serve<S>(
    listener: TcpListener,
    port: Port,
    service: S,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let local = listener.local_addr().ok();
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(StreamExec);
    // Large windows keep a single multiplexed peer connection from throttling big streams;
    // memory stays bounded by the window, not by the body size.
    builder
        .http2()
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1024);
    let public = !matches!(port, Port::Internal(_));
    let one_task = matches!(port, Port::Grpc);
    let tls = match port {
        Port::Public => None,
        Port::Grpc => {
            // gRPC answers carry no `Date` (gRPC servers, daprd's included, send none);
            // hyper would format and HPACK-encode one on every answer.
            builder.http2().auto_date_header(false);
            None
        }
        Port::Internal(tls) => {
            // What this port answers goes to the caller's sidecar, whose own server dates
            // the answer it passes on when the app gave it none; a `Date` from here would
            // be formatted, sent and parsed on every call for nothing.
            builder.http1().auto_date_header(false);
            builder.http2().auto_date_header(false);
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Some(PING_INTERVAL))
                .keep_alive_timeout(PING_TIMEOUT);
            tls
        }
    };
    tokio::pin!(shutdown);
    // Every connection's task, so that the ones still open when the drain time is up are
    // really closed (aborted), not just left behind.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        // Usually EMFILE: back off instead of spinning on the error.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                if public && let Err(error) = tcp_liveness(&stream) {
                    tracing::debug!(%peer, %error, "could not set tcp keepalive on a connection");
                }
                let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
                match tls.clone() {
                    None => {
                        connections.spawn(serve_connection(builder, stream, service, peer, None, watcher, one_task));
                    }
                    Some(acceptor) => {
                        connections.spawn(async move {
                            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            let tls = match handshake.await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(error)) => {
                                    tracing::debug!(%peer, %error, "refused a connection: tls handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "refused a connection: tls handshake timed out");
                                    return;
                                }
                            };
                            let id = match trellis_mtls::tls::peer_id(tls.get_ref().1.peer_certificates()) {
                                Ok(id) => id,
                                Err(error) => {
                                    tracing::debug!(%peer, %error, "refused a connection: no sidecar identity");
                                    return;
                                }
                            };
                            // HTTP/2 runs on one task, HTTP/1.1 as it is ([`Port::Internal`]).
                            let one_task = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                            serve_connection(builder, tls, service, peer, Some(PeerIdentity(Arc::new(Peer::new(id)))), watcher, one_task).await;
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(address = ?local, drain_secs = drain.as_secs_f64(), open = connections.len(), "in-flight requests did not finish in time; closing them");
            connections.abort_all();
        }
    }
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// [`Port::Public`]'s liveness, on one connection. After [`PROBE_IDLE`] of silence the kernel
/// probes the client every [`PROBE_INTERVAL`] and drops the connection after [`PROBES`]
/// unanswered probes: a client that vanished from an idle connection is found within about
/// 20 s (Dapr's API server pings after 10 s of silence and waits 5 s for the answer).
/// Probes are only sent while nothing is in flight, so data this side sent that makes no
/// progress for [`STALLED_LIMIT`] (unacknowledged, or held back by a client that stopped
/// reading) drops the connection too; without it, a stream writing to a vanished client
/// would retransmit for about 15 minutes. The limit is nginx's `send_timeout`: a client that
/// takes nothing for a minute is not coming back. Elsewhere than on Linux, only the silence
/// before the first probe is set.
fn tcp_liveness(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    let probes = socket2::TcpKeepalive::new().with_time(PROBE_IDLE);
    #[cfg(target_os = "linux")]
    let probes = probes.with_interval(PROBE_INTERVAL).with_retries(PROBES);
    sock.set_tcp_keepalive(&probes)?;
    #[cfg(target_os = "linux")]
    sock.set_tcp_user_timeout(Some(STALLED_LIMIT))?;
    Ok(())
}

/// See [`tcp_liveness`].
const PROBE_IDLE: Duration = Duration::from_secs(10);
#[cfg(target_os = "linux")]
const PROBE_INTERVAL: Duration = Duration::from_secs(5);
#[cfg(target_os = "linux")]
const PROBES: u32 = 2;
#[cfg(target_os = "linux")]
const STALLED_LIMIT: Duration = Duration::from_secs(60);

/// The verified identity of the sidecar on the other end of an mTLS connection, put into
/// each of its requests: the only source of a caller's identity on the internal port. The
/// caller headers it stands for are made once per connection, not once per request.
#[derive(Debug, Clone)]
pub struct PeerIdentity(pub Arc<Peer>);

/// See [`PeerIdentity`].
#[derive(Debug)]
pub struct Peer {
    pub id: trellis_mtls::SpiffeId,
    /// `dapr-caller-app-id` and `dapr-caller-namespace` as the certificate says (`None` for
    /// a value no header can carry).
    pub app_id_header: Option<http::HeaderValue>,
    pub namespace_header: Option<http::HeaderValue>,
}

impl Peer {
    fn new(id: trellis_mtls::SpiffeId) -> Self {
        Self {
            app_id_header: http::HeaderValue::from_str(&id.app_id).ok(),
            namespace_header: http::HeaderValue::from_str(&id.namespace).ok(),
            id,
        }
    }
}

/// Serves one connection (plain or TLS) until it ends or the drain closes it, on one task
/// with its streams if `one_task` ([`Port::Grpc`], and HTTP/2 under mTLS on
/// [`Port::Internal`]).
async fn serve_connection<I, S>(
    builder: auto::Builder<StreamExec>,
    io: I,
    service: S,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    watcher: Watcher,
    one_task: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let hyper_service = TowerToHyperService::new(service.map_request(
        move |req: Request<hyper::body::Incoming>| {
            let mut req = req.map(crate::Body::new);
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            if let Some(identity) = &identity {
                req.extensions_mut().insert(identity.clone());
            }
            req
        },
    ));
    let ended = if one_task {
        Driver::new(io, |io| connection(&builder, io, hyper_service, watcher)).await
    } else {
        connection(&builder, io, hyper_service, watcher).await
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// hyper's connection on `io`, ending early on a graceful shutdown.
fn connection<I, S>(
    builder: &auto::Builder<StreamExec>,
    io: I,
    service: S,
    watcher: Watcher,
) -> impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + use<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<hyper::body::Incoming>, Response = Response>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    watcher.watch(
        builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned(),
    )
}
