//! Serving a tower service on a listener the caller bound, with graceful shutdown.
//!
//! Both of the sidecar's servers (the public Dapr API and the internal sidecar-to-sidecar
//! port) go through [`serve`]: HTTP/1.1 and HTTP/2 (prior knowledge, as peers use) on one
//! port, `TCP_NODELAY` on every connection (small responses must not wait for Nagle), and
//! on shutdown: stop accepting, let in-flight requests finish within the drain time, then
//! drop what is left. The internal port may also require mTLS ([`serve_with`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::{Service, ServiceExt as _};

/// Serves `service` on `listener` until `shutdown` resolves, then drains for up to `drain`.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    serve_with(listener, None, service, shutdown, drain).await;
}

/// As [`serve`], with every connection first going through a TLS handshake when `tls` is
/// given (the internal port with mTLS). The handshake runs in the connection's own task, so
/// a slow or hostile client never holds up accepting others; the peer's verified identity
/// goes into every request of the connection as a [`PeerIdentity`] extension.
pub async fn serve_with<S>(
    listener: TcpListener,
    tls: Option<trellis_mtls::TlsAcceptor>,
    service: S,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let local = listener.local_addr().ok();
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Large windows keep a single multiplexed peer connection from throttling big streams;
    // memory stays bounded by the window, not by the body size.
    builder
        .http2()
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1024)
        // Peers ping too; this side's pings close connections of peers that vanished, so
        // their streams do not pile up.
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
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
                let (builder, service, watcher) = (builder.clone(), service.clone(), graceful.watcher());
                match tls.clone() {
                    None => {
                        connections.spawn(serve_connection(builder, stream, service, peer, None, watcher));
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
                            serve_connection(builder, tls, service, peer, Some(PeerIdentity(Arc::new(Peer::new(id)))), watcher).await;
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

/// Serves one connection (plain or TLS) until it ends or the drain closes it.
async fn serve_connection<I, S>(
    builder: auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
    watcher: Watcher,
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
    let conn = builder
        .serve_connection(TokioIo::new(io), hyper_service)
        .into_owned();
    if let Err(error) = watcher.watch(conn).await {
        tracing::debug!(%error, "connection ended with an error");
    }
}
