//! Persistent, multiplexed HTTP/2 connections to other sidecars.
//!
//! One connection per peer address carries every concurrent call to that peer. The pool is
//! hand-rolled on hyper's HTTP/2 client connection rather than a generic pooled client
//! because the caller must know whether a failed request left this process: hyper's
//! `try_send_request` hands back a request that was never written, and only those may be
//! retried on another instance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::Body;

/// How long a connection attempt to a peer may take; loopback peers answer in microseconds,
/// a black-holed remote address must not hold the caller for the OS default of minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Default)]
pub struct PeerPool {
    conns: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

// The big variant is the common failure path's payload (the request to retry elsewhere);
// boxing it would cost an allocation on exactly the path that must stay cheap.
#[allow(clippy::large_enum_variant)]
pub(super) enum SendError {
    /// The request never left this sidecar; it may be sent elsewhere.
    NotSent {
        request: Request<Body>,
        error: String,
    },
    /// The request may have reached the peer.
    Failed(hyper::Error),
}

impl PeerPool {
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.sender(addr).await {
            Ok(sender) => sender,
            Err(error) => return Err(SendError::NotSent { request, error }),
        };
        match sender.try_send_request(request).await {
            Ok(resp) => Ok(resp),
            Err(mut err) => match err.take_message() {
                Some(request) => {
                    self.forget(addr);
                    Err(SendError::NotSent {
                        request,
                        error: err.into_error().to_string(),
                    })
                }
                None => Err(SendError::Failed(err.into_error())),
            },
        }
    }

    async fn sender(&self, addr: SocketAddr) -> Result<http2::SendRequest<Body>, String> {
        if let Some(sender) = self.lock().get(&addr)
            && !sender.is_closed()
        {
            return Ok(sender.clone());
        }
        let sender = connect(addr).await?;
        // Two callers may race to connect; the last one wins and the other connection closes
        // when its only request finishes. Rare, harmless, and cheaper than connecting under
        // a lock.
        self.lock().insert(addr, sender.clone());
        Ok(sender)
    }

    fn forget(&self, addr: SocketAddr) {
        self.lock().remove(&addr);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, http2::SendRequest<Body>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn connect(addr: SocketAddr) -> Result<http2::SendRequest<Body>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let handshake = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        // Detect a peer that vanished without closing the socket (kill -9 across machines).
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream));
    let (sender, conn) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| format!("http/2 handshake with {addr} timed out"))?
        .map_err(|e| format!("http/2 handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%addr, %error, "peer connection closed");
        }
    });
    Ok(sender)
}
