//! Pooled HTTP/1.1 connections to other sidecars, for small unary calls.
//!
//! Most invocations are a small request answered by a small response. On that path an
//! HTTP/2 stream costs more than HTTP/1.1 framing: stream bookkeeping, HPACK, and a hand-off
//! between the caller's task and the connection's task on each side (docs/benchmarks.md, "The
//! proxy floor", has the numbers). So a call whose body is already whole in memory and that
//! is not gRPC takes a pooled HTTP/1.1 connection, one call at a time per connection. A peer
//! gets at most [`MAX_CONNECTIONS`] of them; past that, and for streamed bodies and gRPC,
//! calls share the peer's multiplexed HTTP/2 connection ([`super::peers`]).
//!
//! * **Retry safety.** hyper hands back a request it did not start writing (the connection
//!   had closed), which is "not sent". A reused connection that fails that way is replaced
//!   by a new one once before the instance counts as unreachable.
//! * **Liveness.** HTTP/1.1 has no ping. A call still unanswered after
//!   [`Keepalive::interval`] probes the peer on a new connection; a peer that gives no HTTP
//!   answer at all within [`Keepalive::timeout`] is taken as gone and the call fails, as an
//!   unanswered HTTP/2 ping fails the calls on its connection. Idle connections are dropped
//!   once they have been idle for the same interval.
//! * **mTLS.** Each connection is TLS 1.3 offering ALPN `http/1.1`, and is used only for the
//!   app its peer's certificate names. A peer whose TLS refuses that protocol (a sidecar that
//!   speaks only HTTP/2 on its internal port) is remembered, and its calls go over HTTP/2.

use foldhash::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use hyper::client::conn::http1::SendRequest;
use trellis_nameres::AppRef;

use super::http1::{GiveBack, ReturningBody, handshake};
use super::peers::{Alpn, DialError, Keepalive, PeerTls, SendError, Transport, check_peer, dial};
use crate::Body;

/// HTTP/1.1 connections per peer; calls beyond this many at once share its HTTP/2
/// connection instead of opening (and with mTLS, handshaking) ever more sockets.
const MAX_CONNECTIONS: usize = 32;

/// How many peer addresses the pool keeps before it forgets those with no connection.
const FORGET_ABOVE: usize = 256;

/// The pool: idle connections per peer address.
#[derive(Debug)]
pub(super) struct UnaryPool {
    peers: Arc<Mutex<HashMap<SocketAddr, Peer>>>,
    keepalive: Keepalive,
    tls: Option<PeerTls>,
}

#[derive(Debug, Default)]
struct Peer {
    /// Most recently used last.
    idle: Vec<Idle>,
    /// Connections open to this peer, idle or busy; each connection's task counts itself
    /// out when it ends.
    open: Arc<AtomicUsize>,
    /// Its TLS refused ALPN `http/1.1`.
    h2_only: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Idle({:?})", self.conn.peer)
    }
}

/// One connection and, with mTLS, the app its peer proved to be.
struct Conn {
    sender: SendRequest<Body>,
    peer: Option<AppRef>,
    /// Its requests' `Host`, made once rather than formatted for every call.
    host: HeaderValue,
    /// When a call on it should check the peer's liveness; moved later at every call. One
    /// timer per connection rather than one per call: registering a timer due sooner than
    /// any other makes tokio wake its own driver (an eventfd write and one more event per
    /// call), while moving an existing one later costs nothing.
    watch: Pin<Box<tokio::time::Sleep>>,
}

/// What became of a call offered to the pool.
pub(super) enum Outcome {
    Done(Result<Response<Body>, SendError>),
    /// The pool has no connection for it (the peer speaks only HTTP/2, or all its
    /// connections are busy): send it over HTTP/2, as it came.
    UseH2(http::request::Parts, Bytes),
}

/// A slot of [`Peer::open`], given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Checkout {
    Reused(Conn),
    /// No idle connection; a slot to open one in.
    Open(Slot),
    UseH2,
}

impl UnaryPool {
    pub(super) fn new(keepalive: Keepalive, tls: Option<PeerTls>) -> Self {
        Self {
            peers: Arc::default(),
            keepalive,
            tls,
        }
    }

