//! [`WorkerCore`]: one event loop's lifecycle, written once for the readiness reactor
//! and io_uring (the pool's reactor uses its parts: [`DrainClock`], the sweep clock
//! and the accept guard): the drain deadline, the fresh-connection grace, the linger
//! queue, the timer sweep and the accept back-off.
//!
//! A loop keeps its connections in a table and lends them to the worker core through
//! [`ConnTable`]: the core decides *when* (a timer, the drain), the table does the
//! I/O a decision needs (read before judging, cancel, close) and reports how the
//! connection settled.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use c10k_proto::Session;
use slab::Slab;

use super::ConnCore;
use crate::accept::AcceptGuard;
use crate::config::DRAIN_FRESH_GRACE;
use crate::stats::WorkerStats;
use crate::timers::{SweepClock, sweep_interval};

/// How a connection stands after a table served it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Settled {
    /// It was closed (or is gone).
    pub(crate) closed: bool,
    /// It started lingering: close it at this deadline unless it closes first.
    pub(crate) linger: Option<Instant>,
    /// Its session asked for a timer at this instant (new since the last settle).
    pub(crate) timer: Option<Instant>,
    /// The connection's serial (for the queued timers).
    pub(crate) serial: u64,
}

impl Settled {
    /// Still open, nothing new to schedule.
    pub(crate) const OPEN: Settled = Settled {
        closed: false,
        linger: None,
        timer: None,
        serial: 0,
    };
    /// Closed.
    pub(crate) const CLOSED: Settled = Settled {
        closed: true,
        linger: None,
        timer: None,
        serial: 0,
    };
}

/// What a loop remembers per connection so that each linger and each session timer
/// is reported to the worker core once ([`Armed::settle`]).
#[derive(Debug, Default)]
pub(crate) struct Armed {
    linger: bool,
    timer: Option<Instant>,
}

impl Armed {
    /// How `core` stands after it was served: closed, or open with a linger or a
    /// session timer to queue when they are new.
    pub(crate) fn settle<S: Session>(&mut self, core: &ConnCore<S>, serial: u64) -> Settled {
        if core.is_closed() {
            return Settled::CLOSED;
        }
        let mut settled = Settled {
            serial,
            ..Settled::OPEN
        };
        if !self.linger {
            if let Some(deadline) = core.linger_deadline() {
                self.linger = true;
                settled.linger = Some(deadline);
            }
        }
        let timer = core.session_deadline();
        if timer != self.timer {
            self.timer = timer;
            settled.timer = timer;
        }
        settled
    }
}

/// A table entry's serial: tells a reused key from the connection a timer was set
/// for.
pub(crate) trait Keyed {
    fn serial(&self) -> u64;
}

/// The keys of a table's connections (a copy: serving one may close others).
pub(crate) fn keys<T: ConnTable + ?Sized>(table: &T) -> Vec<usize> {
    table.slots().iter().map(|(k, _)| k).collect()
}

/// The serial of the connection at `key`, if open.
fn serial_of<T: ConnTable + ?Sized>(table: &T, key: usize) -> Option<u64> {
    table.slots().get(key).map(Keyed::serial)
}

