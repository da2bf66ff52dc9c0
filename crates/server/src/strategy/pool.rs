//! `pool`, the dispatcher of the C10K answers: one dispatcher thread waits for readiness
//! with epoll and hands each ready connection to a fixed pool of worker threads
//! (`--workers N`), which read, run the session and write.
//!
//! This file is the dispatcher (accept, readiness, timers, drain); `pool/handoff.rs` holds
//! the structures it shares with the workers and the worker side; `pool/model.rs` (a
//! test) checks the protocol below over every interleaving of a small model.
//!
//! # The hand-off
//!
//! Three places can hold a connection (a boxed [`Entry`]: the shared [`Conn`] driver
//! plus the pool's per-connection flags), and it is in exactly one of them at a time,
//! because it is *moved*, never shared:
//!
//! - **parked**: in its [`Slot`] of the table (`Mutex<Table>`), `slot.entry == Some`.
//!   A parked connection is registered in epoll with `EPOLLONESHOT` and armed (or, for
//!   the instant between parking and `EPOLL_CTL_MOD`, still under the table lock that
//!   parked it, so nobody can observe it disarmed).
//! - **queued**: inside a [`Job`] in the run queue (`Mutex<VecDeque<Job>>` and a
//!   `Condvar`); its slot says `entry == None` ("out").
//! - **served**: owned by the one worker that popped the job; the slot still says out.
//!
//! The moves, and who makes them:
//!
//! 1. accept (dispatcher): a new slot with the entry parked, then `EPOLL_CTL_ADD` with
//!    `EPOLLONESHOT`, both under the table lock.
//! 2. readiness (dispatcher): epoll reports the token `(generation, key)`; the one-shot
//!    registration is now disarmed, so the kernel reports nothing more for it. The
//!    dispatcher takes the entry out of the slot (if the slot still has that generation
//!    and the entry is parked) and queues a job.
//! 3. a worker pops the job; it alone owns the connection and calls
//!    [`Conn::on_writable`]/[`Conn::on_readable`] (level-triggered, `edge = false`).
//! 4. the worker settles it, under the table lock: close it (done, or doomed: see
//!    below) by removing the slot, or park it and re-arm it with `EPOLL_CTL_MOD`
//!    (thread-safe) for what it now wants (`IN|RDHUP` unless backpressured, `OUT` while
//!    output is pending). Parking *before* re-arming is what makes step 2 always find
//!    the entry: armed implies parked.
//!
//! **Never lost.** A connection leaves epoll's watch only by a one-shot report, which
//! the dispatcher turns into a job, and every job ends in step 4, which either closes the
//! connection or re-arms it. Level-triggered readiness is re-evaluated by
//! `EPOLL_CTL_MOD`: data that arrived while a worker held the connection is reported at
//! once after re-arming, so no wake-up is missed. A report for a connection that is out
//! (possible only in the drain sweep below, which takes parked connections out while
//! still armed) is ignored, and that is safe for the same reason: the owner re-arms
//! when done, and the readiness is reported again.
//!
//! **Never served twice, never out of order.** The entry is moved, so at most one
//! worker can hold it (the type system enforces this, not a convention). A one-shot
//! registration produces at most one report until re-armed, and it is re-armed only
//! after the worker has put the entry back. Bytes of a connection are read only by
//! its current owner, so they reach the session in order. A report whose generation
//! does not match the slot's (a key reused after a close) finds nothing to take.
//!
//! **Closed while queued.** Only the owner closes a connection it holds. If the peer
//! closes while the job waits in the queue, the worker finds the EOF or the error when
//! it reads. If the *dispatcher* wants it closed while it is out (its linger time is up,
//! or the drain deadline passed), it marks the slot `doomed`; the worker closes it
//! instead of parking it. A parked connection the dispatcher closes itself: remove the
//! slot and drop the entry under the table lock, so no worker can be re-arming it.
//!
//! **Drain.** On shutdown the dispatcher stops watching the wake pipe, drops the
//! listener, sets `table.draining` and moves every parked connection to the queue (a
//! job with no readiness). A worker settling any connection while `draining` is set
//! applies the drain first, outside the lock, and only then parks it: once, it reads
//! what the kernel already holds (edge-style, until `EAGAIN`: a request in flight is
//! not an idle connection) and calls [`Conn::start_drain_unless_fresh`]; then it
//! closes the connection gracefully when idle. A connection that has not received a
//! byte yet is deferred instead (its first request is most likely on the way): it is
//! parked and re-armed as usual, [`Conn::on_readable`] applies the drain once its
//! first bytes are served, and after `DRAIN_FRESH_GRACE` (`table.fresh_grace_end`)
//! the timer sweep below takes a parked one that is still deferred out like a due
//! timer, and the worker (seeing the grace over) reads once more and applies the
//! drain. Because the flag is read under the same lock that parks, a connection is
//! either swept by the dispatcher or sees the flag: none stays idle and open (a
//! deferred one at most until the next sweep after the grace). Lingering connections
//! are closed by their linger timer, in-flight ones finish, and at `--drain-timeout`
//! the dispatcher closes the parked ones and dooms the rest. The dispatcher exits when the
//! table is empty, then closes the queue and joins the workers.
//!
//! **Timers** (linger deadlines, the EMFILE back-off, the drain deadline, and a sweep
//! of the parked connections' idle and request timers once a second) belong to the
//! dispatcher; a connection whose idle or request timer is due is taken out of its slot
//! exactly like the drain sweep takes it, and a worker checks its timers and settles
//! it. A worker that starts a connection's linger appends it to the table's FIFO
//! (every linger is equally long) and, if the FIFO was empty, wakes the dispatcher
//! through an eventfd so its `epoll_wait` timeout is recomputed. The eventfd also wakes
//! it when a draining table becomes empty.
//!
//! # Why these structures
//!
//! - **One shared run queue** (`Mutex<VecDeque>` + `Condvar`), not a channel per
//!   worker: any idle worker takes the next ready connection, so one slow request does
//!   not hold up the connections queued behind it, which is the point of a pool.
//!   The dispatcher wakes at most as many workers as there are jobs and idle workers
//!   (std's `notify_one` is a futex syscall even with nobody waiting).
//! - **One `Mutex<Slab>` table**: epoll hands back a `u64`, so the connection must be
//!   findable by key; the lock is held for a few operations (and one `epoll_ctl` when
//!   parking). Sharding it is the next step if it shows up in profiles.
//! - **Boxed entries**: a hand-off moves a pointer, not a session.
//!
//! The cost, per request: the dispatcher's wake-up, two acquisitions of the table lock
//! and two of the queue lock (the dispatcher's side batched per `epoll_wait`), a futex
//! wake and a context switch to a worker, and an `EPOLL_CTL_MOD` to re-arm. That is the price of letting a blocking or slow session
//! run without stalling other connections.
//!
//! A session that panics closes its connection (the worker catches the unwind and
//! removes the slot), so a pool never shrinks and a drain never waits for a lost
//! connection.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use c10k_proto::{App, Peer, Session};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, eventfd};
use rustix::io::Errno;
use slab::Slab;

