//! io_uring completions (C10K item 3, "serve many clients with each thread, and use
//! asynchronous I/O", as Linux does it today).
//!
//! Each worker owns one ring ([`c10k_sys::uring::Ring`]) with a provided-buffer ring,
//! and its own `SO_REUSEPORT` listener. Per loop iteration it makes one
//! `io_uring_enter` that submits everything queued since the last one (sends,
//! re-armed receives, closes) and waits for completions or the next timer:
//!
//! - one **multishot accept** per listener, re-armed when it ends, paused with the
//!   accept path's back-off on EMFILE;
//! - one **multishot receive** per connection into the buffer ring; the session reads
//!   the bytes in place, unconsumed bytes are copied to the connection, and the buffer
//!   goes back to the kernel before the next completion is looked at. A receive that
//!   ends (out of buffers, cancelled) is re-armed; while a connection's unsent output
//!   is over `--output-cap` its receive is cancelled and not re-armed (backpressure);
//! - at most one **send** in flight per connection, owning its buffer; replies made
//!   meanwhile queue behind it, and a partial send continues with the rest;
//! - **closes** (and the cancels before them) go through the ring; a connection
//!   closed with operations in flight is forgotten at once, its buffers parked in the
//!   ring's operation table until the completions return.
//!
//! Timers (idle, request, linger, drain, accept back-off) are the reactor's: the wait
//! carries a timeout, and connections are swept about once a second.

mod conn;

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use c10k_proto::{App, Cx, Peer, Session};
use c10k_sys::uring::{Completion, Event, OpId, Ring, RingConfig, Socket};
use rustix::io::Errno;
use slab::Slab;

use self::conn::{Spare, UConn};
use super::{Availability, WorkerCtx};
use crate::accept::{AcceptErrorKind, AcceptGuard, classify};
use crate::config::{DRAIN_FRESH_GRACE, LINGER, UringConfig};
use crate::conn::{Env, Phase, Timeout};
use crate::stats::{UringStats, WorkerStats};
use crate::timers::{SweepClock, sweep_interval};

/// Tag of the listener's accept.
const LISTENER: u64 = u64::MAX;
/// Tag of the shutdown pipe's poll.
const WAKE: u64 = u64::MAX - 1;
/// How long to wait before checking the shutdown flag again when its pipe cannot be
/// polled.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How long a worker waits at exit for the kernel to return what it still holds.
const TEARDOWN: Duration = Duration::from_secs(2);

/// Whether io_uring is usable here, probed once per process.
pub(crate) fn availability() -> Availability {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(c10k_sys::uring::probe) {
        Ok(()) => Availability::Available,
        Err(reason) => Availability::Unavailable {
            reason: reason.clone(),
        },
    }
}

/// Check the `uring` settings; with `--sqpoll`, that this kernel lets us have a
/// submission-polling thread.
pub(crate) fn check_config(c: &UringConfig) -> Result<(), String> {
    if c.entries == 0 || c.entries > 32768 {
        return Err(format!(
            "--uring-entries must be 1..=32768, not {}",
            c.entries
        ));
    }
    if c.buf_count == 0
        || !c.buf_count.is_power_of_two()
        || c.buf_count > c10k_sys::uring::MAX_BUFFERS
    {
        return Err(format!(
            "--uring-buffers: the count must be a power of two from 1 to {}, not {}",
            c10k_sys::uring::MAX_BUFFERS,
            c.buf_count
        ));
    }
    if !(64..=1 << 20).contains(&c.buf_size) {
        return Err(format!(
            "--uring-buffers: the size must be 64 B..=1 MiB, not {} B",
            c.buf_size
        ));
    }
    if c.sqpoll {
        let probe = RingConfig {
            entries: 8,
            sqpoll: true,
            buf_count: 1,
            buf_size: 64,
        };
        Ring::new(probe)
            .map_err(|e| format!("--sqpoll is not available here ({e}); run without it"))?;
    }
    Ok(())
}

fn ring_config(c: &UringConfig) -> RingConfig {
    RingConfig {
        entries: c.entries,
        sqpoll: c.sqpoll,
        buf_count: c.buf_count,
        buf_size: c.buf_size,
    }
}

