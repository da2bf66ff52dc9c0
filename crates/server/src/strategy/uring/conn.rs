//! One connection driven by completions: the io_uring counterpart of the shared
//! readiness driver (`crate::conn`), with the same session contract, backpressure,
//! close sequence and timers.
//!
//! What differs is who holds the bytes. Received bytes arrive in a buffer of the
//! ring's pool: the session reads them in place, and what it leaves unconsumed is
//! copied into `pending_in` so that the buffer goes back to the kernel at once.
//! Replies are appended to `out`; the loop hands `out` to the kernel as one send
//! (the send owns the `Vec` until its completion), and replies produced meanwhile
//! queue in a fresh `out` behind it: one send in flight per connection, so bytes
//! never overtake each other. What a partial send left over waits in `rest` and goes
//! first; it is kept apart from `out` so that the session only ever sees its own new
//! output there (a session stops early once `out` holds `OUT_BATCH_LIMIT` bytes).

use std::time::{Duration, Instant};

use c10k_proto::Session;
use c10k_sys::uring::{OpId, Socket};

use crate::config::MAX_PENDING_INPUT;
use crate::conn::{Env, Phase, Timeout};
use crate::stats::WorkerStats;
use crate::timers::Timers;

/// Input discarded while closing before the driver gives up and closes hard.
const LINGER_MAX_DISCARD: usize = 1024 * 1024;

/// Output buffers kept for reuse by a worker, and the largest one kept.
const SPARE_MAX: usize = 256;
const SPARE_MAX_CAPACITY: usize = 256 * 1024;

/// Emptied output buffers, reused so that a reply does not cost an allocation.
#[derive(Default)]
pub(super) struct Spare(Vec<Vec<u8>>);

impl Spare {
    fn take(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_default()
    }

    pub(super) fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 && buf.capacity() <= SPARE_MAX_CAPACITY && self.0.len() < SPARE_MAX {
            buf.clear();
            self.0.push(buf);
        }
    }
}

/// One connection: its socket, its session, and the bytes in between.
pub(super) struct UConn<S> {
    socket: Socket,
    session: S,
    /// Input received but not consumed by the session (an incomplete request).
    pending_in: Vec<u8>,
    /// Output not handed to the kernel yet.
    out: Vec<u8>,
    /// What a partial send left: `rest[rest_pos..]`, sent before `out`.
    rest: Vec<u8>,
    rest_pos: usize,
    /// Bytes of the send in flight not confirmed yet (0: no send in flight).
    in_flight: usize,
    sending: bool,
    /// The multishot receive, while armed; and whether it is being cancelled.
    pub(super) recv: Option<OpId>,
    pub(super) recv_cancelled: bool,
    eof: bool,
    phase: Phase,
    discarded: usize,
    timers: Timers,
    /// At least one byte was received.
    received: bool,
    /// The drain reached this connection before its next bytes did
    /// ([`UConn::start_drain_unless_fresh`]).
    drain_deferred: bool,
}

impl<S: Session> UConn<S> {
    pub(super) fn new(socket: Socket, session: S) -> Self {
        UConn {
            socket,
            session,
            pending_in: Vec::new(),
            out: Vec::new(),
            rest: Vec::new(),
            rest_pos: 0,
            in_flight: 0,
            sending: false,
            recv: None,
            recv_cancelled: false,
            eof: false,
            phase: Phase::Open,
            discarded: 0,
            timers: Timers::default(),
            received: false,
            drain_deferred: false,
        }
    }

    pub(super) fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The socket (to close) and the output buffers (to reuse).
    pub(super) fn into_socket(self) -> (Socket, [Vec<u8>; 2]) {
        (self.socket, [self.out, self.rest])
    }

    pub(super) fn phase(&self) -> Phase {
        self.phase
    }

    fn out_pending(&self) -> usize {
        self.in_flight + (self.rest.len() - self.rest_pos) + self.out.len()
    }

    /// Should a receive be armed? (While closing, input is read and discarded, so
    /// that the peer's last bytes do not turn our close into a reset.)
    pub(super) fn wants_read(&self, output_cap: usize) -> bool {
        match self.phase {
            Phase::Open => !self.eof && self.out_pending() <= output_cap,
            Phase::Closing | Phase::Lingering => !self.eof,
            Phase::Done => false,
        }
    }

    /// Nothing in flight: no pending output, no partial request.
    pub(super) fn is_idle(&self) -> bool {
        self.out_pending() == 0 && self.pending_in.is_empty() && !self.session.mid_request()
    }

