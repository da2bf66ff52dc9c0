//! [`WorkerCore`]: one event loop's lifecycle, written once for the readiness reactor
//! and io_uring (the pool's reactor uses its parts: [`DrainClock`], the sweep clock
//! and the accept guard): the drain deadline, the fresh-connection grace, the linger
//! queue, the timer sweep and the accept back-off.
//!
//! A loop keeps its connections in a table and lends them to the worker core through
//! [`ConnTable`]: the core decides *when* (a timer, the drain), the table does the
//! I/O a decision needs (read before judging, cancel, close) and reports how the
//! connection settled.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use c10k_proto::Session;

use crate::accept::AcceptGuard;
use crate::config::DRAIN_FRESH_GRACE;
use crate::stats::WorkerStats;
use crate::timers::{SweepClock, sweep_interval};

/// How a connection stands after a table served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// Still open (or gone already).
    Open,
    /// It started lingering: close it at `deadline` unless it closes first.
    Lingering { deadline: Instant, serial: u64 },
    /// It was closed.
    Closed,
}

/// An event loop's connections, as the worker core sees them.
pub(crate) trait ConnTable {
    /// The sessions the table holds.
    type Session: Session;
    /// Keys of every open connection.
    fn keys(&self) -> Vec<usize>;
    /// Whether no connection is open.
    fn is_empty(&self) -> bool;
    /// The serial of the connection at `key` (tells a reused key from the connection
    /// a timer was set for).
    fn serial(&self, key: usize) -> Option<u64>;
    /// Act on the connection's due timers ([`ConnCore::on_timeout`](super::ConnCore::on_timeout)), then settle it
    /// (close, queue output, update the registration).
    fn on_timeout(&mut self, key: usize, now: Instant) -> Settled;
    /// The fresh-connection grace is over ([`ConnCore::end_grace`](super::ConnCore::end_grace), after reading
    /// what arrived meanwhile), then settle it.
    fn end_grace(&mut self, key: usize, now: Instant) -> Settled;
    /// Apply the drain to the connection (reading first what the kernel holds, as
    /// the driver can), then settle it. Returns whether its drain was deferred, and
    /// how it settled.
    fn start_drain(&mut self, key: usize, now: Instant) -> (bool, Settled);
    /// Close the connection now.
    fn close(&mut self, key: usize);
    /// The loop's counters.
    fn stats(&self) -> &WorkerStats;
}

/// The drain deadline and the fresh-connection grace of one loop.
#[derive(Debug, Default)]
pub(crate) struct DrainClock {
    deadline: Option<Instant>,
    fresh_grace: Option<Instant>,
    forced: bool,
}

impl DrainClock {
    /// Start draining at `now`; false if already draining.
    pub(crate) fn begin(&mut self, now: Instant, drain_timeout: Duration) -> bool {
        if self.deadline.is_some() {
            return false;
        }
        self.deadline = Some(now + drain_timeout);
        true
    }

    /// Draining has started.
    pub(crate) fn draining(&self) -> bool {
        self.deadline.is_some()
    }

    /// A connection's drain was deferred at `now` (it had not received a byte): the
    /// grace ends [`DRAIN_FRESH_GRACE`] after the first such deferral.
    pub(crate) fn deferred(&mut self, now: Instant) {
        self.fresh_grace.get_or_insert(now + DRAIN_FRESH_GRACE);
    }

    /// The grace is over at `now` (once): deferred connections drain now.
    pub(crate) fn grace_over(&mut self, now: Instant) -> bool {
        if self.fresh_grace.is_some_and(|t| t <= now) {
            self.fresh_grace = None;
            return true;
        }
        false
    }

    /// The drain deadline has passed at `now`: close what is left (a loop that
    /// closes everything at once asks every time; [`forced`](Self::forced) tells
    /// whether it was asked before).
    pub(crate) fn force_due(&mut self, now: Instant) -> bool {
        if self.deadline.is_some_and(|t| now >= t) {
            self.forced = true;
            return true;
        }
        false
    }

    /// The drain deadline was enforced.
    pub(crate) fn forced(&self) -> bool {
        self.forced
    }

    /// When the fresh-connection grace ends, while it runs.
    pub(crate) fn grace_end(&self) -> Option<Instant> {
        self.fresh_grace
    }

    /// The next instant this clock needs the loop awake.
    pub(crate) fn next(&self) -> Option<Instant> {
        let deadline = self.deadline.filter(|_| !self.forced);
        [deadline, self.fresh_grace].into_iter().flatten().min()
    }
}

