//! Closures as writer jobs: the shortest way for an embedded store to run each of its
//! operations on the group-commit writer ([`crate::writer`]).
//!
//! A store whose operations are "run this on the writer's connection, inside its
//! transaction, and answer me once it has committed" need not define a job enum, an answer
//! enum and a [`Backend`] matching over both: it starts a [`Calls`] with the state its
//! operations share (prepared SQL, the batch's clock) and sends closures with
//! [`Calls::call`]. Each closure runs in a savepoint of its own, so a failing one is undone
//! alone; its answer is sent only after the transaction commits, or replaced by the
//! reason it did not. Stores with hot paths that batch specially (the state store's sets,
//! the broker's publishes) keep a [`Backend`] of their own.

use std::fmt;
use std::marker::PhantomData;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::writer::{self, Backend, Options, StartError};

/// What a store's operations share on the writer thread.
pub trait Shared: Send + 'static {
    /// Called at the start of each transaction, before its first closure (e.g. to read
    /// the clock once per batch). An error fails every closure of the batch with it.
    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
        let _ = conn;
        Ok(())
    }

    /// Called after the transaction's last closure, before it commits, when nothing failed
    /// it (e.g. to write a counter the closures advanced). An error fails every closure of
    /// the batch with it.
    fn finish(&mut self, conn: &Connection) -> Result<(), String> {
        let _ = conn;
        Ok(())
    }
}

/// The writer failed a call: it stopped, gave no answer in time, or its transaction did
/// not commit. Stores turn it into their own error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CallFailed(pub String);

/// A running writer taking closures over `S`, answering `Result<_, E>`.
pub struct Calls<S, E> {
    writes: mpsc::Sender<Box<dyn Task<S, E>>>,
    timeout: Duration,
}

impl<S, E> Clone for Calls<S, E> {
    fn clone(&self) -> Self {
        Calls {
            writes: self.writes.clone(),
            timeout: self.timeout,
        }
    }
}

impl<S, E> fmt::Debug for Calls<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calls")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<S, E> Calls<S, E>
where
    S: Shared,
    E: From<CallFailed> + fmt::Display + Send + 'static,
{
    /// Starts the writer thread on `conn` with `shared`; each call waits at most
    /// `timeout` for its answer. The thread stops when every clone is dropped.
    pub fn start(
        conn: Connection,
        shared: S,
        options: Options,
        timeout: Duration,
    ) -> Result<Self, StartError> {
        let writes = writer::start(
            conn,
            Runner {
                shared,
                errors: PhantomData,
            },
            options,
        )?;
        Ok(Calls { writes, timeout })
    }

    /// Runs `f` in the writer's next transaction and answers its result once that
    /// transaction committed. `durable`: whether what `f` writes must survive a power cut
    /// (the batch then commits with an fsync); a read-only call says no, and is skipped if
    /// its caller stopped waiting.
    pub async fn call<T, F>(&self, durable: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut S) -> Result<T, E> + Send + 'static,
    {
        let stopped = || E::from(CallFailed("sqlite writer has stopped".into()));
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Box::new(Op { f, reply, durable }))
            .map_err(|_| stopped())?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(E::from(CallFailed(format!(
                "sqlite: no answer within {:?}",
                self.timeout
            )))),
        }
    }
}

/// One queued closure, type-erased so that one writer takes closures of every result type.
trait Task<S, E>: Send {
    fn apply(self: Box<Self>, conn: &Connection, shared: &mut S) -> Box<dyn Done<E>>;
    fn reject(self: Box<Self>, reason: &str);
    fn closed(&self) -> bool;
    fn durable(&self) -> bool;
}

/// An applied closure's answer, held until its transaction's fate is known.
trait Done<E>: Send {
    fn error(&self) -> Option<&dyn fmt::Display>;
    fn send(self: Box<Self>, failure: Option<&str>);
}

struct Op<T, E, F> {
    f: F,
    reply: oneshot::Sender<Result<T, E>>,
    durable: bool,
}

struct Answered<T, E> {
    reply: oneshot::Sender<Result<T, E>>,
    result: Result<T, E>,
}

impl<S, T, E, F> Task<S, E> for Op<T, E, F>
where
    T: Send + 'static,
    E: From<CallFailed> + fmt::Display + Send + 'static,
    F: FnOnce(&Connection, &mut S) -> Result<T, E> + Send,
{
    fn apply(self: Box<Self>, conn: &Connection, shared: &mut S) -> Box<dyn Done<E>> {
        // A bug in one closure fails that call alone; unwinding through the writer would
        // end the thread and with it every later call of the store.
        let f = self.f;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn, shared)))
            .unwrap_or_else(|_| Err(CallFailed("sqlite call panicked".into()).into()));
        Box::new(Answered {
            reply: self.reply,
            result,
        })
    }

    fn reject(self: Box<Self>, reason: &str) {
        let _ = self.reply.send(Err(CallFailed(reason.to_string()).into()));
    }

    fn closed(&self) -> bool {
        self.reply.is_closed()
    }

    fn durable(&self) -> bool {
        self.durable
    }
}