    /// The output to hand to the kernel now (a buffer and where to start in it), if
    /// there is some and no send is in flight.
    pub(super) fn take_send(&mut self) -> Option<(Vec<u8>, usize)> {
        if self.sending || self.phase == Phase::Done {
            return None;
        }
        let (buf, pos) = if self.rest_pos < self.rest.len() {
            let pos = std::mem::take(&mut self.rest_pos);
            (std::mem::take(&mut self.rest), pos)
        } else if !self.out.is_empty() {
            (std::mem::take(&mut self.out), 0)
        } else {
            return None;
        };
        self.sending = true;
        self.in_flight = buf.len() - pos;
        Some((buf, pos))
    }

    /// The send could not be queued: the connection is beyond saving.
    pub(super) fn send_failed(&mut self, env: &Env<'_>) {
        self.sending = false;
        self.in_flight = 0;
        self.fail(env);
    }

    /// The server is draining: let the session finish its request, and close the
    /// connection now if it is idle.
    pub(super) fn start_drain(&mut self) {
        self.drain_deferred = false;
        self.session.start_drain();
        if self.phase == Phase::Open && (self.is_idle() || self.session.wants_close()) {
            self.phase = Phase::Closing;
            self.advance();
        }
    }

    /// [`start_drain`](UConn::start_drain), except for an idle connection that has
    /// not received a byte yet (its first request is most likely on the way: accepted
    /// just before a restart's SIGTERM) or whose next bytes are `waiting` in the
    /// kernel (received, their completion not processed yet): it stays open, those
    /// bytes are served and then the drain applies, or the loop applies it after
    /// [`DRAIN_FRESH_GRACE`](crate::config::DRAIN_FRESH_GRACE). Returns true when
    /// deferred.
    pub(super) fn start_drain_unless_fresh(&mut self, waiting: bool) -> bool {
        if self.phase == Phase::Open && self.is_idle() && (!self.received || waiting) {
            self.drain_deferred = true;
            return true;
        }
        self.start_drain();
        false
    }

    /// The drain is deferred until bytes arrive (or the grace ends).
    pub(super) fn drain_deferred(&self) -> bool {
        self.drain_deferred
    }

    /// Whether the kernel holds received bytes not delivered to us yet (a peek; a
    /// receive completion may be on its way or its task work not run yet).
    pub(super) fn bytes_waiting(&self) -> bool {
        let mut one = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(rustix::net::recv(&self.socket, &mut one[..], flags), Ok((n, _)) if n > 0)
    }

