//! `kernel` (C10K item 5): the server's code runs in the kernel. An eBPF `sk_skb`
//! verdict program attached to a `SOCKHASH` sends every segment a connection receives
//! back out of the same socket (`c10k_sys::bpf`), so the bytes never reach user space
//! and no server thread wakes for them. Echo only: the program cannot parse HTTP or
//! RESP.
//!
//! User space keeps what the kernel cannot: it accepts (the shared accept path:
//! `--max-conns`, the EMFILE back-off, the gate's per-address limit), inserts each
//! connection into its worker's map under its 4-tuple (read from the accepted socket;
//! IPv4, IPv6 or an IPv4 peer of a dual-stack listener), and holds the descriptor
//! until the connection ends. It watches each socket with epoll for `EPOLLRDHUP` only
//! (the echoed bytes make no wake-ups; a write-space wake-up is not asked for), and on
//! a tick reads each socket's `TCP_INFO`, since the bytes it never sees are counted
//! there:
//!
//! - **counters**: `bytes_in`/`bytes_out` advance by each connection's
//!   `tcpi_bytes_received`/`tcpi_bytes_acked` since the last tick;
//! - **EOF**: after the peer's FIN the connection closes once every byte received has
//!   been echoed and acknowledged (`bytes_acked == bytes_received`), or after
//!   [`LINGER`]; an RST (`EPOLLHUP`/`EPOLLERR`) closes it at once;
//! - **idle timeout**: no data either way (`tcpi_last_data_recv`/`_sent`) for
//!   `--idle-timeout`;
//! - **backpressure**: the kernel never stops reading a connection whose peer does not
//!   read its echo: the redirected segments queue inside the kernel without limit (see
//!   docs/notes/kernel.md for the measurement). So a connection with more than
//!   `--output-cap` received and not yet acknowledged back is reset, checked every
//!   [`TICK`];
//! - **drain** (SIGTERM): stop accepting; a connection closes gracefully (shut our
//!   write side, linger for the peer's FIN) once it is quiet: everything echoed and
//!   acknowledged, no data for [`DRAIN_QUIET`], and not fresh (a connection that has
//!   received nothing yet gets [`DRAIN_FRESH_GRACE`]). What is left at
//!   `--drain-timeout` is closed; then the map is detached and freed.

use std::any::TypeId;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use c10k_proto::{App, Peer, Session};
use c10k_sys::bpf::{EchoMap, SockKey, TcpCounters, tcp_counters};
use rustix::event::epoll::{self, EventData, EventFlags};
use slab::Slab;

use super::{Availability, WorkerCtx};
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::config::{Config, DRAIN_FRESH_GRACE, DRAIN_QUIET, LINGER};
use crate::lifecycle::DrainClock;
use crate::ratelog::RateLog;
use crate::stats::WorkerStats;

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
/// Connections accepted per listener report (level-triggered).
const ACCEPT_BATCH: usize = 64;
/// How often every connection's counters are read while all are open and the server
/// is not draining: the bound on how late a reset for backpressure, an idle close or
/// a counter update comes.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// The tick while a connection is closing or the server drains (a closing connection
/// waits only for its echo to be acknowledged).
const FAST_TICK: Duration = Duration::from_millis(10);

/// Whether the in-kernel echo can run here: probed once per process.
pub(crate) fn availability() -> Availability {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(c10k_sys::bpf::probe) {
        Ok(()) => Availability::Available,
        Err(reason) => Availability::Unavailable {
            reason: reason.clone(),
        },
    }
}

/// The settings the kernel strategy cannot honour.
pub(crate) fn check_config(c: &Config) -> Result<(), String> {
    if c.proxy_protocol != c10k_proto::proxy::ProxyProtocol::Off {
        return Err(
            "--proxy-protocol needs the header parsed before the echo starts, and the kernel \
             strategy's eBPF program parses nothing; use --strategy epoll-et"
                .into(),
        );
    }
    Ok(())
}

/// Why the kernel strategy serves only the echo app.
pub(crate) const ONLY_ECHO: &str = "its eBPF program echoes bytes and cannot parse HTTP or RESP";