use super::WorkerCtx;
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::conn::ReadyConn;
use crate::lifecycle::mailbox::Inbox;
use crate::lifecycle::{Armed, DrainClock, Limits, LingerQueue};
use crate::ratelog::RateLog;
use crate::stats::WorkerStats;
use crate::timers::sweep_interval;

mod handoff;
#[cfg(test)]
mod model;

use handoff::{
    Entry, GEN_MASK, Job, Queue, Ready, Shared, Slot, Table, close_or_doom, lock, token, untoken,
};

/// Token of the listener.
const LISTENER: u64 = u64::MAX;
/// Token of the shutdown pipe.
const WAKE: u64 = u64::MAX - 1;
/// Token of the eventfd workers use to wake the dispatcher.
const NUDGE: u64 = u64::MAX - 2;
/// Token of the inbox (messages posted to the pool's connections).
const MAIL: u64 = u64::MAX - 3;
/// Connections accepted per listener report (the listener is level-triggered).
const ACCEPT_BATCH: usize = 64;

/// Run the pool: the dispatcher on this thread, `--workers` threads of workers. Returns
/// once every connection is closed after shutdown and the workers have exited.
pub(crate) fn run<A: App>(ctx: WorkerCtx<A>) -> io::Result<()> {
    let WorkerCtx {
        id,
        app,
        listener,
        local_addr,
        shared_listener: _,
        config,
        shutdown,
        stats,
        open,
        ..
    } = ctx;
    let shared = Arc::new(Shared {
        epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        nudge: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        table: Mutex::new(Table {
            slots: Slab::new(),
            lingering: LingerQueue::default(),
            session_timers: BinaryHeap::new(),
            draining: false,
            fresh_grace_end: None,
            next_generation: 0,
        }),
        queue: Mutex::new(Queue {
            jobs: VecDeque::new(),
            idle: 0,
            closed: false,
        }),
        work: Condvar::new(),
        limits: Limits::of(&config),
        stats,
        inbox: Inbox::new()?,
        open,
    });
    // The shutdown pipe and the eventfd stay level-triggered and armed.
    let level_in = EventFlags::IN;
    epoll::add(
        &shared.epoll,
        shutdown.wake_fd(),
        EventData::new_u64(WAKE),
        level_in,
    )?;
    epoll::add(
        &shared.epoll,
        &shared.nudge,
        EventData::new_u64(NUDGE),
        level_in,
    )?;
    epoll::add(
        &shared.epoll,
        shared.inbox.fd(),
        EventData::new_u64(MAIL),
        level_in,
    )?;

    let pool_size = config.workers.max(1);
    let mut workers: Vec<JoinHandle<()>> = Vec::with_capacity(pool_size);
    let mut result = Ok(());
    for n in 0..pool_size {
        let s = Arc::clone(&shared);
        match std::thread::Builder::new()
            .name(format!("c10k-pool{n}"))
            .spawn(move || s.work_loop(n))
        {
            Ok(h) => workers.push(h),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        let mut dispatcher = Dispatcher {
            id,
            app,
            local_addr,
            max_conns: config.max_conns,
            drain_timeout: config.drain_timeout,
            shutdown_wake: shutdown,
            shared: Arc::clone(&shared),
            listener,
            listening: false,
            guard: AcceptGuard::new(),
            refused_log: RateLog::new(Duration::from_secs(1)),
            drain: DrainClock::default(),
            next_sweep: None,
            now: Instant::now(),
            jobs: Vec::new(),
            pending: Vec::new(),
        };
        result = dispatcher.run();
    }
    // Stop the workers: they finish what is queued, then exit.
    lock(&shared.queue).closed = true;
    shared.work.notify_all();
    for (n, h) in workers.into_iter().enumerate() {
        if h.join().is_err() && result.is_ok() {
            result = Err(io::Error::other(format!("pool worker {n} panicked")));
        }
    }
    result
}

/// The dispatcher thread: accepts, turns readiness into jobs, runs the timers and the
/// drain.
struct Dispatcher<A: App> {
    id: usize,
    app: Arc<A>,
    local_addr: std::net::SocketAddr,
    max_conns: usize,
    drain_timeout: Duration,
    shutdown_wake: Arc<crate::shutdown::Shutdown>,
    shared: Arc<Shared<crate::panic_guard::Guarded<A::Session>>>,
    /// The listener, until draining starts (dropping it closes it: nothing else
    /// holds it by then); and whether it is registered.
    listener: Option<Arc<TcpListener>>,
    listening: bool,
    guard: AcceptGuard,
    refused_log: RateLog,
    /// The drain deadline and the fresh-connection grace (whose end runs a sweep).
    drain: DrainClock,
    /// When parked connections' idle and request timers are checked next.
    next_sweep: Option<Instant>,
    now: Instant,
    /// Jobs gathered in one loop iteration, queued together.
    jobs: Vec<Job<crate::panic_guard::Guarded<A::Session>>>,
    /// Connection tokens reported in one loop iteration.
    pending: Vec<(u64, Ready)>,
}

impl<A: App> Dispatcher<A> {
    fn run(&mut self) -> io::Result<()> {
        self.listen()?;
        if self.shutdown_wake.is_requested() {
            self.begin_drain();
            self.dispatch();
        }
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
        let (mut empty, mut timer_front) = {
            let t = lock(&self.shared.table);
            (t.slots.is_empty(), t.next_timer())
        };
        loop {
            // Read at the end of the last iteration; a worker that changes either
            // since (the first linger, the last close of a drain) wakes us.
            if self.drain.draining() && empty {
                return Ok(());
            }
            let deadline = [
                self.guard
                    .paused_until()
                    .filter(|_| self.listener.is_some()),
                timer_front,
                self.drain.next(),
                self.next_sweep.filter(|_| !empty),
            ]
            .into_iter()
            .flatten()
            .min();
            match crate::timers::epoll_wait_until(self.shared.epoll.as_fd(), &mut events, deadline)
            {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            self.now = Instant::now();
            for ev in &events {
                let f = ev.flags;
                match ev.data.u64() {
                    LISTENER => self.accept_ready(),
                    WAKE => self.begin_drain(),
                    NUDGE => {
                        let mut buf = [0u8; 8];
                        let _ = rustix::io::read(&self.shared.nudge, &mut buf);
                    }
                    MAIL => self.take_letters(),
                    tok => self.pending.push((
                        tok,
                        Ready {
                            readable: f.contains(EventFlags::IN),
                            writable: f.contains(EventFlags::OUT),
                            hup: f
                                .intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR),
                        },
                    )),
                }
            }
            self.take_ready();
            self.sweep_timers(empty);
            self.dispatch();
            (empty, timer_front) = self.run_timers();
        }
    }

    /// The inbox is readable: hand each letter to its connection (a parked one goes
    /// to a worker with it; one that is out gets it when its owner settles it).
    fn take_letters(&mut self) {
        let mut letters = Vec::new();
        self.shared.inbox.take(&mut letters);
        let mut table = lock(&self.shared.table);
        for (key, generation, letter) in letters {
            let Some(slot) = table.slots.get_mut(key) else {
                continue;
            };
            if u64::from(slot.generation) != generation {
                continue;
            }
            match slot.entry.take() {
                Some(mut entry) => {
                    entry.letters.push(letter);
                    self.jobs.push(Job {
                        key,
                        generation: slot.generation,
                        entry,
                        ready: Ready::default(),
                        timers: false,
                    });
                }
                None => slot.letters.push(letter),
            }
        }
    }

    /// Sessions' timers that are due: a parked connection goes to a worker, which
    /// checks its timers; one that is out is checked by its owner when it settles.
    fn session_timers(&mut self, now: Instant) {
        let mut table = lock(&self.shared.table);
        let t = &mut *table;
        while let Some(&Reverse((at, key, generation))) = t.session_timers.peek() {
            if at > now {
                break;
            }
            t.session_timers.pop();
            let Some(slot) = t.slots.get_mut(key) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            match slot.entry.take() {
                Some(entry) => self.jobs.push(Job {
                    key,
                    generation,
                    entry,
                    ready: Ready::default(),
                    timers: true,
                }),
                None => slot.recheck = true,
            }
        }
    }

    /// Step 2: take the reported connections out of their slots, under one lock.
    fn take_ready(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut table = lock(&self.shared.table);
        for (tok, ready) in self.pending.drain(..) {
            let (key, generation) = untoken(tok);
            let Some(slot) = table.slots.get_mut(key) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            // `None`: out already (swept for drain while armed); its owner re-arms it
            // and the level-triggered readiness is reported again.
            if let Some(entry) = slot.entry.take() {
                self.jobs.push(Job {
                    key,
                    generation,
                    entry,
                    ready,
                    timers: false,
                });
            }
        }
    }

    /// Queue the gathered jobs and wake as many idle workers as they need.
    fn dispatch(&mut self) {
        let n = self.jobs.len();
        if n == 0 {
            return;
        }
        let idle = {
            let mut q = lock(&self.shared.queue);
            q.jobs.extend(self.jobs.drain(..));
            q.idle
        };
        if n >= idle {
            if idle > 0 {
                self.shared.work.notify_all();
            }
        } else {
            for _ in 0..n {
                self.shared.work.notify_one();
            }
        }
    }

    fn listen(&mut self) -> io::Result<()> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        epoll::add(
            &self.shared.epoll,
            l.as_fd(),
            EventData::new_u64(LISTENER),
            EventFlags::IN,
        )?;
        self.listening = true;
        Ok(())
    }

    fn unlisten(&mut self) {
        if let (true, Some(l)) = (self.listening, &self.listener) {
            let _ = epoll::delete(&self.shared.epoll, l.as_fd());
        }
        self.listening = false;
    }

    fn accept_ready(&mut self) {
        let mut batch = AcceptBatch::new(ACCEPT_BATCH);
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let s = &self.shared;
            let admission = Admission::new(&s.open, self.max_conns, &s.stats);
            let Some((stream, addr)) = batch.next(listener, &mut self.guard, self.now, admission)
            else {
                break;
            };
            let peer = Peer {
                addr,
                local: Some(self.local_addr),
            };
            let session = crate::panic_guard::open_guarded(&*self.app, &peer, &s.stats);
            if session.wants_close() {
                // Refused at open (--max-conns-per-ip): closed unread.
                s.open.release();
                WorkerStats::add(&s.stats.closed, 1);
                continue;
            }
            self.register(ReadyConn::new(stream, session, self.now));
        }
        if batch.paused() {
            self.unlisten();
        }
    }

    /// Step 1: park a new connection and arm it.
    fn register(&mut self, conn: ReadyConn<crate::panic_guard::Guarded<A::Session>>) {
        let s = &self.shared;
        let mut table = lock(&s.table);
        let t = &mut *table;
        t.next_generation = t.next_generation.wrapping_add(1) & GEN_MASK;
        let generation = t.next_generation;
        let vacant = t.slots.vacant_entry();
        let key = vacant.key();
        let entry = Box::new(Entry {
            conn,
            armed: Armed::default(),
            letters: Vec::new(),
        });
        let added = if u32::try_from(key).is_err() {
            Err(io::Error::other("connection table full"))
        } else {
            let slot = vacant.insert(Slot {
                generation,
                entry: None,
                doomed: false,
                letters: Vec::new(),
                recheck: false,
            });
            let parked = slot.entry.insert(entry);
            epoll::add(
                &s.epoll,
                parked.conn.stream(),
                EventData::new_u64(token(key, generation)),
                EventFlags::ONESHOT | EventFlags::IN | EventFlags::RDHUP,
            )
            .map_err(io::Error::from)
        };
        if let Err(e) = added {
            let slot = t.slots.try_remove(key);
            drop(table);
            drop(slot);
            WorkerStats::add(&s.stats.refused_backend, 1);
            if let Some(n) = self.refused_log.hit(self.now) {
                tracing::warn!("refused {n} connection(s): {e}");
            }
            s.open.release();
            WorkerStats::add(&s.stats.closed, 1);
        }
    }

    /// Shutdown: stop accepting and sweep every parked connection to the workers,
    /// which apply the drain.
    fn begin_drain(&mut self) {
        if !self.drain.begin(self.now, self.drain_timeout) {
            return;
        }
        // The pipe stays readable: stop watching it, or every wait would return at once.
        let _ = epoll::delete(&self.shared.epoll, self.shutdown_wake.wake_fd());
        self.unlisten();
        self.listener = None;
        let mut table = lock(&self.shared.table);
        table.draining = true;
        // The grace runs for every connection from now; the timer sweep at its end
        // hands back the connections still deferred then.
        self.drain.deferred(self.now);
        table.fresh_grace_end = self.drain.grace_end();
        let open = table.slots.len();
        for (key, slot) in table.slots.iter_mut() {
            if let Some(entry) = slot.entry.take() {
                self.jobs.push(Job {
                    key,
                    generation: slot.generation,
                    entry,
                    // Read first: bytes already in the socket (a request whose
                    // readiness report has not been handled yet) make the connection
                    // busy, not idle; with nothing waiting the read finds EAGAIN.
                    ready: Ready {
                        readable: true,
                        ..Ready::default()
                    },
                    timers: false,
                });
            }
        }
        drop(table);
        tracing::debug!("pool {}: draining {open} connection(s)", self.id);
    }

    /// About once a second (and once at the end of the drain's fresh-connection grace),
    /// hand every parked connection whose idle or request timer is
    /// due to a worker (as for a readiness report: taken out of its slot while its
    /// one-shot registration may still be armed, which `take_ready` tolerates; the
    /// worker checks the timers, then settles it as usual).
    fn sweep_timers(&mut self, empty: bool) {
        let now = Instant::now();
        self.session_timers(now);
        let every = sweep_interval(
            self.shared.limits.idle_timeout,
            self.shared.limits.header_timeout,
        );
        let grace_due = self.drain.grace_over(now);
        match self.next_sweep {
            _ if grace_due => self.next_sweep = Some(now + every),
            _ if empty => {
                self.next_sweep = Some(now + every);
                return;
            }
            Some(t) if t > now => return,
            _ => self.next_sweep = Some(now + every),
        }
        let mut table = lock(&self.shared.table);
        // After the fresh-connection grace, a parked connection whose drain is still
        // deferred is due too: its worker applies the drain.
        let grace_over = table.fresh_grace_end.is_some_and(|t| now >= t);
        let keys: Vec<(usize, u32)> = table
            .slots
            .iter_mut()
            .filter_map(|(k, slot)| {
                let due = slot.entry.as_mut().is_some_and(|e| {
                    (grace_over && e.conn.core().drain_deferred())
                        || e.conn.timers_due(now, &self.shared.limits)
                });
                due.then_some((k, slot.generation))
            })
            .collect();
        for (key, generation) in keys {
            if let Some(entry) = table.slots.get_mut(key).and_then(|s| s.entry.take()) {
                self.jobs.push(Job {
                    key,
                    generation,
                    entry,
                    ready: Ready::default(),
                    timers: true,
                });
            }
        }
    }

    /// Close what is due, resume accepting after a back-off; returns whether the
    /// table is empty and the next linger deadline.
    fn run_timers(&mut self) -> (bool, Option<Instant>) {
        let now = Instant::now();
        let mut to_close = Vec::new();
        let state = {
            let mut table = lock(&self.shared.table);
            let t = &mut *table;
            while let Some((key, generation)) = t.lingering.pop_due(now) {
                close_or_doom(t, key, generation as u32, &mut to_close);
            }
            {
                if !self.drain.forced() && self.drain.force_due(now) {
                    let n = t.slots.len();
                    if n > 0 {
                        tracing::warn!(
                            "pool {}: drain deadline passed; closing {n} connection(s)",
                            self.id
                        );
                        WorkerStats::add(&self.shared.stats.drain_forced, n as u64);
                    }
                    let all: Vec<(usize, u32)> =
                        t.slots.iter().map(|(k, s)| (k, s.generation)).collect();
                    for (key, generation) in all {
                        close_or_doom(t, key, generation, &mut to_close);
                    }
                }
            }
            (t.slots.is_empty(), t.next_timer())
        };
        for entry in to_close {
            self.shared.closed(entry);
        }
        if self.guard.resume_due(now) && self.listener.is_some() {
            if let Err(e) = self.listen() {
                tracing::error!("pool {}: cannot watch the listener again: {e}", self.id);
            }
        }
        state
    }
}
