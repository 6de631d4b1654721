//! Running a whole connection, its HTTP/2 streams included, on one task, and sending what
//! one turn of that task wrote in one write.
//!
//! hyper spawns every HTTP/2 stream as a task of its own. A unary call then crosses tasks
//! twice: the connection's task reads the request and wakes the stream's, which answers and
//! wakes the connection's again to write the answer. [`StreamExec`] is the executor hyper
//! gets instead: a stream spawned while a [`Driver`] polls its connection joins that
//! driver's set of streams, which the driver polls on the same task, right after the
//! connection, so an answer that is ready at once leaves in the same turn. This is the
//! model of Envoy and nginx (a connection and its streams on one worker); what it gives up
//! is spreading one connection's streams over cores, which only pays for streams that
//! compute for long, and the sidecar's do not.
//!
//! h2 writes a gRPC answer of 256 bytes or more in two writes: HEADERS and DATA, then the
//! trailers alone, because it writes a large DATA frame straight from its buffer and takes
//! no frame behind it until that write is done. The peer is woken twice and reads twice.
//! [`Coalesced`] keeps what the connection writes and the driver writes it out once, when
//! its turn ends, so the answer leaves in one write.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker, ready};

use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream's task, as the driver keeps it.
type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// Whether a driver is polling its connection on this thread, and the streams hyper
    /// spawned meanwhile.
    static POLLING: Cell<bool> = const { Cell::new(false) };
    static SPAWNED: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
}

/// The executor hyper's HTTP/2 server gets: see the module docs. Outside a driver's poll of
/// its connection (hyper spawns nothing there today) it spawns a task, as before.
#[derive(Clone, Copy, Debug, Default)]
pub struct StreamExec;

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        if POLLING.get() {
            // A panic in one stream must not end the connection's others (the stream is
            // dropped, which resets it).
            let stream = AssertUnwindSafe(stream).catch_unwind().map(drop);
            SPAWNED.with_borrow_mut(|spawned| spawned.push(Box::pin(stream)));
        } else {
            tokio::spawn(stream);
        }
    }
}

/// Marks this thread as polling a connection while it lives, even if the poll panics.
struct Polling;

impl Polling {
    fn start() -> Self {
        POLLING.set(true);
        Polling
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.set(false);
        if std::thread::panicking() {
            // The streams of a connection whose poll panicked go with it, not to the next
            // connection polled on this thread.
            drop(SPAWNED.take());
        }
    }
}

/// Drives one connection and its streams on the task that polls it, and writes out what
/// they wrote when each turn ends. Ends when the connection has ended and its streams have.
pub struct Driver<C: Future, I> {
    conn: Pin<Box<C>>,
    turn: Arc<Turn>,
    conn_waker: Waker,
    ended: Option<C::Output>,
    streams: FuturesUnordered<Stream>,
    out: Arc<Mutex<Held<I>>>,
}

impl<C: Future, I> Driver<C, I> {
    /// Wraps `io` for the connection `conn` makes of it.
    pub fn new(io: I, conn: impl FnOnce(Coalesced<I>) -> C) -> Self {
        let out = Arc::new(Mutex::new(Held {
            io,
            buf: Vec::new(),
            broken: None,
        }));
        let turn = Arc::new(Turn {
            task: AtomicWaker::new(),
            in_turn: AtomicBool::new(false),
            // The first turn polls the connection.
            woken: AtomicBool::new(true),
        });
        Self {
            conn: Box::pin(conn(Coalesced(out.clone()))),
            conn_waker: Waker::from(turn.clone()),
            turn,
            ended: None,
            streams: FuturesUnordered::new(),
            out,
        }
    }
}

// The connection is pinned in its box; nothing else is ever pinned.
impl<C: Future, I> Unpin for Driver<C, I> {}

