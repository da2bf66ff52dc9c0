//! `green`: stackful coroutines over epoll (C10K answers 3 and 4: "the performance of
//! an event system with the elegance and straightforward model of blocking IO
//! programming", like gevent or Stackless).
//!
//! Each worker thread (`--workers N`, one SO_REUSEPORT listener each by default) runs
//! one scheduler: an edge-triggered epoll instance, a run queue and a timer set. Every
//! accepted connection gets a green thread, a corosensei coroutine on its own
//! `--stack-size` stack (mmap'd, with a guard page; pages are touched lazily, so an
//! idle connection costs the pages its code has used), running the blocking-style
//! service: a [`Handler`](crate::Handler), or a sans-IO app through the same adapter
//! that `thread` uses. A read or write that would block parks the green thread
//! ([`GreenPark`]): it yields "wait for IN/OUT on my fd until this deadline" to the
//! scheduler, which resumes it when epoll reports the fd, the deadline passes, or the
//! server starts draining.
//!
//! - Readiness: each connection is registered once for `IN | OUT | RDHUP | ET`.
//!   Reports are remembered as ready bits, cleared only when a read (`IN`) or write
//!   (`OUT`) returns `EAGAIN` (an edge is not repeated, so a bit cleared on wake-up
//!   would lose an EOF that arrived with the last data); a green thread that parks
//!   for a bit still set is resumed at once.
//! - Fairness: a green thread whose reads and writes keep succeeding yields after
//!   [`BUDGET_OPS`] of them or [`BUDGET_BYTES`] moved, to the back of the run queue;
//!   one greedy connection cannot starve the rest of its worker.
//! - Drain: the scheduler stops accepting, closes its listener and resumes every green
//!   thread that waits with the drain as its answer; each finishes the way the
//!   blocking driver does (bounded by `--drain-timeout`). Green threads still alive a
//!   margin after that are dropped (their stacks unwound).
//! - Stack overflow: the guard page faults; the fault handler of
//!   [`c10k_sys::stack_guard`] sees the address in the running green thread's guard
//!   page, prints "green thread stack overflow" and aborts the process.
//! - Caveat: a green thread that blocks the OS thread (a blocking syscall, a long
//!   computation) stalls every connection of its worker.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::io;
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use c10k_proto::{Mailbox, Peer};
use corosensei::stack::{DefaultStack, Stack};
use corosensei::{Coroutine, CoroutineResult, Yielder};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{PollFlags, Timespec};
use slab::Slab;

use super::WorkerCtx;
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::handler::{Conn, ConnLimits, Park, ServeConn, Waited};
use crate::lifecycle::DrainClock;
use crate::lifecycle::mailbox::{Inbox, Letter, MailSlot};
use crate::stats::WorkerStats;

/// A green thread yields after this many reads and writes in a row that did not wait.
pub(crate) const BUDGET_OPS: u32 = 32;
/// ... or after moving this many bytes without waiting.
pub(crate) const BUDGET_BYTES: usize = 256 * 1024;

/// Extra time the scheduler gives its green threads beyond the drain timeout (each
/// bounds its own drain; this covers scheduling).
const DRAIN_MARGIN: Duration = Duration::from_secs(1);

/// Stacks kept for reuse (each a `--stack-size` mapping).
const STACK_POOL: usize = 256;

/// Read buffers kept for reuse by a worker's green threads (a green thread holds one
/// only while it is not waiting for input, so few are out at once).
const BUFFER_POOL: usize = 16;

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
/// The worker's inbox (messages posted to its green threads' connections).
const MAIL: u64 = u64::MAX - 2;

/// What a green thread asks its scheduler for.
#[derive(Debug, Clone, Copy)]
enum Yield {
    /// Resume me when my fd is ready for `flags`, at `deadline`, or (when
    /// `watch_drain`) when the server starts draining.
    Wait {
        flags: PollFlags,
        deadline: Option<Instant>,
        watch_drain: bool,
    },
    /// I have used my budget: run the others, then me again.
    Again,
}

/// Why a green thread was resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    Ready,
    Timeout,
    Drain,
    /// Letters wait in its mailbox.
    Mail,
}

type Green = Coroutine<Resume, Yield, (), DefaultStack>;

