//! A request body that fails once it grows past the API's size limit, and remembers that it
//! did.
//!
//! The failure has to be recognisable after the fact: when the body is being forwarded over
//! HTTP/2, hyper turns a body error into a stream reset and the original error does not come
//! back with the failed request. The shared flag survives that.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::Body;

/// The error a [`LimitedBody`] yields when the limit is crossed.
#[derive(Debug, thiserror::Error)]
#[error("stream too large")]
pub struct BodyTooLarge;

pin_project_lite::pin_project! {
    pub struct LimitedBody {
        #[pin]
        inner: Body,
        remaining: usize,
        exceeded: Arc<AtomicBool>,
    }
}

impl LimitedBody {
    /// Wraps `inner`; the returned flag turns true if the body went over `limit` bytes.
    pub fn new(inner: Body, limit: usize) -> (Self, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = Self {
            inner,
            remaining: limit,
            exceeded: exceeded.clone(),
        };
        (body, exceeded)
    }
}

impl http_body::Body for LimitedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > *this.remaining {
                        this.exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(axum::Error::new(BodyTooLarge))));
                    }
                    *this.remaining -= data.len();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn fails_past_the_limit_and_says_so() {
        let (body, exceeded) = LimitedBody::new(Body::from(vec![0u8; 10]), 5);
        assert!(body.collect().await.is_err());
        assert!(exceeded.load(Ordering::Acquire));
        let (body, exceeded) = LimitedBody::new(Body::from(vec![0u8; 5]), 5);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 5);
        assert!(!exceeded.load(Ordering::Acquire));
    }
}
