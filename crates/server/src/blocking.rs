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
//! Every decision (timers, close sequence, linger, drain) is the [`ConnCore`]'s; this
//! shell reads, writes, waits, and applies the drain only before a wait, so that
//! bytes already received count as a request in flight.
//!
//! - Backpressure is natural: the driver writes the whole reply before it reads again,
//!   so a client that does not read stops being read once the kernel's buffers fill.
//! - Drain (a shutdown fd became readable): bounded by `--drain-timeout` from the
//!   moment this connection saw the shutdown, then closed.

use std::io;
use std::net::TcpStream;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant, SystemTime};

use c10k_proto::{Cx, Peer, Session};
use rustix::event::PollFlags;

use crate::config::{DEFAULT_OUTPUT_CAP, DRAIN_FRESH_GRACE, READ_CHUNK};
use crate::handler::{Conn, ConnLimits, PollPark, ServeConn, Waited};
use crate::lifecycle::{ConnCore, Env, Limits, OutputPool, Phase};
use crate::stats::WorkerStats;

/// First size of a blocking connection's read buffer. Every connection owns one, so it
/// starts small: an idle connection (or one exchanging small messages) keeps 4 KiB.
pub(crate) const BLOCKING_READ_MIN: usize = 4 * 1024;
/// A read that fills the buffer doubles it, up to this (the event loops' read size),
/// so that bulk transfers take few reads.
pub(crate) const BLOCKING_READ_MAX: usize = READ_CHUNK;

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
    let park = PollPark::new(env.wake);
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
/// close, with the timers, backpressure and drain of [`ConnCore`]. Works over any
/// [`Park`](crate::handler::Park): an OS thread or a green one.
pub(crate) fn serve_session<S: Session>(conn: &Conn<'_>, session: S) {
    if session.wants_close() {
        // Refused at open (--max-conns-per-ip): closed unread.
        return;
    }
    let l = conn.limits();
    let mut d = Driver {
        conn,
        core: ConnCore::new(session, Instant::now()),
        cx: Cx::new(SystemTime::now()),
        limits: Limits {
            // The driver writes every reply out before it reads again: the cap only
            // bounds how much the session produces between two flushes.
            output_cap: DEFAULT_OUTPUT_CAP,
            idle_timeout: l.idle_timeout,
            header_timeout: l.header_timeout,
        },
        buf: vec![0; BLOCKING_READ_MIN],
        pool: OutputPool::default(),
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

/// The blocking shell around a [`ConnCore`].
struct Driver<'a, 'c, S> {
    conn: &'a Conn<'c>,
    core: ConnCore<S>,
    cx: Cx,
    limits: Limits,
    buf: Vec<u8>,
    pool: OutputPool,
}

/// The environment of one event, built from the driver's fields.
macro_rules! env {
    ($d:expr) => {
        Env {
            cx: &$d.cx,
            now: Instant::now(),
            stats: $d.conn.stats(),
            limits: &$d.limits,
            mailbox: Some(&|| $d.conn.open_mailbox()),
        }
    };
}

impl<S: Session> Driver<'_, '_, S> {
    fn run(&mut self) {
        match self.serve() {
            Ok(()) => {}
            Err(Stop::Failed) => self.core.failed(&env!(self)),
            Err(Stop::Forced) => {
                tracing::debug!("drain deadline passed; closing a busy connection");
                WorkerStats::add(&self.conn.stats().drain_forced, 1);
            }
        }
    }

    /// Serve until the core says the connection is done.
    fn serve(&mut self) -> Result<(), Stop> {
        let mut poll_first = true;
        while !self.core.is_closed() {
            // Judged only before a poll: a read that is due (the buffer filled, or
            // the fresh grace below saw bytes arrive) comes first, so that input held
            // back while a large reply was written counts as a request in flight.
            if poll_first
                && self.conn.drain_deadline().is_some()
                && self.core.phase() == Phase::Open
            {
                if !self.core.drain_started() {
                    self.cx.set_now(SystemTime::now());
                    self.cx.set_instant(Instant::now());
                    self.core.start_drain(&env!(self), false, &mut self.pool);
                }
                if self.core.drain_deferred() {
                    // A fresh connection (accepted just before SIGTERM, on a
                    // restart): its first request is most likely on the way. Wait
                    // up to DRAIN_FRESH_GRACE for it, as the event loops do.
                    match self.fresh_grace() {
                        Some(Waited::Ready) => {
                            poll_first = false;
                            continue;
                        }
                        Some(Waited::Failed) => return Err(Stop::Failed),
                        Some(Waited::Mail) => {
                            self.letters()?;
                            continue;
                        }
                        _ => self.core.end_grace(&env!(self), &mut self.pool),
                    }
                }
                self.flush()?;
                if self.core.is_closed() {
                    break;
                }
            }
            if poll_first && self.core.needs_quiet_check() {
                // Drained and idle: it closes once a read finds nothing waiting.
                poll_first = false;
            }
            if poll_first {
                // A green thread hands its read buffer back while it waits: an idle
                // connection then costs its stack pages only.
                self.buf = self
                    .conn
                    .stash_buffer(std::mem::take(&mut self.buf))
                    .unwrap_or_default();
                let until = self.core.poll_timeout(&self.limits);
                // After EOF only a timer (a deferred reply) or the drain can happen.
                let flags = if self.core.eof_seen() {
                    PollFlags::empty()
                } else {
                    PollFlags::IN
                };
                match self.conn.wait(flags, until) {
                    Waited::Ready => {}
                    Waited::Drain => continue,
                    Waited::Mail => {
                        self.letters()?;
                        continue;
                    }
                    Waited::Timeout if self.conn.drain_passed() => {
                        if self.core.phase() == Phase::Lingering {
                            return Ok(());
                        }
                        return Err(Stop::Forced);
                    }
                    Waited::Timeout => {
                        self.cx.set_now(SystemTime::now());
                        self.cx.set_instant(Instant::now());
                        self.core.on_timeout(&env!(self), &mut self.pool);
                        self.flush()?;
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
                    self.core.read_would_block(&env!(self), &mut self.pool);
                    self.flush()?;
                    poll_first = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Stop::Failed),
            };
            self.cx.set_now(SystemTime::now());
            self.cx.set_instant(Instant::now());
            if n == 0 {
                self.core.eof(&env!(self), &mut self.pool);
                self.flush()?;
                poll_first = true;
                continue;
            }
            self.core
                .received(&env!(self), &self.buf[..n], &mut self.pool);
            self.flush()?;
            // A full buffer probably left more waiting: read again before polling,
            // into a larger buffer.
            poll_first = n < self.buf.len();
            if !poll_first && self.buf.len() < BLOCKING_READ_MAX {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        Ok(())
    }

    /// Letters wait: hand them to the core and write what they produced.
    fn letters(&mut self) -> Result<(), Stop> {
        self.take_letters();
        self.flush()
    }

    fn take_letters(&mut self) {
        let mut letters = Vec::new();
        self.conn.take_letters(&mut letters);
        if letters.is_empty() {
            return;
        }
        self.cx.set_now(SystemTime::now());
        self.cx.set_instant(Instant::now());
        self.cx.set_instant(Instant::now());
        for letter in letters {
            self.core.letter(&env!(self), letter, &mut self.pool);
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
        Some(self.conn.wait(PollFlags::IN, Some(end)))
    }

    /// Write everything the core has, waiting for the socket as long as it takes
    /// (until the idle timer, or the drain deadline once draining); shut the write
    /// side when the core says so.
    fn flush(&mut self) -> Result<(), Stop> {
        loop {
            let data = self.core.transmit();
            if data.is_empty() {
                break;
            }
            match self.conn.try_write(data) {
                Ok(0) => return Err(Stop::Failed),
                Ok(n) => self.core.sent(&env!(self), n, &mut self.pool),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Unsent output is a request in flight: a drain lets it finish. A
                    // peer that stops reading it for the idle timeout is given up.
                    let until = self.core.poll_timeout(&self.limits);
                    match self.conn.wait(PollFlags::OUT, until) {
                        Waited::Ready | Waited::Drain => {}
                        // Held by the core while the output is over the cap.
                        Waited::Mail => self.take_letters(),
                        Waited::Timeout if self.conn.drain_passed() => return Err(Stop::Forced),
                        Waited::Timeout => {
                            self.core.on_timeout(&env!(self), &mut self.pool);
                        }
                        Waited::Failed => return Err(Stop::Failed),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Stop::Failed),
            }
        }
        if self.core.take_shutdown_write() {
            let _ = self.conn.shutdown_write();
        }
        Ok(())
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
