//! Repeating conditions logged once per episode: a queued agent retried every 100 ms
//! while descriptors ran out, or a state file that cannot be written at every change,
//! would otherwise repeat the same warning thousands of times.
//!
//! An episode is a run of occurrences with less than a quiet period between them: the
//! first occurrence is said, later ones are not, until the condition has been quiet for
//! that long. Not here: what is logged (the caller says it).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a condition must stay away before its next occurrence is said again.
pub const QUIET: Duration = Duration::from_secs(60);

/// One repeating condition's episodes.
#[derive(Debug)]
pub struct Episode {
    last: Mutex<Option<Instant>>,
    quiet: Duration,
}

impl Episode {
    pub const fn new(quiet: Duration) -> Episode {
        Episode {
            last: Mutex::new(None),
            quiet,
        }
    }

    /// Records an occurrence at `now`; true when it begins an episode (log it then).
    pub fn begins(&self, now: Instant) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let begins = last.is_none_or(|t| now.saturating_duration_since(t) >= self.quiet);
        *last = Some(now);
        begins
    }
}

impl Default for Episode {
    fn default() -> Episode {
        Episode::new(QUIET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_of_a_run_is_said_and_a_quiet_period_ends_the_episode() {
        let e = Episode::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(e.begins(at(0)), "the first occurrence begins an episode");
        // Every 30 s for 5 minutes: one long episode.
        for s in (30..=300).step_by(30) {
            assert!(!e.begins(at(s)), "{s} s: still the same episode");
        }
        assert!(
            e.begins(at(361)),
            "60 s quiet: the next one is a new episode"
        );
        assert!(!e.begins(at(362)));
    }
}
