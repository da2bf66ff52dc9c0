//! The hand-off structures the dispatcher and the workers share (the connection table,
//! the run queue), and the worker side: serve a connection, then park and re-arm it
//! or close it. The invariants are in the [parent module](super)'s documentation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use c10k_proto::{Cx, Session};
use rustix::event::epoll::{self, EventData, EventFlags};
use slab::Slab;

use crate::conn::{Bufs, ReadyConn};
use crate::lifecycle::mailbox::{Inbox, Letter};
use crate::lifecycle::{Armed, Env, Limits, LingerQueue, Phase};
use crate::stats::{OpenConns, WorkerStats};

/// Generations use 31 bits, so a connection's token never has the top bit set and
/// cannot collide with the dispatcher's fixed tokens (listener, wake pipe, eventfd),
/// which all have it set.
pub(super) const GEN_MASK: u32 = 0x7fff_ffff;

/// A connection's epoll token: generation in the high half, slab key in the low.
pub(super) fn token(key: usize, generation: u32) -> u64 {
    (u64::from(generation & GEN_MASK) << 32) | (key as u64 & 0xffff_ffff)
}

/// The inverse of [`token`].
pub(super) fn untoken(token: u64) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

/// Lock, ignoring poison: no code panics while holding these locks (session code runs
/// outside them), and a worker's panic is caught and its connection closed.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a readiness report said.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ready {
    pub(super) readable: bool,
    pub(super) writable: bool,
    /// Hang-up or error: read on to find out.
    pub(super) hup: bool,
}

/// A connection and the pool's flags for it; moves between slot, queue and worker.
pub(super) struct Entry<S> {
    pub(super) conn: ReadyConn<S>,
    /// Its linger and session timer, as queued in the table.
    pub(super) armed: Armed,
    /// Letters from its mailbox, delivered by the worker that serves it next.
    pub(super) letters: Vec<Letter>,
}

/// A connection's place in the table.
pub(super) struct Slot<S> {
    /// Tells this connection from an earlier one with the same key.
    pub(super) generation: u32,
    /// `Some`: parked (armed in epoll). `None`: out (queued or with a worker).
    pub(super) entry: Option<Box<Entry<S>>>,
    /// Close it when its owner settles it (set by the dispatcher while it is out).
    pub(super) doomed: bool,
    /// Letters that came while it was out: its owner serves it again instead of
    /// parking it.
    pub(super) letters: Vec<Letter>,
    /// Its session timer came due while it was out: its owner checks the timers
    /// instead of parking it.
    pub(super) recheck: bool,
}

/// Every open connection, by key.
pub(super) struct Table<S> {
    pub(super) slots: Slab<Slot<S>>,
    /// Lingering connections by deadline (the serial is the generation).
    pub(super) lingering: LingerQueue,
    /// Sessions' own timers `(at, key, generation)`, earliest first (entries may be
    /// stale: the worker checks the session's current deadline).
    pub(super) session_timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    /// Shutdown has started (set once, by the dispatcher).
    pub(super) draining: bool,
    /// Set with `draining`: when the drain of connections that had not received a
    /// byte yet stops being deferred ([`ReadyConn::start_drain`]).
    pub(super) fresh_grace_end: Option<Instant>,
    pub(super) next_generation: u32,
}

impl<S> Table<S> {
    /// The next linger deadline or session timer.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        let timer = self.session_timers.peek().map(|t| t.0.0);
        [self.lingering.next(), timer].into_iter().flatten().min()
    }
}

/// A ready connection on its way to a worker.
pub(super) struct Job<S> {
    pub(super) key: usize,
    pub(super) generation: u32,
    pub(super) entry: Box<Entry<S>>,
    pub(super) ready: Ready,
    /// Taken out by the dispatcher's timer sweep, not by a readiness report: check the
    /// idle and request timers instead of reading or writing.
    pub(super) timers: bool,
}

/// The run queue.
pub(super) struct Queue<S> {
    pub(super) jobs: VecDeque<Job<S>>,
    /// Workers waiting on the condvar.
    pub(super) idle: usize,
    /// No more jobs will come: workers exit once it is empty.
    pub(super) closed: bool,
}

/// What the dispatcher and the workers share.
pub(super) struct Shared<S> {
    pub(super) epoll: OwnedFd,
    /// Workers write to it to wake the dispatcher (a new linger timer, an emptied table).
    pub(super) nudge: OwnedFd,
    pub(super) table: Mutex<Table<S>>,
    pub(super) queue: Mutex<Queue<S>>,
    pub(super) work: Condvar,
    /// `--output-cap`, `--idle-timeout` and `--header-timeout`.
    pub(super) limits: Limits,
    /// The pool's counters, shared by the dispatcher and every worker.
    pub(super) stats: Arc<WorkerStats>,
    /// Messages posted to the pool's connections (watched by the dispatcher).
    pub(super) inbox: Arc<Inbox>,
    pub(super) open: Arc<OpenConns>,
}