impl<C: Future, I: AsyncWrite + Unpin> Future for Driver<C, I> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        this.turn.task.register(cx.waker());
        this.turn.in_turn.store(true, Ordering::SeqCst);
        let mut conn_cx = Context::from_waker(&this.conn_waker);
        // The connection is polled only when it was woken (or a stream finished, which
        // leaves frames to write): a turn for a stream's wake need not read the socket.
        let mut conn_due = this.turn.woken.swap(false, Ordering::SeqCst);
        for _ in 0..TURNS {
            if conn_due && this.ended.is_none() {
                let polled = {
                    let _polling = Polling::start();
                    this.conn.as_mut().poll(&mut conn_cx)
                };
                if let Poll::Ready(output) = polled {
                    this.ended = Some(output);
                }
                SPAWNED.with_borrow_mut(|spawned| this.streams.extend(spawned.drain(..)));
            }
            // A stream that finished, or queued frames (which woke the connection), has
            // left the connection something to write, on its next poll in this turn.
            let mut finished = false;
            while !this.streams.is_empty()
                && let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx)
            {
                finished = true;
            }
            conn_due = this.turn.woken.swap(false, Ordering::SeqCst) || finished;
            if !conn_due || this.ended.is_some() {
                break;
            }
        }
        this.turn.in_turn.store(false, Ordering::SeqCst);
        // A wake the turn held back and did not act on (its last lap was cut short, or the
        // wake came after the last look) gets another turn, which polls the connection.
        if this.ended.is_none() && (conn_due || this.turn.woken.load(Ordering::SeqCst)) {
            this.turn.woken.store(true, Ordering::SeqCst);
            cx.waker().wake_by_ref();
        }
        // Whatever this turn wrote leaves now, in one write. If the socket is full, the
        // connection's waker is the one to wake when it drains: a socket keeps one waker for
        // writing, and the connection may be waiting on it too (for room to write more).
        let drained = lock(&this.out).poll_end_turn(&mut conn_cx);
        if this.ended.is_some() && this.streams.is_empty() {
            let _ = ready!(drained);
            if let Some(output) = this.ended.take() {
                return Poll::Ready(output);
            }
        }
        Poll::Pending
    }
}

/// The most laps of connection and streams one turn takes before it lets other tasks run.
const TURNS: usize = 8;

/// The waker the connection gets. While the driver's turn runs, a wake only marks that the
/// connection wants another poll, which the turn gives it: without this, each frame a
/// stream queued would schedule the task again, for a poll that finds nothing to do.
struct Turn {
    task: AtomicWaker,
    in_turn: AtomicBool,
    woken: AtomicBool,
}

impl Wake for Turn {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Both sides write their flag before they read the other's (SeqCst), so a wake that
        // comes as the turn ends is seen by one of them.
        self.woken.store(true, Ordering::SeqCst);
        if !self.in_turn.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// A connection's socket (or TLS stream) as hyper sees it: writes are kept until the
/// driver's turn ends (see the module docs), up to [`HELD`] bytes.
pub struct Coalesced<I>(Arc<Mutex<Held<I>>>);

/// The most a connection keeps unwritten: past it, a write first writes out what is held,
/// and a write this large goes straight through, so a streamed body is not copied.
const HELD: usize = 64 * 1024;

/// The most room a connection keeps allocated once all it held is written. A turn that
/// wrote more (a burst of answers, a large one) gave its buffer back, so a sidecar holding
/// many gRPC connections does not keep each one's largest turn for as long as it lives.
const KEPT: usize = 16 * 1024;

struct Held<I> {
    io: I,
    buf: Vec<u8>,
    /// Why writing out failed: every later write fails the same way, so the connection
    /// ends instead of writing into a socket that takes nothing.
    broken: Option<io::ErrorKind>,
}

impl<I: AsyncWrite + Unpin> Held<I> {
    /// Writes out all that is held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.broken {
            return Poll::Ready(Err(kind.into()));
        }
        while !self.buf.is_empty() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf)) {
                Ok(n) if n > 0 => drop(self.buf.drain(..n)),
                written => {
                    let error = written
                        .err()
                        .unwrap_or_else(|| io::ErrorKind::WriteZero.into());
                    tracing::debug!(%error, "writing to a connection failed");
                    self.broken = Some(error.kind());
                    self.buf = Vec::new();
                    return Poll::Ready(Err(error));
                }
            }
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes out all that is held as a turn ends, then gives back a buffer grown past
    /// [`KEPT`] (not in the middle of a turn, where the next write would only take it again).
    fn poll_end_turn(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if self.buf.capacity() > KEPT {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: `Ready(true)` if they are to be kept, `Ready(false)`
    /// if they are to go straight through.
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if let Some(kind) = self.broken {
            return Poll::Ready(Err(kind.into()));
        }
        if self.buf.len() + len <= HELD {
            return Poll::Ready(Ok(true));
        }
        ready!(self.poll_drain(cx))?;
        Poll::Ready(Ok(len <= HELD))
    }
}