/// The [`Park`] of a green thread: waiting is a switch to the scheduler.
struct GreenPark<'y> {
    yielder: &'y Yielder<Resume, Yield>,
    /// Readiness epoll reported for the connection, shared with the scheduler.
    ready: Rc<Cell<EventFlags>>,
    /// The worker's spare read buffers.
    buffers: Rc<RefCell<Vec<Vec<u8>>>>,
    ops: Cell<u32>,
    bytes: Cell<usize>,
    /// Its mailbox: the worker's inbox, where letters for it are routed (by key and
    /// serial) into `letters`, and whether it was opened.
    mail: Mail,
}

/// A green thread's mailbox, shared with its scheduler.
#[derive(Clone)]
struct Mail {
    inbox: Arc<Inbox>,
    key: usize,
    serial: u64,
    open: Rc<Cell<bool>>,
    letters: Rc<RefCell<Vec<Letter>>>,
}

impl GreenPark<'_> {
    fn reset(&self) {
        self.ops.set(0);
        self.bytes.set(0);
    }
}

impl Park for GreenPark<'_> {
    fn park(
        &self,
        _fd: std::os::fd::BorrowedFd<'_>,
        flags: PollFlags,
        deadline: Option<Instant>,
        watch_drain: bool,
    ) -> Waited {
        self.reset();
        match self.yielder.suspend(Yield::Wait {
            flags,
            deadline,
            watch_drain,
        }) {
            Resume::Ready => Waited::Ready,
            Resume::Timeout => Waited::Timeout,
            Resume::Drain => Waited::Drain,
            Resume::Mail => Waited::Mail,
        }
    }

    fn open_mailbox(&self) -> Option<(Mailbox, Arc<MailSlot>)> {
        if self.mail.open.replace(true) {
            return None;
        }
        Some(self.mail.inbox.mailbox(self.mail.key, self.mail.serial))
    }

    fn take_letters(&self, into: &mut Vec<Letter>) {
        into.append(&mut self.mail.letters.borrow_mut());
    }

    fn progress(&self, bytes: usize) {
        let ops = self.ops.get() + 1;
        let moved = self.bytes.get().saturating_add(bytes);
        if ops >= BUDGET_OPS || moved >= BUDGET_BYTES {
            self.reset();
            self.yielder.suspend(Yield::Again);
        } else {
            self.ops.set(ops);
            self.bytes.set(moved);
        }
    }

    fn stash_buffer(&self, buf: Vec<u8>) -> Option<Vec<u8>> {
        let mut pool = self.buffers.borrow_mut();
        if pool.len() < BUFFER_POOL {
            pool.push(buf);
        }
        None
    }

    fn fresh_buffer(&self, len: usize) -> Vec<u8> {
        let mut buf = self.buffers.borrow_mut().pop().unwrap_or_default();
        // Pooled buffers are initialised already: resizing to their own length
        // writes nothing.
        buf.resize(len, 0);
        buf.truncate(len);
        buf
    }

    fn would_block(&self, flags: PollFlags) {
        let mut ready = self.ready.get();
        ready.remove(want(flags));
        self.ready.set(ready);
    }
}

/// A parked green thread's wait.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    flags: EventFlags,
    deadline: Option<Instant>,
    watch_drain: bool,
}

struct Task {
    green: Green,
    /// The guard page of its stack, and the stack size, for the overflow report.
    guard: (usize, usize, usize),
    /// Readiness reported since the last read (`IN`) or write (`OUT`) that found the
    /// socket not ready: the green thread is resumed at once when it waits for it.
    ready: Rc<Cell<EventFlags>>,
    waiting: Option<Waiting>,
    /// Its entry in the scheduler's timers, at or before its wait's deadline.
    timer: Option<Instant>,
    mail: Mail,
}

struct Scheduler<A> {
    ctx: WorkerCtx<A>,
    ep: std::os::fd::OwnedFd,
    tasks: Slab<Task>,
    run: VecDeque<(usize, Resume)>,
    timers: BTreeSet<(Instant, usize)>,
    stacks: Vec<DefaultStack>,
    buffers: Rc<RefCell<Vec<Vec<u8>>>>,
    guard: AcceptGuard,
    listening: bool,
    /// The drain deadline (the worker core's clock; green threads bound their own drains).
    drain: DrainClock,
    limits: ConnLimits,
    page: usize,
    inbox: Arc<Inbox>,
    next_serial: u64,
}

