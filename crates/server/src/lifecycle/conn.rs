//! [`ConnCore`]: one connection's whole server-side life, sans-IO.
//!
//! The core owns the protocol session, the input the session has not consumed, the
//! output the socket has not taken, the phase (open, closing, lingering, done), the
//! drain state, backpressure and the three timers (idle, header, linger). It owns no
//! descriptor and makes no system call: a driver (the readiness shell in
//! `crate::conn`, the io_uring shell in `strategy/uring/conn.rs`, the blocking
//! driver in `crate::blocking`) moves bytes between a socket and the core and reports
//! what happened:
//!
//! ```text
//! core.received(env, bytes, pool)      bytes arrived
//! core.eof(env, pool)                  the peer shut its write side
//! core.transmit() -> &[u8]             what to write next; then core.sent(env, n, pool)
//! core.take_transmit() -> (Vec, pos)   the same for a send that owns its buffer
//!                                      (io_uring); then core.sent_owned(...)
//! core.failed(env)                     an I/O error: done
//! core.take_shutdown_write()           shut our write side now (entering linger)
//! core.poll_timeout(limits)            the next timer; core.on_timeout(env, pool)
//! core.start_drain(env, waiting)       the server drains; core.end_grace(env, pool)
//! core.wants_read(cap) / wants_write() / is_closed()
//! ```
//!
//! The rules, once for every strategy:
//! - **Backpressure**: the session is offered input only while the unsent output is
//!   at most `--output-cap`; above it, input waits in the core and `wants_read` is
//!   false, so a driver stops reading. Each confirmed send offers what waited.
//! - **Close sequence**: a protocol error, `wants_close`, EOF or a timeout moves the
//!   connection to `Closing`: no more input is processed, output is flushed; then,
//!   unless the peer already closed, our write side is shut (`take_shutdown_write`)
//!   and the connection `Lingers`, reading and discarding (at most
//!   [`LINGER_MAX_DISCARD`]) until the peer closes or [`LINGER`] passes, so that our
//!   last reply is not destroyed by a reset.
//! - **Timers**: the idle timer runs from the last byte moved either way; the header
//!   timer from the start of an incomplete request until a reply is produced
//!   (slowloris); the linger timer from the moment the write side is shut.
//! - **Drain**: [`start_drain`](ConnCore::start_drain) tells the session, closes an
//!   idle connection at once and a busy one as soon as it becomes idle; a
//!   connection that has not received a byte yet (or whose bytes the driver knows
//!   are `waiting` in the kernel) is *deferred*: its first bytes are served, then the
//!   drain applies, or [`end_grace`](ConnCore::end_grace) applies it.

use std::time::{Duration, Instant};

use c10k_proto::{Cx, Session};

use std::collections::VecDeque;
use std::sync::Arc;

use c10k_proto::Mailbox;

use super::mailbox::{Letter, MailSlot};
use crate::config::{DRAIN_QUIET, LINGER, MAX_PENDING_INPUT};
use crate::stats::WorkerStats;
use crate::timers::{Timeout, Timers};

/// Input discarded while closing before the core gives up and closes hard.
pub(crate) const LINGER_MAX_DISCARD: usize = 1024 * 1024;

/// Output buffers kept for reuse by a worker, and the largest one kept.
const POOL_MAX: usize = 256;
const POOL_MAX_CAPACITY: usize = 256 * 1024;

/// Emptied output buffers of one worker, lent to whichever connection produces
/// output next: a reply costs no allocation, and an idle connection holds none.
#[derive(Default)]
pub(crate) struct OutputPool(Vec<Vec<u8>>);

impl OutputPool {
    fn take(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_default()
    }

    /// Give back a buffer (kept if it is not too large and the pool not too full).
    pub(crate) fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 && buf.capacity() <= POOL_MAX_CAPACITY && self.0.len() < POOL_MAX {
            buf.clear();
            self.0.push(buf);
        }
    }
}

/// The limits every connection of a server obeys.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `--output-cap`: stop feeding the session above this much unsent output.
    pub(crate) output_cap: usize,
    /// `--idle-timeout`.
    pub(crate) idle_timeout: Duration,
    /// `--header-timeout`: how long a request may stay incomplete.
    pub(crate) header_timeout: Duration,
}

impl Limits {
    pub(crate) fn of(config: &crate::config::Config) -> Self {
        Limits {
            output_cap: config.output_cap,
            idle_timeout: config.idle_timeout,
            header_timeout: config.header_timeout,
        }
    }
}

/// Makes the mailbox of the connection being served (the loop knows where its
/// letters go and how the loop is woken).
pub(crate) type MailboxMaker<'a> = &'a dyn Fn() -> Option<(Mailbox, Arc<MailSlot>)>;

/// What a driver passes with each event.
pub(crate) struct Env<'a> {
    /// The protocol's clock (wall time, for HTTP `Date`).
    pub(crate) cx: &'a Cx,
    /// The loop's notion of now (for the timers).
    pub(crate) now: Instant,
    pub(crate) stats: &'a WorkerStats,
    pub(crate) limits: &'a Limits,
    /// How to make this connection's mailbox, if the driver delivers messages.
    pub(crate) mailbox: Option<MailboxMaker<'a>>,
}

/// What an event loop keeps to build each event's [`Env`]: the protocol clock, the
/// loop's now, and the limits.
pub(crate) struct LoopClock {
    pub(crate) cx: Cx,
    pub(crate) now: Instant,
    pub(crate) limits: Limits,
}

impl LoopClock {
    pub(crate) fn new(config: &crate::config::Config) -> Self {
        let mut clock = LoopClock {
            cx: Cx::new(std::time::SystemTime::now()),
            now: Instant::now(),
            limits: Limits::of(config),
        };
        clock.tick();
        clock
    }

    /// Move both clocks to now (once per loop iteration).
    pub(crate) fn tick(&mut self) {
        self.now = Instant::now();
        self.cx.set_now(std::time::SystemTime::now());
        self.cx.set_instant(self.now);
    }

    /// The environment of one event at `now`.
    pub(crate) fn env<'a>(
        &'a self,
        now: Instant,
        stats: &'a WorkerStats,
        mailbox: Option<MailboxMaker<'a>>,
    ) -> Env<'a> {
        Env {
            cx: &self.cx,
            now,
            stats,
            limits: &self.limits,
            mailbox,
        }
    }
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

/// Where a connection is in the server's drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// The server is not draining (as far as this connection knows).
    No,
    /// Draining, but this connection's first bytes are awaited first.
    Deferred,
    /// Draining: the session was told; the connection closes once idle.
    Applied,
}