fn lock<I>(held: &Mutex<Held<I>>) -> MutexGuard<'_, Held<I>> {
    // Held bytes and a socket stay consistent whatever panicked while holding the lock.
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<I: AsyncRead + Unpin> AsyncRead for Coalesced<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.0).io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Coalesced<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = slices.iter().map(|s| s.len()).sum();
        let mut held = lock(&self.0);
        if ready!(held.poll_room(cx, len))? {
            for slice in slices {
                held.buf.extend_from_slice(slice);
            }
            Poll::Ready(Ok(len))
        } else {
            Pin::new(&mut held.io).poll_write_vectored(cx, slices)
        }
    }

    /// Vectored, so that h2 hands over a DATA frame with its head instead of copying it
    /// first (it copies frames under 1 KiB into its own buffer when writes are not).
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// The driver flushes when its turn ends.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.0).broken {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = lock(&self.0);
        ready!(held.poll_drain(cx))?;
        Pin::new(&mut held.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! In-memory connections (`tokio::io::duplex`): hyper's HTTP/2 server on a driver, and
    //! hyper's HTTP/2 client on the other end.

    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    /// Counts the writes that reach the peer.
    struct Counted<I> {
        io: I,
        writes: Arc<AtomicUsize>,
    }

    impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, data));
            self.writes.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(written)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            slices: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, slices));
            self.writes.fetch_add(1, Ordering::SeqCst);
            Poll::Ready(written)
        }

        /// As a socket is.
        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    type Answer = http::Response<
        StreamBody<
            futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
        >,
    >;

    /// Answers as a gRPC server does: a body, then trailers; `/panic` panics, `/task` names
    /// the task that answered, `/big` answers 1 MiB.
    async fn answer(req: http::Request<hyper::body::Incoming>) -> Result<Answer, Infallible> {
        let body = match req.uri().path() {
            "/panic" => panic!("this stream panics"),
            "/task" => Bytes::from(format!("{:?}", tokio::task::try_id())),
            "/big" => Bytes::from(vec![7u8; 1 << 20]),
            _ => Bytes::from(vec![1u8; 1024]),
        };
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames = vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
        Ok(http::Response::new(StreamBody::new(
            futures_util::stream::iter(frames),
        )))
    }

    struct Served {
        client: hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
        writes: Arc<AtomicUsize>,
        server: tokio::task::JoinHandle<()>,
    }

    /// A connection whose server side runs on a driver (or, if not `driven`, as hyper runs
    /// it), over a pipe of `pipe` bytes.
    async fn serve(driven: bool, pipe: usize) -> Served {
        let (near, far) = tokio::io::duplex(pipe);
        let writes = Arc::new(AtomicUsize::new(0));
        let io = Counted {
            io: far,
            writes: writes.clone(),
        };
        let service = hyper::service::service_fn(answer);
        let server = tokio::spawn(async move {
            let builder = hyper::server::conn::http2::Builder::new(StreamExec);
            if driven {
                let _ =
                    Driver::new(io, |io| builder.serve_connection(TokioIo::new(io), service)).await;
            } else {
                let _ = builder.serve_connection(TokioIo::new(io), service).await;
            }
        });
        let (client, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(near))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        Served {
            client,
            writes,
            server,
        }
    }

    async fn call(
        client: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
        path: &str,
    ) -> Result<(Bytes, Option<http::HeaderMap>), hyper::Error> {
        let req = http::Request::post(format!("http://test{path}"))
            .body(http_body_util::Empty::new())
            .expect("request");
        let collected = client
            .send_request(req)
            .await?
            .into_body()
            .collect()
            .await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    #[tokio::test]
    async fn an_answer_and_its_trailers_leave_in_one_write() {
        for (driven, per_answer) in [(true, 1), (false, 2)] {
            let mut served = serve(driven, 1 << 20).await;
            call(&mut served.client, "/").await.expect("first call");
            for _ in 0..20 {
                let before = served.writes.load(Ordering::SeqCst);
                let (body, trailers) = call(&mut served.client, "/").await.expect("call");
                assert_eq!(body.len(), 1024);
                assert_eq!(trailers.expect("trailers")["grpc-status"], "0");
                // hyper alone writes the trailers apart: the check below sees the difference.
                assert_eq!(
                    served.writes.load(Ordering::SeqCst) - before,
                    per_answer,
                    "driven: {driven}"
                );
            }
            served.server.abort();
        }
    }

    #[tokio::test]
    async fn streams_run_on_their_connections_task() {
        for driven in [true, false] {
            let mut served = serve(driven, 1 << 16).await;
            let (body, _) = call(&mut served.client, "/task").await.expect("call");
            let connection = format!("{:?}", Some(served.server.id()));
            assert_eq!(
                body == connection.as_bytes(),
                driven,
                "{body:?} vs {connection}"
            );
            served.server.abort();
        }
    }

    #[tokio::test]
    async fn a_stream_that_panics_leaves_its_connection_serving() {
        let mut served = serve(true, 1 << 16).await;
        assert!(call(&mut served.client, "/panic").await.is_err());
        let (body, _) = call(&mut served.client, "/")
            .await
            .expect("the next call is answered");
        assert_eq!(body.len(), 1024);
        assert!(!served.server.is_finished());
        served.server.abort();
    }

    #[tokio::test]
    async fn answers_larger_than_what_is_held_arrive_whole_through_a_small_pipe() {
        let served = serve(true, 4096).await;
        let calls = (0..4).map(|_| {
            let mut client = served.client.clone();
            async move { call(&mut client, "/big").await }
        });
        // A driver that stops writing once the pipe is full hangs here: fail instead.
        let answers = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            futures_util::future::join_all(calls),
        );
        for result in answers.await.expect("all answers arrive") {
            let (body, trailers) = result.expect("call");
            assert_eq!(body.len(), 1 << 20);
            assert!(body.iter().all(|b| *b == 7));
            assert!(trailers.is_some());
        }
        served.server.abort();
    }

    #[test]
    fn a_large_turn_gives_its_buffer_back_once_written() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut held = Held {
            io: Vec::new(),
            buf: Vec::new(),
            broken: None,
        };
        held.buf.extend_from_slice(&[1; 1024]);
        assert!(matches!(held.poll_end_turn(&mut cx), Poll::Ready(Ok(()))));
        assert!(held.buf.capacity() >= 1024, "a small turn keeps its room");
        held.buf.extend_from_slice(&[2; 48 * 1024]);
        assert!(matches!(held.poll_drain(&mut cx), Poll::Ready(Ok(()))));
        assert!(
            held.buf.capacity() >= 48 * 1024,
            "a write in the middle of a turn keeps the room for the next"
        );
        held.buf.extend_from_slice(&[3; 1024]);
        assert!(matches!(held.poll_end_turn(&mut cx), Poll::Ready(Ok(()))));
        assert_eq!(held.buf.capacity(), 0);
        assert_eq!(held.io.len(), 50 * 1024, "everything held was written");
    }
}
