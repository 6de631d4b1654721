//! Tests of the group-commit writer on a real database file, through a backend that records
//! what it saw: which batch each job ran in, the durability it ran with, and whether its
//! row could be read from another connection when its answer was sent.

#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::*;

/// How long a test waits for an answer before calling the writer stuck.
const PATIENCE: Duration = Duration::from_secs(10);

enum Kind {
    /// Inserts row `k`.
    Insert(i64),
    /// Inserts row `k` with two statements, then fails: its writes must be undone, alone.
    InsertThenFail(i64),
    /// Says it started, then waits to be let go, so that the jobs the test queues
    /// meanwhile all go into the next batch.
    Gate(mpsc::Sender<()>, mpsc::Receiver<()>),
    /// Rolls back the whole transaction and fails, as SQLite does on a full disk.
    RollBackEverything,
    /// Makes the batch's `finish` fail.
    FailFinish,
    /// Queues `Insert(k)` as a follow-up job of the backend's own, answered to `reply`.
    FollowUp(i64, mpsc::Sender<Answered>),
}

struct Job {
    kind: Kind,
    durable: bool,
    weight: usize,
    abandoned: bool,
    reply: mpsc::Sender<Answered>,
}

/// What a job's caller received.
#[derive(Debug)]
struct Answered {
    result: Result<Seen, String>,
    /// Whether another connection could read the job's row when the answer was sent
    /// (`None`: the job writes no row of its own).
    visible: Option<bool>,
}

/// What a job saw while it ran.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    batch: u32,
    /// `PRAGMA synchronous` inside the transaction: 2 is FULL, 1 NORMAL.
    synchronous: i64,
}

struct Answer {
    reply: mpsc::Sender<Answered>,
    row: Option<i64>,
    result: Result<Seen, String>,
}

struct TestBackend {
    /// A second connection on the file, which sees only what was committed.
    reader: Connection,
    batch: u32,
    fail_finish: bool,
    follow_ups: Vec<Job>,
    /// Told of every periodic run; `periodic_more` runs say more is left.
    periodic: mpsc::Sender<()>,
    periodic_more: u32,
}

impl TestBackend {
    fn seen(&self, conn: &Connection) -> Seen {
        let synchronous = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        Seen {
            batch: self.batch,
            synchronous,
        }
    }
}

fn insert(conn: &Connection, k: i64) -> Result<(), String> {
    conn.execute("INSERT INTO t (k) VALUES (?1)", params![k])
        .map(drop)
        .map_err(|e| e.to_string())
}

impl Backend for TestBackend {
    type Job = Job;
    type Answer = Answer;

    fn apply(&mut self, conn: &Connection, job: Job) -> Answer {
        let (row, result) = match job.kind {
            Kind::Insert(k) => (Some(k), insert(conn, k).map(|()| self.seen(conn))),
            Kind::InsertThenFail(k) => {
                let res = insert(conn, k).and_then(|()| insert(conn, k + 1000));
                (Some(k), res.and_then(|()| Err("refused".to_string())))
            }
            Kind::Gate(started, release) => {
                started.send(()).unwrap();
                // Let go by a message or by the sender being dropped.
                let _ = release.recv_timeout(PATIENCE);
                (None, Ok(self.seen(conn)))
            }
            Kind::RollBackEverything => {
                conn.execute_batch("ROLLBACK").unwrap();
                (None, Err("rolled back".to_string()))
            }
            Kind::FailFinish => {
                self.fail_finish = true;
                (None, Ok(self.seen(conn)))
            }
            Kind::FollowUp(k, reply) => {
                self.follow_ups.push(Job::new(Kind::Insert(k), reply));
                (None, Ok(self.seen(conn)))
            }
        };
        Answer {
            reply: job.reply,
            row,
            result,
        }
    }

