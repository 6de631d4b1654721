//! The series of the label sets a sidecar recorded most recently, found again without the
//! metric family's own lookup.
//!
//! A family's lookup hashes every label value, takes the family's read lock, probes its map
//! and clones the series out; bounding a label value that came from a request
//! ([`super::BoundedValues`]) hashes it once more. Together that was 2,300–2,500
//! instructions per invocation in each sidecar (docs/benchmarks.md, "The gRPC path"). The
//! label sets of the calls a sidecar serves are few (a route template, a method, a status,
//! an app id), so comparing a call's labels with the few sets found last is cheaper, and
//! the series found for a set stands for every later call with those labels.
//!
//! Labels are compared as the caller gives them, before any bounding. A set with a value
//! past its label's limit is not kept: such values (an app path with an id in it) rarely
//! come again, and keeping each would cost every such call an allocation and the write
//! lock on top of the family's lookup, and push out the sets that do come again. The cache
//! holds [`SLOTS`] sets; a set not among them is looked up in its family as before, and
//! takes the place of the oldest.

use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Label sets kept per family; more than a sidecar's hot paths use at once.
pub const SLOTS: usize = 16;

/// A label set as kept, owning its values.
type Labels = Box<[Box<str>]>;

/// See the module docs; `S` is the series (or series) a label set stands for.
#[derive(Debug)]
pub struct Recent<S> {
    slots: RwLock<Vec<(Labels, S)>>,
    /// The slot the next new set replaces, once all are taken.
    next: AtomicUsize,
}

impl<S> Default for Recent<S> {
    fn default() -> Self {
        Self {
            slots: RwLock::new(Vec::with_capacity(SLOTS)),
            next: AtomicUsize::new(0),
        }
    }
}

impl<S> Recent<S> {
    /// Applies `record` to the series of `labels`: kept from an earlier call, or the one
    /// `find` looks up, with whether to keep it (not when a label was bounded). Nothing is
    /// recorded if `find` finds none. A kept series is recorded in place, under the read
    /// lock: no clone (and no reference count) per call.
    pub fn record(
        &self,
        labels: &[&str],
        find: impl FnOnce() -> Option<(S, Keep)>,
        record: impl FnOnce(&S),
    ) {
        {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = position(&slots, labels) {
                record(&slots[i].1);
                return;
            }
        }
        let Some((series, keep)) = find() else { return };
        record(&series);
        if keep == Keep::No {
            return;
        }
        let key: Labels = labels.iter().map(|l| Box::from(*l)).collect();
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        // Another caller may have kept the same set meanwhile.
        if position(&slots, labels).is_some() {
            return;
        }
        if slots.len() < SLOTS {
            slots.push((key, series));
        } else {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % SLOTS;
            slots[i] = (key, series);
        }
    }
}

/// Whether a series `find` looked up is kept for its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Yes,
    /// A label value was past its limit ([`super::OTHER`]).
    No,
}

impl Keep {
    /// `Yes` unless one of the bounded values is [`super::OTHER`].
    pub fn unless_bounded(bounded: &[&str]) -> Self {
        if bounded.contains(&super::OTHER) {
            Self::No
        } else {
            Self::Yes
        }
    }
}

fn position<S>(slots: &[(Labels, S)], labels: &[&str]) -> Option<usize> {
    slots.iter().position(|(kept, _)| {
        kept.len() == labels.len() && kept.iter().zip(labels).all(|(k, l)| **k == **l)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// The series `recent` records for `labels` (`find`'s the first time).
    fn got<S: Copy>(
        recent: &Recent<S>,
        labels: &[&str],
        find: impl FnOnce() -> Option<S>,
    ) -> Option<S> {
        let mut seen = None;
        recent.record(
            labels,
            || find().map(|s| (s, Keep::Yes)),
            |s| seen = Some(*s),
        );
        seen
    }

    #[test]
    fn a_set_is_looked_up_once_then_found_again() {
        let recent = Recent::<u32>::default();
        let lookups = Cell::new(0);
        let find = |v| {
            lookups.set(lookups.get() + 1);
            Some(v)
        };
        assert_eq!(got(&recent, &["POST", "/a", "200"], || find(1)), Some(1));
        assert_eq!(got(&recent, &["POST", "/a", "200"], || find(9)), Some(1));
        assert_eq!(got(&recent, &["POST", "/a", "500"], || find(2)), Some(2));
        // A prefix of a kept set is another set.
        assert_eq!(got(&recent, &["POST", "/a"], || find(3)), Some(3));
        assert_eq!(lookups.get(), 3);
    }

    #[test]
    fn past_the_slots_the_oldest_set_is_replaced_and_nothing_is_lost() {
        let recent = Recent::<usize>::default();
        let names: Vec<String> = (0..SLOTS + 1).map(|i| format!("app-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(got(&recent, &[name], || Some(i)), Some(i));
        }
        // The first set made room for the last; found again, it is looked up anew, and
        // still gets its own series.
        assert_eq!(got(&recent, &[&names[0]], || Some(100)), Some(100));
        assert_eq!(got(&recent, &[&names[SLOTS]], || None), Some(SLOTS));
    }

    #[test]
    fn a_set_with_a_bounded_value_is_looked_up_each_time() {
        let recent = Recent::<u32>::default();
        let bounded = || Some((7, Keep::unless_bounded(&["GET", super::super::OTHER])));
        let mut seen = Vec::new();
        for _ in 0..2 {
            recent.record(&["GET", "/orders/1"], bounded, |s| seen.push(*s));
        }
        assert_eq!(seen, [7, 7]);
        // Not kept: the next lookup's answer is the one recorded.
        assert_eq!(got(&recent, &["GET", "/orders/1"], || Some(8)), Some(8));
        assert_eq!(Keep::unless_bounded(&["GET", "/a"]), Keep::Yes);
    }

    #[test]
    fn a_failed_lookup_keeps_nothing() {
        let recent = Recent::<u32>::default();
        assert_eq!(got(&recent, &["x"], || None), None);
        assert_eq!(got(&recent, &["x"], || Some(4)), Some(4));
    }
}
