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

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use c10k_proto::{App, Peer, Session};
use c10k_sys::uring::{Completion, Event, OpId, Ring, RingConfig, Socket};
use rustix::io::Errno;
use slab::Slab;

use self::conn::RingConn;
use super::{Availability, WorkerCtx};
use crate::accept::{AcceptErrorKind, classify};
use crate::config::UringConfig;
use crate::lifecycle::mailbox::{Inbox, Letter};
use crate::lifecycle::{Armed, ConnTable, Env, Keyed, LoopClock, OutputPool, Settled, WorkerCore};
use crate::stats::{UringStats, WorkerStats};

/// Tag of the listener's accept.
const LISTENER: u64 = u64::MAX;
/// Tag of the shutdown pipe's poll.
const WAKE: u64 = u64::MAX - 1;
/// Tag of the inbox's poll (messages posted to this worker's connections).
const MAIL: u64 = u64::MAX - 2;
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
    conn: RingConn<S>,
    /// Tells a reused slab slot from the connection a completion or timer was for.
    serial: u32,
    /// Queued for `settle` at the end of this iteration.
    dirty: bool,
    /// Its linger and session timer, as reported to the worker core.
    armed: Armed,
}

/// One ring worker: its lifecycle ([`WorkerCore`]) and its connections.
struct Worker<A: App> {
    worker: WorkerCore,
    conns: RingConns<A>,
    /// The shutdown pipe reported: drain once this batch of completions is processed.
    drain_requested: bool,
    /// Failed polls of the shutdown pipe; after a few, the flag is checked on a timer.
    wake_failures: u32,
    check_flag_at: Option<Instant>,
}

/// A ring worker's ring, connections and listener.
struct RingConns<A: App> {
    ctx: WorkerCtx<A>,
    ring: Ring,
    slab: Slab<Entry<crate::panic_guard::Guarded<A::Session>>>,
    clock: LoopClock,
    /// The listener, until draining starts.
    listener: Option<Arc<TcpListener>>,
    accept: Option<OpId>,
    next_serial: u32,
    dirty: Vec<usize>,
    pool: OutputPool,
    /// Messages posted to this worker's connections; its poll is re-armed after
    /// each completion.
    inbox: Arc<Inbox>,
    letters: Vec<(usize, u64, Letter)>,
}

/// Run one worker until it has drained after shutdown.
pub(crate) fn run<A: App>(mut ctx: WorkerCtx<A>) -> io::Result<()> {
    let mut ring = Ring::new(ring_config(&ctx.config.uring))?;
    // The poll owns a duplicate of the pipe's read end, so the descriptor it watches
    // lives as long as the operation does.
    ring.poll_readable(ctx.shutdown.wake_fd().try_clone_to_owned()?, WAKE)?;
    let inbox = Inbox::new()?;
    ring.poll_readable(Arc::clone(&inbox), MAIL)?;
    let listener = ctx.listener.take();
    let mut w = Worker {
        worker: WorkerCore::new(ctx.id, &ctx.config),
        conns: RingConns {
            ring,
            slab: Slab::new(),
            clock: LoopClock::new(&ctx.config),
            listener,
            accept: None,
            next_serial: 0,
            dirty: Vec::new(),
            pool: OutputPool::default(),
            inbox,
            letters: Vec::new(),
            ctx,
        },
        drain_requested: false,
        wake_failures: 0,
        check_flag_at: None,
    };
    w.conns.arm_accept()?;
    if w.conns.ctx.shutdown.is_requested() {
        w.begin_drain();
    }
    w.conns.publish();
    let result = w.run();
    for key in crate::lifecycle::worker::keys(&w.conns) {
        w.conns.close(key);
    }
    let leaked = w.conns.ring.shutdown(TEARDOWN);
    w.conns.publish();
    w.conns.log_counters();
    if leaked > 0 {
        tracing::warn!(
            "worker {}: {leaked} io_uring operation(s) did not complete at exit; their buffers were leaked on purpose",
            w.conns.ctx.id
        );
    }
    result
}

impl<S> Keyed for Entry<S> {
    fn serial(&self) -> u64 {
        u64::from(self.serial)
    }
}