    fn error<'a>(&self, answer: &'a Answer) -> Option<&'a dyn fmt::Display> {
        answer.result.as_ref().err().map(|e| e as &dyn fmt::Display)
    }

    fn send(&mut self, answer: Answer, failure: Option<&str>) {
        let visible = answer.row.map(|k| {
            self.reader
                .query_row("SELECT count(*) FROM t WHERE k = ?1", [k], |r| {
                    r.get::<_, i64>(0)
                })
                .unwrap()
                == 1
        });
        let result = match failure {
            Some(f) => Err(f.to_string()),
            None => answer.result,
        };
        let _ = answer.reply.send(Answered { result, visible });
    }

    fn reject(&mut self, job: Job, reason: &str) {
        let _ = job.reply.send(Answered {
            result: Err(reason.to_string()),
            visible: None,
        });
    }

    fn durable(&self, job: &Job) -> bool {
        job.durable
    }

    fn needs_savepoint(&self, job: &Job) -> bool {
        matches!(job.kind, Kind::InsertThenFail(_))
    }

    fn abandoned(&self, job: &Job) -> bool {
        job.abandoned
    }

    fn weight(&self, job: &Job) -> usize {
        job.weight
    }

    fn begin(&mut self, _conn: &Connection) -> Result<(), String> {
        self.batch += 1;
        self.fail_finish = false;
        Ok(())
    }

    fn finish(&mut self, _conn: &Connection) -> Result<(), String> {
        if self.fail_finish {
            return Err("finish refused".into());
        }
        Ok(())
    }

    fn follow_ups(&mut self, batch: &mut Vec<Job>) {
        batch.append(&mut self.follow_ups);
    }

    fn periodic(&mut self, db: &mut WriteConnection) -> bool {
        db.transaction(|c| c.execute("DELETE FROM t WHERE k < 0", []))
            .unwrap();
        let _ = self.periodic.send(());
        if self.periodic_more > 0 {
            self.periodic_more -= 1;
            return true;
        }
        false
    }
}

impl Job {
    fn new(kind: Kind, reply: mpsc::Sender<Answered>) -> Self {
        Job {
            kind,
            durable: true,
            weight: 1,
            abandoned: false,
            reply,
        }
    }
}

/// A writer on a fresh file, with what the tests need to drive it.
struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    queue: mpsc::Sender<Job>,
    periodic: mpsc::Receiver<()>,
}

fn fixture(configure: impl FnOnce(&mut Options), periodic_more: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let conn = Connection::open(&db).unwrap();
    assert_eq!(
        crate::set_journal_mode(&conn, "WAL", PATIENCE).unwrap(),
        "wal"
    );
    // NORMAL, so that the writer's own switch to FULL at start is what the tests see.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; CREATE TABLE t (k INTEGER PRIMARY KEY NOT NULL);",
    )
    .unwrap();
    let (periodic_tx, periodic) = mpsc::channel();
    let backend = TestBackend {
        reader: Connection::open(&db).unwrap(),
        batch: 0,
        fail_finish: false,
        follow_ups: Vec::new(),
        periodic: periodic_tx,
        periodic_more,
    };
    let mut options = Options::new("test-writer", PATIENCE);
    configure(&mut options);
    let queue = start(conn, backend, options).unwrap();
    Fixture {
        _dir: dir,
        db,
        queue,
        periodic,
    }
}

impl Fixture {
    fn send(&self, job: impl FnOnce(mpsc::Sender<Answered>) -> Job) -> mpsc::Receiver<Answered> {
        let (tx, rx) = mpsc::channel();
        self.queue.send(job(tx)).unwrap();
        rx
    }

    fn queue(&self, kind: Kind) -> mpsc::Receiver<Answered> {
        self.send(|reply| Job::new(kind, reply))
    }

    fn queue_light(&self, kind: Kind) -> mpsc::Receiver<Answered> {
        self.send(|reply| Job {
            durable: false,
            ..Job::new(kind, reply)
        })
    }

    /// Holds the writer inside a batch of its own until the returned sender is used (or
    /// dropped); jobs queued meanwhile make up the next batch.
    fn hold(&self) -> (mpsc::Sender<()>, mpsc::Receiver<Answered>) {
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let answer = self.queue(Kind::Gate(started_tx, release_rx));
        started.recv_timeout(PATIENCE).unwrap();
        (release, answer)
    }