/// Lingering connections by deadline `(deadline, key, serial)`: every linger is
/// equally long, so FIFO order is deadline order.
#[derive(Debug, Default)]
pub(crate) struct LingerQueue(VecDeque<(Instant, usize, u64)>);

impl LingerQueue {
    pub(crate) fn push(&mut self, deadline: Instant, key: usize, serial: u64) {
        self.0.push_back((deadline, key, serial));
    }

    /// Whether the queue is empty.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.front().map(|l| l.0)
    }

    /// Pop the entries due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(usize, u64)> {
        match self.0.front() {
            Some(&(deadline, key, serial)) if deadline <= now => {
                self.0.pop_front();
                Some((key, serial))
            }
            _ => None,
        }
    }
}

/// One event loop's timers and drain.
#[derive(Debug)]
pub(crate) struct WorkerCore {
    /// `--max-conns` and the EMFILE back-off.
    pub(crate) accept: AcceptGuard,
    drain: DrainClock,
    drain_timeout: Duration,
    lingering: LingerQueue,
    sweep: SweepClock,
    sweep_every: Duration,
    /// The worker's number, for logs.
    id: usize,
}

impl WorkerCore {
    pub(crate) fn new(id: usize, config: &crate::config::Config) -> Self {
        WorkerCore {
            accept: AcceptGuard::new(),
            drain: DrainClock::default(),
            drain_timeout: config.drain_timeout,
            lingering: LingerQueue::default(),
            sweep: SweepClock::default(),
            sweep_every: sweep_interval(config.idle_timeout, config.header_timeout),
            id,
        }
    }

    /// Draining has started.
    pub(crate) fn draining(&self) -> bool {
        self.drain.draining()
    }

    /// A connection settled: start its linger timer when it began lingering.
    pub(crate) fn settled(&mut self, key: usize, settled: Settled) {
        if let Settled::Lingering { deadline, serial } = settled {
            self.lingering.push(deadline, key, serial);
        }
    }

    /// A connection accepted while draining (io_uring's accept can deliver one while
    /// its cancel lands): drain it like the others.
    pub(crate) fn admitted_while_draining<T: ConnTable>(
        &mut self,
        table: &mut T,
        key: usize,
        now: Instant,
    ) {
        if self.drain.draining() {
            let (deferred, settled) = table.start_drain(key, now);
            if deferred {
                self.drain.deferred(now);
            }
            self.settled(key, settled);
        }
    }

    /// Shutdown: apply the drain to every connection. Returns false when it had
    /// started already. The loop stops accepting itself.
    pub(crate) fn begin_drain<T: ConnTable>(&mut self, table: &mut T, now: Instant) -> bool {
        if !self.drain.begin(now, self.drain_timeout) {
            return false;
        }
        let keys = table.keys();
        tracing::debug!("worker {}: draining {} connection(s)", self.id, keys.len());
        for key in keys {
            let (deferred, settled) = table.start_drain(key, now);
            if deferred {
                self.drain.deferred(now);
            }
            self.settled(key, settled);
        }
        true
    }

    /// When the loop must wake next (a timer of the core, or the accept back-off).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.accept.paused_until(),
            self.lingering.next(),
            self.drain.next(),
            self.sweep.next(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Run what is due at `now`: the sweep of the connections' timers, lingers that
    /// ran out, the end of the fresh-connection grace, the drain deadline. Returns
    /// whether the accept back-off just ended (the loop watches the listener again).
    pub(crate) fn run_timers<T: ConnTable>(&mut self, table: &mut T, now: Instant) -> bool {
        if self.sweep.due(now, !table.is_empty(), self.sweep_every) {
            for key in table.keys() {
                let settled = table.on_timeout(key, now);
                self.settled(key, settled);
            }
        }
        while let Some((key, serial)) = self.lingering.pop_due(now) {
            if table.serial(key) == Some(serial) {
                table.close(key);
            }
        }
        if self.drain.grace_over(now) {
            for key in table.keys() {
                let settled = table.end_grace(key, now);
                self.settled(key, settled);
            }
        }
        if self.drain.force_due(now) && !table.is_empty() {
            let keys = table.keys();
            tracing::warn!(
                "worker {}: drain deadline passed; closing {} connection(s)",
                self.id,
                keys.len()
            );
            WorkerStats::add(&table.stats().drain_forced, keys.len() as u64);
            for key in keys {
                table.close(key);
            }
        }
        self.accept.resume_due(now)
    }

    /// The loop is done: drained and no connection left.
    pub(crate) fn finished<T: ConnTable>(&self, table: &T) -> bool {
        self.drain.draining() && table.is_empty()
    }
}