impl<S: Session> Shared<S> {
    /// A worker: serve jobs until the queue is closed and empty.
    pub(super) fn work_loop(&self, n: usize) {
        let mut bufs = Bufs::new();
        let mut cx = Cx::new(SystemTime::now());
        while let Some(job) = self.next_job() {
            cx.set_now(SystemTime::now());
            cx.set_instant(Instant::now());
            let (key, generation) = (job.key, job.generation);
            let served = catch_unwind(AssertUnwindSafe(|| self.serve(job, &mut bufs, &cx)));
            if served.is_err() {
                tracing::error!("pool worker {n}: a session panicked; closing its connection");
                // The buffers may hold half a reply of the lost connection.
                bufs = Bufs::new();
                self.lost(key, generation);
            }
        }
    }

    /// The next job, waiting for one; `None` once the queue is closed and empty.
    pub(super) fn next_job(&self) -> Option<Job<S>> {
        let mut q = lock(&self.queue);
        loop {
            if let Some(job) = q.jobs.pop_front() {
                return Some(job);
            }
            if q.closed {
                return None;
            }
            q.idle += 1;
            q = self.work.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.idle -= 1;
        }
    }

    /// Serve one ready connection, then hand it back (step 3 and 4).
    pub(super) fn serve(&self, job: Job<S>, bufs: &mut Bufs, cx: &Cx) {
        let Job {
            key,
            generation,
            mut entry,
            ready,
            timers,
        } = job;
        let inbox = &self.inbox;
        let make = || Some(inbox.mailbox(key, u64::from(generation)));
        let env = Env {
            cx,
            now: std::time::Instant::now(),
            stats: &self.stats,
            limits: &self.limits,
            mailbox: Some(&make),
        };
        let conn = &mut entry.conn;
        if !entry.letters.is_empty() {
            for letter in std::mem::take(&mut entry.letters) {
                conn.queue_letter(bufs, &env, letter);
            }
            conn.after_letters(bufs, &env);
        }
        if timers {
            conn.on_timeout(bufs, &env);
        } else {
            if (ready.writable || ready.hup) && conn.wants_write() {
                conn.on_writable(bufs, &env, false);
            }
            if ready.readable || ready.hup {
                conn.on_readable(bufs, &env, false, ready.hup);
            }
        }
        self.settle(key, generation, entry, bufs, &env);
    }

    /// Close the connection, or park it and re-arm its one-shot registration.
    pub(super) fn settle(
        &self,
        key: usize,
        generation: u32,
        mut entry: Box<Entry<S>>,
        bufs: &mut Bufs,
        env: &Env<'_>,
    ) {
        let mut table = lock(&self.table);
        if table.draining {
            // Session code runs outside the lock. `draining` never goes back to
            // false, so once applied here nothing more is needed below.
            let grace_over = table.fresh_grace_end.is_none_or(|t| Instant::now() >= t);
            drop(table);
            apply_drain(&mut entry, bufs, env, grace_over);
            table = lock(&self.table);
        }
        let t = &mut *table;
        let phase = entry.conn.phase();
        let (doomed, again) = match t.slots.get_mut(key) {
            Some(slot) if slot.generation == generation && slot.entry.is_none() => {
                entry.letters.append(&mut slot.letters);
                let recheck = std::mem::take(&mut slot.recheck);
                (
                    slot.doomed,
                    (!entry.letters.is_empty() || recheck).then_some(recheck),
                )
            }
            // Cannot happen (only the owner removes an out slot); close it rather
            // than park it somewhere it could not be found.
            _ => {
                drop(table);
                self.closed(entry);
                debug_assert!(false, "pool: slot {key} vanished while out");
                return;
            }
        };
        if doomed || phase == Phase::Done {
            t.slots.remove(key);
            let wake = t.draining && t.slots.is_empty();
            drop(table);
            self.closed(entry);
            if wake {
                self.wake_reactor();
            }
            return;
        }
        let mut wake = false;
        let settled = entry.armed.settle(entry.conn.core(), u64::from(generation));
        if let Some(deadline) = settled.linger {
            wake = t.lingering.is_empty();
            t.lingering.push(deadline, key, u64::from(generation));
        }
        if let Some(at) = settled.timer {
            wake |= t.session_timers.peek().is_none_or(|first| at < first.0.0);
            t.session_timers.push(Reverse((at, key, generation)));
        }
        if let Some(timers) = again {
            // Letters came (or its timer) while it was out: serve it again rather
            // than park it (it stays out).
            drop(table);
            self.requeue(Job {
                key,
                generation,
                entry,
                ready: Ready::default(),
                timers,
            });
            if wake {
                self.wake_reactor();
            }
            return;
        }
        let flags = interest(&entry.conn, self.limits.output_cap);
        let Some(slot) = t.slots.get_mut(key) else {
            return; // checked above
        };
        let parked = slot.entry.insert(entry);
        let armed = epoll::modify(
            &self.epoll,
            parked.conn.stream(),
            EventData::new_u64(token(key, generation)),
            flags,
        );
        if armed.is_err() {
            let entry = slot.entry.take();
            t.slots.remove(key);
            wake |= t.draining && t.slots.is_empty();
            drop(table);
            if let Some(entry) = entry {
                WorkerStats::add(&self.stats.io_errors, 1);
                self.closed(entry);
            }
        } else {
            drop(table);
        }
        if wake {
            self.wake_reactor();
        }
    }