impl<A: App> Worker<A> {
    fn run(&mut self) -> io::Result<()> {
        let mut completions: Vec<Completion> = Vec::with_capacity(1024);
        loop {
            let next = [self.worker.next_deadline(), self.check_flag_at]
                .into_iter()
                .flatten()
                .min();
            let timeout = crate::timers::wait_for(next);
            match self.conns.ring.submit_and_wait(timeout) {
                Ok(()) => {}
                // A signal: go around (the wait is retried after the timers ran).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.conns.clock.tick();
            self.conns.ring.reap(&mut completions);
            for c in completions.drain(..) {
                self.dispatch(c);
            }
            // After the whole batch: bytes that came with the shutdown's completion
            // are requests in flight, not idle connections.
            if std::mem::take(&mut self.drain_requested) {
                self.begin_drain();
            }
            self.conns.settle_dirty(&mut self.worker);
            self.run_timers();
            self.conns.settle_dirty(&mut self.worker);
            if self.worker.finished(&self.conns) {
                return Ok(());
            }
            if self.conns.listener.is_some()
                && self.conns.accept.is_none()
                && self.worker.accept.paused_until().is_none()
            {
                self.conns.arm_accept()?;
            }
            self.conns.publish();
        }
    }

    fn dispatch(&mut self, c: Completion) {
        match c.tag {
            LISTENER => self.on_accept(c),
            WAKE => match c.event {
                Event::Polled(Err(e)) if !self.conns.ctx.shutdown.is_requested() => {
                    // Not a shutdown: watch the pipe again (a few times), else check
                    // the flag on a timer.
                    let x = &mut self.conns;
                    tracing::warn!("worker {}: shutdown poll failed: {e}", x.ctx.id);
                    self.wake_failures += 1;
                    let rearmed = self.wake_failures <= 3
                        && x.ctx
                            .shutdown
                            .wake_fd()
                            .try_clone_to_owned()
                            .is_ok_and(|fd| x.ring.poll_readable(fd, WAKE).is_ok());
                    if !rearmed {
                        self.check_flag_at = Some(x.clock.now + SWEEP_EVERY);
                    }
                }
                // Not at once: a receive later in this batch is a request in flight.
                _ => self.drain_requested = true,
            },
            MAIL => self.conns.deliver_letters(),
            tag => self.conns.on_conn(c, (tag >> 32) as usize, tag as u32),
        }
    }

    fn on_accept(&mut self, c: Completion) {
        let x = &mut self.conns;
        if !c.more {
            x.accept = None;
        }
        let Event::Accepted(result) = c.event else {
            return;
        };
        let guard = &mut self.worker.accept;
        let e = match result {
            Ok(socket) => {
                if let Some(key) = x.admit(socket, guard) {
                    let now = x.clock.now;
                    self.worker
                        .admitted_while_draining(&mut self.conns, key, now);
                }
                return;
            }
            Err(e) => e,
        };
        let errno = Errno::from_io_error(&e);
        if errno == Some(Errno::CANCELED) {
            // We cancelled it (a pause or the drain): not an accept error.
            return;
        }
        match errno.map_or(AcceptErrorKind::Failed, classify) {
            AcceptErrorKind::Exhausted => {
                guard.exhausted(x.clock.now, &e, &x.ctx.stats, &x.ctx.open);
                // Pause: stop the accept if it is still armed; it is re-armed when
                // the back-off is over.
                if let Some(op) = x.accept {
                    let _ = x.ring.cancel(op);
                }
            }
            // A connection that failed before we got it: the accept goes on (or is
            // re-armed).
            AcceptErrorKind::Retry => {}
            // io_uring waits for connections itself, so `EAGAIN` is as unexpected
            // here as any other error.
            AcceptErrorKind::Empty | AcceptErrorKind::Failed => {
                guard.failed(x.clock.now, &e, &x.ctx.stats);
                // Re-arming at once could spin on a persistent error: back off.
                if x.accept.is_none() {
                    guard.exhausted(x.clock.now, &e, &x.ctx.stats, &x.ctx.open);
                }
            }
        }
    }

    fn begin_drain(&mut self) {
        if self.worker.draining() {
            return;
        }
        let x = &mut self.conns;
        if let Some(op) = x.accept {
            let _ = x.ring.cancel(op);
        }
        // The accept holds its own reference until its last completion.
        x.listener = None;
        let now = x.clock.now;
        self.worker.begin_drain(&mut self.conns, now);
    }

    fn run_timers(&mut self) {
        self.conns.clock.tick();
        let now = self.conns.clock.now;
        // The accept is re-armed by the loop once the pause is over.
        let _ = self.worker.run_timers(&mut self.conns, now);
        if let Some(t) = self.check_flag_at {
            if now >= t {
                self.check_flag_at = Some(now + SWEEP_EVERY);
                if self.conns.ctx.shutdown.is_requested() {
                    self.check_flag_at = None;
                    self.begin_drain();
                }
            }
        }
    }
}

impl<A: App> RingConns<A> {
    fn arm_accept(&mut self) -> io::Result<()> {
        if let Some(l) = &self.listener {
            self.accept = Some(self.ring.accept_multi(Arc::clone(l), LISTENER)?);
        }
        Ok(())
    }