    /// Sends the request of `parts` (origin-form URI) and `bytes` to the sidecar at `addr`,
    /// which must be (with mTLS: prove to be) an instance of `target`.
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        target: &AppRef,
        parts: http::request::Parts,
        bytes: Bytes,
    ) -> Outcome {
        let mut request = Request::from_parts(parts, Body::from(bytes.clone()));
        // A reused connection that turns out closed gets one fresh replacement.
        let mut fresh_left = 1;
        loop {
            let (mut conn, reused) = match self.checkout(addr) {
                Checkout::UseH2 => return Outcome::UseH2(request.into_parts().0, bytes),
                Checkout::Reused(conn) => (conn, true),
                Checkout::Open(slot) => match Box::pin(self.connect(addr, Some(slot))).await {
                    Ok(conn) => (conn, false),
                    Err(DialError::Protocol(error)) => {
                        tracing::debug!(%addr, %error, "peer speaks only http/2 on its internal port");
                        self.peer(addr, |peer| peer.h2_only = true);
                        return Outcome::UseH2(request.into_parts().0, bytes);
                    }
                    Err(DialError::Other(error)) => return not_sent(request, error),
                },
            };
            if let Err(error) = check_peer(addr, conn.peer.as_ref(), target) {
                put_back(&self.peers, addr, conn);
                return not_sent(request, error);
            }
            *request.version_mut() = http::Version::HTTP_11;
            request
                .headers_mut()
                .insert(http::header::HOST, conn.host.clone());
            if conn.sender.ready().await.is_err() {
                if reused && fresh_left > 0 {
                    fresh_left -= 1;
                    continue;
                }
                return not_sent(request, format!("the connection to {addr} closed"));
            }
            let sent = conn.sender.try_send_request(request);
            let interval = self.keepalive.interval;
            conn.watch
                .as_mut()
                .reset(tokio::time::Instant::now() + interval);
            let result = tokio::select! {
                result = sent => result,
                why = self.watchdog(addr, &mut conn.watch) => {
                    return Outcome::Done(Err(SendError::Failed(why)));
                }
            };
            return match result {
                Ok(resp) => Outcome::Done(Ok(resp.map(|body| {
                    let back = Back {
                        peers: self.peers.clone(),
                        addr,
                        conn,
                    };
                    ReturningBody::wrap(body, back)
                }))),
                Err(mut e) => match e.take_message() {
                    Some(again) if reused && fresh_left > 0 => {
                        fresh_left -= 1;
                        request = again;
                        continue;
                    }
                    Some(again) => not_sent(again, e.into_error().to_string()),
                    None => Outcome::Done(Err(SendError::Failed(e.into_error().to_string()))),
                },
            };
        }
    }

    /// The most recently used idle connection that is still open and fresh, or a slot to
    /// open a new one, or neither.
    fn checkout(&self, addr: SocketAddr) -> Checkout {
        let interval = self.keepalive.interval;
        self.peer(addr, |peer| {
            if peer.h2_only {
                return Checkout::UseH2;
            }
            // Stale ones go now, not only when they come up: a burst's extra connections
            // would otherwise stay open on both sides for as long as a few stay busy.
            peer.idle
                .retain(|idle| idle.since.elapsed() < interval && !idle.conn.sender.is_closed());
            if let Some(idle) = peer.idle.pop() {
                return Checkout::Reused(idle.conn);
            }
            if peer.open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                return Checkout::UseH2;
            }
            peer.open.fetch_add(1, Ordering::Relaxed);
            Checkout::Open(Slot(peer.open.clone()))
        })
    }

    /// A new connection to `addr`; a pooled one's task holds its `slot` for as long as it
    /// lives (a probe's has none).
    async fn connect(&self, addr: SocketAddr, slot: Option<Slot>) -> Result<Conn, DialError> {
        let setup = async {
            let (transport, peer) = dial(addr, self.tls.as_ref(), Alpn::Http1).await?;
            let sender = match transport {
                Transport::Plain(io) => handshake(addr, io, slot).await,
                Transport::Tls(io) => handshake(addr, *io, slot).await,
            };
            Ok(Conn {
                sender: sender.map_err(DialError::Other)?,
                peer,
                host: HeaderValue::try_from(addr.to_string())
                    .map_err(|e| DialError::Other(format!("host header for {addr}: {e}")))?,
                watch: Box::pin(tokio::time::sleep(self.keepalive.interval)),
            })
        };
        tokio::time::timeout(super::peers::CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| DialError::Other(format!("connecting to {addr} timed out")))?
    }

    fn peer<T>(&self, addr: SocketAddr, f: impl FnOnce(&mut Peer) -> T) -> T {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        // Addresses come and go (instances restart elsewhere); forget the ones with nothing
        // open once there are many, so the map stays the size of the live peers.
        if peers.len() > FORGET_ABOVE {
            peers.retain(|_, peer| !peer.idle.is_empty() || peer.open.load(Ordering::Relaxed) > 0);
        }
        f(peers.entry(addr).or_default())
    }

    /// Resolves, with why, once the peer at `addr` looks gone: each time `watch` is due
    /// (every [`Keepalive::interval`]) it must give some HTTP answer on a new connection
    /// within [`Keepalive::timeout`]. Never resolves for a peer that keeps answering.
    async fn watchdog(&self, addr: SocketAddr, watch: &mut Pin<Box<tokio::time::Sleep>>) -> String {
        let Keepalive { interval, timeout } = self.keepalive;
        loop {
            watch.as_mut().await;
            watch.as_mut().reset(tokio::time::Instant::now() + interval);
            match tokio::time::timeout(timeout, Box::pin(self.probe(addr))).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    return format!("the peer at {addr} failed a liveness probe: {error}");
                }
                Err(_) => {
                    return format!(
                        "the peer at {addr} did not answer a liveness probe within {timeout:?}"
                    );
                }
            }
        }
    }

    /// One request on a connection of its own; any answer means the peer is alive.
    async fn probe(&self, addr: SocketAddr) -> Result<(), String> {
        let mut conn = self.connect(addr, None).await.map_err(String::from)?;
        let request = Request::get("/")
            .header(http::header::HOST, conn.host.clone())
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        conn.sender
            .send_request(request)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

fn not_sent(request: Request<Body>, error: String) -> Outcome {
    Outcome::Done(Err(SendError::NotSent {
        request: Box::new(request),
        error,
    }))
}

fn put_back(peers: &Mutex<HashMap<SocketAddr, Peer>>, addr: SocketAddr, conn: Conn) {
    let mut peers = peers.lock().unwrap_or_else(|p| p.into_inner());
    peers.entry(addr).or_default().idle.push(Idle {
        conn,
        since: Instant::now(),
    });
}

/// Where a connection goes once its answer has been read to the end.
struct Back {
    peers: Arc<Mutex<HashMap<SocketAddr, Peer>>>,
    addr: SocketAddr,
    conn: Conn,
}

impl GiveBack for Back {
    fn give_back(self) {
        put_back(&self.peers, self.addr, self.conn);
    }
}