/// One connection's protocol-side state. See the [module docs](self).
pub(crate) struct ConnCore<S> {
    session: S,
    /// Input received but not consumed by the session (an incomplete request, or
    /// input held back by backpressure).
    pending_in: Vec<u8>,
    /// Output not handed to the driver yet.
    out: Vec<u8>,
    /// What a partial write left: `rest[rest_pos..]`, written before `out`.
    rest: Vec<u8>,
    rest_pos: usize,
    /// Bytes handed to the driver by [`take_transmit`](Self::take_transmit) and not
    /// confirmed yet (a send in flight).
    lent: usize,
    sending: bool,
    /// The peer closed its write side.
    eof: bool,
    phase: Phase,
    drain: Drain,
    /// At least one byte was received.
    received: bool,
    /// The driver found no input waiting since the last bytes moved either way (a
    /// read that would block): a drained connection closes only then, so that bytes
    /// the peer sent before the drain are served, not discarded by the linger.
    quiet_since: Option<Instant>,
    /// The driver must shut our write side (set on entering `Lingering`).
    shut_write: bool,
    /// Input discarded while closing.
    discarded: usize,
    timers: Timers,
    /// When lingering ends.
    linger_until: Option<Instant>,
    /// The session's mailbox, once it asked for one.
    mail: Option<Arc<MailSlot>>,
    /// Messages taken from the inbox and not delivered yet (held while the output
    /// is over the cap).
    letters: VecDeque<c10k_proto::Message>,
    /// When the session wants its timer ([`Session::poll_timer`]).
    session_timer: Option<Instant>,
}