fn conn_tag(key: usize, serial: u32) -> u64 {
    ((key as u64) << 32) | u64::from(serial)
}

struct Entry<S> {
    conn: UConn<S>,
    /// Tells a reused slab slot from the connection a completion or timer was for.
    serial: u32,
    /// Queued for `settle` at the end of this iteration.
    dirty: bool,
    linger_armed: bool,
}

struct Worker<A: App> {
    ctx: WorkerCtx<A>,
    ring: Ring,
    conns: Slab<Entry<crate::panic_guard::Guarded<A::Session>>>,
    cx: Cx,
    now: Instant,
    /// The listener, until draining starts.
    listener: Option<Arc<TcpListener>>,
    accept: Option<OpId>,
    guard: AcceptGuard,
    lingering: VecDeque<(Instant, usize, u32)>,
    drain_deadline: Option<Instant>,
    /// The shutdown pipe reported: drain once this batch of completions is processed.
    drain_requested: bool,
    /// When connections whose drain was deferred (no byte yet) are drained.
    fresh_grace: Option<Instant>,
    next_sweep: SweepClock,
    next_serial: u32,
    dirty: Vec<usize>,
    spare: Spare,
    /// Failed polls of the shutdown pipe; after a few, the flag is checked on a timer.
    wake_failures: u32,
    check_flag_at: Option<Instant>,
}

/// Run one worker until it has drained after shutdown.
pub(crate) fn run<A: App>(mut ctx: WorkerCtx<A>) -> io::Result<()> {
    let mut ring = Ring::new(ring_config(&ctx.config.uring))?;
    // The poll owns a duplicate of the pipe's read end, so the descriptor it watches
    // lives as long as the operation does.
    ring.poll_readable(ctx.shutdown.wake_fd().try_clone_to_owned()?, WAKE)?;
    let listener = ctx.listener.take();
    let mut w = Worker {
        ring,
        conns: Slab::new(),
        cx: Cx::new(SystemTime::now()),
        now: Instant::now(),
        listener,
        accept: None,
        guard: AcceptGuard::new(),
        lingering: VecDeque::new(),
        drain_deadline: None,
        drain_requested: false,
        fresh_grace: None,
        next_sweep: SweepClock::default(),
        next_serial: 0,
        dirty: Vec::new(),
        spare: Spare::default(),
        wake_failures: 0,
        check_flag_at: None,
        ctx,
    };
    w.arm_accept()?;
    if w.ctx.shutdown.is_requested() {
        w.begin_drain();
    }
    w.publish();
    let result = w.run();
    for key in w.conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
        w.close(key);
    }
    let leaked = w.ring.shutdown(TEARDOWN);
    w.publish();
    w.log_counters();
    if leaked > 0 {
        tracing::warn!(
            "worker {}: {leaked} io_uring operation(s) did not complete at exit; their buffers were leaked on purpose",
            w.ctx.id
        );
    }
    result
}

