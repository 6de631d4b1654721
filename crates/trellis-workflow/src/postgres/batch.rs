//! Group commit for the PostgreSQL store: operations that arrive while earlier ones are
//! being written wait in a queue, and the next free lane takes all of them (up to a
//! maximum) into one transaction. A busy store so pays one round trip and one WAL flush per
//! batch instead of one per operation, which is what bounds its throughput (the server's
//! CPU goes mostly to per-transaction work). Nothing waits on purpose: an operation that
//! finds a lane free goes out at once, alone.
//!
//! A batch that fails as a whole is tried again one operation at a time, so that one
//! operation's bad value fails only that operation. Each batch runs as a task of its own,
//! so a panic in one answers its operations with an error and leaves the lane serving the
//! next.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::WorkflowError;

struct Job<T> {
    item: T,
    answer: oneshot::Sender<Result<(), WorkflowError>>,
}

/// What one operation of a batch gets.
pub(super) type Answer = Result<(), WorkflowError>;

/// A queue of `T` drained by `lanes` tasks, each running batches of at most `max`.
pub(super) struct Batcher<T> {
    queue: mpsc::UnboundedSender<Job<T>>,
}

impl<T> std::fmt::Debug for Batcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

impl<T: Send + Sync + 'static> Batcher<T> {
    /// Starts the lanes; `run` writes one batch in one transaction and answers each of its
    /// items, in order, or fails the whole batch. The lanes end when the batcher is dropped
    /// and its queue is empty.
    pub(super) fn spawn<F>(lanes: usize, max: usize, run: F) -> Self
    where
        F: for<'a> Fn(&'a [T]) -> BoxFuture<'a, Result<Vec<Answer>, WorkflowError>>
            + Send
            + Sync
            + 'static,
    {
        let (queue, rx) = mpsc::unbounded_channel::<Job<T>>();
        let rx = Arc::new(Mutex::new(rx));
        let run = Arc::new(run);
        for _ in 0..lanes.max(1) {
            let (rx, run) = (rx.clone(), run.clone());
            tokio::spawn(async move {
                loop {
                    // One lane at a time waits for work; the others wait for the queue.
                    let jobs = {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        let mut jobs = vec![first];
                        while jobs.len() < max {
                            match rx.try_recv() {
                                Ok(job) => jobs.push(job),
                                Err(_) => break,
                            }
                        }
                        jobs
                    };
                    let (items, answers): (Vec<T>, Vec<_>) =
                        jobs.into_iter().map(|j| (j.item, j.answer)).unzip();
                    let run = run.clone();
                    let results = tokio::spawn(async move { write(&*run, &items).await })
                        .await
                        .unwrap_or_else(|e| {
                            tracing::error!(error = %e, "workflow store: a batch panicked");
                            Vec::new()
                        });
                    let mut results = results.into_iter();
                    for answer in answers {
                        let result = results.next().unwrap_or_else(|| {
                            Err(WorkflowError::Backend(
                                "postgresql: the batch holding this operation failed".into(),
                            ))
                        });
                        let _ = answer.send(result);
                    }
                }
            });
        }
        Batcher { queue }
    }

    /// Queues `item` and waits for its batch to be written.
    pub(super) async fn submit(&self, item: T) -> Answer {
        let (answer, done) = oneshot::channel();
        self.queue
            .send(Job { item, answer })
            .map_err(|_| WorkflowError::Backend("postgresql: the store is closed".into()))?;
        done.await.unwrap_or_else(|_| {
            Err(WorkflowError::Backend(
                "postgresql: the batch holding this operation was dropped".into(),
            ))
        })
    }
}

/// Writes `items` as one batch and, when that fails and there were several, each alone.
async fn write<T: Sync, F>(run: &F, items: &[T]) -> Vec<Answer>
where
    F: for<'a> Fn(&'a [T]) -> BoxFuture<'a, Result<Vec<Answer>, WorkflowError>>,
{
    match run(items).await {
        Ok(answers) => answers,
        Err(e) if items.len() > 1 => {
            tracing::debug!(
                operations = items.len(),
                error = %e,
                "workflow store: a batch failed; writing each operation alone"
            );
            let mut out = Vec::with_capacity(items.len());
            for one in items.chunks(1) {
                out.push(match run(one).await {
                    Ok(mut answer) => answer.pop().unwrap_or(Err(e.clone())),
                    Err(e) => Err(e),
                });
            }
            out
        }
        Err(e) => vec![Err(e)],
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn operations_queued_together_share_a_batch_and_each_gets_its_answer() {
        let batches = Arc::new(std::sync::Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let batcher = Arc::new(Batcher::spawn(1, 8, move |items| {
            let items = items.to_vec();
            let seen = seen.clone();
            let mut gate = gate_rx.clone();
            Box::pin(async move {
                // The first batch waits, so that the others queue behind it.
                let _ = gate.wait_for(|open| *open).await;
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(items.clone());
                Ok(items
                    .iter()
                    .map(|i| match i % 2 {
                        0 => Ok(()),
                        _ => Err(WorkflowError::NotFound(i.to_string())),
                    })
                    .collect())
            })
        }));
        let calls: Vec<_> = (0..5u32)
            .map(|i| {
                let b = batcher.clone();
                tokio::spawn(async move { (i, b.submit(i).await) })
            })
            .collect();
        tokio::task::yield_now().await;
        gate_tx.send_replace(true);
        for call in calls {
            let (i, result) = call.await.expect("a submit task");
            assert_eq!(result.is_ok(), i % 2 == 0, "operation {i}: {result:?}");
        }
        let batches = batches.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 5);
        assert!(
            batches.len() < 5,
            "queued operations share batches: {batches:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_that_panics_fails_its_operations_and_the_lane_goes_on() {
        let runs = Arc::new(AtomicUsize::new(0));
        let count = runs.clone();
        let batcher = Batcher::spawn(1, 8, move |items: &[u32]| {
            let n = count.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                assert!(n > 0, "the first batch panics");
                Ok(items.iter().map(|_| Ok(())).collect())
            })
        });
        assert!(batcher.submit(1).await.is_err());
        assert!(batcher.submit(2).await.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_batch_that_fails_is_written_one_operation_at_a_time() {
        // Operation 3 fails any write it is part of, as a value the database refuses would.
        let answers = write(
            &|items: &[u32]| -> BoxFuture<'_, Result<Vec<Answer>, WorkflowError>> {
                Box::pin(async move {
                    if items.contains(&3) {
                        return Err(WorkflowError::Backend("refused".into()));
                    }
                    Ok(items.iter().map(|_| Ok(())).collect())
                })
            },
            &[1, 2, 3, 4],
        )
        .await;
        assert_eq!(
            answers,
            vec![
                Ok(()),
                Ok(()),
                Err(WorkflowError::Backend("refused".into())),
                Ok(())
            ]
        );
    }
}