    /// Stop processing input and close once the output is flushed.
    pub(super) fn close_gracefully(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Closing;
            self.advance();
        }
    }

    /// Bytes arrived.
    pub(super) fn on_data(&mut self, data: &[u8], spare: &mut Spare, env: &Env<'_>) {
        WorkerStats::add(&env.stats.bytes_in, data.len() as u64);
        self.received |= !data.is_empty();
        self.timers.active(env.now);
        match self.phase {
            Phase::Open => self.feed(data, spare, env),
            Phase::Closing | Phase::Lingering => {
                self.discarded += data.len();
                if self.discarded > LINGER_MAX_DISCARD {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        self.advance();
        self.apply_deferred_drain();
    }

    /// A deferred drain applies once bytes were served (or the connection closes).
    fn apply_deferred_drain(&mut self) {
        if self.drain_deferred && (self.received || self.phase != Phase::Open) {
            self.start_drain();
        }
    }

    /// The peer closed its write side.
    pub(super) fn on_eof(&mut self, spare: &mut Spare, env: &Env<'_>) {
        self.eof = true;
        if self.phase == Phase::Open {
            self.ensure_out(spare);
            let before = self.out.len();
            self.session.handle_eof(env.cx, &mut self.out);
            self.replied(before);
            self.phase = Phase::Closing;
        }
        self.advance();
        self.apply_deferred_drain();
    }

    /// A send finished; returns a buffer for reuse.
    pub(super) fn on_sent(
        &mut self,
        result: std::io::Result<usize>,
        buf: Vec<u8>,
        pos: usize,
        spare: &mut Spare,
        env: &Env<'_>,
    ) -> Vec<u8> {
        self.sending = false;
        self.in_flight = 0;
        let sent = match result {
            Ok(n) if n > 0 => n,
            // A send of a non-empty buffer that took nothing, or an error: the
            // connection is beyond saving (the kernel waits for room itself).
            _ => {
                self.fail(env);
                return buf;
            }
        };
        WorkerStats::add(&env.stats.bytes_out, sent as u64);
        self.timers.active(env.now);
        let done = (pos + sent).min(buf.len());
        let reuse = if done < buf.len() && self.phase != Phase::Done {
            // A partial send: the rest goes next, before what was queued behind it.
            self.rest_pos = done;
            std::mem::replace(&mut self.rest, buf)
        } else {
            buf
        };
        if self.phase == Phase::Open && self.out_pending() <= env.output_cap {
            // Backpressure released: offer what waited.
            self.pump(spare, env);
        }
        self.advance();
        reuse
    }

    /// The receive failed (reset, ...).
    pub(super) fn on_recv_error(&mut self, env: &Env<'_>) {
        self.fail(env);
    }

    fn ensure_out(&mut self, spare: &mut Spare) {
        if self.out.capacity() == 0 {
            self.out = spare.take();
        }
    }

    /// Output was produced: a reply is progress, the request timer restarts.
    fn replied(&mut self, before: usize) {
        if self.out.len() > before {
            self.timers.replied();
        }
    }

    /// Offer received bytes to the session (or queue them while over the cap).
    fn feed(&mut self, data: &[u8], spare: &mut Spare, env: &Env<'_>) {
        if self.pending_in.is_empty() && self.out_pending() <= env.output_cap {
            // Fast path: the session reads straight from the ring's buffer.
            self.ensure_out(spare);
            let before = self.out.len();
            let used = call(&mut self.session, &mut self.phase, data, &mut self.out, env);
            self.replied(before);
            if self.phase == Phase::Open && used < data.len() {
                self.pending_in.extend_from_slice(&data[used..]);
            }
            if used > 0 {
                self.pump(spare, env);
            }
        } else {
            self.pending_in.extend_from_slice(data);
            self.pump(spare, env);
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

    /// Offer pending input while the session makes progress and output has room.
    fn pump(&mut self, spare: &mut Spare, env: &Env<'_>) {
        while self.phase == Phase::Open
            && !self.pending_in.is_empty()
            && self.out_pending() <= env.output_cap
        {
            self.ensure_out(spare);
            let pending = std::mem::take(&mut self.pending_in);
            let before = self.out.len();
            let used = call(
                &mut self.session,
                &mut self.phase,
                &pending,
                &mut self.out,
                env,
            );
            self.replied(before);
            self.pending_in = pending;
            if self.phase != Phase::Open {
                self.pending_in = Vec::new();
            } else {
                self.pending_in.drain(..used);
                if self.pending_in.is_empty() {
                    self.pending_in = Vec::new();
                }
            }
            if used == 0 {
                break;
            }
        }
        self.track_request(env.now);
    }

    /// Start or stop the request timer after input was processed.
    fn track_request(&mut self, now: Instant) {
        let in_request = self.phase == Phase::Open
            && (!self.pending_in.is_empty() || self.session.mid_request());
        self.timers.track(now, in_request);
    }

    /// Check the idle and request timers (the same rules as the readiness driver's
    /// `Conn::check_timers`).
    pub(super) fn check_timers(
        &mut self,
        spare: &mut Spare,
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
                self.ensure_out(spare);
                self.session.handle_timeout(env.cx, &mut self.out);
                self.timers.replied();
                self.phase = Phase::Closing;
                self.pending_in = Vec::new();
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
                // Stuck on a peer that does not read: close at once (a send in
                // flight is cancelled; its buffer comes back with its completion).
                self.phase = Phase::Done;
                self.drop_output();
            }
            Phase::Lingering | Phase::Done => return None,
        }
        Some(Timeout::Idle)
    }

    /// An I/O error: the connection is beyond saving.
    fn fail(&mut self, env: &Env<'_>) {
        if self.phase != Phase::Done {
            WorkerStats::add(&env.stats.io_errors, 1);
            self.phase = Phase::Done;
            self.drop_output();
        }
    }

    fn drop_output(&mut self) {
        self.out.clear();
        self.rest.clear();
        self.rest_pos = 0;
    }

    /// Move from Closing to Lingering or Done once the output is flushed.
    fn advance(&mut self) {
        match self.phase {
            Phase::Closing if self.out_pending() == 0 => {
                if self.eof {
                    self.phase = Phase::Done;
                } else {
                    // Shut our side (the peer sees EOF after our last reply, which
                    // the kernel has taken: no send is in flight), then read and
                    // discard until it closes too.
                    let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Write);
                    self.phase = Phase::Lingering;
                }
            }
            Phase::Lingering if self.eof => self.phase = Phase::Done,
            _ => {}
        }
    }
}

/// Offer `input` to the session; on a protocol error the error reply is already in
/// `out` and the connection closes.
fn call<S: Session>(
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
