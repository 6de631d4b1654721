//! The group-commit writer: one thread that owns a database's only writing connection and
//! applies the writes queued to it many at a time, in one transaction, answering each only
//! once that transaction has committed. Every embedded backend writes through one.
//!
//! # Why
//!
//! A durable commit is an fsync, a few milliseconds of waiting for the disk whether the
//! transaction wrote one row or a thousand. Writers that each committed alone would each
//! pay one, and SQLite lets one writer at a time in anyway. So the writer takes everything
//! queued at once and commits it together: concurrent writers share one fsync (group
//! commit), and throughput grows with the number of writers instead of being one fsync
//! per write. And since only this thread writes, SQLite's write lock is taken once per
//! batch rather than fought over by every caller. (A thread, not a tokio task: SQLite
//! blocks. Callers wait on the reply channel their job carries.)
//!
//! An answer is sent only after the transaction that produced it has committed: what a
//! caller was told succeeded is on disk. A `kill -9` (and, with `synchronous=FULL`, a
//! power cut) loses nothing acknowledged; a write whose caller got no answer may or may
//! not have happened, as after any timeout.
//!
//! # How
//!
//! [`start`] spawns the thread and returns the queue (a plain [`mpsc::Sender`]) to send
//! jobs to. Each round the thread
//!
//! 1. takes the jobs the backend owes itself ([`Backend::follow_ups`]) or waits for the
//!    first queued one (waking for [`Options::periodic`] work meanwhile), then gathers
//!    whatever else is queued, up to [`Options::max_jobs`] jobs and
//!    [`Options::max_weight`] weight, so that a flood still commits, and answers, in slices;
//!    with [`Options::gather_wait`] set it lingers a moment for the callers its last
//!    commit answered, who are likely about to send their next job;
//! 2. drops jobs nobody waits for any more ([`Backend::abandoned`]);
//! 3. chooses the durability: `synchronous=FULL` (the commit fsyncs the log) when any job
//!    needs it ([`Backend::durable`]), `NORMAL` otherwise (survives a crash of the
//!    process, a power cut may undo it); a batch that needs FULL and cannot get it fails;
//! 4. opens one `BEGIN IMMEDIATE` transaction, calls [`Backend::begin`], then applies
//!    each job ([`Backend::apply`]) inside a savepoint when it writes with several
//!    statements ([`Backend::needs_savepoint`]): a job that fails is rolled back to its
//!    savepoint and fails alone, the others still commit. An error after which SQLite rolled
//!    back the whole transaction (disk full, I/O) fails the whole batch;
//! 5. calls [`Backend::finish`] (batch-wide bookkeeping), commits, then sends every
//!    answer ([`Backend::send`]), with the reason when the transaction did not commit, and
//!    calls [`Backend::after`] (work that must follow the commit but should not delay the
//!    answers, such as waking readers);
//! 6. runs the periodic work when due ([`Backend::periodic`], e.g. clean-up, in its own
//!    short transactions so it never holds the write lock long).
//!
//! When every sender is dropped, the thread finishes what was queued and ends.
//!
//! The hot path adds nothing per job to what the backend itself does: the batch and answer
//! vectors are reused from round to round, and durability is switched (one `PRAGMA`) only
//! when it changes.