impl<A: App> Worker<A> {
    fn run(&mut self) -> io::Result<()> {
        let mut completions: Vec<Completion> = Vec::with_capacity(1024);
        loop {
            let timeout = self
                .next_deadline()
                .map(|t| t.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
            match self.ring.submit_and_wait(timeout) {
                Ok(()) => {}
                // A signal: go around (the wait is retried after the timers ran).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            self.cx.set_now(SystemTime::now());
            self.ring.reap(&mut completions);
            for c in completions.drain(..) {
                self.dispatch(c);
            }
            // After the whole batch: bytes that came with the shutdown's completion
            // are requests in flight, not idle connections.
            if std::mem::take(&mut self.drain_requested) {
                self.begin_drain();
            }
            self.settle_dirty();
            self.run_timers();
            self.settle_dirty();
            if self.drain_deadline.is_some() && self.conns.is_empty() {
                return Ok(());
            }
            if self.listener.is_some()
                && self.accept.is_none()
                && self.guard.paused_until().is_none()
            {
                self.arm_accept()?;
            }
            self.publish();
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        if let Some(l) = &self.listener {
            self.accept = Some(self.ring.accept_multi(Arc::clone(l), LISTENER)?);
        }
        Ok(())
    }

    fn dispatch(&mut self, c: Completion) {
        match c.tag {
            LISTENER => self.on_accept(c),
            WAKE => match c.event {
                Event::Polled(Err(e)) if !self.ctx.shutdown.is_requested() => {
                    // Not a shutdown: watch the pipe again (a few times), else check
                    // the flag on a timer.
                    tracing::warn!("worker {}: shutdown poll failed: {e}", self.ctx.id);
                    self.wake_failures += 1;
                    let rearmed = self.wake_failures <= 3
                        && self
                            .ctx
                            .shutdown
                            .wake_fd()
                            .try_clone_to_owned()
                            .is_ok_and(|fd| self.ring.poll_readable(fd, WAKE).is_ok());
                    if !rearmed {
                        self.check_flag_at = Some(self.now + SWEEP_EVERY);
                    }
                }
                // Not at once: a receive later in this batch is a request in flight.
                _ => self.drain_requested = true,
            },
            tag => self.on_conn(c, (tag >> 32) as usize, tag as u32),
        }
    }

    fn on_accept(&mut self, c: Completion) {
        if !c.more {
            self.accept = None;
        }
        let Event::Accepted(result) = c.event else {
            return;
        };
        let e = match result {
            Ok(socket) => return self.admit(socket),
            Err(e) => e,
        };
        let errno = Errno::from_io_error(&e);
        if errno == Some(Errno::CANCELED) {
            // We cancelled it (a pause or the drain): not an accept error.
            return;
        }
        match errno.map_or(AcceptErrorKind::Failed, classify) {
            AcceptErrorKind::Exhausted => {
                self.guard
                    .exhausted(self.now, &e, &self.ctx.stats, &self.ctx.open);
                // Pause: stop the accept if it is still armed; it is re-armed when
                // the back-off is over.
                if let Some(op) = self.accept {
                    let _ = self.ring.cancel(op);
                }
            }
            // A connection that failed before we got it: the accept goes on (or is
            // re-armed).
            AcceptErrorKind::Retry => {}
            // io_uring waits for connections itself, so `EAGAIN` is as unexpected
            // here as any other error.
            AcceptErrorKind::Empty | AcceptErrorKind::Failed => {
                self.guard.failed(self.now, &e, &self.ctx.stats);
                // Re-arming at once could spin on a persistent error: back off.
                if self.accept.is_none() {
                    self.guard
                        .exhausted(self.now, &e, &self.ctx.stats, &self.ctx.open);
                }
            }
        }
    }

    fn admit(&mut self, socket: Socket) {
        let c = &self.ctx;
        // Accepted while the accept was being cancelled for the drain: served like
        // a connection fresh at drain (its client is waiting; on an inherited socket
        // it is gone from the queue the next instance accepts from).
        if !self
            .guard
            .admit(self.now, &c.open, c.config.max_conns, &c.stats)
        {
            // Refused (counted by the guard).
            let _ = self.ring.close(socket);
            return;
        }
        // Replies are written whole; Nagle would only delay them.
        let _ = rustix::net::sockopt::set_tcp_nodelay(&socket, true);
        let addr = rustix::net::getpeername(&socket)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        let peer = Peer {
            addr,
            local: Some(c.local_addr),
        };
        let session = crate::panic_guard::open_guarded(&*c.app, &peer, &c.stats);
        if session.wants_close() {
            // Refused at open (--max-conns-per-ip): closed unread.
            let _ = self.ring.close(socket);
            c.open.release();
            WorkerStats::add(&c.stats.closed, 1);
            return;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        let key = self.conns.insert(Entry {
            conn: UConn::new(socket, session),
            serial: self.next_serial,
            dirty: false,
            linger_armed: false,
        });
        if self.drain_deadline.is_some() {
            let deferred = self
                .conns
                .get_mut(key)
                .is_some_and(|e| e.conn.start_drain_unless_fresh(false));
            if deferred {
                self.fresh_grace = Some(self.now + DRAIN_FRESH_GRACE);
            }
        }
        self.mark(key);
    }

    fn mark(&mut self, key: usize) {
        if let Some(e) = self.conns.get_mut(key) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    fn on_conn(&mut self, c: Completion, key: usize, serial: u32) {
        let Some(entry) = self.conns.get_mut(key).filter(|e| e.serial == serial) else {
            // A connection already closed: what the operation owned is dropped
            // here (a receive buffer goes back to the ring).
            if let Event::Sent { buf, .. } = c.event {
                self.spare.put(buf);
            }
            return;
        };
        let env = Env {
            cx: &self.cx,
            now: self.now,
            stats: &self.ctx.stats,
            output_cap: self.ctx.config.output_cap,
        };
        let conn = &mut entry.conn;
        match c.event {
            Event::Received(result) => {
                if !c.more {
                    conn.recv = None;
                    conn.recv_cancelled = false;
                }
                match result {
                    Ok(Some(buf)) => conn.on_data(&buf, &mut self.spare, &env),
                    Ok(None) => conn.on_eof(&mut self.spare, &env),
                    Err(e) => match Errno::from_io_error(&e) {
                        // Out of buffers, or cancelled: re-armed by `settle` if wanted.
                        Some(Errno::NOBUFS | Errno::CANCELED) => {}
                        _ => conn.on_recv_error(&env),
                    },
                }
            }
            Event::Sent { result, buf, pos } => {
                let reuse = conn.on_sent(result, buf, pos, &mut self.spare, &env);
                self.spare.put(reuse);
            }
            Event::Accepted(_) | Event::Polled(_) => {}
        }
        self.mark(key);
    }

    fn settle_dirty(&mut self) {
        // Bounded: settling never marks another connection dirty.
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(e) = self.conns.get_mut(key) {
                e.dirty = false;
            }
            self.settle(key);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// After a connection was served: queue its send, (re-)arm or cancel its
    /// receive, start its linger timer, or close it.
    fn settle(&mut self, key: usize) {
        let draining = self.drain_deadline.is_some();
        let output_cap = self.ctx.config.output_cap;
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let conn = &mut entry.conn;
        if draining && conn.phase() == Phase::Open && conn.is_idle() && !conn.drain_deferred() {
            conn.close_gracefully();
        }
        let tag = conn_tag(key, entry.serial);
        if let Some((buf, pos)) = conn.take_send() {
            if let Err((e, buf)) = self.ring.send(conn.socket(), buf, pos, tag) {
                tracing::debug!("cannot queue a send: {e}");
                self.spare.put(buf);
                let env = Env {
                    cx: &self.cx,
                    now: self.now,
                    stats: &self.ctx.stats,
                    output_cap,
                };
                conn.send_failed(&env);
            }
        }
        match conn.phase() {
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
        let wants = conn.wants_read(output_cap);
        match (wants, conn.recv) {
            (true, None) => match self.ring.recv_multi(conn.socket(), tag) {
                Ok(op) => conn.recv = Some(op),
                Err(e) => {
                    tracing::debug!("cannot queue a receive: {e}");
                    WorkerStats::add(&self.ctx.stats.io_errors, 1);
                    self.close(key);
                }
            },
            (false, Some(op)) if !conn.recv_cancelled => {
                // Backpressure (or nothing more to read): stop receiving. Bytes that
                // arrive before the cancel lands wait in the connection.
                conn.recv_cancelled = true;
                let _ = self.ring.cancel(op);
            }
            _ => {}
        }
    }

    /// Forget a connection; its socket is closed through the ring, behind a cancel
    /// of whatever is still in flight on it (whose buffers the ring keeps until the
    /// completions return).
    fn close(&mut self, key: usize) {
        if let Some(entry) = self.conns.try_remove(key) {
            let (socket, bufs) = entry.conn.into_socket();
            for buf in bufs {
                self.spare.put(buf);
            }
            if let Err(e) = self.ring.close(socket) {
                tracing::warn!("cannot close a socket through the ring ({e}); leaking it");
            }
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
        }
    }

    fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(self.now + self.ctx.config.drain_timeout);
        if let Some(op) = self.accept {
            let _ = self.ring.cancel(op);
        }
        // The accept holds its own reference until its last completion.
        self.listener = None;
        tracing::debug!(
            "worker {}: draining {} connection(s)",
            self.ctx.id,
            self.conns.len()
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(entry) = self.conns.get_mut(key) {
                let conn = &mut entry.conn;
                // Received bytes whose completion has not been processed are a
                // request in flight: the drain waits for them like for a fresh
                // connection's first request.
                let waiting = conn.phase() == Phase::Open && conn.is_idle() && conn.bytes_waiting();
                if conn.start_drain_unless_fresh(waiting) {
                    self.fresh_grace = Some(self.now + DRAIN_FRESH_GRACE);
                }
            }
            self.mark(key);
        }
    }

    /// Check every connection's idle and request timers about once a second.
    fn sweep(&mut self, now: Instant) {
        let c = &self.ctx.config;
        let every = sweep_interval(c.idle_timeout, c.header_timeout);
        if !self.next_sweep.due(now, !self.conns.is_empty(), every) {
            return;
        }
        let (idle, request) = (self.ctx.config.idle_timeout, self.ctx.config.header_timeout);
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Some(entry) = self.conns.get_mut(key) else {
                continue;
            };
            let env = Env {
                cx: &self.cx,
                now,
                stats: &self.ctx.stats,
                output_cap: self.ctx.config.output_cap,
            };
            match entry
                .conn
                .check_timers(&mut self.spare, &env, idle, request)
            {
                None => continue,
                Some(Timeout::Idle) => WorkerStats::add(&self.ctx.stats.timeouts_idle, 1),
                Some(Timeout::Request) => WorkerStats::add(&self.ctx.stats.timeouts_request, 1),
            }
            self.mark(key);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.guard.paused_until(),
            self.lingering.front().map(|l| l.0),
            self.drain_deadline,
            self.next_sweep.next(),
            self.check_flag_at,
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
                self.mark(key);
            }
        }
        // The accept is re-armed by the loop once the pause is over.
        let _ = self.guard.resume_due(now);
        if let Some(t) = self.check_flag_at {
            if now >= t {
                self.check_flag_at = Some(now + SWEEP_EVERY);
                if self.ctx.shutdown.is_requested() {
                    self.check_flag_at = None;
                    self.begin_drain();
                }
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

    /// Copy the ring's counters into the worker's stats.
    fn publish(&self) {
        let s = self.ring.stats();
        let u: &UringStats = &self.ctx.stats.uring;
        use std::sync::atomic::Ordering::Relaxed;
        for (counter, value) in [
            (&u.enters, s.enters),
            (&u.waits, s.waits),
            (&u.batches, s.batches),
            (&u.sqes, s.sqes),
            (&u.cqes, s.cqes),
            (&u.recv_cqes, s.recv_cqes),
            (&u.send_cqes, s.send_cqes),
            (&u.enobufs, s.enobufs),
            (&u.bufs_out, s.bufs_out),
            (&u.bufs_in, s.bufs_in),
            (&u.sends_out, s.sends_out),
            (&u.sends_in, s.sends_in),
            (&u.parked_at_close, s.parked_at_close),
            (&u.in_flight, s.in_flight),
            (&u.leaked_ops, s.leaked_ops),
        ] {
            counter.store(value, Relaxed);
        }
    }

    /// Where the time goes, for the integrator: syscalls and completions per message
    /// (per receive completion, which is one message when each arrives alone).
    fn log_counters(&self) {
        let s = self.ring.stats();
        let per = |n: u64| n as f64 / s.recv_cqes.max(1) as f64;
        tracing::debug!(
            "worker {}: io_uring per receive completion: {:.3} enter(s), {:.3} wait(s), \
             {:.3} sqe(s), {:.3} cqe(s); {:.1} cqe(s) per batch",
            self.ctx.id,
            per(s.enters),
            per(s.waits),
            per(s.sqes),
            per(s.cqes),
            s.cqes as f64 / s.batches.max(1) as f64,
        );
        tracing::debug!(
            "worker {}: io_uring: {} enter(s) ({} waited), {} batch(es), {} sqe(s), \
             {} cqe(s) ({} recv, {} send), \
             {} ENOBUFS, receive buffers out/in {}/{}, send buffers out/in {}/{}, \
             {} close(s) ({} op(s) parked), {} leaked op(s)",
            self.ctx.id,
            s.enters,
            s.waits,
            s.batches,
            s.sqes,
            s.cqes,
            s.recv_cqes,
            s.send_cqes,
            s.enobufs,
            s.bufs_out,
            s.bufs_in,
            s.sends_out,
            s.sends_in,
            s.closes,
            s.parked_at_close,
            s.leaked_ops
        );
    }
}
