//! Whether an exporter's exports are failing, so that the log says so once per spell of
//! failures instead of once per batch: a collector that is down, or whose certificate is not
//! trusted, fails every batch (two a second) until someone fixes it.
//!
//! One warning when exports start failing, another when the reason changes (at most one a
//! minute, so a reason that flaps stays quiet), and one line when they work again; every
//! failed batch is still counted (`Stats::failed`) and logged at debug.

use std::time::{Duration, Instant};

/// The least time between two warnings about one exporter.
const REWARN_AFTER: Duration = Duration::from_secs(60);

/// What to log about one export's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// Nothing beyond debug.
    Quiet,
    /// Warn: exports started failing, or fail for a new reason.
    Failing,
    /// Exports work again after this many failed batches.
    Recovered { failed_batches: u64 },
}

/// The failure state of one exporter.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failing: Option<Spell>,
}

#[derive(Debug)]
struct Spell {
    /// The reason last warned about.
    reason: String,
    warned_at: Instant,
    batches: u64,
}

impl Health {
    /// An export failed with `reason` at `now`.
    pub(crate) fn failed(&mut self, reason: &str, now: Instant) -> Note {
        let Some(spell) = &mut self.failing else {
            self.failing = Some(Spell {
                reason: reason.to_string(),
                warned_at: now,
                batches: 1,
            });
            return Note::Failing;
        };
        spell.batches += 1;
        if spell.reason != reason && now.duration_since(spell.warned_at) >= REWARN_AFTER {
            spell.reason = reason.to_string();
            spell.warned_at = now;
            return Note::Failing;
        }
        Note::Quiet
    }

    /// An export succeeded.
    pub(crate) fn succeeded(&mut self) -> Note {
        match self.failing.take() {
            Some(spell) => Note::Recovered {
                failed_batches: spell.batches,
            },
            None => Note::Quiet,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_spell_and_per_new_reason_at_most_once_a_minute() {
        let mut h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.succeeded(), Note::Quiet, "healthy stays quiet");
        assert_eq!(h.failed("untrusted", t0), Note::Failing);
        for i in 1..100 {
            let at = t0 + Duration::from_millis(500 * i);
            assert_eq!(h.failed("untrusted", at), Note::Quiet, "batch {i}");
        }
        assert_eq!(
            h.failed("refused", t0 + Duration::from_secs(10)),
            Note::Quiet,
            "a new reason within the minute"
        );
        assert_eq!(
            h.failed("refused", t0 + Duration::from_secs(61)),
            Note::Failing,
            "a new reason after it"
        );
        assert_eq!(
            h.failed("refused", t0 + Duration::from_secs(200)),
            Note::Quiet,
            "the same reason never again"
        );
        assert_eq!(
            h.succeeded(),
            Note::Recovered {
                failed_batches: 103
            }
        );
        assert_eq!(h.succeeded(), Note::Quiet);
        assert_eq!(
            h.failed("untrusted", t0 + Duration::from_secs(201)),
            Note::Failing,
            "a new spell warns again"
        );
    }
}
