//! The readiness event loop shared by `epoll-lt`, `epoll-et`, `poll` and `select`.
//!
//! Everything a readiness-based worker does apart from asking the kernel what is ready
//! lives here once: accepting (with `--max-conns` and the EMFILE back-off), driving
//! connections through [`Conn`], keeping each connection's registration up to date,
//! linger timers, and graceful drain. The kernel interface is a [`Poller`] value, in
//! the style of mio's `sys` backends: epoll (level or edge), poll(2) or select(2).

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use c10k_proto::{App, Cx, Peer, Session};
use slab::Slab;

use super::WorkerCtx;
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::config::{DRAIN_FRESH_GRACE, LINGER};
use crate::conn::{Bufs, Conn, Env, Phase, Timeout};
use crate::ratelog::RateLog;
use crate::stats::WorkerStats;
use crate::timers::{SweepClock, sweep_interval};

/// What a registration is for (a backend may treat them differently: the listener is
/// registered with `EPOLLEXCLUSIVE` when shared, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A listening socket; `shared` when other workers watch it too.
    Listener { shared: bool },
    /// The shutdown pipe.
    Wake,
    /// A connection.
    Conn,
}

/// What to be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// One readiness report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// Hang-up or error: read on to find out (EOF or the error).
    pub(crate) hup: bool,
}

