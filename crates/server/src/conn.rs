//! The connection driver shared by every readiness-based strategy (epoll, poll,
//! select, the dispatcher pool): buffers, feeding the session, flushing, backpressure,
//! and the close sequence. A strategy only tells it "readable" or "writable" and asks
//! what the connection wants next.
//!
//! Memory per idle connection is kept near zero: reads go into the worker's shared
//! buffer and replies into the worker's shared output buffer; a connection owns an
//! input buffer only while a request is incomplete and an output buffer only while the
//! socket cannot take everything at once. Both are freed when they empty.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use c10k_proto::{Cx, Session};

use crate::config::{MAX_PENDING_INPUT, READ_CHUNK};
use crate::stats::WorkerStats;
pub(crate) use crate::timers::Timeout;
use crate::timers::Timers;

/// Input discarded while lingering before the driver gives up and closes hard.
pub(crate) const LINGER_MAX_DISCARD: usize = 1024 * 1024;

/// Buffers owned by a worker and lent to whichever connection it is serving.
pub(crate) struct Bufs {
    read: Box<[u8]>,
    write: Vec<u8>,
}

impl Bufs {
    pub(crate) fn new() -> Self {
        Bufs {
            read: vec![0; READ_CHUNK].into_boxed_slice(),
            write: Vec::with_capacity(READ_CHUNK),
        }
    }
}

/// What a strategy passes down with each readiness event.
pub(crate) struct Env<'a> {
    pub(crate) cx: &'a Cx,
    /// The loop's notion of now (for activity and request timers).
    pub(crate) now: Instant,
    pub(crate) stats: &'a WorkerStats,
    pub(crate) output_cap: usize,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading requests and writing replies.
    Open,
    /// No more input is processed; pending output is still being flushed.
    Closing,
    /// Output flushed and our write side shut; reading and discarding until the peer
    /// closes, so that our last reply is not destroyed by a reset.
    Lingering,
    /// Finished: close the socket now.
    Done,
}

/// One connection: a socket, a session, and the bytes in between.
pub(crate) struct Conn<S> {
    stream: TcpStream,
    session: S,
    /// Input received but not consumed by the session (an incomplete request).
    pending_in: Vec<u8>,
    /// Output the socket has not taken yet: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    /// The peer closed its write side.
    eof: bool,
    phase: Phase,
    /// Reading stopped because pending output was over the cap.
    read_blocked: bool,
    discarded: usize,
    /// Idle and request clocks.
    timers: Timers,
    /// At least one byte was received.
    received: bool,
    /// The drain reached this connection before its first byte did
    /// ([`Conn::start_drain_unless_fresh`]).
    drain_deferred: bool,
}

