//! One multiplexed HTTP/2 connection from a sidecar to its own app: the transport of h2c
//! apps (`--app-protocol h2c`) and gRPC apps (`--app-protocol grpc`, under tonic's codec).
//!
//! It sits on the `h2` crate, as the connection to other sidecars does ([`super::peers`]),
//! and for the same reasons. A client from hyper or tonic costs a gRPC app's sidecar more
//! on every call than it pays for: tonic's `Channel` queues each request for a worker task
//! of its own (one more task hand-off per call, each way) under five layers of its own, and
//! hyper's client hands each request to its connection task and the body to a task of its
//! own, so headers and a one-message body leave in two writes. Here the caller's task
//! opens the stream itself, and a body that is whole leaves with its HEADERS in one write
//! (docs/benchmarks.md, "The gRPC path").
//!
//! * **Not reached is explicit.** Connecting, the handshake and waiting for the connection
//!   to take a new stream happen before anything of the request is handed over; a failure
//!   there is [`SendError::NotReached`], and so is a stream the app refused unprocessed
//!   (`REFUSED_STREAM`, or above the last stream of its GOAWAY: an app that stops without
//!   HTTP/2's two-phase GOAWAY refuses the calls that crossed it).
//! * **A dead connection is replaced.** The connection pings the app every
//!   [`Keepalive::interval`]; one that goes unanswered, or that the app closed, fails the
//!   next `ready()`, and that call connects anew.
//! * **Streams both ways.** A body that is not whole is piped with flow control, and the
//!   answer streams back as it comes, trailers included; dropping the answer (the caller
//!   went away) resets the stream at the app.

use std::sync::Mutex;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};

use super::app_pool::{CONNECT_TIMEOUT, SendError};
use super::peers::{self, Exchange, Keepalive, Outgoing, exchange};
use crate::Body;

/// The connection to one app at `host:port`.
#[derive(Debug)]
pub struct AppH2 {
    host: String,
    port: u16,
    /// Every request's `:authority`.
    authority: http::uri::Authority,
    conn: Mutex<Option<Conn>>,
    /// One caller at a time connects, so a burst of first calls shares one connection.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Conn {
    sender: SendRequest<Bytes>,
    /// Tells this connection from one that later took its place.
    id: u64,
}

/// Source of [`Conn::id`].
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl AppH2 {
    /// A connection to `host:port`, opened on the first call; `authority` is that address
    /// as a URI authority.
    pub fn new(host: &str, port: u16, authority: http::uri::Authority) -> Self {
        Self {
            host: host.to_owned(),
            port,
            authority,
            conn: Mutex::default(),
            connecting: tokio::sync::Mutex::const_new(()),
        }
    }

    /// Sends `req` (an origin-form URI: the path and query) to the app; the answer's head,
    /// its body streaming on.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, SendError> {
        let mut sender = self.ready().await.map_err(SendError::NotReached)?;
        let (mut parts, body) = req.into_parts();
        parts.uri = peers::absolute(&self.authority, &parts.uri);
        parts.version = http::Version::HTTP_2;
        // h2 carries the authority in the URI; a Host header would be a second one.
        parts.headers.remove(http::header::HOST);
        let body = Outgoing::of(body).await.map_err(SendError::NotReached)?;
        let head = Request::from_parts(parts, ());
        exchange(&mut sender, head, body)
            .await
            .map_err(|e| match e {
                // The stream did not open (the connection was closing, nothing was sent), or
                // the app refused it unprocessed: either way the call may be sent again.
                Exchange::Unprocessed(e) => {
                    SendError::NotReached(format!("the call was not taken: {e}"))
                }
                Exchange::Failed(e) => SendError::Failed(e.to_string()),
            })
    }

    /// The connection, once it takes a new stream; connects if there is none or the one
    /// there has gone away. `Err` says why the app could not be reached.
    async fn ready(&self) -> Result<SendRequest<Bytes>, String> {
        if let Some(sender) = self.current_ready().await {
            return Ok(sender);
        }
        let _turn = self.connecting.lock().await;
        // Whoever had the turn before may have connected already.
        if let Some(sender) = self.current_ready().await {
            return Ok(sender);
        }
        let address = format!("{}:{}", self.host, self.port);
        let setup = async {
            let io = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("connecting to {address}: {e}"))?;
            let _ = io.set_nodelay(true);
            peers::handshake(address.clone(), io, Keepalive::default()).await
        };
        let sender = tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| format!("connecting to {address} timed out"))??;
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.lock() = Some(Conn {
            sender: sender.clone(),
            id,
        });
        sender
            .ready()
            .await
            .map_err(|e| format!("the app at {address} refused a new stream: {e}"))
    }

    /// The current connection once it takes a new stream; `None` if there is none or it
    /// has gone away (it is then forgotten).
    async fn current_ready(&self) -> Option<SendRequest<Bytes>> {
        let conn = self.lock().clone()?;
        match conn.sender.ready().await {
            Ok(sender) => Some(sender),
            Err(error) => {
                tracing::debug!(host = %self.host, port = self.port, %error, "app connection is gone; reconnecting");
                let mut current = self.lock();
                // Only this one: another caller may have put a new one in its place.
                if current.as_ref().is_some_and(|c| c.id == conn.id) {
                    *current = None;
                }
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Conn>> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}
