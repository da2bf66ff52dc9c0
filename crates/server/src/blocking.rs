//! The blocking connection driver: one connection served from start to end by the
//! thread (or process) that calls [`serve_blocking`], as the `thread`, `fork` and
//! `prefork` strategies do.
//!
//! The code reads like blocking I/O (read, hand the bytes to the session, write the
//! reply out in full, repeat), and the thread does block, but always in `poll(2)` on
//! the connection *and* the server's shutdown fds, never in a bare `read` or `write`
//! (the socket itself is nonblocking). That is what lets an idle connection notice
//! shutdown at once, and bounds every wait after it by `--drain-timeout`, without
//! signals interrupting system calls. The price is one `poll` per read that finds
//! nothing waiting; a read that fills the whole buffer is followed by another read
//! without polling.
//!
//! - Backpressure is natural: the driver writes the whole reply before it reads again,
//!   so a client that does not read stops being read once the kernel's buffers fill.
//!   The session's `OUT_BATCH_LIMIT` bounds the reply produced by one call.
//! - Half-close: EOF -> `handle_eof` -> flush -> close.
//! - Protocol error or `wants_close`: flush the reply, `shutdown(SHUT_WR)`, read and
//!   discard for at most [`LINGER`] (so the last reply is not destroyed by a reset),
//!   close.
//! - Drain (a shutdown fd became readable): a reply being written is finished and the
//!   input already received is offered; then the session is told (`start_drain`); an
//!   idle connection (no partial request) is closed gracefully; a busy one is served
//!   until it is idle, at most `--drain-timeout` from the moment this connection saw
//!   the shutdown, then closed.

use std::io;
use std::net::TcpStream;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant, SystemTime};

use c10k_proto::{Cx, Peer, Session};
use rustix::event::PollFlags;

use crate::config::{DRAIN_FRESH_GRACE, LINGER, MAX_PENDING_INPUT, READ_CHUNK};
use crate::conn::LINGER_MAX_DISCARD;
use crate::handler::{Conn, ConnLimits, PollPark, ServeConn, Waited};
use crate::stats::WorkerStats;
use crate::timers::{Timeout, Timers};

/// First size of a blocking connection's read buffer. Every connection owns one, so it
/// starts small: an idle connection (or one exchanging small messages) keeps 4 KiB.
pub(crate) const BLOCKING_READ_MIN: usize = 4 * 1024;
/// A read that fills the buffer doubles it, up to this (the event loops' read size),
/// so that bulk transfers take few reads.
pub(crate) const BLOCKING_READ_MAX: usize = READ_CHUNK;

/// Output capacity kept between replies; a larger buffer (a big `GET` reply) is freed
/// once written.
const OUT_KEEP: usize = 64 * 1024;

/// What a blocking driver needs from its strategy.
pub(crate) struct BlockingEnv<'a> {
    /// Counters to update.
    pub(crate) stats: &'a std::sync::Arc<WorkerStats>,
    /// Fds that become readable, and stay readable, once the server drains.
    pub(crate) wake: &'a [BorrowedFd<'a>],
    /// How long a connection may stay busy once it has seen the shutdown.
    pub(crate) drain_timeout: Duration,
    /// Close a connection where no byte moved for this long.
    pub(crate) idle_timeout: Duration,
    /// Answer (HTTP 408) and close a request that stays incomplete this long.
    pub(crate) header_timeout: Duration,
}

impl BlockingEnv<'_> {
    /// The limits every wait of a connection obeys.
    pub(crate) fn limits(&self) -> ConnLimits {
        ConnLimits {
            drain_timeout: self.drain_timeout,
            idle_timeout: self.idle_timeout,
            header_timeout: self.header_timeout,
        }
    }
}

/// How a connection served by [`serve_blocking`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The driver saw the shutdown fds become readable.
    pub(crate) drained: bool,
}

/// Serve one connection with `service` (a sans-IO app through [`serve_session`], or a
/// blocking-style handler) in the calling OS thread, waiting in `poll(2)`, until it
/// closes, fails or is drained. The stream is closed on return.
pub(crate) fn serve_blocking<A: ServeConn>(
    stream: TcpStream,
    service: &A,
    peer: &Peer,
    env: &BlockingEnv<'_>,
) -> Outcome {
    let park = PollPark { wake: env.wake };
    let mut conn = match Conn::new(stream, &park, env.stats, env.limits()) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!("cannot make a connection nonblocking: {e}");
            WorkerStats::add(&env.stats.io_errors, 1);
            return Outcome { drained: false };
        }
    };
    service.serve(&mut conn, peer);
    Outcome {
        drained: conn.draining(),
    }
}

