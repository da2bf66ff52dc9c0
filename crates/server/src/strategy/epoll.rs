//! The epoll reactor, level- or edge-triggered by value (C10K items 1 and 2).
//!
//! One reactor per worker thread. The difference between the two triggers is confined
//! to three places:
//! - registration: edge-triggered connections are registered once for
//!   `IN | OUT | RDHUP | ET` and never modified; level-triggered ones are registered for
//!   what they want now (`IN` unless backpressured, `OUT` only while output is pending)
//!   and modified when that changes, or an idle writable socket would be reported on
//!   every wait;
//! - reading: level-triggered reads once per event (the kernel reports again if more is
//!   left); edge-triggered reads until the kernel has nothing more;
//! - accepting: edge-triggered accepts until EAGAIN; level-triggered accepts a batch.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use c10k_proto::{App, Cx, Peer};
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::io::Errno;
use slab::Slab;

use super::WorkerCtx;
use crate::accept::{AcceptGuard, Accepted, accept_one};
use crate::config::LINGER;
use crate::conn::{Bufs, Conn, Env, Phase};
use crate::stats::WorkerStats;

/// How readiness is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// Reported while the condition holds (epoll's default, like poll and select).
    Level,
    /// Reported when the condition changes (`EPOLLET`).
    Edge,
}

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
/// Connections a level-triggered loop accepts per listener event.
const ACCEPT_BATCH: usize = 64;
const EVENTS: usize = 1024;

struct Entry<S> {
    conn: Conn<S>,
    /// What the connection is registered for (level-triggered only).
    interest: EventFlags,
    /// Tells a reused slab slot from the connection a timer was set for.
    serial: u64,
    /// Its linger timer is set.
    linger_armed: bool,
}

struct Reactor<A: App> {
    ctx: WorkerCtx<A>,
    trigger: Trigger,
    epoll: OwnedFd,
    conns: Slab<Entry<A::Session>>,
    bufs: Bufs,
    cx: Cx,
    now: Instant,
    /// The listener, until draining starts; and whether it is registered.
    listener: Option<Arc<TcpListener>>,
    listening: bool,
    guard: AcceptGuard,
    /// Lingering connections by deadline (all lingers are equally long, so FIFO order
    /// is deadline order).
    lingering: VecDeque<(Instant, usize, u64)>,
    drain_deadline: Option<Instant>,
    next_serial: u64,
}

/// Run one worker's loop until it has drained after shutdown.
pub(crate) fn run<A: App>(ctx: WorkerCtx<A>, trigger: Trigger) -> io::Result<()> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    epoll::add(
        &epoll,
        ctx.shutdown.wake_fd(),
        EventData::new_u64(WAKE),
        EventFlags::IN,
    )?;
    let listener = Arc::clone(&ctx.listener);
    let mut r = Reactor {
        trigger,
        epoll,
        conns: Slab::new(),
        bufs: Bufs::new(),
        cx: Cx::new(SystemTime::now()),
        now: Instant::now(),
        listener: Some(listener),
        listening: false,
        guard: AcceptGuard::new(),
        lingering: VecDeque::new(),
        drain_deadline: None,
        next_serial: 0,
        ctx,
    };
    r.listen()?;
    if r.ctx.shutdown.is_requested() {
        r.begin_drain();
    }
    r.run()
}

