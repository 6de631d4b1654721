//! Persistent, multiplexed HTTP/2 connections to other sidecars.
//!
//! One connection per peer address carries every concurrent call to that peer. This sits
//! directly on the `h2` crate rather than on hyper's client for two reasons that both show
//! up on every request:
//!
//! * **Retry safety.** The caller must know whether a failed request left this process.
//!   Here that is explicit: connecting and waiting for the connection to be ready happen
//!   before anything of the request is handed over, and only failures there are "not sent".
//! * **One write per small request.** A small body (already read whole, see `small.rs`) is
//!   queued together with its HEADERS frame, so both leave in one write and the peer wakes
//!   once instead of twice. Larger bodies stream with flow control (`pipe_body`).
//!
//! Each connection pings its peer every [`Keepalive::interval`]; one that gets no answer
//! within [`Keepalive::timeout`] is closed, so a peer that vanished without closing its
//! socket (a machine gone, a black-holed route) costs the next call a reconnect instead
//! of a hang.
//!
//! With mTLS ([`PeerTls`]) every connection is TLS 1.3 with this sidecar's certificate, and
//! is used only for the app its peer's certificate names: a connection whose peer is
//! another app than the one called (a stale registry entry, an impostor) carries nothing,
//! and the request moves on as "not sent".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt as _;

use trellis_mtls::rustls::pki_types as rustls_pki_types;
use trellis_nameres::AppRef;

use super::small::SMALL_BODY;
use crate::Body;

/// How long connecting (and the HTTP/2 handshake) to a peer may take; loopback peers answer
/// in microseconds, a black-holed remote address must not hold the caller for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 keep-alive of peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between pings.
    pub interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(20),
            timeout: Duration::from_secs(10),
        }
    }
}

/// mTLS to peers: the connector with this sidecar's certificate, and its trust domain (a
/// peer must be in the same one).
#[derive(Clone)]
pub struct PeerTls {
    pub connector: trellis_mtls::TlsConnector,
    pub trust_domain: String,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerTls({})", self.trust_domain)
    }
}

/// A pooled connection and, with mTLS, the app its peer proved to be.
#[derive(Clone)]
struct Pooled {
    sender: SendRequest<Bytes>,
    peer: Option<AppRef>,
}

#[derive(Debug, Default)]
pub struct PeerPool {
    conns: Mutex<HashMap<SocketAddr, Pooled>>,
    keepalive: Keepalive,
    tls: Option<PeerTls>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pooled({:?})", self.peer)
    }
}

pub(super) enum SendError {
    /// The request never left this sidecar; it may be sent elsewhere.
    NotSent {
        request: Box<Request<Body>>,
        error: String,
    },
    /// The request may have reached the peer.
    Failed(String),
}

impl PeerPool {
    pub fn new(keepalive: Keepalive, tls: Option<PeerTls>) -> Self {
        Self {
            conns: Mutex::default(),
            keepalive,
            tls,
        }
    }

