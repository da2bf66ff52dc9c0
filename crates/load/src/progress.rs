//! Live counters a run shares with whoever watches it (a progress bar, `c10k compare`
//! waiting for idle connections to be up), and the switch that stops it early.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// The phase a run is in (ordered: a run moves forward only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Opening connections.
    Connecting,
    /// Every thread is done connecting; load runs but is not recorded.
    Warmup,
    /// The measured window (or, for an idle run, holding the connections).
    Measuring,
    /// Finished.
    Done,
}

/// Counters updated by the load threads (in batches, once per event-loop turn).
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    /// Connections open now.
    pub open: AtomicUsize,
    /// Replies received (warm-up included).
    pub replies: AtomicU64,
    /// Errors so far.
    pub errors: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    /// A fresh run, connecting.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Connecting,
            1 => Phase::Warmup,
            2 => Phase::Measuring,
            _ => Phase::Done,
        }
    }

    /// Moves to `phase` (phases only move forward).
    pub fn set_phase(&self, phase: Phase) {
        let n = match phase {
            Phase::Connecting => 0,
            Phase::Warmup => 1,
            Phase::Measuring => 2,
            Phase::Done => 3,
        };
        self.phase.fetch_max(n, Ordering::AcqRel);
    }

    /// Asks the run to end now (it reports what it measured so far).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether [`Progress::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_move_forward_only() {
        let p = Progress::new();
        assert_eq!(p.phase(), Phase::Connecting);
        p.set_phase(Phase::Measuring);
        p.set_phase(Phase::Warmup);
        assert_eq!(p.phase(), Phase::Measuring);
        assert!(!p.stopped());
        p.stop();
        assert!(p.stopped());
    }
}