impl<A: App> Reactor<A> {
    fn run(&mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        loop {
            let timeout = self.next_deadline().map(|t| {
                let d = t.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
                rustix::time::Timespec {
                    tv_sec: d.as_secs() as i64,
                    tv_nsec: i64::from(d.subsec_nanos()),
                }
            });
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            self.now = Instant::now();
            self.cx.set_now(SystemTime::now());
            for ev in &events {
                let flags = ev.flags;
                match ev.data.u64() {
                    LISTENER => self.accept_ready(),
                    WAKE => self.begin_drain(),
                    key => self.conn_ready(key as usize, flags),
                }
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
        let mut flags = EventFlags::IN;
        if self.ctx.shared_listener {
            flags |= EventFlags::EXCLUSIVE;
        }
        if self.trigger == Trigger::Edge {
            flags |= EventFlags::ET;
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

    fn accept_ready(&mut self) {
        let batch = match self.trigger {
            Trigger::Level => ACCEPT_BATCH,
            Trigger::Edge => usize::MAX,
        };
        for _ in 0..batch {
            let Some(listener) = &self.listener else {
                return;
            };
            match accept_one(listener) {
                Accepted::Conn(stream, addr) => {
                    let c = &self.ctx;
                    if !self
                        .guard
                        .admit(self.now, &c.open, c.config.max_conns, &c.stats)
                    {
                        continue;
                    }
                    let peer = Peer {
                        addr,
                        local: Some(c.local_addr),
                    };
                    let session = c.app.open(&peer);
                    self.register(Conn::new(stream, session));
                }
                Accepted::Empty => return,
                Accepted::Retry => {}
                Accepted::Exhausted(e) => {
                    self.guard
                        .exhausted(self.now, &e, &self.ctx.stats, &self.ctx.open);
                    self.unlisten();
                    return;
                }
                Accepted::Failed(e) => {
                    self.guard.failed(self.now, &e, &self.ctx.stats);
                    return;
                }
            }
        }
    }

    fn register(&mut self, conn: Conn<A::Session>) {
        let flags = match self.trigger {
            Trigger::Edge => EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET,
            Trigger::Level => EventFlags::IN | EventFlags::RDHUP,
        };
        let vacant = self.conns.vacant_entry();
        let key = vacant.key();
        if let Err(e) = epoll::add(
            &self.epoll,
            conn.stream().as_fd(),
            EventData::new_u64(key as u64),
            flags,
        ) {
            tracing::warn!("epoll_ctl(ADD) failed for a new connection: {e}");
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
            return;
        }
        self.next_serial += 1;
        vacant.insert(Entry {
            conn,
            interest: flags,
            serial: self.next_serial,
            linger_armed: false,
        });
    }

    fn conn_ready(&mut self, key: usize, flags: EventFlags) {
        let edge = self.trigger == Trigger::Edge;
        let output_cap = self.ctx.config.output_cap;
        let Some(entry) = self.conns.get_mut(key) else {
            return;
        };
        let env = Env {
            cx: &self.cx,
            stats: &self.ctx.stats,
            output_cap,
        };
        let conn = &mut entry.conn;
        if flags.intersects(EventFlags::OUT | EventFlags::ERR | EventFlags::HUP)
            && conn.wants_write()
        {
            conn.on_writable(&mut self.bufs, &env, edge);
        }
        let hup = flags.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR);
        if flags.intersects(EventFlags::IN) || hup {
            conn.on_readable(&mut self.bufs, &env, edge, hup);
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
        if draining && entry.conn.phase() == Phase::Open && entry.conn.is_idle() {
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
        if self.trigger == Trigger::Level {
            let mut want = EventFlags::RDHUP;
            if entry.conn.wants_read(self.ctx.config.output_cap) {
                want |= EventFlags::IN;
            }
            if entry.conn.wants_write() {
                want |= EventFlags::OUT;
            }
            if want != entry.interest {
                if epoll::modify(
                    &self.epoll,
                    entry.conn.stream().as_fd(),
                    EventData::new_u64(key as u64),
                    want,
                )
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
        if self.conns.try_remove(key).is_some() {
            // Closing the socket removes it from the epoll set.
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
        }
    }

    fn begin_drain(&mut self) {
        if self.drain_deadline.is_some() {
            return;
        }
        self.drain_deadline = Some(self.now + self.ctx.config.drain_timeout);
        let _ = epoll::delete(&self.epoll, self.ctx.shutdown.wake_fd());
        self.unlisten();
        self.listener = None;
        tracing::debug!(
            "worker {}: draining {} connection(s)",
            self.ctx.id,
            self.conns.len()
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(entry) = self.conns.get_mut(key) {
                entry.conn.start_drain();
            }
            self.settle(key);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [
            self.guard.paused_until(),
            self.lingering.front().map(|l| l.0),
            self.drain_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn wait_once(ep: &OwnedFd) -> usize {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(8);
        let t = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        epoll::wait(ep, rustix::buffer::spare_capacity(&mut events), Some(&t)).unwrap();
        events.len()
    }

    /// Pins the semantics the two triggers are built on: level-triggered readiness
    /// reports unread data again on every wait; edge-triggered reports it once.
    #[test]
    fn level_renotifies_unread_data_edge_does_not() {
        for (trigger, expect_second) in [(Trigger::Level, 1), (Trigger::Edge, 0)] {
            let (mut a, b) = pair();
            let ep = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
            let mut flags = EventFlags::IN;
            if trigger == Trigger::Edge {
                flags |= EventFlags::ET;
            }
            epoll::add(&ep, b.as_fd(), EventData::new_u64(7), flags).unwrap();
            a.write_all(b"unread").unwrap();
            assert_eq!(wait_once(&ep), 1, "{trigger:?}: first report");
            assert_eq!(
                wait_once(&ep),
                expect_second,
                "{trigger:?}: second wait, data still unread"
            );
        }
    }
}