/// Run one green-thread scheduler until it has drained after shutdown.
pub(crate) fn run<A: ServeConn>(ctx: WorkerCtx<A>) -> io::Result<()> {
    c10k_sys::stack_guard::install_overflow_report()?;
    c10k_sys::stack_guard::ensure_alt_stack()?;
    let limits = ConnLimits {
        drain_timeout: ctx.config.drain_timeout,
        idle_timeout: ctx.config.idle_timeout,
        header_timeout: ctx.config.header_timeout,
    };
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &ep,
        ctx.shutdown.wake_fd(),
        EventData::new_u64(WAKE),
        EventFlags::IN,
    )?;
    let inbox = Inbox::new()?;
    epoll::add(&ep, inbox.fd(), EventData::new_u64(MAIL), EventFlags::IN)?;
    let mut s = Scheduler {
        ctx,
        ep,
        inbox,
        next_serial: 0,
        tasks: Slab::new(),
        run: VecDeque::new(),
        timers: BTreeSet::new(),
        stacks: Vec::new(),
        buffers: Rc::new(RefCell::new(Vec::new())),
        guard: AcceptGuard::new(),
        listening: false,
        drain: DrainClock::default(),
        limits,
        page: rustix::param::page_size(),
    };
    s.listen()?;
    s.serve()
}

impl<A: ServeConn> Scheduler<A> {
    fn listen(&mut self) -> io::Result<()> {
        let Some(l) = &self.ctx.listener else {
            return Ok(());
        };
        let mut flags = EventFlags::IN | EventFlags::ET;
        if self.ctx.shared_listener {
            flags |= EventFlags::EXCLUSIVE;
        }
        epoll::add(&self.ep, l.as_fd(), EventData::new_u64(LISTENER), flags)?;
        self.listening = true;
        Ok(())
    }

    fn unlisten(&mut self) {
        if let (true, Some(l)) = (self.listening, &self.ctx.listener) {
            let _ = epoll::delete(&self.ep, l.as_fd());
        }
        self.listening = false;
    }

    fn serve(&mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(1024);
        loop {
            // Run every green thread that was runnable when this round began; one
            // that yields again goes to the back, behind the next epoll report.
            for _ in 0..self.run.len() {
                let Some((key, why)) = self.run.pop_front() else {
                    break;
                };
                self.resume(key, why);
            }
            let now = Instant::now();
            if self.drain.draining() {
                if self.tasks.is_empty() {
                    return Ok(());
                }
                if self.drain.force_due(now) {
                    tracing::warn!(
                        "worker {}: {} green thread(s) still running past the drain deadline; dropping them",
                        self.ctx.id,
                        self.tasks.len()
                    );
                    let keys: Vec<usize> = self.tasks.iter().map(|(k, _)| k).collect();
                    for key in keys {
                        self.finish(key);
                    }
                    return Ok(());
                }
            }
            if self.guard.resume_due(now) && self.ctx.listener.is_some() && !self.listening {
                self.listen()?;
                // Connections that queued while paused give no new edge.
                self.accept_ready();
            }
            let timeout = if self.run.is_empty() {
                let mut next = self.timers.first().map(|(t, _)| *t);
                for t in [self.guard.paused_until(), self.drain.next()]
                    .into_iter()
                    .flatten()
                {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                next.map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
            } else {
                Some(Duration::ZERO)
            };
            let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
            events.clear();
            match epoll::wait(
                &self.ep,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            for ev in &events {
                match ev.data.u64() {
                    LISTENER => self.accept_ready(),
                    WAKE => self.begin_drain(),
                    MAIL => self.route_letters(),
                    key => self.ready(key as usize, ev.flags),
                }
            }
            self.fire_timers(Instant::now());
        }
    }

    /// Epoll reported `flags` for a connection.
    fn ready(&mut self, key: usize, flags: EventFlags) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        // An error or hang-up makes both directions "ready": the next read or write
        // says what happened.
        let mut got = flags & (EventFlags::IN | EventFlags::OUT);
        if flags.intersects(EventFlags::ERR | EventFlags::HUP | EventFlags::RDHUP) {
            got |= EventFlags::IN;
        }
        if flags.intersects(EventFlags::ERR | EventFlags::HUP) {
            got |= EventFlags::OUT;
        }
        let ready = task.ready.get() | got;
        task.ready.set(ready);
        if task.waiting.is_some_and(|w| ready.intersects(w.flags)) {
            self.wake(key, Resume::Ready);
        }
    }

    /// The inbox is readable: give each letter to its green thread, and wake the
    /// ones that wait.
    fn route_letters(&mut self) {
        let mut letters = Vec::new();
        self.inbox.take(&mut letters);
        for (key, serial, letter) in letters {
            let Some(task) = self.tasks.get(key) else {
                continue;
            };
            if task.mail.serial != serial {
                continue;
            }
            task.mail.letters.borrow_mut().push(letter);
            self.wake(key, Resume::Mail);
        }
    }

    /// Take a parked green thread off its wait and queue it.
    fn wake(&mut self, key: usize, why: Resume) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        // The timer entry stays (see `arm`): removing and inserting one per wait
        // would cost two tree updates per message.
        if task.waiting.take().is_some() {
            self.run.push_back((key, why));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(t, key)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.remove(&(t, key));
            let Some(task) = self.tasks.get_mut(key) else {
                continue;
            };
            task.timer = None;
            match task.waiting.and_then(|w| w.deadline) {
                Some(d) if d <= now => self.wake(key, Resume::Timeout),
                // The wait's deadline moved on since this entry was made: re-arm.
                Some(d) => {
                    task.timer = Some(d);
                    self.timers.insert((d, key));
                }
                None => {}
            }
        }
    }