use std::fmt;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// What a backend tells the writer: how to apply its jobs and how to answer them. Only
/// [`Backend::apply`], [`Backend::error`], [`Backend::send`] and [`Backend::reject`] are
/// required; the defaults make every job durable, every job its own savepoint, and add no
/// batch-wide work.
pub trait Backend: Send + 'static {
    /// One unit of work queued to the writer, usually carrying the channel its answer
    /// goes back through.
    type Job: Send + 'static;
    /// What applying a job produced, held back until the transaction's fate is known.
    type Answer;

    /// Applies `job` inside the open transaction and returns its answer. On failure the
    /// backend undoes its own in-memory bookkeeping for the job; the writer undoes the
    /// job's writes (see [`Backend::needs_savepoint`]).
    fn apply(&mut self, conn: &Connection, job: Self::Job) -> Self::Answer;

    /// The error `answer` carries, if its job failed.
    fn error<'a>(&self, answer: &'a Self::Answer) -> Option<&'a dyn fmt::Display>;

    /// Sends an answer once the transaction is over: as it is when the transaction
    /// committed (`failure` is `None`), or the failure instead, since nothing the job did
    /// happened.
    fn send(&mut self, answer: Self::Answer, failure: Option<&str>);

    /// Answers a job that was never applied: its batch could not get the durability it
    /// needed or start its transaction, or an earlier job's error rolled it back.
    fn reject(&mut self, job: Self::Job, reason: &str);

    /// Whether a committed `job` must survive a power cut: a batch holding one commits with
    /// `synchronous=FULL`, an fsync. Jobs whose loss costs only a repetition (a lease, an
    /// acknowledgement) may say no, and a batch of only those commits without the fsync.
    fn durable(&self, job: &Self::Job) -> bool {
        let _ = job;
        true
    }

    /// Whether `job` needs a savepoint of its own: it writes with several statements that
    /// must apply all or none. A job of at most one statement needs none (SQLite undoes a
    /// failed statement by itself), which saves two statements per job.
    fn needs_savepoint(&self, job: &Self::Job) -> bool {
        let _ = job;
        true
    }

    /// Whether nobody waits for `job`'s answer any more and the job has no other point:
    /// it is skipped.
    fn abandoned(&self, job: &Self::Job) -> bool {
        let _ = job;
        false
    }

    /// How much `job` counts towards [`Options::max_weight`] (e.g. the messages a bulk
    /// publish carries).
    fn weight(&self, job: &Self::Job) -> usize {
        let _ = job;
        1
    }

    /// Called right after `BEGIN IMMEDIATE`, before the batch's first job: reads what the
    /// batch shares (a counter, the clock). An error fails every job with it.
    fn begin(&mut self, conn: &Connection) -> Result<(), String> {
        let _ = conn;
        Ok(())
    }

    /// Called after the batch's last job, before `COMMIT`, when nothing failed the
    /// batch: writes what the batch shares. An error fails every job with it.
    fn finish(&mut self, conn: &Connection) -> Result<(), String> {
        let _ = conn;
        Ok(())
    }

    /// Called once the answers of a batch that began (see [`Backend::begin`]) were sent,
    /// with whether it committed: for work that must follow the commit but should not
    /// delay the answers.
    fn after(&mut self, committed: bool) {
        let _ = committed;
    }

    /// Moves jobs the backend gave itself (say, undoing what an answer nobody received
    /// did) into `batch`; they go first into the next transaction.
    fn follow_ups(&mut self, batch: &mut Vec<Self::Job>) {
        let _ = batch;
    }

    /// Periodic work, every [`Options::periodic`] between batches and outside any
    /// transaction (use [`WriteConnection::transaction`]). Returns whether more is left:
    /// then it runs again right after the next batch, or at once when none is queued.
    fn periodic(&mut self, db: &mut WriteConnection) -> bool {
        let _ = db;
        false
    }
}

/// How a writer batches and when it does periodic work.
#[derive(Debug, Clone)]
pub struct Options {
    /// The thread's name.
    pub thread_name: String,
    /// How long the connection waits for another process's write lock.
    pub busy_timeout: Duration,
    /// The most jobs one transaction takes.
    pub max_jobs: usize,
    /// The most weight ([`Backend::weight`]) one transaction takes; a single job heavier
    /// than this still goes, alone.
    pub max_weight: usize,
    /// The longest the writer lingers for more jobs after the queue ran dry, when its
    /// batch is still smaller than the one before: the callers the last commit answered
    /// are likely about to send their next job, and waiting for them (a quarter of the
    /// last commit at most) lets them share the next fsync. Zero takes only what is
    /// queued.
    pub gather_wait: Duration,
    /// How often [`Backend::periodic`] runs; `None` never.
    pub periodic: Option<Duration>,
}

impl Options {
    /// Batches of up to 1024 jobs of any weight, no lingering, no periodic work.
    pub fn new(thread_name: impl Into<String>, busy_timeout: Duration) -> Self {
        Options {
            thread_name: thread_name.into(),
            busy_timeout,
            max_jobs: 1024,
            max_weight: usize::MAX,
            gather_wait: Duration::ZERO,
            periodic: None,
        }
    }
}

/// Why a writer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sqlite: cannot set synchronous=FULL: {0}")]
    Synchronous(rusqlite::Error),
    #[error("cannot start sqlite thread: {0}")]
    Spawn(std::io::Error),
}