/// The sans-IO adapter: serve `session` over `conn` until the connection should
/// close, with the request and idle timeouts, backpressure and drain of the blocking
/// driver. Works over any [`Park`](crate::handler::Park): an OS thread or a green one.
pub(crate) fn serve_session<S: Session>(conn: &Conn<'_>, session: S) {
    if session.wants_close() {
        // Refused at open (--max-conns-per-ip): closed unread.
        return;
    }
    let mut d = Driver {
        conn,
        session,
        cx: Cx::new(SystemTime::now()),
        buf: vec![0; BLOCKING_READ_MIN],
        pending: Vec::new(),
        out: Vec::new(),
        drain_told: false,
        received: false,
        timers: Timers::started(Instant::now()),
    };
    d.run();
}

/// Why serving stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// An I/O error: close now.
    Failed,
    /// The drain deadline passed while busy: close now.
    Forced,
}

/// What to do after input was offered to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Keep reading.
    Read,
    /// Flushed; close gracefully (shut, linger).
    Close,
}

struct Driver<'a, 'c, S> {
    conn: &'a Conn<'c>,
    session: S,
    cx: Cx,
    buf: Vec<u8>,
    /// Received bytes the session has not consumed yet (an incomplete request).
    pending: Vec<u8>,
    /// Reply bytes being written; always empty between requests.
    out: Vec<u8>,
    /// The session was told about the drain.
    drain_told: bool,
    /// At least one byte was received: the connection is not fresh.
    received: bool,
    /// Idle and request clocks.
    timers: Timers,
}

impl<S: Session> Driver<'_, '_, S> {
    fn run(&mut self) {
        match self.serve() {
            Ok(Next::Close) => self.linger(),
            Ok(Next::Read) => {}
            Err(Stop::Failed) => WorkerStats::add(&self.conn.stats().io_errors, 1),
            Err(Stop::Forced) => {
                tracing::debug!("drain deadline passed; closing a busy connection");
                WorkerStats::add(&self.conn.stats().drain_forced, 1);
            }
        }
    }

    /// Serve until the connection should close. `Ok(Next::Read)` means the peer's EOF
    /// was answered: close without lingering.
    fn serve(&mut self) -> Result<Next, Stop> {
        let mut poll_first = true;
        loop {
            // Judged only before a poll: a read that is due (the buffer filled, or
            // the fresh grace below saw bytes arrive) comes first.
            if poll_first && self.conn.drain_deadline().is_some() {
                // Told only now, with every byte received offered: input held back
                // while a large reply was written is a request in flight too.
                if !self.drain_told {
                    if !self.received && self.is_idle() {
                        // A fresh connection (accepted just before SIGTERM, on a
                        // restart): its first request is most likely on the way. Wait
                        // up to DRAIN_FRESH_GRACE for it, as the event loops do.
                        match self.fresh_grace() {
                            Some(Waited::Ready) => {
                                poll_first = false;
                                continue;
                            }
                            Some(Waited::Failed) => return Err(Stop::Failed),
                            _ => {}
                        }
                    }
                    self.drain_told = true;
                    self.session.start_drain();
                }
                if self.is_idle() || self.session.wants_close() {
                    return Ok(Next::Close);
                }
            }
            if poll_first {
                // A green thread hands its read buffer back while it waits: an idle
                // connection then costs its stack pages only.
                self.buf = self
                    .conn
                    .stash_buffer(std::mem::take(&mut self.buf))
                    .unwrap_or_default();
                let timers = self.timer_deadline();
                match self.wait(PollFlags::IN, Some(timers)) {
                    Waited::Ready => {}
                    Waited::Drain => continue,
                    Waited::Timeout if self.drain_passed() => return Err(Stop::Forced),
                    Waited::Timeout => {
                        if let Some(next) = self.timer_fired() {
                            return next;
                        }
                        continue;
                    }
                    Waited::Failed => return Err(Stop::Failed),
                }
            }
            if self.buf.is_empty() {
                self.buf = self.conn.fresh_buffer(BLOCKING_READ_MIN);
            }
            let n = match self.conn.try_read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_first = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Stop::Failed),
            };
            if n == 0 {
                self.cx.set_now(SystemTime::now());
                self.session.handle_eof(&self.cx, &mut self.out);
                self.flush()?;
                return Ok(Next::Read);
            }
            WorkerStats::add(&self.conn.stats().bytes_in, n as u64);
            self.received = true;
            self.timers.active(Instant::now());
            if self.feed(n)? == Next::Close {
                return Ok(Next::Close);
            }
            let in_request = !self.is_idle();
            self.timers.track(Instant::now(), in_request);
            // A full buffer probably left more waiting: read again before polling,
            // into a larger buffer.
            poll_first = n < self.buf.len();
            if !poll_first && self.buf.len() < BLOCKING_READ_MAX {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
    }