/// An event loop's connections, as the worker core sees them.
pub(crate) trait ConnTable {
    /// The sessions the table holds.
    type Session: Session;
    /// What the table keeps per connection.
    type Entry: Keyed;
    /// The open connections, by key.
    fn slots(&self) -> &Slab<Self::Entry>;
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
    /// Sessions' own timers `(at, key, serial)`, earliest first. An entry may be
    /// stale (the session moved or dropped its timer): firing one early is harmless,
    /// the core checks the session's current deadline.
    session_timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
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
            session_timers: BinaryHeap::new(),
            id,
        }
    }

    /// Draining has started.
    pub(crate) fn draining(&self) -> bool {
        self.drain.draining()
    }

    /// A connection settled: start its linger timer when it began lingering, queue
    /// its session's timer when it asked for a new one.
    pub(crate) fn settled(&mut self, key: usize, settled: Settled) {
        if let Some(deadline) = settled.linger {
            self.lingering.push(deadline, key, settled.serial);
        }
        if let Some(at) = settled.timer {
            self.session_timers.push(Reverse((at, key, settled.serial)));
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
        let keys = keys(table);
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
            self.session_timers.peek().map(|t| t.0.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Run what is due at `now`: the sweep of the connections' timers, lingers that
    /// ran out, the end of the fresh-connection grace, the drain deadline. Returns
    /// whether the accept back-off just ended (the loop watches the listener again).
    pub(crate) fn run_timers<T: ConnTable>(&mut self, table: &mut T, now: Instant) -> bool {
        if self
            .sweep
            .due(now, !table.slots().is_empty(), self.sweep_every)
        {
            for key in keys(table) {
                let settled = table.on_timeout(key, now);
                self.settled(key, settled);
            }
        }
        while let Some(&Reverse((at, key, serial))) = self.session_timers.peek() {
            if at > now {
                break;
            }
            self.session_timers.pop();
            if serial_of(table, key) == Some(serial) {
                let settled = table.on_timeout(key, now);
                self.settled(key, settled);
            }
        }
        while let Some((key, serial)) = self.lingering.pop_due(now) {
            if serial_of(table, key) == Some(serial) {
                table.close(key);
            }
        }
        if self.drain.grace_over(now) {
            for key in keys(table) {
                let settled = table.end_grace(key, now);
                self.settled(key, settled);
            }
        }
        if self.drain.force_due(now) && !table.slots().is_empty() {
            let keys = keys(table);
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
        self.drain.draining() && table.slots().is_empty()
    }
}

#[cfg(test)]
mod tests {
    //! The worker core over an in-memory table of cores: drain, grace, linger,
    //! sweep and the forced close, without a socket.
    use super::*;
    use crate::config::DRAIN_QUIET;
    use crate::lifecycle::{Env, LoopClock, OutputPool, Phase};
    use c10k_proto::echo::{EchoApp, EchoSession};
    use c10k_proto::{App, Peer};

    struct TestEntry {
        core: ConnCore<EchoSession>,
        serial: u64,
        armed: Armed,
    }

    impl Keyed for TestEntry {
        fn serial(&self) -> u64 {
            self.serial
        }
    }

    struct Table {
        slab: Slab<TestEntry>,
        clock: LoopClock,
        stats: WorkerStats,
        pool: OutputPool,
        closed: Vec<usize>,
    }

    impl Table {
        fn new(config: &crate::config::Config) -> Self {
            Table {
                slab: Slab::new(),
                clock: LoopClock::new(config),
                stats: WorkerStats::default(),
                pool: OutputPool::default(),
                closed: Vec::new(),
            }
        }

        fn open(&mut self, now: Instant, first: Option<&[u8]>) -> usize {
            let mut core = ConnCore::new(EchoApp.open(&Peer::unknown()), now);
            if let Some(data) = first {
                let env = self.clock.env(now, &self.stats, None);
                core.received(&env, data, &mut self.pool);
                let n = core.transmit().len();
                core.sent(&env, n, &mut self.pool);
            }
            let serial = self.slab.len() as u64 + 1;
            self.slab.insert(TestEntry {
                core,
                serial,
                armed: Armed::default(),
            })
        }

        /// Serve `f` on a connection, then settle it like a loop does.
        fn act(
            &mut self,
            key: usize,
            now: Instant,
            f: impl FnOnce(&mut ConnCore<EchoSession>, &Env<'_>, &mut OutputPool),
        ) -> Settled {
            let Some(e) = self.slab.get_mut(key) else {
                return Settled::OPEN;
            };
            f(
                &mut e.core,
                &self.clock.env(now, &self.stats, None),
                &mut self.pool,
            );
            let _ = e.core.take_shutdown_write();
            let settled = e.armed.settle(&e.core, e.serial);
            if settled.closed {
                self.close(key);
            }
            settled
        }

        fn phase(&self, key: usize) -> Option<Phase> {
            self.slab.get(key).map(|e| e.core.phase())
        }
    }

    impl ConnTable for Table {
        type Session = EchoSession;
        type Entry = TestEntry;
        fn slots(&self) -> &Slab<TestEntry> {
            &self.slab
        }
        // Like a driver, each reads until it would block (nothing is waiting here).
        fn on_timeout(&mut self, key: usize, now: Instant) -> Settled {
            self.act(key, now, |c, env, pool| {
                c.on_timeout(env, pool);
            })
        }
        fn end_grace(&mut self, key: usize, now: Instant) -> Settled {
            self.act(key, now, |c, env, pool| {
                c.read_would_block(env, pool);
                c.end_grace(env, pool);
            })
        }
        fn start_drain(&mut self, key: usize, now: Instant) -> (bool, Settled) {
            let mut deferred = false;
            let s = self.act(key, now, |c, env, pool| {
                c.read_would_block(env, pool);
                deferred = c.start_drain(env, false, pool)
            });
            (deferred, s)
        }
        fn close(&mut self, key: usize) {
            if self.slab.try_remove(key).is_some() {
                self.closed.push(key);
            }
        }
        fn stats(&self) -> &WorkerStats {
            &self.stats
        }
    }

    fn config() -> crate::config::Config {
        crate::config::Config::default()
    }

    #[test]
    fn drain_lingers_the_idle_defers_the_fresh_and_the_grace_ends_the_deferral() {
        let config = config();
        let mut table = Table::new(&config);
        let mut w = WorkerCore::new(0, &config);
        let t0 = Instant::now();
        let served = table.open(t0, Some(b"hi"));
        let fresh = table.open(t0, None);
        assert!(w.begin_drain(&mut table, t0));
        assert!(!w.begin_drain(&mut table, t0), "once");
        assert_eq!(
            table.phase(served),
            Some(Phase::Open),
            "idle: quiet for a moment first"
        );
        assert_eq!(table.phase(fresh), Some(Phase::Open), "deferred");
        let quiet = t0 + DRAIN_QUIET;
        assert_eq!(
            w.next_deadline(),
            Some(quiet),
            "the quiet period ends first"
        );
        w.run_timers(&mut table, quiet);
        assert_eq!(table.phase(served), Some(Phase::Lingering));
        let grace = t0 + DRAIN_FRESH_GRACE;
        assert_eq!(w.next_deadline(), Some(grace), "then the grace");
        w.run_timers(&mut table, grace);
        w.run_timers(&mut table, grace + DRAIN_QUIET);
        assert_eq!(table.phase(fresh), Some(Phase::Lingering));
        // Both linger until LINGER after they started; the earlier goes first.
        assert!(
            w.next_deadline()
                .is_some_and(|t| t <= quiet + LINGER_FOR_TEST)
        );
        w.run_timers(&mut table, quiet + LINGER_FOR_TEST);
        assert_eq!(table.closed, vec![served]);
        w.run_timers(&mut table, grace + DRAIN_QUIET + LINGER_FOR_TEST);
        assert_eq!(table.closed, vec![served, fresh]);
        assert!(w.finished(&table));
    }

    const LINGER_FOR_TEST: Duration = crate::config::LINGER;

    #[test]
    fn the_drain_deadline_closes_what_is_left_and_counts_it() {
        let config = config();
        let mut table = Table::new(&config);
        let mut w = WorkerCore::new(0, &config);
        let t0 = Instant::now();
        let busy = table.open(t0, None);
        // Unsent output makes it busy: the drain waits for it.
        table.act(busy, t0, |c, env, pool| c.received(env, b"unsent", pool));
        w.begin_drain(&mut table, t0);
        assert_eq!(table.phase(busy), Some(Phase::Open));
        let deadline = t0 + config.drain_timeout;
        w.run_timers(&mut table, deadline - Duration::from_millis(1));
        assert!(!w.finished(&table));
        w.run_timers(&mut table, deadline);
        assert!(w.finished(&table));
        assert_eq!(WorkerStats::get(&table.stats.drain_forced), 1);
    }

    #[test]
    fn the_sweep_runs_the_connections_timers() {
        let mut config = config();
        config.idle_timeout = Duration::from_secs(4);
        let mut table = Table::new(&config);
        let mut w = WorkerCore::new(0, &config);
        let t0 = Instant::now();
        let key = table.open(t0, None);
        // The first look starts the sweep clock; sweeps come every second then.
        w.run_timers(&mut table, t0);
        let every = Duration::from_secs(1);
        for i in 1..=4 {
            assert_eq!(w.next_deadline(), Some(t0 + every * i));
            w.run_timers(&mut table, t0 + every * i);
        }
        assert_eq!(
            table.phase(key),
            Some(Phase::Lingering),
            "idle timeout at 4 s"
        );
        assert_eq!(WorkerStats::get(&table.stats.timeouts_idle), 1);
    }

    #[test]
    fn a_linger_or_timer_for_a_reused_key_does_not_touch_the_new_connection() {
        let config = config();
        let mut table = Table::new(&config);
        let mut w = WorkerCore::new(0, &config);
        let t0 = Instant::now();
        w.settled(
            7,
            Settled {
                linger: Some(t0),
                timer: Some(t0),
                serial: 99,
                ..Settled::OPEN
            },
        );
        let key = table.open(t0, None);
        w.run_timers(&mut table, t0);
        assert!(table.closed.is_empty());
        assert_eq!(table.phase(key), Some(Phase::Open));
    }
}
