//! What an execution's history already holds: which tasks, timers and children it
//! started and which of them have answered, and which event ids are taken. A turn uses it
//! to drop answers that are duplicates (activities run at least once) or strays, and to
//! tell a worker's new actions from ones that contradict history.

use std::collections::{HashMap, HashSet};

use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::{ExecutionStartedEvent, HistoryEvent};

/// A child workflow an execution started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub instance_id: String,
    /// The app it runs on, when not the parent's.
    pub app_id: Option<String>,
    pub done: bool,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Event id → the event's type name, for every event an action made.
    pub ids: HashMap<i32, &'static str>,
    tasks: HashMap<i32, bool>,
    timers: HashMap<i32, bool>,
    pub children: HashMap<i32, Child>,
    /// The execution's start, if seen.
    pub started: Option<Box<ExecutionStartedEvent>>,
    raised: HashSet<i32>,
}

impl Seen {
    pub fn of(history: &[HistoryEvent]) -> Seen {
        let mut seen = Seen::default();
        for event in history {
            seen.record(event);
        }
        seen
    }

    /// Notes `event`; returns whether it is new (an answer to something pending, or an
    /// event that needs no matching), false for a duplicate or stray answer.
    pub fn record(&mut self, event: &HistoryEvent) -> bool {
        if event.event_id >= 0 {
            self.ids
                .insert(event.event_id, crate::events::event_name(event));
        }
        let Some(kind) = &event.event_type else {
            return false;
        };
        match kind {
            EventType::ExecutionStarted(e) => {
                if self.started.is_some() {
                    return false;
                }
                self.started = Some(Box::new(e.clone()));
            }
            EventType::TaskScheduled(_) => {
                self.tasks.insert(event.event_id, false);
            }
            EventType::TaskCompleted(e) => return answer(&mut self.tasks, e.task_scheduled_id),
            EventType::TaskFailed(e) => return answer(&mut self.tasks, e.task_scheduled_id),
            EventType::TimerCreated(_) => {
                self.timers.insert(event.event_id, false);
            }
            EventType::TimerFired(e) => return answer(&mut self.timers, e.timer_id),
            EventType::ChildWorkflowInstanceCreated(e) => {
                let app_id = crate::events::target_app(event.router.as_ref());
                self.children.insert(
                    event.event_id,
                    Child {
                        instance_id: e.instance_id.clone(),
                        app_id,
                        done: false,
                    },
                );
            }
            EventType::ChildWorkflowInstanceCompleted(e) => {
                return self.child_done(e.task_scheduled_id);
            }
            EventType::ChildWorkflowInstanceFailed(e) => {
                return self.child_done(e.task_scheduled_id);
            }
            EventType::EventRaised(_) => {
                self.raised.insert(event.event_id);
            }
            _ => {}
        }
        true
    }

    fn child_done(&mut self, id: i32) -> bool {
        match self.children.get_mut(&id) {
            Some(child) if !child.done => {
                child.done = true;
                true
            }
            _ => false,
        }
    }

    /// Children that have not answered yet.
    pub fn running_children(&self) -> impl Iterator<Item = &Child> {
        self.children.values().filter(|c| !c.done)
    }
}

/// Marks the pending entry `id` answered; false when there is none or it already was.
fn answer(pending: &mut HashMap<i32, bool>, id: i32) -> bool {
    match pending.get_mut(&id) {
        Some(done) if !*done => {
            *done = true;
            true
        }
        _ => false,
    }
}