    /// Sends `request` to the sidecar at `addr`, which must be (with mTLS: prove to be) an
    /// instance of `target`.
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        target: &AppRef,
        request: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let mut sender = match self.ready_sender(addr, target).await {
            Ok(sender) => sender,
            Err(error) => {
                return Err(SendError::NotSent {
                    request: Box::new(request),
                    error,
                });
            }
        };
        let (parts, body) = request.into_parts();
        let (whole, body) = match body.size_hint().exact() {
            Some(0) => (Some(Bytes::new()), None),
            // A body that declares a small exact size is in memory already (`coalesce`).
            Some(n) if n <= SMALL_BODY => match body.collect().await {
                Ok(collected) => (Some(collected.to_bytes()), None),
                Err(e) => return Err(SendError::Failed(format!("reading the request body: {e}"))),
            },
            _ => (None, Some(body)),
        };
        let head = Request::from_parts(parts, ());
        let (response, mut stream) = match whole {
            Some(bytes) if bytes.is_empty() => sender.send_request(head, true).map_err(failed)?,
            Some(bytes) => {
                let (response, mut stream) = sender.send_request(head, false).map_err(failed)?;
                stream.send_data(bytes, true).map_err(failed)?;
                (response, stream)
            }
            None => {
                let (response, stream) = sender.send_request(head, false).map_err(failed)?;
                if let Some(body) = body {
                    tokio::spawn(pipe_body(body, stream));
                }
                return finish(response.await).map_err(failed);
            }
        };
        let result = response.await;
        if result.is_err() {
            stream.send_reset(h2::Reason::CANCEL);
        }
        finish(result).map_err(failed)
    }

    /// A connection to `addr` that is ready for a new stream, reconnecting once if the
    /// pooled one has gone away.
    async fn ready_sender(
        &self,
        addr: SocketAddr,
        target: &AppRef,
    ) -> Result<SendRequest<Bytes>, String> {
        let pooled = self.lock().get(&addr).cloned();
        if let Some(pooled) = pooled {
            check_peer(addr, pooled.peer.as_ref(), target)?;
            match pooled.sender.ready().await {
                Ok(sender) => return Ok(sender),
                Err(error) => {
                    tracing::debug!(%addr, %error, "pooled peer connection is gone; reconnecting");
                    self.lock().remove(&addr);
                }
            }
        }
        let pooled = connect(addr, self.keepalive, self.tls.as_ref()).await?;
        // Two callers may race to connect; the last one wins and the other connection closes
        // once its request is done. Rare, harmless, and cheaper than connecting under a lock.
        self.lock().insert(addr, pooled.clone());
        check_peer(addr, pooled.peer.as_ref(), target)?;
        pooled
            .sender
            .ready()
            .await
            .map_err(|e| format!("peer {addr} refused a new stream: {e}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Pooled>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn failed(e: h2::Error) -> SendError {
    SendError::Failed(e.to_string())
}

fn finish(result: Result<Response<RecvStream>, h2::Error>) -> Result<Response<Body>, h2::Error> {
    let resp = result?;
    Ok(resp.map(|stream| {
        Body::new(RecvBody {
            stream,
            trailers_done: false,
        })
    }))
}

/// With mTLS, the peer must be the app called (the same id, namespace and trust domain the
/// caller means); without, any peer is taken at its word.
fn check_peer(addr: SocketAddr, peer: Option<&AppRef>, target: &AppRef) -> Result<(), String> {
    match peer {
        Some(peer) if peer != target => Err(format!(
            "the sidecar at {addr} proved to be app {peer}, not {target}"
        )),
        _ => Ok(()),
    }
}

async fn connect(
    addr: SocketAddr,
    keepalive: Keepalive,
    tls: Option<&PeerTls>,
) -> Result<Pooled, String> {
    let setup = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            let sender = handshake(addr, stream, keepalive).await?;
            return Ok(Pooled { sender, peer: None });
        };
        let server_name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tls
            .connector
            .connect(server_name, stream)
            .await
            .map_err(|e| format!("tls handshake with {addr}: {e}"))?;
        let id = trellis_mtls::tls::peer_id(stream.get_ref().1.peer_certificates())
            .map_err(|e| format!("tls handshake with {addr}: {e}"))?;
        if id.trust_domain != tls.trust_domain {
            return Err(format!(
                "the sidecar at {addr} is in trust domain {:?}, not {:?}",
                id.trust_domain, tls.trust_domain
            ));
        }
        let peer = AppRef::new(id.app_id, id.namespace)
            .map_err(|e| format!("the sidecar at {addr} has an invalid identity: {e}"))?;
        let sender = handshake(addr, stream, keepalive).await?;
        Ok(Pooled {
            sender,
            peer: Some(peer),
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, setup)
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
}

/// The HTTP/2 handshake over `io` (plain TCP or TLS), and the connection's task.
async fn handshake<I>(
    addr: SocketAddr,
    io: I,
    keepalive: Keepalive,
) -> Result<SendRequest<Bytes>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| format!("http/2 handshake with {addr}: {e}"))?;
    let pings = conn.ping_pong();
    tokio::spawn(async move {
        tokio::select! {
            result = conn => if let Err(error) = result {
                tracing::debug!(%addr, %error, "peer connection closed");
            },
            // Returning drops the connection: its socket closes and the pool's next
            // `ready()` on it fails, which reconnects.
            why = keep_alive(pings, keepalive) => {
                tracing::debug!(%addr, "closing the peer connection: {why}");
            }
        }
    });
    Ok(sender)
}

/// Pings until a ping fails or goes unanswered; returns why.
async fn keep_alive(pings: Option<h2::PingPong>, keepalive: Keepalive) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(keepalive.interval).await;
        match tokio::time::timeout(keepalive.timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return format!("ping failed: {error}"),
            Err(_) => return format!("no answer to a ping within {:?}", keepalive.timeout),
        }
    }
}

/// Streams a request body to the peer, respecting its flow-control window so that memory
/// stays bounded by the window, not by the body size.
async fn pipe_body(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = match body.frame().await {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "request body failed while streaming to a peer");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(Ok(n)) => n,
                        _ => return,
                    };
                    if granted == 0 {
                        continue;
                    }
                    let chunk = data.split_to(granted.min(data.len()));
                    if stream.send_data(chunk, false).is_err() {
                        return;
                    }
                }
                continue;
            }
            Err(frame) => frame,
        };
        if let Ok(trailers) = frame.into_trailers() {
            let _ = stream.send_trailers(trailers);
            return;
        }
    }
}

/// A response body read from an HTTP/2 stream, returning flow-control capacity as the data
/// is consumed (so the peer keeps sending only as fast as this side forwards).
struct RecvBody {
    stream: RecvStream,
    trailers_done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        match this.stream.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = this.stream.flow_control().release_capacity(data.len());
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {}
            Poll::Pending => return Poll::Pending,
        }
        if this.trailers_done {
            return Poll::Ready(None);
        }
        match this.stream.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => {
                this.trailers_done = true;
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Ready(Ok(None)) => {
                this.trailers_done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers_done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
