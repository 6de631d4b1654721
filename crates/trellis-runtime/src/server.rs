//! Serving a tower service on a listener the caller bound, with graceful shutdown.
//!
//! Both of the sidecar's servers (the public Dapr API and the internal sidecar-to-sidecar
//! port) go through [`serve`]: HTTP/1.1 and HTTP/2 (prior knowledge, as peers use) on one
//! port, `TCP_NODELAY` on every connection (small responses must not wait for Nagle), and
//! on shutdown: stop accepting, let in-flight requests finish within the drain time, then
//! drop what is left.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::Service;

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
    loop {
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
                let hyper_service = TowerToHyperService::new(service.clone().map_request(
                    move |req: Request<hyper::body::Incoming>| {
                        let mut req = req.map(crate::Body::new);
                        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
                        req
                    },
                ));
                let conn = builder
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(address = ?local, drain_secs = drain.as_secs_f64(), "in-flight requests did not finish in time; closing them");
        }
    }
}

use tower::ServiceExt as _;
