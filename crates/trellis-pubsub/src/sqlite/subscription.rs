//! The subscriber side: a [`SqliteSubscription`] leases up to `prefetch` messages at a
//! time through the writer, hands them out in order, fetches ahead when half are handed
//! out, and gives back what it never handed out; each delivery's [`SqliteAcker`] settles
//! it (and nacks it at once if dropped unsettled).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use super::jobs::{Fetched, Job, Leased, Reply};
use super::{Shared, from_ms, ms, now_ms};
use crate::{Acker, Delivery, Message, PubSubError, Subscription};

/// How long an idle subscriber waits before looking again even without a signal; only a
/// safety net, signals and lease timers normally wake it first.
const IDLE_REFETCH: Duration = Duration::from_secs(2);
/// How long a subscriber waits after a failed fetch before trying again.
const ERROR_BACKOFF: Duration = Duration::from_millis(250);

/// One subscriber: leases up to `prefetch` messages at a time and hands them out in order.
pub(super) struct SqliteSubscription {
    shared: Arc<Shared>,
    group: i64,
    topic: Arc<str>,
    /// Wake-ups for this topic from this process, and for anything from other processes.
    local: watch::Receiver<u64>,
    remote: watch::Receiver<u64>,
    /// Leased, not yet handed out.
    buffer: VecDeque<Leased>,
    next_visible: Option<i64>,
    closed: bool,
    retry_at: Option<tokio::time::Instant>,
    /// A fetch sent and not answered yet, with its deadline. Kept here rather than in the
    /// future of `next`, so that a cancelled `next` loses no leases: the next call picks
    /// the answer up.
    pending: Option<(FetchReply, tokio::time::Instant)>,
}

type FetchReply = oneshot::Receiver<Result<Fetched, PubSubError>>;

impl SqliteSubscription {
    /// A subscriber of `group` (the row id of `topic`'s consumer group), woken by `local`
    /// and `remote` (see [`super::poller::Notifier::subscribe`]).
    pub(super) fn new(
        shared: Arc<Shared>,
        group: i64,
        topic: Arc<str>,
        (local, remote): (watch::Receiver<u64>, watch::Receiver<u64>),
    ) -> Self {
        SqliteSubscription {
            shared,
            group,
            topic,
            local,
            remote,
            buffer: VecDeque::new(),
            next_visible: None,
            closed: false,
            retry_at: None,
            pending: None,
        }
    }

    /// Stops waiting for a pending fetch; whatever it already leased joins the buffer (to
    /// be given back). A fetch answered after this finds no receiver, and the writer gives
    /// its leases back itself.
    fn abandon_fetch(&mut self) {
        if let Some((mut rx, _)) = self.pending.take() {
            rx.close();
            if let Ok(Ok(fetched)) = rx.try_recv() {
                self.buffer.extend(fetched.items);
            }
        }
    }

    /// Queues a fetch of up to `prefetch` leases; its answer is awaited by `next`.
    fn start_fetch(&mut self) -> Result<(), PubSubError> {
        // Marks the current change as seen: any change from here on wakes the wait.
        self.local.borrow_and_update();
        self.remote.borrow_and_update();
        let (group, topic, max) = (self.group, self.topic.clone(), self.shared.prefetch);
        let rx = self.shared.send(|reply| Job::Fetch {
            group,
            topic,
            max,
            reply,
        })?;
        let deadline = tokio::time::Instant::now() + self.shared.timeout;
        self.pending = Some((rx, deadline));
        Ok(())
    }

    /// Gives back every buffered lease (fire and forget unless a reply is wanted).
    fn release_buffer(&mut self, reply: Option<Reply<()>>) -> bool {
        if self.buffer.is_empty() {
            return false;
        }
        let items = self.buffer.drain(..).map(|l| (l.id, l.attempt)).collect();
        let job = Job::Release {
            group: self.group,
            topic: self.topic.clone(),
            items,
            reply,
        };
        // A closed writer means the leases simply run out.
        self.shared.jobs.send(job).is_ok()
    }

    fn deliver(&self, l: Leased) -> Delivery {
        Delivery {
            message: Message {
                id: l.id.to_string(),
                topic: l.topic.to_string(),
                data: l.data,
                content_type: l.content_type,
                metadata: l.metadata,
                published_at: from_ms(l.published_at),
                delivery_attempt: l.attempt,
            },
            acker: Box::new(SqliteAcker {
                shared: self.shared.clone(),
                group: self.group,
                topic: self.topic.clone(),
                msg: l.id,
                attempt: l.attempt,
                settled: false,
            }),
        }
    }