/// The one app the program implements.
pub(crate) fn echo_type() -> TypeId {
    TypeId::of::<c10k_proto::echo::EchoApp>()
}

/// How a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Echoing.
    Open,
    /// The peer shut its write side: close once the echo is acknowledged, or at the
    /// deadline.
    PeerDone(Instant),
    /// We shut our write side (idle, drain): close at the peer's FIN or the deadline.
    Lingering(Instant),
    /// Served in user space: the peer had sent its FIN before the accept, and the
    /// kernel takes only established sockets into a SOCKHASH. Everything it sent is
    /// in the receive queue (at most the receive buffer); it is read, written back,
    /// then our write side is shut.
    UserEcho,
}

struct Conn<S> {
    stream: TcpStream,
    /// [`Phase::UserEcho`]: the bytes read and not yet written back.
    pending: Vec<u8>,
    serial: u64,
    opened: Instant,
    phase: Phase,
    /// The counters already added to the worker's.
    seen_in: u64,
    seen_out: u64,
    /// The gate's session: holds the per-address slot; never fed.
    _session: S,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// It ended normally (echoed and acknowledged, or the linger ended).
    Done,
    /// The peer reset it, or a socket call failed.
    Failed,
    /// Reset by us: more than `--output-cap` echo pending.
    Backpressure,
    /// Idle for `--idle-timeout` with nothing pending.
    Idle,
    /// The drain deadline passed.
    DrainForced,
}

struct Worker<A: App> {
    ctx: WorkerCtx<A>,
    epoll: rustix::fd::OwnedFd,
    map: EchoMap,
    conns: Slab<Conn<crate::panic_guard::Guarded<A::Session>>>,
    next_serial: u64,
    listener: Option<Arc<TcpListener>>,
    listening: bool,
    guard: AcceptGuard,
    drain: DrainClock,
    next_tick: Instant,
    reset_log: RateLog,
    refused_log: RateLog,
}

/// Run one worker: accept, hand connections to the kernel, watch them, drain.
pub(crate) fn run<A: App>(mut ctx: WorkerCtx<A>) -> io::Result<()> {
    let entries = u32::try_from(ctx.config.max_conns).unwrap_or(u32::MAX);
    let map = EchoMap::new(entries).map_err(|e| io::Error::other(e.one_line()))?;
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &epoll,
        ctx.shutdown.wake_fd(),
        EventData::new_u64(WAKE),
        EventFlags::IN,
    )?;
    let listener = ctx.listener.take();
    let now = Instant::now();
    let mut w = Worker {
        ctx,
        epoll,
        map,
        conns: Slab::new(),
        next_serial: 0,
        listener,
        listening: false,
        guard: AcceptGuard::new(),
        drain: DrainClock::default(),
        next_tick: now + TICK,
        reset_log: RateLog::new(Duration::from_secs(1)),
        refused_log: RateLog::new(Duration::from_secs(1)),
    };
    w.listen()?;
    if w.ctx.shutdown.is_requested() {
        w.begin_drain(now);
    }
    w.run()
}

