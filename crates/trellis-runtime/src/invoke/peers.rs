//! Persistent connections to other sidecars, and the HTTP/2 one.
//!
//! [`PeerPool::send`] offers a small unary call to the HTTP/1.1 pool first ([`super::unary`]);
//! what that does not take goes here, where one HTTP/2 connection per peer address carries
//! every concurrent call to that peer. [`dial`] is how both connect. The HTTP/2 side sits
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

use foldhash::HashMap;
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

use super::small::{SMALL_BODY, is_grpc};
use super::unary::{self, UnaryPool};
use crate::Body;

/// How long connecting (and the HTTP/2 handshake) to a peer may take; loopback peers answer
/// in microseconds, a black-holed remote address must not hold the caller for minutes.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// The peer's address as every request's `:authority`, made once per connection.
    authority: http::uri::Authority,
    peer: Option<AppRef>,
    /// Tells this connection from one that later took its place.
    id: u64,
}

type LastFailure = Option<(std::time::Instant, String)>;

/// Source of [`Pooled::id`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug)]
pub struct PeerPool {
    conns: Mutex<HashMap<SocketAddr, Pooled>>,
    /// Turns to connect, per peer, and when and why the last failed turn failed.
    connecting: Mutex<HashMap<SocketAddr, std::sync::Arc<tokio::sync::Mutex<LastFailure>>>>,
    /// HTTP/1.1 connections for small unary calls.
    unary: UnaryPool,
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
            connecting: Mutex::default(),
            unary: UnaryPool::new(keepalive, tls.clone()),
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
        let (parts, body) = request.into_parts();
        let body = Outgoing::of(body).await.map_err(SendError::Failed)?;
        // A small unary call goes over HTTP/1.1 when the pool has a connection for it; gRPC
        // needs HTTP/2's trailers.
        let (mut parts, body) = match body {
            Outgoing::Whole(bytes) if !is_grpc(&parts.headers) => {
                match self.unary.send(addr, target, parts, bytes).await {
                    unary::Outcome::Done(result) => return result,
                    unary::Outcome::UseH2(parts, bytes) => (parts, Outgoing::Whole(bytes)),
                }
            }
            body => (parts, body),
        };
        let (mut sender, authority) = match self.ready_sender(addr, target).await {
            Ok(ready) => ready,
            Err(error) => {
                return Err(SendError::NotSent {
                    request: Box::new(Request::from_parts(parts, body.into_body())),
                    error,
                });
            }
        };
        parts.uri = absolute(&authority, &parts.uri);
        parts.version = http::Version::HTTP_2;
        // h2 carries the authority in the URI; a Host header would be a second one.
        parts.headers.remove(http::header::HOST);
        let head = Request::from_parts(parts, ());
        // Only `ready_sender` failing is "not sent" here: h2 has taken the request by now,
        // so even a stream the peer refused unprocessed cannot be handed back. A sidecar
        // refuses none in practice: its graceful GOAWAY is two-phase (hyper), and it
        // processes every stream opened before this side heard of it.
        exchange(&mut sender, head, body)
            .await
            .map_err(|e| match e {
                Exchange::Unprocessed(e) | Exchange::Failed(e) => failed(e),
            })
    }

    /// A connection to `addr` that is ready for a new stream, reconnecting once if the
    /// pooled one has gone away. One caller at a time connects to a peer, so that a burst of
    /// first calls shares one connection instead of each opening its own.
    async fn ready_sender(
        &self,
        addr: SocketAddr,
        target: &AppRef,
    ) -> Result<(SendRequest<Bytes>, http::uri::Authority), String> {
        if let Some(ready) = self.pooled_ready(addr, target).await? {
            return Ok(ready);
        }
        let gate = self
            .connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_default()
            .clone();
        let waited_from = std::time::Instant::now();
        let mut turn = gate.lock().await;
        // Whoever had the turn before may have connected already, or failed to while this
        // caller waited: then it fails alike, rather than all waiters trying one by one.
        if let Some(ready) = self.pooled_ready(addr, target).await? {
            return Ok(ready);
        }
        if let Some((at, error)) = &*turn
            && *at >= waited_from
        {
            return Err(error.clone());
        }
        let pooled = match Box::pin(connect(addr, self.keepalive, self.tls.as_ref())).await {
            Ok(pooled) => pooled,
            Err(error) => {
                *turn = Some((std::time::Instant::now(), error.clone()));
                return Err(error);
            }
        };
        *turn = None;
        self.lock().insert(addr, pooled.clone());
        drop(turn);
        // The gate is needed again only if this connection goes; one nobody waits on goes.
        {
            let mut gates = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
            if std::sync::Arc::strong_count(&gate) == 2 {
                gates.remove(&addr);
            }
        }
        check_peer(addr, pooled.peer.as_ref(), target)?;
        let sender = pooled
            .sender
            .ready()
            .await
            .map_err(|e| format!("peer {addr} refused a new stream: {e}"))?;
        Ok((sender, pooled.authority))
    }

    /// The pooled connection to `addr` once it takes a new stream; `None` if there is none,
    /// or it has gone away (it then leaves the pool).
    async fn pooled_ready(
        &self,
        addr: SocketAddr,
        target: &AppRef,
    ) -> Result<Option<(SendRequest<Bytes>, http::uri::Authority)>, String> {
        let Some(pooled) = self.lock().get(&addr).cloned() else {
            return Ok(None);
        };
        check_peer(addr, pooled.peer.as_ref(), target)?;
        match pooled.sender.ready().await {
            Ok(sender) => Ok(Some((sender, pooled.authority))),
            Err(error) => {
                tracing::debug!(%addr, %error, "pooled peer connection is gone; reconnecting");
                let mut conns = self.lock();
                // Only this one: another caller may have put a new one in its place.
                if conns.get(&addr).is_some_and(|p| p.id == pooled.id) {
                    conns.remove(&addr);
                }
                Ok(None)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Pooled>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An origin-form URI made absolute with `authority` (the peer, or the app), as HTTP/2
/// wants it.
pub(super) fn absolute(authority: &http::uri::Authority, uri: &http::Uri) -> http::Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    // Shared, not parsed again.
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// A request body as it goes on an HTTP/2 stream.
pub(super) enum Outgoing {
    /// In memory: it leaves with the HEADERS frame, in one write.
    Whole(Bytes),
    /// Streamed with flow control ([`pipe_body`]).
    Stream(Body),
}

impl Outgoing {
    /// `body` whole when it declares a small exact size (then it is in memory already,
    /// `small::coalesce`), else as it is.
    pub(super) async fn of(body: Body) -> Result<Self, String> {
        match body.size_hint().exact() {
            Some(0) => Ok(Self::Whole(Bytes::new())),
            Some(n) if n <= SMALL_BODY => body
                .collect()
                .await
                .map(|collected| Self::Whole(collected.to_bytes()))
                .map_err(|e| format!("reading the request body: {e}")),
            _ => Ok(Self::Stream(body)),
        }
    }

    fn into_body(self) -> Body {
        match self {
            Self::Whole(bytes) => Body::from(bytes),
            Self::Stream(body) => body,
        }
    }
}

/// Why [`exchange`] failed: the other side did not process the request, or it may have.
pub(super) enum Exchange {
    /// The stream did not open (the connection was closing, nothing of the request left),
    /// or the other side refused it unprocessed, as HTTP/2 lets a server say (RFC 9113,
    /// 8.7): a `REFUSED_STREAM` reset, or a GOAWAY whose last stream is below this one.
    Unprocessed(h2::Error),
    Failed(h2::Error),
}

/// Whether `error`, a stream's, says the other side refused the stream before processing
/// it. h2 gives a stream the error of a GOAWAY only when the stream is above the GOAWAY's
/// last stream id; a GOAWAY's error reaches the streams below it as a broken connection.
fn unprocessed(error: &h2::Error) -> bool {
    error.is_remote() && (error.is_go_away() || error.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// A failed answer, told apart as [`Exchange`] does.
fn answer_failed(error: h2::Error) -> Exchange {
    if unprocessed(&error) {
        Exchange::Unprocessed(error)
    } else {
        Exchange::Failed(error)
    }
}

/// Sends `head` and `body` on a new stream of `sender` (ready for one), and waits for the
/// answer's head, its body streaming on. A whole body leaves in the same write as its
/// HEADERS, so the other side wakes once; a stream whose answer fails is reset.
pub(super) async fn exchange(
    sender: &mut SendRequest<Bytes>,
    head: Request<()>,
    body: Outgoing,
) -> Result<Response<Body>, Exchange> {
    use Exchange::{Failed, Unprocessed};
    let (response, mut stream) = match body {
        Outgoing::Whole(bytes) if bytes.is_empty() => {
            sender.send_request(head, true).map_err(Unprocessed)?
        }
        Outgoing::Whole(bytes) => {
            let (response, mut stream) = sender.send_request(head, false).map_err(Unprocessed)?;
            if let Err(error) = stream.send_data(bytes, true) {
                // The stream already ended, as a refused one can before its data leaves:
                // its answer, at hand now, says why.
                return Err(match response.await {
                    Err(answer) => answer_failed(answer),
                    Ok(_) => Failed(error),
                });
            }
            (response, stream)
        }
        Outgoing::Stream(body) => {
            let (response, stream) = sender.send_request(head, false).map_err(Unprocessed)?;
            tokio::spawn(pipe_body(body, stream));
            return finish(response.await).map_err(answer_failed);
        }
    };
    let result = response.await;
    if result.is_err() {
        stream.send_reset(h2::Reason::CANCEL);
    }
    finish(result).map_err(answer_failed)
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
pub(super) fn check_peer(
    addr: SocketAddr,
    peer: Option<&AppRef>,
    target: &AppRef,
) -> Result<(), String> {
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
        let (transport, peer) = dial(addr, tls, Alpn::H2).await.map_err(String::from)?;
        let sender = match transport {
            Transport::Plain(io) => handshake(addr, io, keepalive).await?,
            Transport::Tls(io) => handshake(addr, *io, keepalive).await?,
        };
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let authority = http::uri::Authority::try_from(addr.to_string())
            .map_err(|e| format!("the peer address {addr}: {e}"))?;
        Ok(Pooled {
            sender,
            authority,
            peer,
            id,
        })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, setup)
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
}

/// A socket to a peer sidecar, with TLS when mTLS is on.
pub(super) enum Transport {
    Plain(tokio::net::TcpStream),
    Tls(Box<trellis_mtls::ClientTlsStream<tokio::net::TcpStream>>),
}

/// The protocol a connection is for, offered by TLS's ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alpn {
    H2,
    Http1,
}

/// Why [`dial`] failed.
pub(super) enum DialError {
    /// The peer's TLS refused the protocol (an HTTP/1.1 connection to a sidecar that speaks
    /// only HTTP/2 on its internal port).
    Protocol(String),
    Other(String),
}

impl From<DialError> for String {
    fn from(e: DialError) -> String {
        match e {
            DialError::Protocol(s) | DialError::Other(s) => s,
        }
    }
}

/// Connects to the sidecar at `addr` (with mTLS: completes the handshake and reads which
/// app the peer proved to be, which must be in this sidecar's trust domain). No timeout of
/// its own: callers bound the whole setup.
pub(super) async fn dial(
    addr: SocketAddr,
    tls: Option<&PeerTls>,
    alpn: Alpn,
) -> Result<(Transport, Option<AppRef>), DialError> {
    let other = DialError::Other;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| other(format!("connecting to {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok((Transport::Plain(stream), None));
    };
    let server_name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let connecting = match alpn {
        Alpn::H2 => tls.connector.connect(server_name, stream),
        Alpn::Http1 => tls
            .connector
            .with_alpn(vec![b"http/1.1".to_vec()])
            .connect(server_name, stream),
    };
    let stream = connecting.await.map_err(|e| {
        let text = format!("tls handshake with {addr}: {e}");
        let refused = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<trellis_mtls::rustls::Error>())
            .is_some_and(|e| {
                *e == trellis_mtls::rustls::Error::AlertReceived(
                    trellis_mtls::rustls::AlertDescription::NoApplicationProtocol,
                )
            });
        if refused {
            DialError::Protocol(text)
        } else {
            other(text)
        }
    })?;
    let id = trellis_mtls::tls::peer_id(stream.get_ref().1.peer_certificates())
        .map_err(|e| other(format!("tls handshake with {addr}: {e}")))?;
    if id.trust_domain != tls.trust_domain {
        return Err(other(format!(
            "the sidecar at {addr} is in trust domain {:?}, not {:?}",
            id.trust_domain, tls.trust_domain
        )));
    }
    let peer = AppRef::new(id.app_id, id.namespace).map_err(|e| {
        other(format!(
            "the sidecar at {addr} has an invalid identity: {e}"
        ))
    })?;
    Ok((Transport::Tls(Box::new(stream)), Some(peer)))
}

/// The HTTP/2 handshake over `io` (plain TCP or TLS), and the connection's task.
pub(super) async fn handshake<I, A>(
    addr: A,
    io: I,
    keepalive: Keepalive,
) -> Result<SendRequest<Bytes>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: std::fmt::Display + Send + 'static,
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