    async fn wait_for_change(&mut self) {
        let now = now_ms();
        let wait = match self.next_visible {
            Some(at) => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)),
            None => IDLE_REFETCH,
        }
        .min(IDLE_REFETCH);
        let deadline = tokio::time::Instant::now() + wait;
        // The senders live as long as `shared`, so `changed` fails only in theory; should
        // it, the timer still bounds the wait.
        let woken = tokio::select! {
            res = self.local.changed() => res.is_ok(),
            res = self.remote.changed() => res.is_ok(),
            () = tokio::time::sleep_until(deadline) => true,
        };
        if !woken {
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[async_trait]
impl Subscription for SqliteSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, PubSubError>> {
        loop {
            if self.closed {
                return None;
            }
            if let Some(l) = self.buffer.pop_front() {
                // A lease that has been waiting in the buffer for more than half its time
                // would leave the application too little; give the buffer back and
                // fetch afresh rather than risk a duplicate delivery.
                if l.lease_until - now_ms() < ms(self.shared.ack_deadline) / 2 {
                    self.buffer.push_front(l);
                    self.release_buffer(None);
                    continue;
                }
                // Fetch ahead once half the buffer is handed out, so a fast consumer finds
                // the next leases ready instead of waiting for a commit (or, with other
                // processes on the file, for the write lock) each time the buffer runs dry.
                if self.buffer.len() < self.shared.prefetch / 2
                    && self.pending.is_none()
                    && self.retry_at.is_none()
                {
                    // A failure to queue shows up again on the fetch that waits.
                    let _ = self.start_fetch();
                }
                return Some(Ok(self.deliver(l)));
            }
            if self.pending.is_none() {
                if let Some(at) = self.retry_at.take() {
                    tokio::time::sleep_until(at).await;
                }
                if let Err(e) = self.start_fetch() {
                    self.retry_at = Some(tokio::time::Instant::now() + ERROR_BACKOFF);
                    return Some(Err(e));
                }
            }
            let Some((rx, deadline)) = self.pending.as_mut() else {
                continue;
            };
            let waited = tokio::time::timeout_at(*deadline, rx).await;
            // Answered, or given up on: in both cases no longer pending (a late answer
            // finds the receiver gone, and the writer gives its leases back).
            self.pending = None;
            match self.shared.outcome(waited) {
                Err(e) => {
                    self.retry_at = Some(tokio::time::Instant::now() + ERROR_BACKOFF);
                    return Some(Err(e));
                }
                Ok(fetched) => {
                    self.next_visible = fetched.next_visible;
                    if fetched.items.is_empty() {
                        self.wait_for_change().await;
                    } else {
                        self.buffer.extend(fetched.items);
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), PubSubError> {
        self.closed = true;
        self.abandon_fetch();
        let (tx, rx) = oneshot::channel();
        if self.release_buffer(Some(tx)) {
            return self.shared.wait(rx).await;
        }
        Ok(())
    }
}

impl Drop for SqliteSubscription {
    fn drop(&mut self) {
        self.abandon_fetch();
        self.release_buffer(None);
    }
}

struct SqliteAcker {
    shared: Arc<Shared>,
    group: i64,
    topic: Arc<str>,
    msg: i64,
    attempt: u32,
    /// Set once ack or nack was sent; otherwise dropping nacks.
    settled: bool,
}

#[async_trait]
impl Acker for SqliteAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), PubSubError> {
        self.settled = true;
        let (group, msg) = (self.group, self.msg);
        self.shared
            .call(|reply| Job::Ack {
                group,
                msg,
                reply: Some(reply),
            })
            .await
    }

    async fn nack(mut self: Box<Self>, redeliver_after: Duration) -> Result<(), PubSubError> {
        self.settled = true;
        let (group, msg, attempt) = (self.group, self.msg, self.attempt);
        let topic = self.topic.clone();
        self.shared
            .call(|reply| Job::Nack {
                group,
                topic,
                msg,
                attempt,
                after: redeliver_after,
                reply: Some(reply),
            })
            .await
    }
}

impl Drop for SqliteAcker {
    fn drop(&mut self) {
        if !self.settled {
            // Dropped unsettled (the handler failed or was cancelled): redeliver now
            // rather than when the lease runs out.
            let _ = self.shared.jobs.send(Job::Nack {
                group: self.group,
                topic: self.topic.clone(),
                msg: self.msg,
                attempt: self.attempt,
                after: Duration::ZERO,
                reply: None,
            });
        }
    }
}
