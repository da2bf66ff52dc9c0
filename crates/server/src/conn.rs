//! The readiness shell: a nonblocking socket and its [`ConnCore`], for every
//! readiness-based strategy (epoll, poll, select, the dispatcher pool). A strategy
//! says "readable" or "writable"; the shell reads into the worker's buffer, hands the
//! bytes to the core, writes what the core wants written, and shuts the write side
//! when the core says so. Every decision is the core's.
//!
//! Memory per idle connection is kept near zero: reads go into the worker's shared
//! buffer and replies into buffers lent by the worker's [`OutputPool`]; a connection
//! holds input only while a request is incomplete and output only while the socket
//! cannot take everything at once.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use c10k_proto::Session;

use crate::config::READ_CHUNK;
use crate::lifecycle::mailbox::Letter;
use crate::lifecycle::{ConnCore, Env, OutputPool, Phase};

/// Buffers owned by a worker and lent to whichever connection it is serving.
pub(crate) struct Bufs {
    read: Box<[u8]>,
    pub(crate) pool: OutputPool,
}

impl Bufs {
    pub(crate) fn new() -> Self {
        Bufs {
            read: vec![0; READ_CHUNK].into_boxed_slice(),
            pool: OutputPool::default(),
        }
    }
}

/// One connection of a readiness loop.
pub(crate) struct ReadyConn<S> {
    stream: TcpStream,
    core: ConnCore<S>,
    /// Reading stopped because pending output was over the cap (edge-triggered
    /// readiness will not report what was waiting meanwhile).
    read_blocked: bool,
}

impl<S: Session> ReadyConn<S> {
    pub(crate) fn new(stream: TcpStream, session: S, now: Instant) -> Self {
        ReadyConn {
            stream,
            core: ConnCore::new(session, now),
            read_blocked: false,
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub(crate) fn core(&self) -> &ConnCore<S> {
        &self.core
    }

    pub(crate) fn phase(&self) -> Phase {
        self.core.phase()
    }

    /// Should the strategy watch this connection for readability?
    pub(crate) fn wants_read(&self, output_cap: usize) -> bool {
        self.core.wants_read(output_cap)
    }

    /// Should the strategy watch this connection for writability?
    pub(crate) fn wants_write(&self) -> bool {
        self.core.wants_write()
    }

    /// The socket is readable (or hung up). With `edge`, read until the kernel has
    /// nothing more (a short read counts as nothing more unless the peer hung up, since
    /// any later arrival raises a new edge); otherwise read once.
    pub(crate) fn on_readable(&mut self, bufs: &mut Bufs, env: &Env<'_>, edge: bool, hup: bool) {
        loop {
            if !self.core.wants_read(env.limits.output_cap) {
                self.read_blocked = self.core.phase() == Phase::Open;
                break;
            }
            let n = match (&self.stream).read(&mut bufs.read) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.core.read_would_block(env, &mut bufs.pool);
                    self.flush(bufs, env);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.core.failed(env);
                    break;
                }
            };
            if n == 0 {
                self.core.eof(env, &mut bufs.pool);
                self.flush(bufs, env);
                break;
            }
            self.core.received(env, &bufs.read[..n], &mut bufs.pool);
            self.flush(bufs, env);
            if self.core.is_closed() || !edge || (n < bufs.read.len() && !hup) {
                break;
            }
        }
        self.check_quiet(bufs, env);
    }

    /// A drained connection that went idle closes only once a read finds nothing
    /// waiting: bytes its peer sent before the drain are served, not discarded.
    fn check_quiet(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        if self.core.needs_quiet_check() {
            self.on_readable(bufs, env, true, true);
        }
    }

    /// The socket is writable: flush (each confirmed write lets the core offer input
    /// that backpressure held back).
    pub(crate) fn on_writable(&mut self, bufs: &mut Bufs, env: &Env<'_>, edge: bool) {
        self.flush(bufs, env);
        if edge && self.read_blocked && self.core.wants_read(env.limits.output_cap) {
            // Edge-triggered readiness will not report data that was already
            // waiting while we were not reading: read now.
            self.read_blocked = false;
            self.on_readable(bufs, env, true, true);
        }
        self.check_quiet(bufs, env);
    }

    /// The server drains: take in what the kernel has already received (a request in
    /// flight is not an idle connection; not while backpressured: busy anyway), then
    /// apply the drain. Returns whether it was deferred.
    pub(crate) fn start_drain(&mut self, bufs: &mut Bufs, env: &Env<'_>) -> bool {
        self.read_pending(bufs, env);
        let deferred = self.core.start_drain(env, false, &mut bufs.pool);
        self.flush(bufs, env);
        self.check_quiet(bufs, env);
        deferred
    }

    /// The fresh-connection grace is over: bytes that came just now still count as a
    /// first request; then a deferred drain applies.
    pub(crate) fn end_grace(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        if self.core.drain_deferred() {
            self.read_pending(bufs, env);
            self.core.end_grace(env, &mut bufs.pool);
            self.flush(bufs, env);
            self.check_quiet(bufs, env);
        }
    }

    /// A letter from the connection's mailbox, delivered to the session; what it
    /// produced is written by [`after_letters`](Self::after_letters), once for a
    /// batch.
    pub(crate) fn queue_letter(&mut self, bufs: &mut Bufs, env: &Env<'_>, letter: Letter) {
        self.core.letter(env, letter, &mut bufs.pool);
    }

    /// After a batch of letters: write what they produced.
    pub(crate) fn after_letters(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        self.flush(bufs, env);
        self.check_quiet(bufs, env);
    }

    /// Act on due timers (the timeout reply is written at once).
    pub(crate) fn on_timeout(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        if self.core.on_timeout(env, &mut bufs.pool).is_some() {
            self.flush(bufs, env);
            self.check_quiet(bufs, env);
        }
    }

    /// Whether a timer is due at `now` (a look, for a strategy that must first take
    /// the connection out of a shared table).
    pub(crate) fn timers_due(&self, now: Instant, limits: &crate::lifecycle::Limits) -> bool {
        self.core.poll_timeout(limits).is_some_and(|t| t <= now)
    }

    fn read_pending(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        if self.core.phase() == Phase::Open && self.core.wants_read(env.limits.output_cap) {
            self.on_readable(bufs, env, true, false);
        }
    }

    /// Write what the core has, as far as the socket takes it without blocking; shut
    /// the write side when the core says so.
    fn flush(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        loop {
            let data = self.core.transmit();
            if data.is_empty() {
                break;
            }
            match (&self.stream).write(data) {
                Ok(0) => self.core.failed(env),
                Ok(n) => self.core.sent(env, n, &mut bufs.pool),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.core.failed(env),
            }
        }
        if self.core.take_shutdown_write() {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }
}