impl<S: Session> Conn<S> {
    pub(crate) fn new(stream: TcpStream, session: S) -> Self {
        Conn {
            stream,
            session,
            pending_in: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            phase: Phase::Open,
            read_blocked: false,
            discarded: 0,
            timers: Timers::default(),
            received: false,
            drain_deferred: false,
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    fn out_pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Should the strategy watch this connection for readability?
    pub(crate) fn wants_read(&self, output_cap: usize) -> bool {
        match self.phase {
            Phase::Open => !self.eof && self.out_pending() <= output_cap,
            Phase::Lingering => !self.eof,
            Phase::Closing | Phase::Done => false,
        }
    }

    /// Should the strategy watch this connection for writability?
    pub(crate) fn wants_write(&self) -> bool {
        self.phase != Phase::Done && self.out_pending() > 0
    }

    /// Nothing in flight: no pending output, no partial request.
    pub(crate) fn is_idle(&self) -> bool {
        self.out_pending() == 0 && self.pending_in.is_empty() && !self.session.mid_request()
    }

    /// The server is draining: let the session finish its request, and close the
    /// connection now if it is idle.
    pub(crate) fn start_drain(&mut self) {
        self.drain_deferred = false;
        self.session.start_drain();
        if self.phase == Phase::Open && (self.is_idle() || self.session.wants_close()) {
            self.phase = Phase::Closing;
            self.advance();
        }
    }

    /// [`start_drain`](Conn::start_drain), except for a connection that has not
    /// received a byte yet: its client has most likely sent its first request, still
    /// on the way (a connection accepted just before a restart's SIGTERM). It stays
    /// open; its first bytes are served and then the drain applies, or the strategy
    /// applies it after [`DRAIN_FRESH_GRACE`](crate::config::DRAIN_FRESH_GRACE).
    /// Returns true when deferred.
    pub(crate) fn start_drain_unless_fresh(&mut self) -> bool {
        if self.phase == Phase::Open && !self.received && self.is_idle() {
            self.drain_deferred = true;
            return true;
        }
        self.start_drain();
        false
    }

    /// The drain is deferred until the first bytes arrive (or the grace ends).
    pub(crate) fn drain_deferred(&self) -> bool {
        self.drain_deferred
    }

    /// Stop processing input and close once the output is flushed.
    pub(crate) fn close_gracefully(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
            self.advance();
        }
    }

    /// The socket is readable (or hung up). With `edge`, read until the kernel has
    /// nothing more (a short read counts as nothing more unless the peer hung up, since
    /// any later arrival raises a new edge); otherwise read once.
    pub(crate) fn on_readable(&mut self, bufs: &mut Bufs, env: &Env<'_>, edge: bool, hup: bool) {
        loop {
            if !self.wants_read(env.output_cap) {
                self.read_blocked = self.phase == Phase::Open && !self.eof;
                break;
            }
            let n = match (&self.stream).read(&mut bufs.read) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.fail(env);
                    break;
                }
            };
            if n == 0 {
                self.eof = true;
                if self.phase == Phase::Open {
                    self.session.handle_eof(env.cx, &mut bufs.write);
                    self.phase = Phase::Closing;
                    self.send(bufs, env);
                }
                break;
            }
            WorkerStats::add(&env.stats.bytes_in, n as u64);
            self.received = true;
            self.timers.active(env.now);
            if self.phase == Phase::Lingering {
                self.discarded += n;
                if self.discarded > LINGER_MAX_DISCARD {
                    self.phase = Phase::Done;
                    break;
                }
            } else {
                self.feed(n, bufs, env);
            }
            if !edge || (n < bufs.read.len() && !hup) {
                break;
            }
        }
        self.advance();
        if self.drain_deferred && (self.received || self.phase != Phase::Open) {
            // Its first request is answered (or it closed): now drain it.
            self.start_drain();
        }
    }

    /// The socket is writable: flush, then resume what backpressure paused.
    pub(crate) fn on_writable(&mut self, bufs: &mut Bufs, env: &Env<'_>, edge: bool) {
        if self.out_pending() > 0 {
            self.flush(env);
        }
        if self.phase == Phase::Open && self.out_pending() <= env.output_cap {
            self.pump(bufs, env);
            if edge && self.read_blocked && self.wants_read(env.output_cap) {
                // Edge-triggered readiness will not report data that was already
                // waiting while we were not reading: read now.
                self.read_blocked = false;
                self.on_readable(bufs, env, true, true);
            }
        }
        self.advance();
    }

    /// Offer `bufs.read[..n]` to the session.
    fn feed(&mut self, n: usize, bufs: &mut Bufs, env: &Env<'_>) {
        if self.phase != Phase::Open {
            return;
        }
        if self.pending_in.is_empty() {
            // Fast path: the session reads straight from the worker's buffer.
            let data = &bufs.read[..n];
            let used = Self::call(
                &mut self.session,
                &mut self.phase,
                data,
                &mut bufs.write,
                env,
            );
            if self.phase == Phase::Open && used < n {
                self.pending_in.extend_from_slice(&data[used..]);
            }
            self.send(bufs, env);
            if used > 0 {
                self.pump(bufs, env);
            }
        } else {
            self.pending_in.extend_from_slice(&bufs.read[..n]);
            self.pump(bufs, env);
        }
        self.track_request(env.now);
        if self.phase == Phase::Open && self.pending_in.len() > MAX_PENDING_INPUT {
            tracing::debug!(
                "closing a connection with {} unconsumed input bytes",
                self.pending_in.len()
            );
            WorkerStats::add(&env.stats.proto_errors, 1);
            self.phase = Phase::Closing;
            self.pending_in = Vec::new();
        }
    }

    /// Offer pending input while the session makes progress and output has room
    /// (a session may stop early on a large pipelined batch).
    fn pump(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        while self.phase == Phase::Open
            && !self.pending_in.is_empty()
            && self.out_pending() <= env.output_cap
        {
            let pending = std::mem::take(&mut self.pending_in);
            let used = Self::call(
                &mut self.session,
                &mut self.phase,
                &pending,
                &mut bufs.write,
                env,
            );
            self.pending_in = pending;
            if self.phase != Phase::Open {
                self.pending_in = Vec::new();
            } else {
                self.pending_in.drain(..used);
                if self.pending_in.is_empty() {
                    self.pending_in = Vec::new();
                }
            }
            self.send(bufs, env);
            if used == 0 {
                break;
            }
        }
    }

    fn call(
        session: &mut S,
        phase: &mut Phase,
        input: &[u8],
        out: &mut Vec<u8>,
        env: &Env<'_>,
    ) -> usize {
        let used = match session.handle_input(env.cx, input, out) {
            Ok(n) => n.min(input.len()),
            Err(e) => {
                tracing::debug!("protocol error: {e}");
                WorkerStats::add(&env.stats.proto_errors, 1);
                *phase = Phase::Closing;
                input.len()
            }
        };
        WorkerStats::add(&env.stats.requests, session.take_requests());
        if session.wants_close() {
            *phase = Phase::Closing;
        }
        used
    }

    /// Write the worker's output buffer: straight to the socket when nothing is queued,
    /// keeping only what the socket would not take.
    fn send(&mut self, bufs: &mut Bufs, env: &Env<'_>) {
        let data = &mut bufs.write;
        if data.is_empty() {
            return;
        }
        // A reply is progress: the request timer restarts with the next request.
        self.timers.replied();
        if self.phase == Phase::Done {
            data.clear();
            return;
        }
        if self.out_pending() > 0 {
            if self.out_pos > 0 && self.out_pos >= self.out.len() / 2 {
                self.out.drain(..self.out_pos);
                self.out_pos = 0;
            }
            self.out.extend_from_slice(data);
            data.clear();
            self.flush(env);
        } else {
            let (sent, failed) = write_nonblocking(&self.stream, data);
            WorkerStats::add(&env.stats.bytes_out, sent as u64);
            self.timers.active(env.now);
            if failed {
                self.fail(env);
            } else if sent < data.len() {
                self.out.clear();
                self.out.extend_from_slice(&data[sent..]);
                self.out_pos = 0;
            }
            data.clear();
        }
        if data.capacity() > 4 * READ_CHUNK {
            data.shrink_to(READ_CHUNK);
        }
    }

    fn flush(&mut self, env: &Env<'_>) {
        let (sent, failed) = write_nonblocking(&self.stream, &self.out[self.out_pos..]);
        WorkerStats::add(&env.stats.bytes_out, sent as u64);
        if sent > 0 {
            self.timers.active(env.now);
        }
        self.out_pos += sent;
        if failed {
            self.fail(env);
        } else if self.out_pos == self.out.len() {
            self.out = Vec::new();
            self.out_pos = 0;
        }
    }

    /// Start or stop the request timer after input was processed.
    fn track_request(&mut self, now: Instant) {
        let in_request = self.phase == Phase::Open
            && (!self.pending_in.is_empty() || self.session.mid_request());
        self.timers.track(now, in_request);
    }

    /// Check the connection's timers (called by a periodic sweep). A request that has
    /// been incomplete for `request_timeout` gets the protocol's timeout reply (HTTP
    /// 408) and a graceful close; a connection where no byte moved for `idle_timeout`
    /// is closed: gracefully when idle, at once when it was stuck (a peer that stopped
    /// reading our output).
    pub(crate) fn check_timers(
        &mut self,
        bufs: &mut Bufs,
        env: &Env<'_>,
        idle_timeout: Duration,
        request_timeout: Duration,
    ) -> Option<Timeout> {
        let open = self.phase == Phase::Open;
        match self
            .timers
            .due(env.now, idle_timeout, request_timeout, open)?
        {
            Timeout::Request => {
                self.session.handle_timeout(env.cx, &mut bufs.write);
                self.phase = Phase::Closing;
                self.pending_in = Vec::new();
                self.send(bufs, env);
                self.advance();
                return Some(Timeout::Request);
            }
            Timeout::Idle => {}
        }
        match self.phase {
            Phase::Open if self.is_idle() => {
                self.phase = Phase::Closing;
                self.advance();
            }
            Phase::Open | Phase::Closing => {
                self.phase = Phase::Done;
                self.out = Vec::new();
                self.out_pos = 0;
            }
            Phase::Lingering | Phase::Done => return None,
        }
        Some(Timeout::Idle)
    }

    /// Whether [`check_timers`](Self::check_timers) would act now (a read-only look
    /// for a strategy that must first take the connection out of a shared table; it
    /// starts the idle clock of a connection that has none yet).
    pub(crate) fn timers_due(
        &mut self,
        now: Instant,
        idle_timeout: Duration,
        request_timeout: Duration,
    ) -> bool {
        let open = self.phase == Phase::Open;
        match self.timers.due(now, idle_timeout, request_timeout, open) {
            Some(Timeout::Request) => true,
            Some(Timeout::Idle) => matches!(self.phase, Phase::Open | Phase::Closing),
            None => false,
        }
    }

    /// An I/O error: the connection is beyond saving.
    fn fail(&mut self, env: &Env<'_>) {
        if self.phase != Phase::Done {
            WorkerStats::add(&env.stats.io_errors, 1);
            self.phase = Phase::Done;
            self.out = Vec::new();
            self.out_pos = 0;
        }
    }

    /// Move from Closing to Lingering or Done once the output is flushed.
    fn advance(&mut self) {
        match self.phase {
            Phase::Closing if self.out_pending() == 0 => {
                if self.eof {
                    self.phase = Phase::Done;
                } else {
                    // Shut our side (the peer sees EOF after our last reply), then
                    // read and discard until it closes too.
                    let _ = self.stream.shutdown(std::net::Shutdown::Write);
                    self.phase = Phase::Lingering;
                }
            }
            Phase::Lingering if self.eof => self.phase = Phase::Done,
            _ => {}
        }
    }
}

/// Write as much of `data` as the socket takes without blocking. Returns the bytes
/// taken and whether the connection failed.
fn write_nonblocking(stream: &TcpStream, data: &[u8]) -> (usize, bool) {
    let mut sent = 0;
    let mut writer = stream;
    while sent < data.len() {
        match writer.write(&data[sent..]) {
            Ok(0) => return (sent, true),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return (sent, true),
        }
    }
    (sent, false)
}