    /// A fresh connection at drain: wait for its first bytes until
    /// `DRAIN_FRESH_GRACE` after the drain began. `None`: the grace is over.
    fn fresh_grace(&mut self) -> Option<Waited> {
        let started = self
            .conn
            .drain_deadline()?
            .checked_sub(self.conn.limits().drain_timeout)?;
        let end = started + DRAIN_FRESH_GRACE;
        if Instant::now() >= end {
            return None;
        }
        Some(self.wait(PollFlags::IN, Some(end)))
    }

    /// Nothing in flight: no partial request (output is always flushed here).
    fn is_idle(&self) -> bool {
        self.pending.is_empty() && !self.session.mid_request()
    }

    /// Offer `buf[..n]` (after any pending bytes) to the session, writing each reply
    /// out in full.
    fn feed(&mut self, n: usize) -> Result<Next, Stop> {
        self.cx.set_now(SystemTime::now());
        let owned = !self.pending.is_empty();
        if owned {
            self.pending.extend_from_slice(&self.buf[..n]);
        }
        let len = if owned { self.pending.len() } else { n };
        let mut consumed = 0;
        let mut closing = false;
        while consumed < len {
            let used = {
                let input = if owned {
                    &self.pending[consumed..]
                } else {
                    &self.buf[consumed..n]
                };
                match self.session.handle_input(&self.cx, input, &mut self.out) {
                    Ok(used) => used.min(input.len()),
                    Err(e) => {
                        tracing::debug!("protocol error: {e}");
                        WorkerStats::add(&self.conn.stats().proto_errors, 1);
                        closing = true;
                        input.len()
                    }
                }
            };
            WorkerStats::add(&self.conn.stats().requests, self.session.take_requests());
            consumed += used;
            closing |= self.session.wants_close();
            self.flush()?;
            if closing || used == 0 {
                break;
            }
        }
        if closing {
            self.pending = Vec::new();
            return Ok(Next::Close);
        }
        if owned {
            self.pending.drain(..consumed);
            if self.pending.is_empty() {
                self.pending = Vec::new();
            }
        } else {
            self.pending.extend_from_slice(&self.buf[consumed..n]);
        }
        if self.pending.len() > MAX_PENDING_INPUT {
            tracing::debug!(
                "closing a connection with {} unconsumed input bytes",
                self.pending.len()
            );
            WorkerStats::add(&self.conn.stats().proto_errors, 1);
            self.pending = Vec::new();
            return Ok(Next::Close);
        }
        Ok(Next::Read)
    }