/// Starts the writer thread on `conn` (which must not be in a transaction) and returns
/// the queue to send jobs to. The thread stops once every clone of the queue is dropped,
/// after finishing the jobs queued by then.
pub fn start<B: Backend>(
    conn: Connection,
    backend: B,
    options: Options,
) -> Result<mpsc::Sender<B::Job>, StartError> {
    // The writer owns durability: it starts from FULL whatever the backend set.
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(StartError::Synchronous)?;
    let (tx, rx) = mpsc::channel();
    let name = options.thread_name.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            Writer {
                db: WriteConnection {
                    conn,
                    full_sync: true,
                },
                backend,
                batch: Vec::new(),
                answers: Vec::new(),
                options,
            }
            .run(rx);
        })
        .map_err(StartError::Spawn)?;
    Ok(tx)
}

/// The writer's connection, with the durability it is set to.
#[derive(Debug)]
pub struct WriteConnection {
    conn: Connection,
    /// Whether the connection is at `synchronous=FULL` (else NORMAL).
    full_sync: bool,
}

impl WriteConnection {
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Whether commits fsync (`synchronous=FULL`).
    pub fn durable(&self) -> bool {
        self.full_sync
    }

    /// Makes the following commits fsync or not; a no-op when already so. A failure is
    /// logged and leaves the setting as it was (check [`WriteConnection::durable`]).
    pub fn set_durable(&mut self, durable: bool) {
        if self.full_sync == durable {
            return;
        }
        let pragma = if durable {
            "PRAGMA synchronous = FULL"
        } else {
            "PRAGMA synchronous = NORMAL"
        };
        match self.conn.execute_batch(pragma) {
            Ok(()) => self.full_sync = durable,
            Err(e) => tracing::warn!(error = %e, "sqlite writer: cannot set synchronous"),
        }
    }