impl<S: Session> ConnCore<S> {
    /// A connection accepted at `now` (its idle clock starts then).
    pub(crate) fn new(session: S, now: Instant) -> Self {
        let mut core = ConnCore {
            session,
            pending_in: Vec::new(),
            out: Vec::new(),
            rest: Vec::new(),
            rest_pos: 0,
            lent: 0,
            sending: false,
            eof: false,
            phase: Phase::Open,
            drain: Drain::No,
            received: false,
            quiet_since: None,
            shut_write: false,
            discarded: 0,
            timers: Timers::started(now),
            linger_until: None,
            mail: None,
            letters: VecDeque::new(),
            session_timer: None,
        };
        core.session_timer = core.session.poll_timer();
        if core.session.wants_close() {
            // Refused at open (--max-conns-per-ip): closed unread.
            core.phase = Phase::Done;
        }
        core
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Finished: the driver closes the socket.
    pub(crate) fn is_closed(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Output produced and not confirmed written.
    pub(crate) fn out_pending(&self) -> usize {
        self.lent + (self.rest.len() - self.rest_pos) + self.out.len()
    }

    /// Should the driver read (or keep a receive armed)? While closing, input is read
    /// and discarded, so that the peer's last bytes do not turn our close into a
    /// reset.
    pub(crate) fn wants_read(&self, output_cap: usize) -> bool {
        match self.phase {
            Phase::Open => !self.eof && self.out_pending() <= output_cap,
            Phase::Closing | Phase::Lingering => !self.eof,
            Phase::Done => false,
        }
    }

    /// The peer shut its write side: there is nothing more to read.
    pub(crate) fn eof_seen(&self) -> bool {
        self.eof
    }

    /// Is there output to write (and no send of it in flight)?
    pub(crate) fn wants_write(&self) -> bool {
        self.phase != Phase::Done && !self.sending && self.out_pending() > 0
    }

    /// Nothing in flight: no pending output, no partial request.
    pub(crate) fn is_idle(&self) -> bool {
        self.out_pending() == 0 && self.pending_in.is_empty() && !self.session.mid_request()
    }

    /// A read found nothing waiting (`EAGAIN`, or a peek that found nothing): a
    /// drained connection that is idle may close now.
    pub(crate) fn read_would_block(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        if self.quiet_since.is_none() {
            self.quiet_since = Some(env.now);
            self.after_event(env, pool);
        }
    }

    /// The drain applies and the connection is idle, but the driver has not looked
    /// for input since its last bytes: it should read (until it would block) before
    /// the connection can close.
    pub(crate) fn needs_quiet_check(&self) -> bool {
        self.drain == Drain::Applied
            && self.phase == Phase::Open
            && self.quiet_since.is_none()
            && self.is_idle()
    }

    /// The drain reached this connection before its first bytes did.
    pub(crate) fn drain_deferred(&self) -> bool {
        self.drain == Drain::Deferred
    }

    /// The drain was applied or deferred.
    pub(crate) fn drain_started(&self) -> bool {
        self.drain != Drain::No
    }

    /// Our write side must be shut now (once, on entering `Lingering`).
    pub(crate) fn take_shutdown_write(&mut self) -> bool {
        std::mem::take(&mut self.shut_write)
    }

    /// When the linger timer runs out, while lingering.
    pub(crate) fn linger_deadline(&self) -> Option<Instant> {
        self.linger_until
    }

    // ----- bytes in -----------------------------------------------------------------

    /// Bytes arrived.
    pub(crate) fn received(&mut self, env: &Env<'_>, data: &[u8], pool: &mut OutputPool) {
        if data.is_empty() {
            return;
        }
        WorkerStats::add(&env.stats.bytes_in, data.len() as u64);
        self.received = true;
        self.quiet_since = None;
        self.timers.active(env.now);
        match self.phase {
            Phase::Open => self.feed(env, data, pool),
            Phase::Closing | Phase::Lingering => {
                self.discarded += data.len();
                if self.discarded > LINGER_MAX_DISCARD {
                    self.finish();
                }
            }
            Phase::Done => {}
        }
        self.after_event(env, pool);
    }

    /// The peer shut its write side.
    pub(crate) fn eof(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        let first = !std::mem::replace(&mut self.eof, true);
        if self.phase == Phase::Open && first {
            self.lend_output(pool);
            let before = self.out.len();
            self.session.handle_eof(env.cx, &mut self.out);
            self.replied(before);
            self.after_call(env);
            self.pending_in = Vec::new();
            if !self.reply_on_timer() {
                self.phase = Phase::Closing;
            }
        }
        self.after_event(env, pool);
    }

    /// A request is in progress and the session's timer will answer it (a reply
    /// deferred by `--work wait=...,async`): after EOF the connection stays open,
    /// reading nothing, until the timer has produced the reply.
    fn reply_on_timer(&self) -> bool {
        self.session_timer.is_some() && self.session.mid_request()
    }

    /// An I/O error: the connection is beyond saving.
    pub(crate) fn failed(&mut self, env: &Env<'_>) {
        if self.phase != Phase::Done {
            WorkerStats::add(&env.stats.io_errors, 1);
            self.finish();
        }
    }

    // ----- bytes out ----------------------------------------------------------------

    /// What to write next (empty: nothing, or a send is in flight).
    pub(crate) fn transmit(&self) -> &[u8] {
        if self.sending || self.phase == Phase::Done {
            &[]
        } else if self.rest_pos < self.rest.len() {
            &self.rest[self.rest_pos..]
        } else {
            &self.out
        }
    }

    /// The driver wrote `n` bytes of [`transmit`](Self::transmit).
    pub(crate) fn sent(&mut self, env: &Env<'_>, n: usize, pool: &mut OutputPool) {
        if n == 0 || self.phase == Phase::Done {
            return;
        }
        self.count_sent(env, n);
        if self.rest_pos < self.rest.len() {
            self.rest_pos = (self.rest_pos + n).min(self.rest.len());
            if self.rest_pos == self.rest.len() {
                pool.put(std::mem::take(&mut self.rest));
                self.rest_pos = 0;
            }
        } else if n >= self.out.len() {
            pool.put(std::mem::take(&mut self.out));
        } else {
            // A partial write: the rest goes next, before what is produced meanwhile.
            self.rest = std::mem::take(&mut self.out);
            self.rest_pos = n;
        }
        self.after_sent(env, pool);
    }

    /// The output to hand to the kernel in a send that owns its buffer (a buffer and
    /// where to start in it), if there is some and no send is in flight. Confirmed by
    /// [`sent_owned`](Self::sent_owned).
    pub(crate) fn take_transmit(&mut self) -> Option<(Vec<u8>, usize)> {
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
        self.lent = buf.len() - pos;
        Some((buf, pos))
    }

    /// The send of [`take_transmit`](Self::take_transmit)'s `buf` from `pos` took
    /// `result` bytes (0 or an error: the connection is beyond saving). Returns the
    /// buffer for reuse when it is finished with.
    pub(crate) fn sent_owned(
        &mut self,
        env: &Env<'_>,
        result: std::io::Result<usize>,
        buf: Vec<u8>,
        pos: usize,
        pool: &mut OutputPool,
    ) -> Option<Vec<u8>> {
        self.sending = false;
        self.lent = 0;
        let n = match result {
            Ok(n) if n > 0 => n,
            _ => {
                self.failed(env);
                return Some(buf);
            }
        };
        self.count_sent(env, n);
        let done = (pos + n).min(buf.len());
        let reuse = if done < buf.len() && self.phase != Phase::Done {
            self.rest_pos = done;
            Some(std::mem::replace(&mut self.rest, buf)).filter(|b| b.capacity() > 0)
        } else {
            Some(buf)
        };
        self.after_sent(env, pool);
        reuse
    }

    /// A send could not even be queued: the connection is beyond saving.
    pub(crate) fn send_failed(&mut self, env: &Env<'_>) {
        self.sending = false;
        self.lent = 0;
        self.failed(env);
    }

    /// The output buffers, for reuse once the connection is closed.
    pub(crate) fn into_buffers(mut self) -> [Vec<u8>; 2] {
        [
            std::mem::take(&mut self.out),
            std::mem::take(&mut self.rest),
        ]
    }

    // ----- messages and session timers ----------------------------------------------

    /// A letter from the connection's mailbox: a message is delivered to the session
    /// (now, or once the output is back under the cap); a disconnect closes the
    /// connection at once.
    pub(crate) fn letter(&mut self, env: &Env<'_>, letter: Letter, pool: &mut OutputPool) {
        match letter {
            Letter::Message(msg) => {
                self.letters.push_back(msg);
                self.deliver(env, pool);
            }
            Letter::Disconnect => {
                if self.phase != Phase::Done {
                    WorkerStats::add(&env.stats.mailbox_disconnects, 1);
                    tracing::debug!(
                        "disconnecting a connection that does not keep up with its messages"
                    );
                    self.finish();
                }
            }
        }
        self.after_event(env, pool);
    }

    /// Deliver waiting messages while the connection is open and its output under
    /// the cap.
    fn deliver(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        while self.phase == Phase::Open && self.out_pending() <= env.limits.output_cap {
            let Some(msg) = self.letters.pop_front() else {
                break;
            };
            if let Some(slot) = &self.mail {
                slot.delivered();
            }
            WorkerStats::add(&env.stats.messages_delivered, 1);
            self.lend_output(pool);
            let before = self.out.len();
            self.session.handle_message(env.cx, msg, &mut self.out);
            self.replied(before);
            self.after_call(env);
        }
    }

    /// After every session call: the session's timer, its mailbox, its wish to close.
    fn after_call(&mut self, env: &Env<'_>) {
        self.session_timer = self.session.poll_timer();
        if self.mail.is_none() && self.session.wants_mailbox() {
            if let Some((mailbox, slot)) = env.mailbox.and_then(|make| make()) {
                self.mail = Some(slot);
                self.session.attach_mailbox(mailbox);
            }
        }
        if self.session.wants_close() {
            self.phase = Phase::Closing;
        }
    }

    /// When the core wants `on_timeout` at a precise instant, while open: the
    /// session's own timer, or the end of a drained connection's quiet period
    /// (the idle and header timers are swept, not queued).
    pub(crate) fn session_deadline(&self) -> Option<Instant> {
        if self.phase != Phase::Open {
            return None;
        }
        [self.session_timer, self.quiet_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When a drained, idle connection that is quiet may close.
    fn quiet_deadline(&self) -> Option<Instant> {
        if self.drain == Drain::Applied && self.phase == Phase::Open && self.is_idle() {
            self.quiet_since.map(|t| t + DRAIN_QUIET)
        } else {
            None
        }
    }

    /// No byte arrived for [`DRAIN_QUIET`] since a read found nothing waiting.
    fn quiet_for(&self, now: Instant) -> bool {
        self.quiet_since
            .is_some_and(|t| now.duration_since(t) >= DRAIN_QUIET)
    }

    // ----- timers -------------------------------------------------------------------

    /// When the next timer runs out (`None`: none runs).
    pub(crate) fn poll_timeout(&self, limits: &Limits) -> Option<Instant> {
        match self.phase {
            Phase::Open => {
                let t = self
                    .timers
                    .deadline(limits.idle_timeout, limits.header_timeout);
                Some(self.session_deadline().map_or(t, |s| s.min(t)))
            }
            Phase::Closing => Some(self.timers.idle_deadline(limits.idle_timeout)),
            Phase::Lingering => self.linger_until,
            Phase::Done => None,
        }
    }

    /// Act on the timers that have run out at `env.now`: a request incomplete for
    /// the header timeout gets the protocol's timeout reply (HTTP 408) and a graceful
    /// close; a connection where no byte moved for the idle timeout is closed,
    /// gracefully when idle, at once when stuck (a peer that stopped reading our
    /// output); a linger that ran out ends. Counts the timeout; returns which fired.
    pub(crate) fn on_timeout(&mut self, env: &Env<'_>, pool: &mut OutputPool) -> Option<Timeout> {
        let l = env.limits;
        if self.phase == Phase::Lingering {
            if self.linger_until.is_some_and(|t| env.now >= t) {
                self.finish();
                return Some(Timeout::Linger);
            }
            return None;
        }
        if self.phase == Phase::Done {
            return None;
        }
        if self.quiet_deadline().is_some_and(|t| t <= env.now) {
            // A drained connection stayed quiet: it closes now.
            self.after_event(env, pool);
            return Some(Timeout::Session);
        }
        if self.phase == Phase::Open && self.session_timer.is_some_and(|t| t <= env.now) {
            self.session_timer = None;
            self.lend_output(pool);
            let before = self.out.len();
            self.session.handle_timer(env.cx, &mut self.out);
            self.replied(before);
            self.after_call(env);
            if self.phase == Phase::Open {
                if self.eof {
                    if !self.reply_on_timer() {
                        self.phase = Phase::Closing;
                    }
                } else if !self.pending_in.is_empty() {
                    // A session that held input back for its timer takes it now.
                    self.pump(env, pool);
                }
            }
            self.after_event(env, pool);
            return Some(Timeout::Session);
        }
        let open = self.phase == Phase::Open;
        match self
            .timers
            .due(env.now, l.idle_timeout, l.header_timeout, open)?
        {
            Timeout::Header => {
                WorkerStats::add(&env.stats.timeouts_header, 1);
                self.lend_output(pool);
                self.session.handle_timeout(env.cx, &mut self.out);
                self.after_call(env);
                self.timers.replied();
                self.pending_in = Vec::new();
                self.phase = Phase::Closing;
                self.after_event(env, pool);
                Some(Timeout::Header)
            }
            Timeout::Idle | Timeout::Linger | Timeout::Session => {
                WorkerStats::add(&env.stats.timeouts_idle, 1);
                if self.phase == Phase::Open && self.is_idle() {
                    self.phase = Phase::Closing;
                    self.advance(env.now);
                } else {
                    // Stuck on a peer that does not read: close at once.
                    self.finish();
                }
                Some(Timeout::Idle)
            }
        }
    }

    // ----- drain --------------------------------------------------------------------

    /// The server drains. The session is told and the connection closes once idle
    /// (at once if it is idle now), unless it is fresh: no byte received yet, or
    /// (`waiting`) its next bytes are known to wait in the kernel. A fresh one is
    /// deferred until those bytes are served or [`end_grace`](Self::end_grace).
    /// Returns true when deferred.
    pub(crate) fn start_drain(
        &mut self,
        env: &Env<'_>,
        waiting: bool,
        pool: &mut OutputPool,
    ) -> bool {
        if self.drain != Drain::No {
            return self.drain == Drain::Deferred;
        }
        if self.phase == Phase::Open && self.is_idle() && (!self.received || waiting) {
            self.drain = Drain::Deferred;
            return true;
        }
        self.apply_drain(env, pool);
        false
    }

    /// The fresh-connection grace is over: a deferred drain applies now.
    pub(crate) fn end_grace(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        if self.drain == Drain::Deferred {
            self.apply_drain(env, pool);
        }
    }

    fn apply_drain(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        self.drain = Drain::Applied;
        self.session.start_drain();
        self.after_event(env, pool);
    }

    // ----- internals ----------------------------------------------------------------

    fn count_sent(&mut self, env: &Env<'_>, n: usize) {
        WorkerStats::add(&env.stats.bytes_out, n as u64);
        self.timers.active(env.now);
        // Whether input waits is known only right after a read: a drained
        // connection that goes idle now looks again before it closes.
        self.quiet_since = None;
    }

    fn after_sent(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        if self.phase == Phase::Open && self.out_pending() <= env.limits.output_cap {
            // Backpressure released: offer what waited.
            if !self.pending_in.is_empty() {
                self.pump(env, pool);
            }
            if !self.letters.is_empty() {
                self.deliver(env, pool);
            }
        }
        self.after_event(env, pool);
    }

    /// After every event: a deferred drain applies once bytes were served (or the
    /// connection closes); a drained connection closes once idle; a closing one
    /// moves on once flushed.
    fn after_event(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        match self.drain {
            Drain::No => {}
            Drain::Deferred => {
                if self.received || self.phase != Phase::Open {
                    self.apply_drain(env, pool);
                    return;
                }
            }
            Drain::Applied => {
                if self.phase == Phase::Open
                    && ((self.is_idle() && self.quiet_for(env.now)) || self.session.wants_close())
                {
                    self.phase = Phase::Closing;
                }
            }
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            pool.put(std::mem::take(&mut self.out));
        }
        if self.phase != Phase::Open {
            self.advance(env.now);
        }
    }

    fn lend_output(&mut self, pool: &mut OutputPool) {
        if self.out.capacity() == 0 {
            self.out = pool.take();
        }
    }

    /// Output was produced: a reply is progress, the header timer restarts.
    fn replied(&mut self, before: usize) {
        if self.out.len() > before {
            self.timers.replied();
        }
    }

    /// Offer received bytes to the session (or queue them while over the cap).
    fn feed(&mut self, env: &Env<'_>, data: &[u8], pool: &mut OutputPool) {
        if self.pending_in.is_empty() && self.out_pending() <= env.limits.output_cap {
            // Fast path: the session reads straight from the driver's buffer.
            let used = self.call(env, data, pool);
            if self.phase == Phase::Open && used < data.len() {
                self.pending_in.extend_from_slice(&data[used..]);
            }
            if used > 0 && !self.pending_in.is_empty() {
                self.offer_pending(env, pool);
            }
        } else {
            self.pending_in.extend_from_slice(data);
            self.offer_pending(env, pool);
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
    fn offer_pending(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        while self.phase == Phase::Open
            && !self.pending_in.is_empty()
            && self.out_pending() <= env.limits.output_cap
        {
            let pending = std::mem::take(&mut self.pending_in);
            let used = self.call(env, &pending, pool);
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
    }

    /// [`offer_pending`](Self::offer_pending), then restart or stop the header
    /// timer.
    fn pump(&mut self, env: &Env<'_>, pool: &mut OutputPool) {
        self.offer_pending(env, pool);
        self.track_request(env.now);
    }

    /// Offer `input` to the session; on a protocol error the error reply is already
    /// in `out` and the connection closes.
    fn call(&mut self, env: &Env<'_>, input: &[u8], pool: &mut OutputPool) -> usize {
        self.lend_output(pool);
        let before = self.out.len();
        let used = match self.session.handle_input(env.cx, input, &mut self.out) {
            Ok(n) => n.min(input.len()),
            Err(e) => {
                tracing::debug!("protocol error: {e}");
                WorkerStats::add(&env.stats.proto_errors, 1);
                self.phase = Phase::Closing;
                input.len()
            }
        };
        self.replied(before);
        WorkerStats::add(&env.stats.requests, self.session.take_requests());
        self.after_call(env);
        used
    }

    /// Start or stop the header timer after input was processed.
    fn track_request(&mut self, now: Instant) {
        let in_request = self.phase == Phase::Open
            && (!self.pending_in.is_empty() || self.session.mid_request());
        self.timers.track(now, in_request);
    }

    /// Done at once: output dropped (a send in flight is the driver's to cancel).
    fn finish(&mut self) {
        self.drop_mail();
        self.phase = Phase::Done;
        self.out = Vec::new();
        self.rest = Vec::new();
        self.rest_pos = 0;
        self.pending_in = Vec::new();
        self.linger_until = None;
    }

    /// Close the mailbox (posts fail from now on) and drop undelivered messages.
    fn drop_mail(&mut self) {
        if let Some(slot) = &self.mail {
            slot.close();
            for _ in self.letters.drain(..) {
                slot.delivered();
            }
        }
    }

    /// Move from Closing to Lingering or Done once the output is flushed.
    fn advance(&mut self, now: Instant) {
        match self.phase {
            Phase::Closing if self.out_pending() == 0 => {
                if self.eof {
                    self.phase = Phase::Done;
                } else {
                    // Shut our side (the peer sees EOF after our last reply), then
                    // read and discard until it closes too.
                    self.shut_write = true;
                    self.linger_until = Some(now + LINGER);
                    self.phase = Phase::Lingering;
                }
            }
            Phase::Lingering if self.eof => self.finish(),
            _ => {}
        }
    }
}

impl<S> Drop for ConnCore<S> {
    fn drop(&mut self) {
        if let Some(slot) = &self.mail {
            slot.close();
        }
    }
}

#[cfg(test)]
mod tests {
    //! The core driven in memory: no socket, no clock; every timer and drain case.
    use super::*;
    use c10k_proto::echo::EchoApp;
    use c10k_proto::http::{HttpApp, HttpConfig};
    use c10k_proto::{App, Peer};
    use std::time::SystemTime;

    const IDLE: Duration = Duration::from_secs(60);
    const HEADER: Duration = Duration::from_secs(10);

    struct World {
        cx: Cx,
        stats: WorkerStats,
        limits: Limits,
        pool: OutputPool,
        t0: Instant,
    }

    impl World {
        fn new(output_cap: usize) -> Self {
            World {
                cx: Cx::new(SystemTime::now()),
                stats: WorkerStats::default(),
                limits: Limits {
                    output_cap,
                    idle_timeout: IDLE,
                    header_timeout: HEADER,
                },
                pool: OutputPool::default(),
                t0: Instant::now(),
            }
        }

        fn env(&self, after: Duration) -> Env<'_> {
            Env {
                cx: &self.cx,
                now: self.t0 + after,
                stats: &self.stats,
                limits: &self.limits,
                mailbox: None,
            }
        }

        fn echo(&self) -> ConnCore<<EchoApp as App>::Session> {
            ConnCore::new(EchoApp.open(&Peer::unknown()), self.t0)
        }

        fn http(&self) -> ConnCore<<HttpApp as App>::Session> {
            let app = HttpApp::new(HttpConfig::default());
            ConnCore::new(app.open(&Peer::unknown()), self.t0)
        }

        fn recv<S: Session>(&mut self, c: &mut ConnCore<S>, at: Duration, data: &[u8]) {
            let mut pool = std::mem::take(&mut self.pool);
            c.received(&self.env(at), data, &mut pool);
            self.pool = pool;
        }

        /// Write everything the core has (a socket that takes it all).
        fn drain_out<S: Session>(&mut self, c: &mut ConnCore<S>, at: Duration) -> Vec<u8> {
            let mut got = Vec::new();
            let mut pool = std::mem::take(&mut self.pool);
            loop {
                let data = c.transmit().to_vec();
                if data.is_empty() {
                    break;
                }
                got.extend_from_slice(&data);
                c.sent(&self.env(at), data.len(), &mut pool);
            }
            self.pool = pool;
            got
        }

        fn timeout<S: Session>(&mut self, c: &mut ConnCore<S>, at: Duration) -> Option<Timeout> {
            let mut pool = std::mem::take(&mut self.pool);
            let t = c.on_timeout(&self.env(at), &mut pool);
            self.pool = pool;
            t
        }

        fn drain<S: Session>(&mut self, c: &mut ConnCore<S>, at: Duration, waiting: bool) -> bool {
            let mut pool = std::mem::take(&mut self.pool);
            let d = c.start_drain(&self.env(at), waiting, &mut pool);
            self.pool = pool;
            d
        }
    }

    const S0: Duration = Duration::ZERO;

    #[test]
    fn echo_with_partial_writes_keeps_the_byte_order() {
        let mut w = World::new(1 << 20);
        let mut c = w.echo();
        w.recv(&mut c, S0, b"hello");
        assert_eq!(c.transmit(), b"hello");
        let mut pool = OutputPool::default();
        c.sent(&w.env(S0), 2, &mut pool);
        assert_eq!(c.transmit(), b"llo");
        w.recv(&mut c, S0, b"!");
        assert_eq!(
            c.transmit(),
            b"llo",
            "the rest of a partial write goes first"
        );
        assert_eq!(w.drain_out(&mut c, S0), b"llo!");
        assert!(c.is_idle());
        assert_eq!(WorkerStats::get(&w.stats.bytes_in), 6);
        assert_eq!(WorkerStats::get(&w.stats.bytes_out), 6);
    }

    #[test]
    fn backpressure_holds_input_over_the_cap_and_releases_it_on_send() {
        let mut w = World::new(4);
        let mut c = w.echo();
        w.recv(&mut c, S0, b"0123456789");
        assert_eq!(c.out_pending(), 10);
        assert!(!c.wants_read(4), "over the cap: stop reading");
        w.recv(&mut c, S0, b"abc");
        assert_eq!(c.out_pending(), 10, "input waits while over the cap");
        let mut pool = OutputPool::default();
        c.sent(&w.env(S0), 10, &mut pool);
        assert_eq!(c.transmit(), b"abc", "a confirmed send offers what waited");
        assert!(c.wants_read(4));
    }

    #[test]
    fn owned_sends_lend_the_buffer_and_queue_what_comes_meanwhile() {
        let mut w = World::new(1 << 20);
        let mut c = w.echo();
        w.recv(&mut c, S0, b"abcd");
        let (buf, pos) = c.take_transmit().expect("output");
        assert_eq!(
            (&buf[pos..], c.take_transmit().is_none()),
            (&b"abcd"[..], true)
        );
        assert!(!c.wants_write(), "one send in flight");
        w.recv(&mut c, S0, b"ef");
        let mut pool = OutputPool::default();
        let reuse = c.sent_owned(&w.env(S0), Ok(3), buf, pos, &mut pool);
        assert!(reuse.is_none() || reuse.is_some_and(|b| b.is_empty()));
        let (buf, pos) = c.take_transmit().expect("the rest");
        assert_eq!(&buf[pos..], b"d");
        let _ = c.sent_owned(&w.env(S0), Ok(1), buf, pos, &mut pool);
        let (buf, pos) = c.take_transmit().expect("what queued behind");
        assert_eq!(&buf[pos..], b"ef");
        let _ = c.sent_owned(
            &w.env(S0),
            Err(std::io::Error::other("reset")),
            buf,
            pos,
            &mut pool,
        );
        assert!(c.is_closed());
        assert_eq!(WorkerStats::get(&w.stats.io_errors), 1);
    }

    #[test]
    fn a_reply_deferred_by_a_timer_survives_eof_and_pipelined_input_waits_for_it() {
        use crate::work::{RequestUnit, Work, WorkApp};
        let mut w = World::new(1 << 20);
        let work: Work = "wait=10ms,async".parse().unwrap();
        let app = WorkApp::new(EchoApp, work, RequestUnit::PerRead);
        let mut c = ConnCore::new(app.open(&Peer::unknown()), w.t0);
        let ms = Duration::from_millis;
        w.cx.set_instant(w.t0);
        w.recv(&mut c, S0, b"one");
        w.recv(&mut c, S0, b"two");
        assert_eq!(w.drain_out(&mut c, S0), b"", "held for 10 ms");
        assert_eq!(c.poll_timeout(&w.limits), Some(w.t0 + ms(10)));
        // The timer answers the first and offers the waiting input at once.
        w.cx.set_instant(w.t0 + ms(10));
        assert_eq!(w.timeout(&mut c, ms(10)), Some(Timeout::Session));
        assert_eq!(w.drain_out(&mut c, ms(10)), b"one");
        assert_eq!(c.poll_timeout(&w.limits), Some(w.t0 + ms(20)));
        // The peer half-closes: the deferred reply still leaves, then the close.
        let mut pool = OutputPool::default();
        c.eof(&w.env(ms(11)), &mut pool);
        assert_eq!(c.phase(), Phase::Open);
        assert!(!c.wants_read(1 << 20), "nothing more to read");
        c.eof(&w.env(ms(12)), &mut pool);
        w.cx.set_instant(w.t0 + ms(20));
        assert_eq!(w.timeout(&mut c, ms(20)), Some(Timeout::Session));
        assert_eq!(c.phase(), Phase::Closing);
        assert_eq!(w.drain_out(&mut c, ms(20)), b"two");
        assert!(c.is_closed());
    }

    #[test]
    fn eof_flushes_the_last_reply_and_closes_without_lingering() {
        let mut w = World::new(1 << 20);
        let mut c = w.echo();
        w.recv(&mut c, S0, b"bye");
        let mut pool = OutputPool::default();
        c.eof(&w.env(S0), &mut pool);
        assert_eq!(c.phase(), Phase::Closing);
        assert!(!c.wants_read(1 << 20));
        assert_eq!(w.drain_out(&mut c, S0), b"bye");
        assert!(c.is_closed());
        assert!(!c.take_shutdown_write(), "the peer closed first: no linger");
    }

    #[test]
    fn header_timer_answers_408_then_lingers() {
        let mut w = World::new(1 << 20);
        let mut c = w.http();
        let at = Duration::from_secs(1);
        w.recv(&mut c, at, b"GET / HTTP/1.1\r\nHost: x");
        assert_eq!(c.poll_timeout(&w.limits), Some(w.t0 + at + HEADER));
        assert_eq!(w.timeout(&mut c, at + HEADER / 2), None);
        assert_eq!(w.timeout(&mut c, at + HEADER), Some(Timeout::Header));
        assert_eq!(WorkerStats::get(&w.stats.timeouts_header), 1);
        let reply = w.drain_out(&mut c, at + HEADER);
        assert!(
            reply.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        assert_eq!(c.phase(), Phase::Lingering);
        assert!(c.take_shutdown_write());
        assert!(!c.take_shutdown_write(), "once");
        assert_eq!(c.linger_deadline(), Some(w.t0 + at + HEADER + LINGER));
    }

    #[test]
    fn a_reply_restarts_the_header_timer_and_bytes_restart_the_idle_timer() {
        let mut w = World::new(1 << 20);
        let mut c = w.http();
        assert_eq!(
            c.poll_timeout(&w.limits),
            Some(w.t0 + IDLE),
            "idle from accept"
        );
        let at = Duration::from_secs(5);
        w.recv(&mut c, at, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(w.drain_out(&mut c, at).starts_with(b"HTTP/1.1 200"));
        assert_eq!(c.poll_timeout(&w.limits), Some(w.t0 + at + IDLE));
        assert_eq!(w.timeout(&mut c, at + HEADER), None);
    }

    #[test]
    fn idle_timer_closes_gracefully_when_idle_and_at_once_when_stuck() {
        let mut w = World::new(1 << 20);
        let mut c = w.echo();
        assert_eq!(w.timeout(&mut c, IDLE), Some(Timeout::Idle));
        assert_eq!(c.phase(), Phase::Lingering);
        assert!(c.take_shutdown_write());

        let mut stuck = w.echo();
        w.recv(&mut stuck, S0, b"never read by the peer");
        assert_eq!(w.timeout(&mut stuck, IDLE), Some(Timeout::Idle));
        assert!(
            stuck.is_closed(),
            "a peer that does not read is given up at once"
        );
        assert!(stuck.transmit().is_empty());
        assert_eq!(WorkerStats::get(&w.stats.timeouts_idle), 2);
    }

    #[test]
    fn linger_discards_input_and_ends_at_eof_its_deadline_or_its_byte_limit() {
        let mut w = World::new(1 << 20);
        let linger = |w: &mut World| {
            let mut c = w.http();
            w.recv(&mut c, S0, b"BAD\r\n\r\n");
            assert!(w.drain_out(&mut c, S0).starts_with(b"HTTP/1.1 400"));
            assert_eq!(c.phase(), Phase::Lingering);
            c
        };
        let mut c = linger(&mut w);
        w.recv(&mut c, S0, b"GET / HTTP/1.1\r\n\r\n");
        assert!(
            c.transmit().is_empty(),
            "input after the close is discarded"
        );
        let mut pool = OutputPool::default();
        c.eof(&w.env(S0), &mut pool);
        assert!(c.is_closed());

        let mut c = linger(&mut w);
        assert_eq!(c.poll_timeout(&w.limits), Some(w.t0 + LINGER));
        assert_eq!(w.timeout(&mut c, LINGER / 2), None);
        assert_eq!(w.timeout(&mut c, LINGER), Some(Timeout::Linger));
        assert!(c.is_closed());

        let mut c = linger(&mut w);
        let junk = vec![b'x'; 64 * 1024];
        for _ in 0..=LINGER_MAX_DISCARD / junk.len() {
            w.recv(&mut c, S0, &junk);
        }
        assert!(c.is_closed(), "more than LINGER_MAX_DISCARD: closed hard");
        assert_eq!(WorkerStats::get(&w.stats.proto_errors), 3);
    }

    #[test]
    fn drain_closes_an_idle_connection_at_once() {
        let mut w = World::new(1 << 20);
        let mut c = w.http();
        w.recv(&mut c, S0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        w.drain_out(&mut c, S0);
        assert!(!w.drain(&mut c, S0, false));
        assert_eq!(c.phase(), Phase::Lingering);
        assert!(c.take_shutdown_write());
    }

    #[test]
    fn drain_lets_a_request_in_progress_finish_with_connection_close() {
        let mut w = World::new(1 << 20);
        let mut c = w.http();
        w.recv(&mut c, S0, b"GET / HTTP/1.1\r\nHost: x");
        assert!(!w.drain(&mut c, S0, false));
        assert_eq!(c.phase(), Phase::Open, "mid-request: not closed");
        w.recv(&mut c, S0, b"\r\n\r\n");
        let reply = w.drain_out(&mut c, S0);
        let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
        assert!(text.contains("connection: close"), "{text}");
        assert_eq!(c.phase(), Phase::Lingering);

        // A body in progress: the reply completes, then the connection closes.
        let mut c = w.http();
        w.recv(
            &mut c,
            S0,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab",
        );
        assert!(!w.drain(&mut c, S0, false));
        assert_eq!(c.phase(), Phase::Open, "mid-body: not closed");
        w.recv(&mut c, S0, b"cd");
        assert!(w.drain_out(&mut c, S0).ends_with(b"abcd"));
        assert_eq!(c.phase(), Phase::Lingering);
    }

    #[test]
    fn drain_defers_a_fresh_connection_until_its_first_request_or_the_grace() {
        let mut w = World::new(1 << 20);
        let mut fresh = w.http();
        assert!(w.drain(&mut fresh, S0, false), "no byte yet: deferred");
        assert!(fresh.drain_deferred());
        w.recv(&mut fresh, S0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let reply = w.drain_out(&mut fresh, S0);
        assert!(
            reply.starts_with(b"HTTP/1.1 200"),
            "its first request is served"
        );
        assert_eq!(fresh.phase(), Phase::Lingering, "then the drain applies");

        let mut silent = w.http();
        assert!(w.drain(&mut silent, S0, false));
        let mut pool = OutputPool::default();
        silent.end_grace(&w.env(S0), &mut pool);
        assert!(!silent.drain_deferred());
        assert_eq!(silent.phase(), Phase::Lingering);

        // Bytes known to wait in the kernel defer a connection that received before.
        let mut waiting = w.echo();
        w.recv(&mut waiting, S0, b"x");
        w.drain_out(&mut waiting, S0);
        assert!(w.drain(&mut waiting, S0, true));
        w.recv(&mut waiting, S0, b"y");
        assert_eq!(w.drain_out(&mut waiting, S0), b"y");
        assert_eq!(
            waiting.phase(),
            Phase::Open,
            "idle, but input may still be coming"
        );
        assert!(waiting.needs_quiet_check());
        let mut pool = OutputPool::default();
        waiting.read_would_block(&w.env(S0), &mut pool);
        assert_eq!(waiting.poll_timeout(&w.limits), Some(w.t0 + DRAIN_QUIET));
        assert_eq!(w.timeout(&mut waiting, DRAIN_QUIET), Some(Timeout::Session));
        assert_eq!(waiting.phase(), Phase::Lingering, "quiet: closed");
    }

    #[test]
    fn a_drained_echo_closes_only_once_no_input_waits() {
        // Regression (issue 13's tests): an echo still moving when SIGTERM lands lost
        // the bytes its peer had sent but the server had not read yet.
        let mut w = World::new(1 << 20);
        let mut c = w.echo();
        w.recv(&mut c, S0, b"first half");
        assert!(!w.drain(&mut c, S0, false), "busy: applied, not deferred");
        assert_eq!(w.drain_out(&mut c, S0), b"first half");
        assert_eq!(c.phase(), Phase::Open, "idle, but not known to be quiet");
        let mut pool = OutputPool::default();
        c.read_would_block(&w.env(S0), &mut pool);
        assert_eq!(c.session_deadline(), Some(w.t0 + DRAIN_QUIET));
        // Bytes still on their way when the read found nothing: served.
        let late = DRAIN_QUIET / 2;
        w.recv(&mut c, late, b"second half");
        assert_eq!(w.drain_out(&mut c, late), b"second half");
        assert_eq!(w.timeout(&mut c, DRAIN_QUIET), None, "not quiet: stays");
        assert_eq!(c.phase(), Phase::Open);
        c.read_would_block(&w.env(late), &mut pool);
        assert_eq!(
            w.timeout(&mut c, late + DRAIN_QUIET),
            Some(Timeout::Session)
        );
        assert_eq!(c.phase(), Phase::Lingering);
    }

    #[test]
    fn a_protocol_error_replies_and_closes() {
        let mut w = World::new(1 << 20);
        let mut c = w.http();
        w.recv(&mut c, S0, b"\x00\x01garbage\r\n\r\n");
        assert_eq!(c.phase(), Phase::Closing);
        assert!(w.drain_out(&mut c, S0).starts_with(b"HTTP/1.1 400"));
        assert_eq!(WorkerStats::get(&w.stats.proto_errors), 1);
    }

    #[test]
    fn unconsumed_input_beyond_the_limit_closes() {
        let mut w = World::new(1 << 20);
        let mut c = w.http();
        // A header that never ends: the parser's own limit answers 431 first; the
        // core's limit is the backstop for a session that keeps asking for more.
        let mut total = 0;
        while c.phase() == Phase::Open && total <= MAX_PENDING_INPUT + 1 {
            w.recv(&mut c, S0, &[b'a'; 64 * 1024]);
            total += 64 * 1024;
        }
        assert_ne!(c.phase(), Phase::Open);
        assert!(WorkerStats::get(&w.stats.proto_errors) >= 1);
    }

    /// A session that is spoken to: "sub" asks for a mailbox, a posted `u32` is
    /// written out, "wait" asks for its timer 5 ms after its input.
    #[derive(Default)]
    struct Spoken {
        wants: bool,
        mailbox: Option<c10k_proto::Mailbox>,
        timer: Option<Instant>,
    }

    impl Session for Spoken {
        fn handle_input(
            &mut self,
            cx: &Cx,
            input: &[u8],
            out: &mut Vec<u8>,
        ) -> Result<usize, c10k_proto::ProtoError> {
            match input {
                b"sub" => {
                    self.wants = true;
                    out.extend_from_slice(b"subscribed;");
                }
                b"wait" => self.timer = cx.instant().map(|t| t + Duration::from_millis(5)),
                _ => out.extend_from_slice(input),
            }
            Ok(input.len())
        }
        fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {}
        fn wants_close(&self) -> bool {
            false
        }
        fn wants_mailbox(&self) -> bool {
            self.wants
        }
        fn attach_mailbox(&mut self, mailbox: c10k_proto::Mailbox) {
            self.mailbox = Some(mailbox);
        }
        fn handle_message(&mut self, _cx: &Cx, msg: c10k_proto::Message, out: &mut Vec<u8>) {
            if let Ok(n) = msg.downcast::<u32>() {
                out.extend_from_slice(format!("msg {n};").as_bytes());
            }
        }
        fn poll_timer(&self) -> Option<Instant> {
            self.timer
        }
        fn handle_timer(&mut self, _cx: &Cx, out: &mut Vec<u8>) {
            self.timer = None;
            out.extend_from_slice(b"tick;");
        }
    }

    #[test]
    fn a_session_gets_its_mailbox_when_it_asks_and_messages_in_order() {
        let inbox = super::super::mailbox::Inbox::new().unwrap();
        let make = || Some(inbox.mailbox(0, 1));
        let mut cx = Cx::new(SystemTime::now());
        let t0 = Instant::now();
        cx.set_instant(t0);
        let stats = WorkerStats::default();
        let limits = Limits {
            output_cap: 8,
            idle_timeout: IDLE,
            header_timeout: HEADER,
        };
        let env = Env {
            cx: &cx,
            now: t0,
            stats: &stats,
            limits: &limits,
            mailbox: Some(&make),
        };
        let mut pool = OutputPool::default();
        let mut c = ConnCore::new(Spoken::default(), t0);
        c.received(&env, b"sub", &mut pool);
        assert!(c.mail.is_some(), "attached right after the call that asked");
        let mb = c
            .session
            .mailbox
            .clone()
            .expect("the session holds its mailbox");
        for n in 0..3u32 {
            mb.post(n).unwrap();
        }
        let mut letters = Vec::new();
        inbox.take(&mut letters);
        for (_, _, letter) in letters.drain(..) {
            c.letter(&env, letter, &mut pool);
        }
        // Over the cap (8 bytes): the first message waits until the output drains.
        assert_eq!(c.transmit(), b"subscribed;");
        let n = c.transmit().len();
        c.sent(&env, n, &mut pool);
        assert_eq!(
            c.transmit(),
            b"msg 0;msg 1;",
            "delivered once under the cap"
        );
        let n = c.transmit().len();
        c.sent(&env, n, &mut pool);
        assert_eq!(c.transmit(), b"msg 2;");
        assert_eq!(WorkerStats::get(&stats.messages_delivered), 3);

        // A disconnect closes at once; posts fail cleanly from then on.
        mb.disconnect();
        inbox.take(&mut letters);
        for (_, _, letter) in letters.drain(..) {
            c.letter(&env, letter, &mut pool);
        }
        assert!(c.is_closed());
        assert_eq!(WorkerStats::get(&stats.mailbox_disconnects), 1);
        assert!(matches!(
            mb.post(9u32),
            Err(c10k_proto::PostError::Closed(_))
        ));
    }

    #[test]
    fn a_dropped_connection_closes_its_mailbox() {
        let inbox = super::super::mailbox::Inbox::new().unwrap();
        let make = || Some(inbox.mailbox(0, 1));
        let w = World::new(1 << 20);
        let mut env = w.env(S0);
        env.mailbox = Some(&make);
        let mut pool = OutputPool::default();
        let mut c = ConnCore::new(Spoken::default(), w.t0);
        c.received(&env, b"sub", &mut pool);
        let mb = c.session.mailbox.clone().expect("mailbox");
        drop(c);
        assert!(mb.is_closed());
        assert!(matches!(
            mb.post(1u32),
            Err(c10k_proto::PostError::Closed(_))
        ));
    }

    #[test]
    fn the_session_timer_is_part_of_poll_timeout_and_fires_once() {
        let mut w = World::new(1 << 20);
        let at = Duration::from_secs(1);
        w.cx.set_instant(w.t0 + at);
        let mut c = ConnCore::new(Spoken::default(), w.t0);
        w.recv(&mut c, at, b"wait");
        let due = w.t0 + at + Duration::from_millis(5);
        assert_eq!(c.poll_timeout(&w.limits), Some(due));
        assert_eq!(c.session_deadline(), Some(due));
        assert_eq!(w.timeout(&mut c, at), None, "not yet");
        assert_eq!(
            w.timeout(&mut c, at + Duration::from_millis(5)),
            Some(Timeout::Session)
        );
        assert_eq!(c.transmit(), b"tick;");
        assert_eq!(c.session_deadline(), None);
        assert_eq!(c.poll_timeout(&w.limits), Some(w.t0 + at + IDLE));
    }
}