    /// Write all of `out`, waiting for the socket as long as it takes (until the
    /// drain deadline, once draining).
    fn flush(&mut self) -> Result<(), Stop> {
        if !self.out.is_empty() {
            // A reply is progress: the request timer restarts with the next request.
            self.timers.replied();
        }
        let mut pos = 0;
        while pos < self.out.len() {
            match self.conn.try_write(&self.out[pos..]) {
                Ok(0) => return Err(Stop::Failed),
                Ok(n) => {
                    pos += n;
                    self.timers.active(Instant::now());
                    WorkerStats::add(&self.conn.stats().bytes_out, n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Unsent output is a request in flight: a drain lets it finish. A
                    // peer that stops reading it for the idle timeout is given up.
                    let stalled = self
                        .timers
                        .idle_deadline(Instant::now(), self.conn.limits().idle_timeout);
                    match self.wait(PollFlags::OUT, Some(stalled)) {
                        Waited::Ready | Waited::Drain => {}
                        Waited::Timeout if self.drain_passed() => return Err(Stop::Forced),
                        Waited::Timeout => {
                            WorkerStats::add(&self.conn.stats().timeouts_idle, 1);
                            return Err(Stop::Failed);
                        }
                        Waited::Failed => return Err(Stop::Failed),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Stop::Failed),
            }
        }
        self.out.clear();
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Shut our side (the peer sees EOF after our last reply), then read and discard
    /// until the peer closes, for at most [`LINGER`] or 1 MiB.
    fn linger(&mut self) {
        let _ = self.conn.shutdown_write();
        if self.buf.is_empty() {
            self.buf = self.conn.fresh_buffer(BLOCKING_READ_MIN);
        }
        let until = Instant::now() + LINGER;
        let mut discarded = 0;
        while discarded <= LINGER_MAX_DISCARD {
            match self.conn.try_read(&mut self.buf) {
                Ok(0) => return,
                Ok(n) => {
                    WorkerStats::add(&self.conn.stats().bytes_in, n as u64);
                    discarded += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if matches!(
                        self.wait(PollFlags::IN, Some(until)),
                        Waited::Timeout | Waited::Failed
                    ) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Wait until the connection is ready for `flags`, shutdown is noticed (the first
    /// time only), or `until` / the drain deadline passes.
    fn wait(&mut self, flags: PollFlags, until: Option<Instant>) -> Waited {
        self.conn.wait(flags, until)
    }

    /// When the idle or request timer fires next.
    fn timer_deadline(&self) -> Instant {
        let l = self.conn.limits();
        self.timers
            .deadline(Instant::now(), l.idle_timeout, l.header_timeout)
    }

    /// The drain deadline has passed.
    fn drain_passed(&self) -> bool {
        self.conn.drain_passed()
    }

    /// A timer's deadline passed: what to do, or `None` when none has fired yet.
    fn timer_fired(&mut self) -> Option<Result<Next, Stop>> {
        let l = self.conn.limits();
        let stats = self.conn.stats();
        let due = self
            .timers
            .due(Instant::now(), l.idle_timeout, l.header_timeout, true)?;
        match due {
            Timeout::Request => {
                WorkerStats::add(&stats.timeouts_request, 1);
                self.cx.set_now(SystemTime::now());
                self.session.handle_timeout(&self.cx, &mut self.out);
                self.pending = Vec::new();
                Some(self.flush().map(|()| Next::Close))
            }
            Timeout::Idle => {
                WorkerStats::add(&stats.timeouts_idle, 1);
                Some(Ok(Next::Close))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c10k_proto::echo::EchoApp;
    use std::io::{Read, Write};
    use std::net::{Shutdown as NetShutdown, TcpListener};

    use crate::shutdown::Shutdown;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (c, s)
    }

    fn serve_in_thread(
        server: TcpStream,
        shutdown: std::sync::Arc<Shutdown>,
        stats: std::sync::Arc<WorkerStats>,
    ) -> std::thread::JoinHandle<Outcome> {
        std::thread::spawn(move || {
            let wake = [shutdown.wake_fd()];
            let env = BlockingEnv {
                stats: &stats,
                wake: &wake,
                drain_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(60),
                header_timeout: Duration::from_secs(10),
            };
            serve_blocking(server, &EchoApp, &Peer::unknown(), &env)
        })
    }

    #[test]
    fn echoes_a_large_payload_and_closes_after_half_close() {
        let (mut client, server) = pair();
        let shutdown = Shutdown::new().unwrap();
        let stats = std::sync::Arc::new(WorkerStats::default());
        let t = serve_in_thread(server, shutdown, std::sync::Arc::clone(&stats));
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let mut c = client.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || {
                c.write_all(&data).unwrap();
                c.shutdown(NetShutdown::Write).unwrap();
            })
        };
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == data, "echo differs");
        assert_eq!(t.join().unwrap(), Outcome { drained: false });
        assert_eq!(WorkerStats::get(&stats.bytes_out), 1_000_000);
    }

    #[test]
    fn an_idle_connection_is_closed_as_soon_as_shutdown_is_triggered() {
        let (mut client, server) = pair();
        let shutdown = Shutdown::new().unwrap();
        let stats = std::sync::Arc::new(WorkerStats::default());
        let t = serve_in_thread(server, std::sync::Arc::clone(&shutdown), stats);
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).unwrap();
        shutdown.trigger();
        assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF after the drain");
        drop(client);
        assert_eq!(t.join().unwrap(), Outcome { drained: true });
    }
}