    /// Switch to a green thread until it parks, yields or ends.
    fn resume(&mut self, key: usize, why: Resume) {
        let Some(task) = self.tasks.get_mut(key) else {
            return;
        };
        c10k_sys::stack_guard::set_running_guard(Some(task.guard));
        let result = task.green.resume(why);
        c10k_sys::stack_guard::set_running_guard(None);
        match result {
            CoroutineResult::Yield(Yield::Again) => self.run.push_back((key, Resume::Ready)),
            CoroutineResult::Yield(Yield::Wait {
                flags,
                deadline,
                watch_drain,
            }) => {
                let want = want(flags);
                if task.ready.get().intersects(want) {
                    self.run.push_back((key, Resume::Ready));
                } else if task.mail.open.get() && !task.mail.letters.borrow().is_empty() {
                    self.run.push_back((key, Resume::Mail));
                } else if watch_drain && self.drain.draining() {
                    self.run.push_back((key, Resume::Drain));
                } else {
                    task.waiting = Some(Waiting {
                        flags: want,
                        deadline,
                        watch_drain,
                    });
                    // Lazy timers: a task keeps one entry, at or before its wait's
                    // deadline; an idle deadline only moves later, so most waits
                    // touch no tree. An entry that fires early is re-armed.
                    if let Some(d) = deadline {
                        match task.timer {
                            Some(t) if t <= d => {}
                            old => {
                                if let Some(t) = old {
                                    self.timers.remove(&(t, key));
                                }
                                task.timer = Some(d);
                                self.timers.insert((d, key));
                            }
                        }
                    }
                }
            }
            CoroutineResult::Return(()) => self.finish(key),
        }
    }

    /// A green thread ended (or is dropped at the drain deadline): free its slot.
    fn finish(&mut self, key: usize) {
        if !self.tasks.contains(key) {
            return;
        }
        let task = self.tasks.remove(key);
        if let Some(t) = task.timer {
            self.timers.remove(&(t, key));
        }
        // Dropping a suspended coroutine unwinds its stack (closing its connection).
        let green = task.green;
        if green.done() && self.stacks.len() < STACK_POOL {
            self.stacks.push(green.into_stack());
        } else {
            drop(green);
        }
        self.ctx.open.release();
        WorkerStats::add(&self.ctx.stats.closed, 1);
    }

