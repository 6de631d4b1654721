//! Small bodies travel whole.
//!
//! A body that declares a small `Content-Length` is read completely before it is forwarded.
//! It usually arrived in the same read as its headers, so this costs no waiting, and it lets
//! the next hop write headers and body in one syscall (HTTP/1.1) or one flush (HTTP/2
//! HEADERS + DATA with END_STREAM) instead of two, saving a wake-up on both ends of every
//! hop.
//!
//! A body without a length (gRPC messages, chunked uploads) is taken whole too when all of
//! it is here already: its frames are read for as long as they are ready, without waiting.
//! A unary gRPC call's one DATA frame comes with its HEADERS, so it travels whole like a
//! small body. Whatever is not complete at once (a stream, a slow upload, a large body, a
//! body with trailers) streams on unchanged: the frames read so far first, then the rest as
//! it comes. A gRPC answer, which always ends with trailers, is not read ahead at all.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body::Frame;
use http_body_util::BodyExt as _;

use crate::Body;

/// Bodies up to this size are read whole: a few TCP segments at most.
pub const SMALL_BODY: u64 = 16 * 1024;

pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The declared length, if it is small enough to read whole. Never for gRPC, whose
/// trailers (the call's status) a collected body would lose.
pub fn small_length(headers: &HeaderMap) -> Option<u64> {
    if is_grpc(headers) {
        return None;
    }
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|len| *len <= SMALL_BODY)
}

/// Reads a small body whole, and any other body whole when all of it is here already (see
/// the module docs); the rest are returned as they are.
pub async fn coalesce<B>(headers: &HeaderMap, body: B) -> Result<Body, B::Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    match small_length(headers) {
        Some(0) => Ok(Body::empty()),
        Some(_) => Ok(Body::from(body.collect().await?.to_bytes())),
        None if body.size_hint().exact().is_some_and(|n| n > SMALL_BODY) => Ok(Body::new(body)),
        None => take_if_here(body),
    }
}

/// As [`coalesce`], for an answer. A gRPC answer always ends with trailers (its status), so
/// it could never be taken whole: it streams on as it is, with nothing read ahead.
pub async fn coalesce_answer<B>(headers: &HeaderMap, body: B) -> Result<Body, B::Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    if is_grpc(headers) {
        return Ok(Body::new(body));
    }
    coalesce(headers, body).await
}

/// The body whole when it ends within the frames that are ready now (no trailers, at most
/// [`SMALL_BODY`] bytes); otherwise the frames read so far followed by the rest of it.
fn take_if_here<B>(mut body: B) -> Result<Body, B::Error>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0usize;
    loop {
        // Polled once, without a waker that matters: the body keeps what it has, and the
        // next poll (by whoever streams it) registers the real one.
        match body.frame().now_or_never() {
            // Everything read is data (trailers stop the reading); one frame, the usual
            // case, is the body as it is, without a copy.
            Some(None) if read.len() == 1 => {
                let data = read.pop_front().and_then(|f| f.into_data().ok());
                return Ok(Body::from(data.unwrap_or_default()));
            }
            Some(None) => {
                let mut whole = BytesMut::with_capacity(len);
                for data in read.into_iter().filter_map(|f| f.into_data().ok()) {
                    whole.extend_from_slice(&data);
                }
                return Ok(Body::from(whole.freeze()));
            }
            Some(Some(Ok(frame))) if frame.data_ref().is_some_and(Bytes::is_empty) => {}
            Some(Some(Ok(frame))) => {
                let trailers = frame.is_trailers();
                len += frame.data_ref().map_or(0, Bytes::len);
                read.push_back(frame);
                if trailers || len as u64 > SMALL_BODY {
                    break;
                }
            }
            Some(Some(Err(e))) => return Err(e),
            None => break,
        }
    }
    if read.is_empty() {
        return Ok(Body::new(body));
    }
    Ok(Body::new(Prefixed { read, rest: body }))
}

/// The frames already read from `rest`, then `rest` itself. It ends exactly when `rest`
/// does: an HTTP/2 sender puts END_STREAM on the last DATA frame only when the body says
/// it has ended, and otherwise sends an empty DATA frame to end the stream, which servers
/// count against the peer (h2 closes the connection after 100 of them).
struct Prefixed<B> {
    read: VecDeque<Frame<Bytes>>,
    rest: B,
}

impl<B> http_body::Body for Prefixed<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.read.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::StreamBody;

    type Sent = Result<Frame<Bytes>, std::io::Error>;

    /// A body fed from a channel: frames sent before the read are "here", later ones are not.
    fn fed() -> (
        tokio::sync::mpsc::UnboundedSender<Sent>,
        StreamBody<impl futures_util::Stream<Item = Sent> + Unpin>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        (tx, StreamBody::new(Box::pin(stream)))
    }

    fn data(text: &'static str) -> Sent {
        Ok(Frame::data(Bytes::from_static(text.as_bytes())))
    }

    #[tokio::test]
    async fn a_body_that_is_all_here_becomes_one_piece() {
        let (tx, body) = fed();
        tx.send(data("hel")).unwrap();
        tx.send(data("lo")).unwrap();
        drop(tx);
        let body = coalesce(&HeaderMap::new(), body).await.unwrap();
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_body_still_arriving_streams_on_with_nothing_lost() {
        let (tx, body) = fed();
        tx.send(data("first ")).unwrap();
        let body = coalesce(&HeaderMap::new(), body).await.unwrap();
        assert_eq!(
            body.size_hint().exact(),
            None,
            "not whole: more was to come"
        );
        tx.send(data("second")).unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "first second");
    }

    #[tokio::test]
    async fn trailers_are_kept() {
        let (tx, body) = fed();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.send(data("msg")).unwrap();
        tx.send(Ok(Frame::trailers(trailers))).unwrap();
        drop(tx);
        let collected = coalesce(&HeaderMap::new(), body)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let got = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .cloned();
        assert_eq!(got, Some(http::HeaderValue::from_static("0")));
        assert_eq!(collected.to_bytes(), "msg");
    }

    #[tokio::test]
    async fn a_grpc_answer_is_not_read_ahead() {
        let (tx, body) = fed();
        tx.send(data("msg")).unwrap();
        drop(tx);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        let body = coalesce_answer(&headers, body).await.unwrap();
        assert_eq!(body.size_hint().exact(), None, "streamed as it is");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "msg");
    }

    #[tokio::test]
    async fn a_large_body_is_not_held() {
        let (tx, body) = fed();
        let big = vec![b'x'; usize::try_from(SMALL_BODY).unwrap() + 1];
        tx.send(Ok(Frame::data(Bytes::from(big)))).unwrap();
        drop(tx);
        let body = coalesce(&HeaderMap::new(), body).await.unwrap();
        assert_eq!(body.size_hint().exact(), None);
        assert_eq!(
            body.collect().await.unwrap().to_bytes().len() as u64,
            SMALL_BODY + 1
        );
    }

    #[tokio::test]
    async fn an_error_already_here_is_reported() {
        let (tx, body) = fed();
        tx.send(Err(std::io::Error::other("reset"))).unwrap();
        assert!(coalesce(&HeaderMap::new(), body).await.is_err());
    }
}