    /// Put a job back on the run queue (a connection that must be served again).
    pub(super) fn requeue(&self, job: Job<S>) {
        let idle = {
            let mut q = lock(&self.queue);
            q.jobs.push_back(job);
            q.idle
        };
        if idle > 0 {
            self.work.notify_one();
        }
    }

    /// A session panicked while its connection was out: the entry is gone (dropped by
    /// the unwind, which closed the socket); remove its slot.
    pub(super) fn lost(&self, key: usize, generation: u32) {
        let mut table = lock(&self.table);
        let ours = table
            .slots
            .get(key)
            .is_some_and(|s| s.generation == generation && s.entry.is_none());
        if ours {
            table.slots.remove(key);
        }
        let wake = table.draining && table.slots.is_empty();
        drop(table);
        if ours {
            self.open.release();
            WorkerStats::add(&self.stats.io_errors, 1);
            WorkerStats::add(&self.stats.closed, 1);
        }
        if wake {
            self.wake_reactor();
        }
    }

    /// Close a connection whose slot is already removed.
    pub(super) fn closed(&self, entry: Box<Entry<S>>) {
        drop(entry);
        self.open.release();
        WorkerStats::add(&self.stats.closed, 1);
    }

    pub(super) fn wake_reactor(&self) {
        // A full counter (never, at one per wake) or any other error: the dispatcher
        // still wakes at its next timer.
        let _ = rustix::io::write(&self.nudge, &1u64.to_ne_bytes());
    }
}

/// The drain, as a worker applies it to the connection it owns (outside the table
/// lock). The first time: [`ReadyConn::start_drain`] (which takes in what the kernel
/// has already received: a request in flight is not an idle connection, and the
/// drain sweep's jobs carry no readiness); a connection without a single byte yet
/// stays open (its first request is most likely on the way), and the core applies
/// the drain after that request, or once `grace_over` (the dispatcher's timer sweep
/// hands such parked connections back after the grace). The core closes an idle
/// connection whose drain applies.
fn apply_drain<S: Session>(entry: &mut Entry<S>, bufs: &mut Bufs, env: &Env<'_>, grace_over: bool) {
    let conn = &mut entry.conn;
    if !conn.core().drain_started() {
        conn.start_drain(bufs, env);
    }
    if grace_over {
        conn.end_grace(bufs, env);
    }
}

/// What a parked connection is armed for: one report, for what it wants now.
pub(super) fn interest<S: Session>(conn: &ReadyConn<S>, output_cap: usize) -> EventFlags {
    let mut flags = EventFlags::ONESHOT;
    if conn.wants_read(output_cap) {
        // RDHUP only while reading: a half-closed peer keeps it raised, and a
        // connection that is not reading would be reported on every wait.
        flags |= EventFlags::IN | EventFlags::RDHUP;
    }
    if conn.wants_write() {
        flags |= EventFlags::OUT;
    }
    flags
}

/// The dispatcher wants a connection closed: close it now if parked (removing its slot
/// under the table lock), or doom it so its owner closes it.
pub(super) fn close_or_doom<S>(
    t: &mut Table<S>,
    key: usize,
    generation: u32,
    to_close: &mut Vec<Box<Entry<S>>>,
) {
    let Some(slot) = t.slots.get_mut(key) else {
        return;
    };
    if slot.generation != generation {
        return;
    }
    match slot.entry.take() {
        Some(entry) => {
            t.slots.remove(key);
            to_close.push(entry);
        }
        None => slot.doomed = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_collide_with_the_fixed_ones() {
        for (key, generation) in [(0, 0), (7, 1), (0xffff_fffe, GEN_MASK), (3, 12345)] {
            let t = token(key, generation);
            assert_eq!(untoken(t), (key, generation));
            assert!(t < super::super::NUDGE, "below every fixed token");
        }
    }
}