    /// Runs `f` in a transaction of its own (`BEGIN IMMEDIATE`), committing when it
    /// succeeds and rolling back when anything fails.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn).and_then(|v| self.conn.execute_batch("COMMIT").map(|()| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    /// Rolls back the open transaction, if SQLite has not already.
    fn rollback(&self) {
        if !self.conn.is_autocommit() {
            // Nothing more to do if even this fails: the next BEGIN will say so.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// The writer thread's state.
struct Writer<B: Backend> {
    db: WriteConnection,
    backend: B,
    /// The jobs of the current round, and their answers (kept to reuse their memory).
    batch: Vec<B::Job>,
    answers: Vec<B::Answer>,
    options: Options,
}

impl<B: Backend> Writer<B> {
    fn run(mut self, rx: mpsc::Receiver<B::Job>) {
        crate::set_busy_budget(self.options.busy_timeout);
        let interval = self.options.periodic;
        let mut next_periodic = interval.map(|i| Instant::now() + i);
        let (mut last_batch, mut last_commit) = (0, Duration::ZERO);
        loop {
            self.backend.follow_ups(&mut self.batch);
            if self.batch.is_empty() {
                let first = match next_periodic {
                    None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                    Some(t) => rx.recv_timeout(t.saturating_duration_since(Instant::now())),
                };
                match first {
                    Ok(job) => self.batch.push(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    // Every sender is gone and every queued job is done.
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            if !self.batch.is_empty() {
                self.gather(&rx, last_batch, last_commit);
                last_batch = self.batch.len();
                let started = self.timed().then(Instant::now);
                self.apply_batch();
                last_commit = started.map_or(Duration::ZERO, |s| s.elapsed());
            }
            if let (Some(t), Some(interval)) = (next_periodic, interval)
                && Instant::now() >= t
            {
                // One slice at a time, with the queued jobs served in between.
                next_periodic = Some(if self.backend.periodic(&mut self.db) {
                    Instant::now()
                } else {
                    Instant::now() + interval
                });
            }
        }
    }

    /// Whether `gather` needs to know how long commits take (it lingers only if so).
    fn timed(&self) -> bool {
        !self.options.gather_wait.is_zero()
    }

    /// Adds whatever is queued to the batch. When the queue runs dry while the batch is
    /// smaller than the previous one, the callers answered by that commit are most likely
    /// just about to send their next job: waiting a moment for them (a quarter of the last
    /// commit, at most [`Options::gather_wait`]) lets them share the next fsync instead of
    /// each half of them paying for one.
    fn gather(&mut self, rx: &mpsc::Receiver<B::Job>, last_batch: usize, last_commit: Duration) {
        let backend = &self.backend;
        let mut weight: usize = self.batch.iter().map(|j| backend.weight(j)).sum();
        let linger = (last_commit / 4).min(self.options.gather_wait);
        let deadline = (!linger.is_zero()).then(|| Instant::now() + linger);
        while self.batch.len() < self.options.max_jobs && weight < self.options.max_weight {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let Some(deadline) = deadline else { break };
                    if self.batch.len() >= last_batch {
                        break;
                    }
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
            };
            weight = weight.saturating_add(backend.weight(&job));
            self.batch.push(job);
        }
    }

    /// Applies the batch in one transaction; answers once it is over.
    fn apply_batch(&mut self) {
        let backend = &self.backend;
        self.batch.retain(|j| !backend.abandoned(j));
        if self.batch.is_empty() {
            return;
        }
        let durable = self.batch.iter().any(|j| backend.durable(j));
        self.db.set_durable(durable);
        if durable && !self.db.durable() {
            // Acknowledging a write that a power cut could undo would break the contract.
            self.reject_all("sqlite: cannot switch to synchronous=FULL");
            return;
        }
        if let Err(e) = self.db.conn.execute_batch("BEGIN IMMEDIATE") {
            self.reject_all(&format!("sqlite: cannot start a write transaction: {e}"));
            return;
        }
        if let Err(msg) = self.backend.begin(&self.db.conn) {
            self.db.rollback();
            self.reject_all(&msg);
            return;
        }
        let mut aborted: Option<String> = None;
        let mut batch = std::mem::take(&mut self.batch);
        for job in batch.drain(..) {
            if let Some(msg) = &aborted {
                self.backend.reject(job, msg);
                continue;
            }
            match self.apply_job(job) {
                Step::Done(answer) => self.answers.push(answer),
                Step::Abort(answer, msg) => {
                    self.answers.extend(answer);
                    aborted = Some(msg);
                }
            }
        }
        self.batch = batch;
        if aborted.is_none()
            && let Err(msg) = self.backend.finish(&self.db.conn)
        {
            aborted = Some(msg);
        }
        let outcome = match aborted {
            Some(msg) => {
                self.db.rollback();
                Err(msg)
            }
            None => self.db.conn.execute_batch("COMMIT").map_err(|e| {
                self.db.rollback();
                format!("sqlite: commit failed: {e}")
            }),
        };
        let failure = outcome.as_ref().err().map(String::as_str);
        for answer in self.answers.drain(..) {
            self.backend.send(answer, failure);
        }
        self.backend.after(outcome.is_ok());
    }

    /// Applies one job in the open transaction, inside a savepoint when it needs one.
    fn apply_job(&mut self, job: B::Job) -> Step<B::Answer> {
        let conn = &self.db.conn;
        let savepoint = self.backend.needs_savepoint(&job);
        if savepoint && let Err(e) = conn.execute_batch("SAVEPOINT job") {
            let msg = format!("sqlite: {e}");
            self.backend.reject(job, &msg);
            return Step::Abort(None, msg);
        }
        let answer = self.backend.apply(conn, job);
        let result = match self.backend.error(&answer) {
            None if savepoint => conn.execute_batch("RELEASE job"),
            None => Ok(()),
            // Some errors (disk full, I/O) roll back the whole transaction: everything
            // this batch did so far is gone, and all of it fails.
            Some(e) if conn.is_autocommit() => {
                let msg = format!("sqlite: the transaction was rolled back: {e}");
                return Step::Abort(Some(answer), msg);
            }
            Some(_) if savepoint => conn.execute_batch("ROLLBACK TO job; RELEASE job"),
            Some(_) => Ok(()),
        };
        match result {
            Ok(()) => Step::Done(answer),
            Err(e) => Step::Abort(Some(answer), format!("sqlite: {e}")),
        }
    }

    fn reject_all(&mut self, reason: &str) {
        for job in self.batch.drain(..) {
            self.backend.reject(job, reason);
        }
    }
}

/// What applying one job came to.
enum Step<A> {
    /// Applied (successfully or not); the batch goes on.
    Done(A),
    /// The batch cannot go on (the reason), with the job's answer if it ran.
    Abort(Option<A>, String),
}

#[cfg(test)]
mod tests;