impl<T, E> Done<E> for Answered<T, E>
where
    T: Send,
    E: From<CallFailed> + fmt::Display + Send,
{
    fn error(&self) -> Option<&dyn fmt::Display> {
        self.result.as_ref().err().map(|e| e as &dyn fmt::Display)
    }

    fn send(self: Box<Self>, failure: Option<&str>) {
        let result = match failure {
            Some(reason) => Err(CallFailed(reason.to_string()).into()),
            None => self.result,
        };
        let _ = self.reply.send(result);
    }
}

/// The writer's side: applies each closure to the shared state.
struct Runner<S, E> {
    shared: S,
    errors: PhantomData<fn() -> E>,
}

impl<S, E> Backend for Runner<S, E>
where
    S: Shared,
    E: From<CallFailed> + fmt::Display + Send + 'static,
{
    type Job = Box<dyn Task<S, E>>;
    type Answer = Box<dyn Done<E>>;

    fn apply(&mut self, conn: &Connection, job: Self::Job) -> Self::Answer {
        job.apply(conn, &mut self.shared)
    }

    fn error<'a>(&self, answer: &'a Self::Answer) -> Option<&'a dyn fmt::Display> {
        answer.error()
    }

    fn send(&mut self, answer: Self::Answer, failure: Option<&str>) {
        answer.send(failure);
    }

    fn reject(&mut self, job: Self::Job, reason: &str) {
        job.reject(reason);
    }

    fn durable(&self, job: &Self::Job) -> bool {
        job.durable()
    }

    /// A read nobody waits for has no point; a write is applied anyway, since its caller
    /// may have given up only on waiting.
    fn abandoned(&self, job: &Self::Job) -> bool {
        !job.durable() && job.closed()
    }

    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
        self.shared.begin(conn)
    }

    fn finish(&mut self, conn: &Connection) -> Result<(), String> {
        self.shared.finish(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("{0}")]
        Failed(String),
        #[error("refused: {0}")]
        Refused(&'static str),
    }

    impl From<CallFailed> for TestError {
        fn from(e: CallFailed) -> Self {
            TestError::Failed(e.0)
        }
    }

    struct Batches(u32);

    impl Shared for Batches {
        fn begin(&mut self, _: &Connection) -> Result<(), String> {
            self.0 += 1;
            Ok(())
        }
    }

    fn calls() -> Calls<Batches, TestError> {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
            .expect("table");
        let options = Options::new("calls-test", Duration::from_secs(1));
        Calls::start(conn, Batches(0), options, Duration::from_secs(5)).expect("writer")
    }

    fn count(conn: &Connection) -> Result<i64, TestError> {
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .map_err(|e| TestError::Failed(e.to_string()))
    }

    #[tokio::test]
    async fn a_failing_call_is_undone_alone() {
        let calls = calls();
        let insert = |fail: bool| {
            calls.call(true, move |c: &Connection, _: &mut Batches| {
                c.execute("INSERT INTO t (v) VALUES (1)", [])
                    .map_err(|e| TestError::Failed(e.to_string()))?;
                if fail {
                    return Err(TestError::Refused("asked to"));
                }
                Ok(())
            })
        };
        let (ok, failed) = tokio::join!(insert(false), insert(true));
        assert!(ok.is_ok());
        assert!(matches!(failed, Err(TestError::Refused("asked to"))));
        let rows = calls.call(false, |c, _| count(c)).await.expect("count");
        assert_eq!(
            rows, 1,
            "the failed call's insert was rolled back, the other kept"
        );
        let batches = calls.call(false, |_, b| Ok(b.0)).await.expect("batches");
        assert!(batches >= 2, "begin ran once per transaction: {batches}");
    }

    #[tokio::test]
    async fn a_panicking_call_fails_alone_and_the_writer_goes_on() {
        let calls = calls();
        let panicked = calls
            .call(true, |c, _| -> Result<(), TestError> {
                c.execute("INSERT INTO t (v) VALUES (1)", [])
                    .map_err(|e| TestError::Failed(e.to_string()))?;
                panic!("boom")
            })
            .await;
        assert!(
            matches!(&panicked, Err(TestError::Failed(m)) if m.contains("panicked")),
            "{panicked:?}"
        );
        let rows = calls.call(false, |c, _| count(c)).await.expect("count");
        assert_eq!(rows, 0, "the panicking call's insert was rolled back");
    }
}