impl<A: App> Worker<A> {
    fn run(&mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            let deadline = [
                Some(self.next_tick),
                self.guard.paused_until(),
                self.drain.next(),
            ]
            .into_iter()
            .flatten()
            .min();
            match crate::timers::epoll_wait_until(self.epoll.as_fd(), &mut events, deadline) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            let mut wake = false;
            for ev in &events {
                match ev.data.u64() {
                    LISTENER => self.accept_ready(now),
                    WAKE => wake = true,
                    token => self.conn_event(token, ev.flags, now),
                }
            }
            if wake {
                self.begin_drain(now);
            }
            if self.guard.resume_due(now) && self.listener.is_some() {
                if let Err(e) = self.listen() {
                    tracing::error!(
                        "worker {}: cannot watch the listener again: {e}",
                        self.ctx.id
                    );
                }
            }
            if now >= self.next_tick {
                self.tick(now);
            }
            if self.drain.draining() && self.conns.is_empty() {
                return self.map.detach();
            }
        }
    }

    fn listen(&mut self) -> io::Result<()> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        let mut flags = EventFlags::IN;
        if self.ctx.shared_listener {
            flags |= EventFlags::EXCLUSIVE;
        }
        epoll::add(&self.epoll, l.as_fd(), EventData::new_u64(LISTENER), flags)?;
        self.listening = true;
        Ok(())
    }

    fn unlisten(&mut self) {
        if let (true, Some(l)) = (self.listening, &self.listener) {
            let _ = epoll::delete(&self.epoll, l.as_fd());
        }
        self.listening = false;
    }

    fn accept_ready(&mut self, now: Instant) {
        let mut batch = AcceptBatch::new(ACCEPT_BATCH);
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let x = &self.ctx;
            let admission = Admission::new(&x.open, x.config.max_conns, &x.stats);
            let Some((stream, addr)) = batch.next(listener, &mut self.guard, now, admission) else {
                break;
            };
            self.admit(stream, addr, now);
        }
        if batch.paused() {
            self.unlisten();
        }
    }

    /// A connection the accept path admitted: through the gate, into the map, watched.
    fn admit(&mut self, stream: TcpStream, addr: Option<SocketAddr>, now: Instant) {
        let x = &self.ctx;
        let peer = Peer {
            addr,
            local: Some(x.local_addr),
        };
        let session = crate::panic_guard::open_guarded(&*x.app, &peer, &x.stats);
        if session.wants_close() {
            // Refused by the gate (--max-conns-per-ip): closed unread.
            self.refused(None);
            return;
        }
        // The connection's own addresses (a wildcard listener's is not its), either
        // family: the key holds them in their IPv6 form.
        let addrs = stream.local_addr().and_then(|local| {
            let remote = addr.map_or_else(|| stream.peer_addr(), Ok)?;
            Ok((local, remote))
        });
        let key = match addrs {
            Ok((local, remote)) => SockKey::new(local, remote),
            Err(e) => {
                self.refused(Some(&format!("cannot read its addresses: {e}")));
                return;
            }
        };
        let vacant = self.conns.vacant_entry();
        let slot = vacant.key();
        let serial = self.next_serial.wrapping_add(1) & 0xffff_ffff;
        let token = (serial << 32) | slot as u64;
        let watch = EventFlags::RDHUP | EventFlags::ET;
        if let Err(e) = epoll::add(
            &self.epoll,
            stream.as_fd(),
            EventData::new_u64(token),
            watch,
        ) {
            self.refused(Some(&format!("cannot watch it: {e}")));
            return;
        }
        let mut phase = Phase::Open;
        if let Err(e) = self.map.insert(&key, stream.as_fd()) {
            if e.raw_os_error() == Some(libc_eopnotsupp()) {
                // Not established any more (the peer's FIN came before the accept).
                phase = Phase::UserEcho;
                let watch = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
                let _ = epoll::modify(
                    &self.epoll,
                    stream.as_fd(),
                    EventData::new_u64(token),
                    watch,
                );
            } else {
                let _ = epoll::delete(&self.epoll, stream.as_fd());
                self.refused(Some(&format!("cannot insert it into the SOCKHASH: {e}")));
                return;
            }
        }
        self.next_serial = serial;
        vacant.insert(Conn {
            stream,
            pending: Vec::new(),
            serial,
            opened: now,
            phase,
            seen_in: 0,
            seen_out: 0,
            _session: session,
        });
        if phase == Phase::UserEcho {
            self.user_echo(slot);
        }
        if self.drain.draining() {
            // Accepted in the same batch as the shutdown: drained like the others.
            self.next_tick = self.next_tick.min(now + FAST_TICK);
        }
    }

    /// An accepted connection is not served after all: closed, counted, logged.
    fn refused(&mut self, why: Option<&str>) {
        let x = &self.ctx;
        if let Some(why) = why {
            WorkerStats::add(&x.stats.refused_backend, 1);
            if let Some(n) = self.refused_log.hit(Instant::now()) {
                tracing::warn!("refused {n} connection(s): {why}");
            }
        }
        x.open.release();
        WorkerStats::add(&x.stats.closed, 1);
    }

    fn conn_event(&mut self, token: u64, flags: EventFlags, now: Instant) {
        let slot = (token & 0xffff_ffff) as usize;
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.serial != token >> 32 {
            return;
        }
        if conn.phase == Phase::UserEcho && !flags.contains(EventFlags::ERR) {
            self.user_echo(slot);
            return;
        }
        if flags.intersects(EventFlags::HUP | EventFlags::ERR) {
            // Reset by the peer, or both directions are shut: nothing more can move.
            let done =
                matches!(conn.phase, Phase::Lingering(_)) && !flags.contains(EventFlags::ERR);
            self.close(slot, if done { Close::Done } else { Close::Failed });
            return;
        }
        if flags.contains(EventFlags::RDHUP) {
            match conn.phase {
                Phase::Open => {
                    conn.phase = Phase::PeerDone(now + LINGER);
                    self.settle_peer_done(slot, now);
                }
                // The FIN the linger waited for.
                Phase::Lingering(_) => self.close(slot, Close::Done),
                Phase::PeerDone(_) | Phase::UserEcho => {}
            }
        }
    }

    /// The peer shut its write side: once every byte received has been echoed and
    /// acknowledged, shut ours and close; until then check on the fast tick.
    fn settle_peer_done(&mut self, slot: usize, now: Instant) {
        match self.counters(slot) {
            Some(c) if c.bytes_acked >= c.bytes_received => {
                if let Some(conn) = self.conns.get(slot) {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                }
                self.close(slot, Close::Done);
            }
            Some(_) => self.next_tick = self.next_tick.min(now + FAST_TICK),
            None => self.close(slot, Close::Failed),
        }
    }

    /// Read a connection's `TCP_INFO` and add its new bytes to the worker's counters.
    fn counters(&mut self, slot: usize) -> Option<TcpCounters> {
        let conn = self.conns.get_mut(slot)?;
        let c = tcp_counters(conn.stream.as_fd()).ok()?;
        let stats = &self.ctx.stats;
        WorkerStats::add(
            &stats.bytes_in,
            c.bytes_received.saturating_sub(conn.seen_in),
        );
        WorkerStats::add(
            &stats.bytes_out,
            c.bytes_acked.saturating_sub(conn.seen_out),
        );
        conn.seen_in = conn.seen_in.max(c.bytes_received);
        conn.seen_out = conn.seen_out.max(c.bytes_acked);
        Some(c)
    }

    /// Visit every connection: counters, backpressure, idle, the ends of closes and
    /// lingers, and the drain.
    fn tick(&mut self, now: Instant) {
        let force = self.drain.force_due(now);
        let mut fast = false;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for slot in keys {
            if force {
                self.counters(slot);
                self.close(slot, Close::DrainForced);
                continue;
            }
            let Some(c) = self.counters(slot) else {
                self.close(slot, Close::Failed);
                continue;
            };
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            let pending = c.bytes_received.saturating_sub(c.bytes_acked);
            let quiet_for = c.since_recv.min(c.since_sent);
            match conn.phase {
                Phase::PeerDone(until) | Phase::Lingering(until) if now >= until => {
                    self.close(slot, Close::Done);
                }
                Phase::PeerDone(_) => {
                    if pending == 0 {
                        let _ = conn.stream.shutdown(Shutdown::Write);
                        self.close(slot, Close::Done);
                    } else {
                        fast = true;
                    }
                }
                Phase::Lingering(_) => fast = true,
                Phase::UserEcho if quiet_for >= self.ctx.config.idle_timeout => {
                    self.close(slot, Close::Idle);
                }
                Phase::UserEcho => {}
                Phase::Open if pending > self.ctx.config.output_cap as u64 => {
                    self.close(slot, Close::Backpressure);
                }
                Phase::Open if quiet_for >= self.ctx.config.idle_timeout => {
                    if pending == 0 {
                        self.linger(slot, now);
                        WorkerStats::add(&self.ctx.stats.timeouts_idle, 1);
                        fast = true;
                    } else {
                        // Stuck on a peer that stopped reading: nothing to flush.
                        self.close(slot, Close::Idle);
                    }
                }
                Phase::Open if self.drain.draining() => {
                    let fresh = c.bytes_received == 0 && now < conn.opened + DRAIN_FRESH_GRACE;
                    if pending == 0 && quiet_for >= DRAIN_QUIET && !fresh {
                        self.linger(slot, now);
                    }
                    fast = true;
                }
                Phase::Open => {}
            }
        }
        let every = if fast || self.drain.draining() {
            FAST_TICK
        } else {
            TICK
        };
        self.next_tick = now + every;
    }

    /// [`Phase::UserEcho`]: read to EOF, write back what the socket takes, and once
    /// all is written shut our write side and close. Called again on each edge.
    fn user_echo(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let mut eof = false;
        loop {
            match rustix::io::read(&conn.stream, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    self.close(slot, Close::Failed);
                    return;
                }
            }
        }
        while !conn.pending.is_empty() {
            match rustix::io::write(&conn.stream, &conn.pending) {
                Ok(n) => {
                    conn.pending.drain(..n);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return,
                Err(_) => {
                    self.close(slot, Close::Failed);
                    return;
                }
            }
        }
        if eof {
            let _ = conn.stream.shutdown(Shutdown::Write);
            self.close(slot, Close::Done);
        }
    }

    /// Close gracefully: shut our write side (the peer sees EOF after its echo) and
    /// wait for its FIN, at most [`LINGER`].
    fn linger(&mut self, slot: usize, now: Instant) {
        if let Some(conn) = self.conns.get_mut(slot) {
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.phase = Phase::Lingering(now + LINGER);
        }
    }

    fn begin_drain(&mut self, now: Instant) {
        if !self.drain.begin(now, self.ctx.config.drain_timeout) {
            return;
        }
        // The pipe stays readable: stop watching it.
        let _ = epoll::delete(&self.epoll, self.ctx.shutdown.wake_fd());
        self.unlisten();
        self.listener = None;
        self.next_tick = now;
    }

    fn close(&mut self, slot: usize, why: Close) {
        let Some(conn) = self.conns.try_remove(slot) else {
            return;
        };
        let stats = &self.ctx.stats;
        match why {
            Close::Done => {}
            Close::Failed => WorkerStats::add(&stats.io_errors, 1),
            Close::Idle => WorkerStats::add(&stats.timeouts_idle, 1),
            Close::DrainForced => WorkerStats::add(&stats.drain_forced, 1),
            Close::Backpressure => {
                WorkerStats::add(&stats.io_errors, 1);
                if let Some(n) = self.reset_log.hit(Instant::now()) {
                    tracing::warn!(
                        "reset {n} connection(s): more than --output-cap ({} bytes) of echo \
                         pending in the kernel (a peer that does not read)",
                        self.ctx.config.output_cap
                    );
                }
            }
        }
        if matches!(why, Close::Backpressure | Close::Idle | Close::DrainForced) {
            // Nothing more will be sent: reset rather than leave the kernel flushing.
            let _ = socket2::SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
        }
        // Closing the descriptor takes the socket out of the map and out of epoll.
        drop(conn);
        self.ctx.open.release();
        WorkerStats::add(&stats.closed, 1);
    }
}

/// `EOPNOTSUPP`: what inserting a socket that is no longer established returns.
fn libc_eopnotsupp() -> i32 {
    rustix::io::Errno::OPNOTSUPP.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_echo_app_is_the_echo_type() {
        assert_eq!(echo_type(), TypeId::of::<c10k_proto::echo::EchoApp>());
        assert_ne!(echo_type(), TypeId::of::<c10k_proto::http::HttpApp>());
    }

    #[test]
    fn the_proxy_protocol_is_refused() {
        let mut c = Config::default();
        assert!(check_config(&c).is_ok());
        c.proxy_protocol = c10k_proto::proxy::ProxyProtocol::V1;
        assert!(check_config(&c).unwrap_err().contains("epoll-et"));
    }
}
