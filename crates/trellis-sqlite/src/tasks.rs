//! Closures as writer jobs: a backend whose operations are each "run this function in the
//! writer's transaction and send me its result" (the jobs store; the pattern the workflow
//! store uses too) queues them as boxed [`Task`]s to a [`TaskWriter`] and waits on a
//! [`TaskQueue`], instead of writing an enum of jobs and the answer plumbing for each.
//!
//! A task gets the connection and the backend's context `C` (its statements, the batch's
//! clock: whatever [`Context::begin`] refreshed when the batch began) and returns a
//! `Result<T, E>`; the caller gets it once the transaction committed, or the reason it did
//! not. Reads go through the writer as well, which keeps them consistent with the writes
//! queued before them.

use std::fmt;
use std::marker::PhantomData;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::writer::{Backend, Options, StartError};

/// What a task's error type must offer: a way to say the writer failed the task (its
/// batch did not commit, the writer stopped, no answer in time).
pub trait TaskError: fmt::Display + Send + 'static {
    fn writer(reason: String) -> Self;
}

/// The backend's shared state for a batch's tasks.
pub trait Context: Send + 'static {
    /// Called when a batch's transaction has begun (refresh the clock, say).
    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
        let _ = conn;
        Ok(())
    }
}

/// One queued operation.
pub trait Task<C>: Send {
    fn apply(self: Box<Self>, conn: &Connection, ctx: &C) -> Box<dyn Done>;
    fn reject(self: Box<Self>, reason: &str);
    fn closed(&self) -> bool;
    fn durable(&self) -> bool;
}

/// An applied operation's answer, held until its transaction's fate is known.
pub trait Done: Send {
    fn error(&self) -> Option<&dyn fmt::Display>;
    fn send(self: Box<Self>, failure: Option<&str>);
}

type Reply<T, E> = oneshot::Sender<Result<T, E>>;

struct Op<T, E, F> {
    f: F,
    reply: Reply<T, E>,
    durable: bool,
}

struct Answered<T, E> {
    reply: Reply<T, E>,
    result: Result<T, E>,
}

impl<C, T, E, F> Task<C> for Op<T, E, F>
where
    T: Send + 'static,
    E: TaskError,
    F: FnOnce(&Connection, &C) -> Result<T, E> + Send + 'static,
{
    fn apply(self: Box<Self>, conn: &Connection, ctx: &C) -> Box<dyn Done> {
        let result = (self.f)(conn, ctx);
        Box::new(Answered {
            reply: self.reply,
            result,
        })
    }

    fn reject(self: Box<Self>, reason: &str) {
        let _ = self.reply.send(Err(E::writer(reason.to_string())));
    }

    fn closed(&self) -> bool {
        self.reply.is_closed()
    }

    fn durable(&self) -> bool {
        self.durable
    }
}

impl<T: Send, E: TaskError> Done for Answered<T, E> {
    fn error(&self) -> Option<&dyn fmt::Display> {
        self.result.as_ref().err().map(|e| e as &dyn fmt::Display)
    }

    fn send(self: Box<Self>, failure: Option<&str>) {
        let result = match failure {
            Some(reason) => Err(E::writer(reason.to_string())),
            None => self.result,
        };
        let _ = self.reply.send(result);
    }
}

/// The writer-thread side: applies each task with the context.
pub struct TaskWriter<C> {
    ctx: C,
}

impl<C: Context> Backend for TaskWriter<C> {
    type Job = Box<dyn Task<C>>;
    type Answer = Box<dyn Done>;

    fn apply(&mut self, conn: &Connection, job: Self::Job) -> Self::Answer {
        job.apply(conn, &self.ctx)
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

    /// Reads and leases nobody waits for change nothing that matters; a durable write is
    /// applied anyway, since its caller may have given up only on waiting.
    fn abandoned(&self, job: &Self::Job) -> bool {
        !job.durable() && job.closed()
    }

    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
        self.ctx.begin(conn)
    }
}

/// The caller side: queues tasks and waits for their answers, up to a timeout.
pub struct TaskQueue<C, E> {
    writes: mpsc::Sender<Box<dyn Task<C>>>,
    timeout: Duration,
    _error: PhantomData<fn() -> E>,
}

impl<C, E> fmt::Debug for TaskQueue<C, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskQueue")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<C: Context, E: TaskError> TaskQueue<C, E> {
    /// Starts the writer thread on `conn` with `ctx`; it stops when the queue is dropped.
    pub fn start(
        conn: Connection,
        ctx: C,
        options: Options,
        timeout: Duration,
    ) -> Result<Self, StartError> {
        let writes = crate::writer::start(conn, TaskWriter { ctx }, options)?;
        Ok(TaskQueue {
            writes,
            timeout,
            _error: PhantomData,
        })
    }

    /// Runs `f` in the writer's next transaction; `durable` makes its batch fsync.
    pub async fn call<T, F>(&self, durable: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &C) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Box::new(Op { f, reply, durable }))
            .map_err(|_| E::writer("sqlite writer has stopped".into()))?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(E::writer("sqlite writer has stopped".into())),
            Err(_) => Err(E::writer(format!(
                "sqlite: no answer within {:?}",
                self.timeout
            ))),
        }
    }
}