    fn accept_ready(&mut self) {
        let mut batch = AcceptBatch::new(usize::MAX);
        loop {
            let Some(listener) = &self.ctx.listener else {
                return;
            };
            let c = &self.ctx;
            let admission = Admission::new(&c.open, c.config.max_conns, &c.stats);
            let Some((stream, addr)) =
                batch.next(listener, &mut self.guard, Instant::now(), admission)
            else {
                break;
            };
            let peer = Peer {
                addr,
                local: Some(c.local_addr),
            };
            if let Err(e) = self.spawn(stream, peer) {
                tracing::debug!("cannot start a green thread: {e}");
                WorkerStats::add(&self.ctx.stats.refused_backend, 1);
                self.ctx.open.release();
            }
        }
        if batch.paused() {
            self.unlisten();
        }
    }

    /// Start a green thread for a new connection and run it until it first parks.
    fn spawn(&mut self, stream: std::net::TcpStream, peer: Peer) -> io::Result<()> {
        let stack = match self.stacks.pop() {
            Some(s) => s,
            None => DefaultStack::new(self.ctx.config.stack_size)?,
        };
        let limit = stack.limit().get();
        let guard = (
            limit,
            limit + self.page,
            stack.base().get() - limit - self.page,
        );
        let entry = self.tasks.vacant_entry();
        let key = entry.key();
        epoll::add(
            &self.ep,
            stream.as_fd(),
            EventData::new_u64(key as u64),
            EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET,
        )?;
        let app = Arc::clone(&self.ctx.app);
        let stats = Arc::clone(&self.ctx.stats);
        let limits = self.limits;
        let ready = Rc::new(Cell::new(EventFlags::empty()));
        let shared = Rc::clone(&ready);
        let buffers = Rc::clone(&self.buffers);
        self.next_serial += 1;
        let mail = Mail {
            inbox: Arc::clone(&self.inbox),
            key,
            serial: self.next_serial,
            open: Rc::new(Cell::new(false)),
            letters: Rc::new(RefCell::new(Vec::new())),
        };
        let park_mail = mail.clone();
        let green = Green::with_stack(stack, move |yielder, _first: Resume| {
            let park = GreenPark {
                yielder,
                ready: shared,
                buffers,
                ops: Cell::new(0),
                bytes: Cell::new(0),
                mail: park_mail,
            };
            let mut conn = match Conn::new(stream, &park, &stats, limits) {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!("cannot make a connection nonblocking: {e}");
                    WorkerStats::add(&stats.io_errors, 1);
                    return;
                }
            };
            let served = catch_unwind(AssertUnwindSafe(|| app.serve(&mut conn, &peer)));
            if let Err(payload) = served {
                // A panic carries a message; corosensei's forced unwind (a green
                // thread dropped at the drain deadline) does not, and returning
                // normally ends it just as well.
                if payload.is::<&str>() || payload.is::<String>() {
                    tracing::error!(
                        "a green thread's connection handler panicked; connection closed"
                    );
                    WorkerStats::add(&stats.io_errors, 1);
                } else {
                    tracing::debug!("a green thread was unwound");
                }
            }
        });
        entry.insert(Task {
            green,
            guard,
            ready,
            waiting: None,
            timer: None,
            mail,
        });
        self.resume(key, Resume::Ready);
        Ok(())
    }

    fn begin_drain(&mut self) {
        let drain_timeout = self.ctx.config.drain_timeout + DRAIN_MARGIN;
        if !self.drain.begin(Instant::now(), drain_timeout) {
            return;
        }
        // The pipe stays readable: stop watching it.
        let _ = epoll::delete(&self.ep, self.ctx.shutdown.wake_fd());
        self.unlisten();
        // Close the listener (this worker holds the last reference to its own).
        self.ctx.listener = None;
        tracing::debug!(
            "worker {}: draining {} green thread(s)",
            self.ctx.id,
            self.tasks.len()
        );
        let waiting: Vec<usize> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.waiting.is_some_and(|w| w.watch_drain))
            .map(|(k, _)| k)
            .collect();
        for key in waiting {
            self.wake(key, Resume::Drain);
        }
    }
}

/// The epoll flags of a wait for `flags` (`IN`, `OUT`).
fn want(flags: PollFlags) -> EventFlags {
    let mut want = EventFlags::empty();
    if flags.contains(PollFlags::IN) {
        want |= EventFlags::IN;
    }
    if flags.contains(PollFlags::OUT) {
        want |= EventFlags::OUT;
    }
    want
}
