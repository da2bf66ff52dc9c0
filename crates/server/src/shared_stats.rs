//! Counters that forked children publish to their parent: one block per worker in a
//! `MAP_SHARED` mapping ([`c10k_sys::shm::SharedCounters`]) created before the first
//! fork.
//!
//! A child keeps counting in its own [`WorkerStats`] (the drivers take a
//! `&WorkerStats`) and adds what changed since its last publication to its block
//! ([`SharedStats::publish`]); blocks only grow, so a pool slot whose process is
//! replaced keeps its history. Each block holds one slot per row of [`SERIES`] (the
//! counters' layout, `stats.rs`) plus one gauge: the connections the slot's process
//! has open right now.

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use c10k_sys::shm::SharedCounters;

use crate::stats::{SERIES, WorkerStats};

/// Per-worker counters shared across `fork`.
#[derive(Debug)]
pub(crate) struct SharedStats {
    mem: SharedCounters,
    blocks: usize,
}

fn per_block() -> usize {
    SERIES.len() + 1
}

impl SharedStats {
    /// `blocks` zeroed blocks.
    pub(crate) fn new(blocks: usize) -> io::Result<Self> {
        let blocks = blocks.max(1);
        Ok(SharedStats {
            mem: SharedCounters::new(blocks * per_block())?,
            blocks,
        })
    }

    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }

    fn block(&self, b: usize) -> &[std::sync::atomic::AtomicU64] {
        let start = b.min(self.blocks - 1) * per_block();
        &self.mem.slots()[start..start + per_block()]
    }

    /// Add what `local` counted since `last` to block `b`; `last` becomes `local`'s
    /// values (start it empty).
    pub(crate) fn publish(&self, b: usize, local: &WorkerStats, last: &mut Vec<u64>) {
        let now = local.snapshot();
        last.resize(now.len(), 0);
        let block = self.block(b);
        for (i, (&n, l)) in now.iter().zip(last.iter_mut()).enumerate() {
            if n > *l {
                block[i].fetch_add(n - *l, Relaxed);
                *l = n;
            }
        }
    }

    /// Set block `b`'s open-connection gauge.
    pub(crate) fn set_open(&self, b: usize, open: u64) {
        self.block(b)[SERIES.len()].store(open, Relaxed);
    }

    /// Block `b`'s values, in [`SERIES`] order.
    pub(crate) fn snapshot(&self, b: usize) -> Vec<u64> {
        self.block(b)[..SERIES.len()]
            .iter()
            .map(|c| c.load(Relaxed))
            .collect()
    }

    /// Connections open in every block.
    pub(crate) fn open_sum(&self) -> u64 {
        (0..self.blocks)
            .map(|b| self.block(b)[SERIES.len()].load(Relaxed))
            .sum()
    }

    /// Add every block to `into` (the parent's report at exit).
    pub(crate) fn fold_into(&self, into: &WorkerStats) {
        for b in 0..self.blocks {
            for (s, v) in SERIES.iter().zip(self.snapshot(b)) {
                WorkerStats::add((s.get)(into), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_adds_only_the_difference() {
        let shared = SharedStats::new(2).unwrap();
        let local = WorkerStats::default();
        let mut last = Vec::new();
        WorkerStats::add(&local.accepted, 2);
        shared.publish(1, &local, &mut last);
        shared.publish(1, &local, &mut last);
        WorkerStats::add(&local.accepted, 1);
        shared.publish(1, &local, &mut last);
        let accepted = SERIES
            .iter()
            .position(|s| s.name == "c10k_connections_accepted_total")
            .unwrap();
        assert_eq!(shared.snapshot(1)[accepted], 3);
        assert_eq!(shared.snapshot(0)[accepted], 0);
        shared.set_open(0, 1);
        shared.set_open(1, 1);
        assert_eq!(shared.open_sum(), 2);
        let total = WorkerStats::default();
        shared.fold_into(&total);
        assert_eq!(WorkerStats::get(&total.accepted), 3);
    }
}