    /// Take in an accepted socket; returns its key. A connection accepted while the
    /// accept was being cancelled for the drain is served like a connection fresh at
    /// drain (its client is waiting; on an inherited socket it is gone from the queue
    /// the next instance accepts from).
    fn admit(&mut self, socket: Socket, guard: &mut crate::accept::AcceptGuard) -> Option<usize> {
        let c = &self.ctx;
        if !guard.admit(self.clock.now, &c.open, c.config.max_conns, &c.stats) {
            // Refused (counted by the guard).
            let _ = self.ring.close(socket);
            return None;
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
            return None;
        }
        self.next_serial = self.next_serial.wrapping_add(1);
        let key = self.slab.insert(Entry {
            conn: RingConn::new(socket, session, self.clock.now),
            serial: self.next_serial,
            dirty: false,
            armed: Armed::default(),
        });
        self.mark(key);
        Some(key)
    }

    fn mark(&mut self, key: usize) {
        if let Some(e) = self.slab.get_mut(key) {
            if !e.dirty {
                e.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Serve `f` on a connection with the loop's environment; it is settled at the
    /// end of the iteration.
    fn serve(
        &mut self,
        key: usize,
        now: Instant,
        f: impl FnOnce(
            &mut RingConn<crate::panic_guard::Guarded<A::Session>>,
            &mut OutputPool,
            &Env<'_>,
        ),
    ) {
        let Some(entry) = self.slab.get_mut(key) else {
            return;
        };
        let serial = u64::from(entry.serial);
        let inbox = &self.inbox;
        let make = || Some(inbox.mailbox(key, serial));
        let env = self.clock.env(now, &self.ctx.stats, Some(&make));
        f(&mut entry.conn, &mut self.pool, &env);
        self.mark(key);
    }

    fn on_conn(&mut self, c: Completion, key: usize, serial: u32) {
        if self.slab.get(key).is_none_or(|e| e.serial != serial) {
            // A connection already closed: what the operation owned is dropped
            // here (a receive buffer goes back to the ring).
            if let Event::Sent { buf, .. } = c.event {
                self.pool.put(buf);
            }
            return;
        }
        let more = c.more;
        self.serve(key, self.clock.now, |conn, pool, env| match c.event {
            Event::Received(result) => {
                if !more {
                    conn.recv = None;
                    conn.recv_cancelled = false;
                }
                match result {
                    Ok(Some(buf)) => conn.on_data(&buf, pool, env),
                    Ok(None) => conn.on_eof(pool, env),
                    Err(e) => match Errno::from_io_error(&e) {
                        // Out of buffers, or cancelled: re-armed by `settle` if wanted.
                        Some(Errno::NOBUFS | Errno::CANCELED) => {}
                        _ => conn.on_recv_error(env),
                    },
                }
            }
            Event::Sent { result, buf, pos } => {
                if let Some(reuse) = conn.on_sent(result, buf, pos, pool, env) {
                    pool.put(reuse);
                }
            }
            Event::Accepted(_) | Event::Polled(_) => {}
        });
    }

    /// The inbox's poll completed: hand each letter to its connection, and watch the
    /// inbox again.
    fn deliver_letters(&mut self) {
        let mut letters = std::mem::take(&mut self.letters);
        self.inbox.take(&mut letters);
        for (key, serial, letter) in letters.drain(..) {
            if self
                .slab
                .get(key)
                .is_some_and(|e| u64::from(e.serial) == serial)
            {
                self.serve(key, self.clock.now, |conn, pool, env| {
                    conn.core_mut().letter(env, letter, pool);
                });
            }
        }
        self.letters = letters;
        if let Err(e) = self.ring.poll_readable(Arc::clone(&self.inbox), MAIL) {
            tracing::error!(
                "worker {}: cannot watch the inbox again ({e}); messages to its connections stall",
                self.ctx.id
            );
        }
    }

    fn settle_dirty(&mut self, worker: &mut WorkerCore) {
        // Bounded: settling never marks another connection dirty.
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            if let Some(e) = self.slab.get_mut(key) {
                e.dirty = false;
            }
            let settled = self.settle(key);
            worker.settled(key, settled);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// After a connection was served: queue its send, (re-)arm or cancel its
    /// receive, shut its write side, start its linger timer, or close it.
    fn settle(&mut self, key: usize) -> Settled {
        let output_cap = self.clock.limits.output_cap;
        let Some(entry) = self.slab.get_mut(key) else {
            return Settled::CLOSED;
        };
        let conn = &mut entry.conn;
        let tag = conn_tag(key, entry.serial);
        if conn.core().needs_quiet_check() {
            let env = self.clock.env(self.clock.now, &self.ctx.stats, None);
            conn.check_quiet(&mut self.pool, &env);
        }
        if let Some((buf, pos)) = conn.core_mut().take_transmit() {
            if let Err((e, buf)) = self.ring.send(conn.socket(), buf, pos, tag) {
                tracing::debug!("cannot queue a send: {e}");
                self.pool.put(buf);
                let env = self.clock.env(self.clock.now, &self.ctx.stats, None);
                conn.core_mut().send_failed(&env);
            }
        }
        conn.shutdown_if_due();
        let settled = entry.armed.settle(conn.core(), u64::from(entry.serial));
        if settled.closed {
            self.close(key);
            return settled;
        }
        let wants = conn.core().wants_read(output_cap);
        match (wants, conn.recv) {
            (true, None) => match arm_receive(&mut self.ring, conn.socket(), conn.throttled, tag) {
                Ok(op) => conn.recv = Some(op),
                Err(e) => {
                    tracing::debug!("cannot queue a receive: {e}");
                    WorkerStats::add(&self.ctx.stats.io_errors, 1);
                    self.close(key);
                    return Settled::CLOSED;
                }
            },
            (false, Some(op)) if !conn.recv_cancelled => {
                // Backpressure (or nothing more to read): stop receiving. Bytes that
                // arrive before the cancel lands wait in the connection.
                conn.recv_cancelled = true;
                conn.throttled = true;
                let _ = self.ring.cancel(op);
            }
            _ => {}
        }
        settled
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

impl<A: App> ConnTable for RingConns<A> {
    type Session = crate::panic_guard::Guarded<A::Session>;

    type Entry = Entry<Self::Session>;

    fn slots(&self) -> &Slab<Self::Entry> {
        &self.slab
    }

    fn on_timeout(&mut self, key: usize, now: Instant) -> Settled {
        self.serve(key, now, |conn, pool, env| {
            conn.core_mut().on_timeout(env, pool);
        });
        Settled::OPEN
    }

    fn end_grace(&mut self, key: usize, now: Instant) -> Settled {
        self.serve(key, now, |conn, pool, env| {
            conn.core_mut().end_grace(env, pool)
        });
        Settled::OPEN
    }

    fn start_drain(&mut self, key: usize, now: Instant) -> (bool, Settled) {
        let mut deferred = false;
        self.serve(key, now, |conn, pool, env| {
            deferred = conn.start_drain(pool, env);
        });
        (deferred, Settled::OPEN)
    }

    /// Forget a connection; its socket is closed through the ring, behind a cancel
    /// of whatever is still in flight on it (whose buffers the ring keeps until the
    /// completions return).
    fn close(&mut self, key: usize) {
        if let Some(entry) = self.slab.try_remove(key) {
            let (socket, bufs) = entry.conn.into_socket();
            for buf in bufs {
                self.pool.put(buf);
            }
            if let Err(e) = self.ring.close(socket) {
                tracing::warn!("cannot close a socket through the ring ({e}); leaking it");
            }
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
        }
    }

    fn stats(&self) -> &WorkerStats {
        &self.ctx.stats
    }
}

/// Arm a receive: one buffer at a time for a connection backpressure has stopped
/// before (`throttled`), else a multishot receive.
fn arm_receive(ring: &mut Ring, socket: &Socket, throttled: bool, tag: u64) -> io::Result<OpId> {
    if throttled {
        ring.recv_once(socket, tag)
    } else {
        ring.recv_multi(socket, tag)
    }
}