    fn rows(&self) -> Vec<i64> {
        let conn = Connection::open(&self.db).unwrap();
        let mut stmt = conn.prepare("SELECT k FROM t ORDER BY k").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

fn answer(rx: &mpsc::Receiver<Answered>) -> Answered {
    rx.recv_timeout(PATIENCE).unwrap()
}

fn ok(rx: &mpsc::Receiver<Answered>) -> Seen {
    let a = answer(rx);
    let seen = a.result.unwrap();
    assert_ne!(
        a.visible,
        Some(false),
        "answered before its row was committed"
    );
    seen
}

fn failed(rx: &mpsc::Receiver<Answered>) -> String {
    let a = answer(rx);
    assert_ne!(a.visible, Some(true));
    a.result.unwrap_err()
}

#[test]
fn a_failing_job_fails_alone_and_the_rest_of_its_batch_commits() {
    let f = fixture(|_| {}, 0);
    let (release, gate) = f.hold();
    let (one, two, three) = (
        f.queue(Kind::Insert(1)),
        f.queue(Kind::InsertThenFail(2)),
        f.queue(Kind::Insert(3)),
    );
    drop(release);
    ok(&gate);
    let batch = ok(&one).batch;
    assert_eq!(failed(&two), "refused");
    assert_eq!(ok(&three).batch, batch, "the three shared one transaction");
    // Both of the failed job's inserts were undone, nothing else.
    assert_eq!(f.rows(), [1, 3]);
}

#[test]
fn answers_come_only_after_the_commit() {
    let f = fixture(|_| {}, 0);
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let queue = f.queue.clone();
                s.spawn(move || {
                    (0..50)
                        .map(|i| {
                            let (tx, rx) = mpsc::channel();
                            queue
                                .send(Job::new(Kind::Insert(t * 1000 + i), tx))
                                .unwrap();
                            rx
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut batches = std::collections::BTreeSet::new();
    for rx in &answers {
        // `ok` checks the row was readable from another connection when answered.
        batches.insert(ok(rx).batch);
    }
    assert_eq!(f.rows().len(), 400);
    assert!(batches.len() < 400, "some writes shared a commit");
}

#[test]
fn a_batch_that_fails_to_finish_answers_every_job_with_the_failure() {
    let f = fixture(|_| {}, 0);
    let (release, gate) = f.hold();
    let (one, fail) = (f.queue(Kind::Insert(1)), f.queue(Kind::FailFinish));
    drop(release);
    ok(&gate);
    assert_eq!(failed(&one), "finish refused");
    assert_eq!(failed(&fail), "finish refused");
    assert!(f.rows().is_empty());
    // The writer goes on.
    ok(&f.queue(Kind::Insert(2)));
    assert_eq!(f.rows(), [2]);
}

#[test]
fn a_transaction_that_sqlite_rolled_back_fails_the_whole_batch() {
    let f = fixture(|_| {}, 0);
    let (release, gate) = f.hold();
    let (one, boom, three) = (
        f.queue(Kind::Insert(1)),
        f.queue(Kind::RollBackEverything),
        f.queue(Kind::Insert(3)),
    );
    drop(release);
    ok(&gate);
    let reason = "sqlite: the transaction was rolled back: rolled back";
    assert_eq!(failed(&one), reason, "its insert was rolled back too");
    assert_eq!(failed(&boom), reason);
    assert_eq!(failed(&three), reason, "never applied");
    assert!(f.rows().is_empty());
    ok(&f.queue(Kind::Insert(4)));
    assert_eq!(f.rows(), [4]);
}

#[test]
fn durability_is_chosen_per_batch() {
    const FULL: i64 = 2;
    const NORMAL: i64 = 1;
    let f = fixture(|_| {}, 0);
    // The writer starts at FULL, whatever the connection was set to.
    let (release, gate) = f.hold();
    let (a, b) = (
        f.queue_light(Kind::Insert(1)),
        f.queue_light(Kind::Insert(2)),
    );
    drop(release);
    assert_eq!(ok(&gate).synchronous, FULL);
    assert_eq!(ok(&a).synchronous, NORMAL, "no job needed an fsync");
    assert_eq!(ok(&b).synchronous, NORMAL);

    let (release, gate) = f.hold();
    let (light, durable) = (f.queue_light(Kind::Insert(3)), f.queue(Kind::Insert(4)));
    drop(release);
    ok(&gate);
    assert_eq!(
        ok(&light).synchronous,
        FULL,
        "a durable job makes the batch durable"
    );
    assert_eq!(ok(&durable).synchronous, FULL);

    assert_eq!(ok(&f.queue_light(Kind::Insert(5))).synchronous, NORMAL);
    assert_eq!(ok(&f.queue(Kind::Insert(6))).synchronous, FULL);
}

#[test]
fn batches_are_bounded_by_jobs_and_by_weight() {
    let f = fixture(
        |o| {
            o.max_jobs = 3;
            o.max_weight = 3;
        },
        0,
    );
    let (release, gate) = f.hold();
    let jobs: Vec<_> = (1..=5).map(|k| f.queue(Kind::Insert(k))).collect();
    let heavy: Vec<_> = (6..=8)
        .map(|k| {
            f.send(|reply| Job {
                weight: 3,
                ..Job::new(Kind::Insert(k), reply)
            })
        })
        .collect();
    drop(release);
    let first = ok(&gate).batch + 1;
    let batches: Vec<u32> = jobs
        .iter()
        .chain(&heavy)
        .map(|rx| ok(rx).batch - first)
        .collect();
    // Three jobs; two light jobs and a heavy one (the batch weighed 2, under 3, so the heavy
    // one still goes); then one heavy job per batch: its own weight is the limit.
    assert_eq!(batches, [0, 0, 0, 1, 1, 1, 2, 3]);
}

#[test]
fn abandoned_jobs_are_skipped() {
    let f = fixture(|_| {}, 0);
    let (release, gate) = f.hold();
    let gone = f.send(|reply| Job {
        abandoned: true,
        ..Job::new(Kind::Insert(1), reply)
    });
    let kept = f.queue(Kind::Insert(2));
    drop(release);
    ok(&gate);
    ok(&kept);
    assert!(matches!(
        gone.recv_timeout(PATIENCE),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
    assert_eq!(f.rows(), [2]);
}

#[test]
fn follow_ups_go_into_the_next_batch_without_waiting_for_a_job() {
    let f = fixture(|_| {}, 0);
    let (tx, follow_up) = mpsc::channel();
    let first = ok(&f.queue(Kind::FollowUp(7, tx))).batch;
    assert_eq!(ok(&follow_up).batch, first + 1);
    assert_eq!(f.rows(), [7]);
}

#[test]
fn periodic_work_runs_again_at_once_while_more_is_left() {
    let f = fixture(|o| o.periodic = Some(Duration::from_millis(50)), 2);
    let started = Instant::now();
    for _ in 0..3 {
        f.periodic.recv_timeout(PATIENCE).unwrap();
    }
    // The first run waited for the interval; the two after it ran at once.
    let three = started.elapsed();
    assert!(three >= Duration::from_millis(50), "{three:?}");
    f.periodic.recv_timeout(PATIENCE).unwrap();
    assert!(
        started.elapsed() >= three + Duration::from_millis(40),
        "then it waits for the interval again"
    );
    // Jobs are served in between.
    ok(&f.queue(Kind::Insert(1)));
}

#[test]
fn dropping_the_queue_stops_the_writer_after_the_queued_jobs() {
    let f = fixture(|_| {}, 0);
    let (release, gate) = f.hold();
    let jobs: Vec<_> = (1..=3).map(|k| f.queue(Kind::Insert(k))).collect();
    let Fixture {
        _dir,
        db,
        queue,
        periodic,
    } = f;
    drop(queue);
    drop(release);
    ok(&gate);
    for rx in &jobs {
        ok(rx);
    }
    // The thread ended and dropped the backend, whose sender was the only one.
    assert!(matches!(
        periodic.recv_timeout(PATIENCE),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
    let conn = Connection::open(db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
}