/// A kernel readiness interface.
pub(crate) trait Poller {
    /// Edge-triggered: connections are registered once for reading and writing and
    /// are read until the kernel has nothing more. Level-triggered otherwise.
    fn edge(&self) -> bool;
    /// Watch `fd`.
    fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        source: Source,
    ) -> io::Result<()>;
    /// Change what `fd` is watched for (level-triggered connections only).
    fn modify(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()>;
    /// Stop watching `fd`, which stays open.
    fn delete(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()>;
    /// `fd` is about to be closed (a backend whose registrations end with the fd
    /// itself, like epoll, does nothing).
    fn forget(&mut self, fd: BorrowedFd<'_>, token: u64);
    /// Wait for readiness; append reports to `out`.
    fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()>;
}

/// Token of the listener.
pub(crate) const LISTENER: u64 = u64::MAX;
/// Token of the shutdown pipe.
pub(crate) const WAKE: u64 = u64::MAX - 1;

/// Connections a level-triggered loop accepts per listener report.
const ACCEPT_BATCH: usize = 64;

struct Entry<S> {
    conn: Conn<S>,
    /// What the connection is registered for (level-triggered only).
    interest: Interest,
    /// Tells a reused slab slot from the connection a timer was set for.
    serial: u64,
    /// Its linger timer is set.
    linger_armed: bool,
}

struct Reactor<A: App, P> {
    ctx: WorkerCtx<A>,
    poller: P,
    conns: Slab<Entry<crate::panic_guard::Guarded<A::Session>>>,
    bufs: Bufs,
    cx: Cx,
    now: Instant,
    /// The listener, until draining starts; and whether it is registered.
    listener: Option<Arc<TcpListener>>,
    listening: bool,
    guard: AcceptGuard,
    refused_log: RateLog,
    /// Lingering connections by deadline (all lingers are equally long, so FIFO order
    /// is deadline order).
    lingering: VecDeque<(Instant, usize, u64)>,
    drain_deadline: Option<Instant>,
    /// When connections whose drain was deferred (no byte received yet) are drained.
    fresh_grace: Option<Instant>,
    /// When the connections' timers are checked next (while there are connections).
    next_sweep: SweepClock,
    next_serial: u64,
}

/// Run one worker's loop on `poller` until it has drained after shutdown.
pub(crate) fn run<A: App, P: Poller>(mut ctx: WorkerCtx<A>, mut poller: P) -> io::Result<()> {
    let read = Interest {
        read: true,
        write: false,
    };
    poller.add(ctx.shutdown.wake_fd(), WAKE, read, Source::Wake)?;
    let listener = ctx.listener.take();
    let mut r = Reactor {
        poller,
        conns: Slab::new(),
        bufs: Bufs::new(),
        cx: Cx::new(SystemTime::now()),
        now: Instant::now(),
        listener,
        listening: false,
        guard: AcceptGuard::new(),
        refused_log: RateLog::new(Duration::from_secs(1)),
        lingering: VecDeque::new(),
        drain_deadline: None,
        fresh_grace: None,
        next_sweep: SweepClock::default(),
        next_serial: 0,
        ctx,
    };
    r.listen()?;
    if r.ctx.shutdown.is_requested() {
        r.begin_drain();
    }
    r.run()
}

impl<A: App, P: Poller> Reactor<A, P> {
    fn run(&mut self) -> io::Result<()> {
        let mut ready: Vec<Ready> = Vec::with_capacity(1024);
        loop {
            let timeout = self
                .next_deadline()
                .map(|t| t.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
            ready.clear();
            match self.poller.wait(&mut ready, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            self.cx.set_now(SystemTime::now());
            let mut wake = false;
            for r in &ready {
                match r.token {
                    LISTENER => self.accept_ready(),
                    WAKE => wake = true,
                    key => self.conn_ready(key as usize, *r),
                }
            }
            // Serve what was reported together with the shutdown first, so that a
            // request already waiting counts as in flight: select and poll report the
            // wake pipe (a low fd, the first slot) before the connections.
            if wake {
                self.begin_drain();
            }
            self.run_timers();
            if self.drain_deadline.is_some() && self.conns.is_empty() {
                return Ok(());
            }
        }
    }

    fn listen(&mut self) -> io::Result<()> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        let source = Source::Listener {
            shared: self.ctx.shared_listener,
        };
        let read = Interest {
            read: true,
            write: false,
        };
        self.poller.add(l.as_fd(), LISTENER, read, source)?;
        self.listening = true;
        Ok(())
    }

    fn unlisten(&mut self) {
        if let (true, Some(l)) = (self.listening, &self.listener) {
            let _ = self.poller.delete(l.as_fd(), LISTENER);
        }
        self.listening = false;
    }

    fn accept_ready(&mut self) {
        let limit = if self.poller.edge() {
            usize::MAX
        } else {
            ACCEPT_BATCH
        };
        let mut batch = AcceptBatch::new(limit);
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let c = &self.ctx;
            let admission = Admission::new(&c.open, c.config.max_conns, &c.stats);
            let Some((stream, addr)) = batch.next(listener, &mut self.guard, self.now, admission)
            else {
                break;
            };
            let peer = Peer {
                addr,
                local: Some(c.local_addr),
            };
            let session = crate::panic_guard::open_guarded(&*c.app, &peer, &c.stats);
            if session.wants_close() {
                // Refused at open (--max-conns-per-ip): closed unread.
                c.open.release();
                WorkerStats::add(&c.stats.closed, 1);
                continue;
            }
            self.register(Conn::new(stream, session));
        }
        if batch.paused() {
            self.unlisten();
        }
    }

    fn register(&mut self, conn: Conn<crate::panic_guard::Guarded<A::Session>>) {
        let interest = Interest {
            read: true,
            write: self.poller.edge(),
        };
        let vacant = self.conns.vacant_entry();
        let key = vacant.key();
        if let Err(e) = self
            .poller
            .add(conn.stream().as_fd(), key as u64, interest, Source::Conn)
        {
            // The backend cannot watch it (select's FD_SETSIZE, say): refuse it.
            WorkerStats::add(&self.ctx.stats.refused_backend, 1);
            if let Some(n) = self.refused_log.hit(self.now) {
                tracing::warn!("refused {n} connection(s): {e}");
            }
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
            return;
        }
        self.next_serial += 1;
        vacant.insert(Entry {
            conn,
            interest,
            serial: self.next_serial,
            linger_armed: false,
        });
    }

    fn conn_ready(&mut self, key: usize, ready: Ready) {
        let edge = self.poller.edge();
        let output_cap = self.ctx.config.output_cap;
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let env = Env {
            cx: &self.cx,
            now: self.now,
            stats: &self.ctx.stats,
            output_cap,
        };
        let conn = &mut entry.conn;
        if (ready.writable || ready.hup) && conn.wants_write() {
            conn.on_writable(&mut self.bufs, &env, edge);
        }
        if ready.readable || ready.hup {
            conn.on_readable(&mut self.bufs, &env, edge, ready.hup);
        }
        self.settle(key);
    }

    /// After a connection was served: close it, start its linger timer, or bring its
    /// registration up to date.
    fn settle(&mut self, key: usize) {
        let draining = self.drain_deadline.is_some();
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        if draining
            && entry.conn.phase() == Phase::Open
            && entry.conn.is_idle()
            && !entry.conn.drain_deferred()
        {
            entry.conn.close_gracefully();
        }
        match entry.conn.phase() {
            Phase::Done => {
                self.close(key);
                return;
            }
            Phase::Lingering if !entry.linger_armed => {
                entry.linger_armed = true;
                self.lingering
                    .push_back((self.now + LINGER, key, entry.serial));
            }
            _ => {}
        }
        if !self.poller.edge() {
            let want = Interest {
                read: entry.conn.wants_read(self.ctx.config.output_cap),
                write: entry.conn.wants_write(),
            };
            if want != entry.interest {
                if self
                    .poller
                    .modify(entry.conn.stream().as_fd(), key as u64, want)
                    .is_err()
                {
                    self.close(key);
                    return;
                }
                entry.interest = want;
            }
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(entry) = self.conns.try_remove(key) {
            self.poller.forget(entry.conn.stream().as_fd(), key as u64);
            drop(entry);
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
        }
    }

    fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(self.now + self.ctx.config.drain_timeout);
        // The pipe stays readable: stop watching it, or every wait would return at once.
        let _ = self.poller.delete(self.ctx.shutdown.wake_fd(), WAKE);
        self.unlisten();
        self.listener = None;
        tracing::debug!(
            "worker {}: draining {} connection(s)",
            self.ctx.id,
            self.conns.len()
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let output_cap = self.ctx.config.output_cap;
        let env = Env {
            cx: &self.cx,
            now: self.now,
            stats: &self.ctx.stats,
            output_cap,
        };
        for &key in &keys {
            if let Some(entry) = self.conns.get_mut(key) {
                // Bytes the kernel has already received are a request in flight, not
                // an idle connection: take them in before judging (the blocking driver
                // does the same). Matters on a restart, where a connection accepted
                // just before SIGTERM has its request waiting, unread. (Not while
                // backpressured: that connection is busy anyway.)
                if entry.conn.phase() == Phase::Open && entry.conn.wants_read(output_cap) {
                    entry.conn.on_readable(&mut self.bufs, &env, true, false);
                }
                if entry.conn.start_drain_unless_fresh() {
                    self.fresh_grace = Some(self.now + DRAIN_FRESH_GRACE);
                }
            }
        }
        for key in keys {
            self.settle(key);
        }
    }

    /// Check every connection's idle and request timers when the [`SweepClock`] says
    /// so (about once a second).
    fn sweep(&mut self, now: Instant) {
        let c = &self.ctx.config;
        let every = sweep_interval(c.idle_timeout, c.header_timeout);
        if !self.next_sweep.due(now, !self.conns.is_empty(), every) {
            return;
        }
        let (idle, request) = (self.ctx.config.idle_timeout, self.ctx.config.header_timeout);
        let output_cap = self.ctx.config.output_cap;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            let env = Env {
                cx: &self.cx,
                now,
                stats: &self.ctx.stats,
                output_cap,
            };
            match entry.conn.check_timers(&mut self.bufs, &env, idle, request) {
                None => continue,
                Some(Timeout::Idle) => WorkerStats::add(&self.ctx.stats.timeouts_idle, 1),
                Some(Timeout::Request) => WorkerStats::add(&self.ctx.stats.timeouts_request, 1),
            }
            self.settle(key);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.guard.paused_until(),
            self.lingering.front().map(|l| l.0),
            self.drain_deadline,
            self.next_sweep.next(),
            self.fresh_grace,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        self.sweep(now);
        while let Some(&(deadline, key, serial)) = self.lingering.front() {
            if deadline > now {
                break;
            }
            self.lingering.pop_front();
            if self.conns.get(key).is_some_and(|e| e.serial == serial) {
                self.close(key);
            }
        }
        if self.guard.resume_due(now) && self.listener.is_some() {
            if let Err(e) = self.listen() {
                tracing::error!(
                    "worker {}: cannot watch the listener again: {e}",
                    self.ctx.id
                );
            }
        }
        if self.fresh_grace.is_some_and(|t| t <= now) {
            self.fresh_grace = None;
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                if let Some(entry) = self.conns.get_mut(key) {
                    if !entry.conn.drain_deferred() {
                        continue;
                    }
                    entry.conn.start_drain();
                }
                self.settle(key);
            }
        }
        if let Some(deadline) = self.drain_deadline {
            if now >= deadline && !self.conns.is_empty() {
                let n = self.conns.len();
                tracing::warn!(
                    "worker {}: drain deadline passed; closing {n} connection(s)",
                    self.ctx.id
                );
                WorkerStats::add(&self.ctx.stats.drain_forced, n as u64);
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.close(key);
                }
            }
        }
    }
}
