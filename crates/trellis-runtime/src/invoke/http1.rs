//! What the two HTTP/1.1 connection pools share: opening a connection over a socket, and a
//! response body that hands its connection back when it ends.
//!
//! Two pools keep HTTP/1.1 connections: one to other sidecars for small unary calls
//! ([`super::unary`]), one to this sidecar's own app ([`super::app_pool`]). An HTTP/1.1
//! connection carries one call at a time, and can carry the next only once the answer has
//! been read to its end; [`ReturningBody`] is where both pools learn that.

use std::fmt::Display;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::Body;

/// Where a connection goes once its answer has been read to the end.
pub(super) trait GiveBack: Send + Unpin + 'static {
    fn give_back(self);
}

/// The HTTP/1.1 handshake over `io` (plain TCP or TLS) and the connection's task, which
/// holds `guard` for as long as the connection lives (a pool's count of open connections).
pub(super) async fn handshake<I, G>(
    addr: impl Display + Send + 'static,
    io: I,
    guard: G,
) -> Result<SendRequest<Body>, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http/1.1 handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(error) = conn.await {
            tracing::debug!(%addr, %error, "http/1.1 connection closed");
        }
    });
    Ok(sender)
}

/// A response body that gives its connection back when it ends. Dropped before its end, it
/// takes the connection with it: hyper closes a connection whose answer was not read, as it
/// cannot carry another.
pub(super) struct ReturningBody<R: GiveBack> {
    body: hyper::body::Incoming,
    back: Option<R>,
}

impl<R: GiveBack> ReturningBody<R> {
    /// `body` as a [`Body`] that gives `back` its connection once read to the end.
    pub(super) fn wrap(body: hyper::body::Incoming, back: R) -> Body {
        let mut body = Self {
            body,
            back: Some(back),
        };
        // An empty answer may never be polled.
        if body.body.is_end_stream() {
            body.release();
        }
        Body::new(body)
    }

    fn release(&mut self) {
        if let Some(back) = self.back.take() {
            back.give_back();
        }
    }
}

impl<R: GiveBack> http_body::Body for ReturningBody<R> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
