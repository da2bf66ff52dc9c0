//! The readiness event loop shared by `epoll-lt`, `epoll-et`, `poll` and `select`.
//!
//! Everything a readiness-based worker does apart from asking the kernel what is ready
//! lives here once: accepting (with `--max-conns` and the EMFILE back-off), driving
//! connections through [`ReadyConn`] (and so [`ConnCore`](crate::lifecycle::ConnCore)), keeping each connection's registration up to date,
//! linger timers, and graceful drain. The kernel interface is a [`Poller`] value, in
//! the style of mio's `sys` backends: epoll (level or edge), poll(2) or select(2).

use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use c10k_proto::{App, Peer, Session};
use slab::Slab;

use super::WorkerCtx;
use super::poller::{Interest, Poller, Ready, Source, Watch};
use crate::accept::{AcceptBatch, Admission};
use crate::conn::{Bufs, ReadyConn};
use crate::lifecycle::mailbox::{Inbox, Letter};
use crate::lifecycle::{Armed, ConnTable, Env, Keyed, LoopClock, Settled, WorkerCore};
use crate::ratelog::RateLog;
use crate::stats::WorkerStats;

/// Token of the listener.
pub(crate) const LISTENER: u64 = u64::MAX;
/// Token of the shutdown pipe.
pub(crate) const WAKE: u64 = u64::MAX - 1;
/// Token of the worker's inbox (messages posted to its connections).
pub(crate) const MAIL: u64 = u64::MAX - 2;

/// Connections a level-triggered loop accepts per listener report.
const ACCEPT_BATCH: usize = 64;

struct Entry<S> {
    conn: ReadyConn<S>,
    /// What the connection is registered for (level-triggered only).
    interest: Interest,
    /// Tells a reused slab slot from the connection a timer or letter was for.
    serial: u64,
    /// Its linger and session timer, as reported to the worker core.
    armed: Armed,
}

/// One readiness worker: its lifecycle ([`WorkerCore`]) and its connections.
struct Reactor<A: App, P> {
    worker: WorkerCore,
    conns: Conns<A, P>,
}

/// A readiness worker's connections, the poller that watches them, and the listener.
struct Conns<A: App, P> {
    ctx: WorkerCtx<A>,
    poller: P,
    slab: Slab<Entry<crate::panic_guard::Guarded<A::Session>>>,
    bufs: Bufs,
    clock: LoopClock,
    /// The listener, until draining starts; and whether it is registered.
    listener: Option<Arc<TcpListener>>,
    listening: bool,
    refused_log: RateLog,
    next_serial: u64,
    /// Messages posted to this worker's connections.
    inbox: Arc<Inbox>,
    letters: Vec<(usize, u64, Letter)>,
}

/// Run one worker's loop on `poller` until it has drained after shutdown.
pub(crate) fn run<A: App, P: Poller>(mut ctx: WorkerCtx<A>, mut poller: P) -> io::Result<()> {
    let read = Interest {
        read: true,
        write: false,
    };
    poller.add(ctx.shutdown.wake_fd(), Watch::new(WAKE, read, Source::Wake))?;
    let inbox = Inbox::new()?;
    poller.add(inbox.fd(), Watch::new(MAIL, read, Source::Wake))?;
    let listener = ctx.listener.take();
    let mut r = Reactor {
        worker: WorkerCore::new(ctx.id, &ctx.config),
        conns: Conns {
            poller,
            slab: Slab::new(),
            bufs: Bufs::new(),
            clock: LoopClock::new(&ctx.config),
            listener,
            listening: false,
            refused_log: RateLog::new(Duration::from_secs(1)),
            next_serial: 0,
            inbox,
            letters: Vec::new(),
            ctx,
        },
    };
    r.conns.listen()?;
    if r.conns.ctx.shutdown.is_requested() {
        r.begin_drain();
    }
    r.run()
}

impl<S> Keyed for Entry<S> {
    fn serial(&self) -> u64 {
        self.serial
    }
}

impl<A: App, P: Poller> Reactor<A, P> {
    fn run(&mut self) -> io::Result<()> {
        let mut ready: Vec<Ready> = Vec::with_capacity(1024);
        loop {
            let timeout = crate::timers::wait_for(self.worker.next_deadline());
            ready.clear();
            match self.conns.poller.wait(&mut ready, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let c = &mut self.conns;
            c.clock.tick();
            let mut wake = false;
            for r in &ready {
                match r.token {
                    LISTENER => self.accept_ready(),
                    WAKE => wake = true,
                    MAIL => self.conns.deliver_letters(&mut self.worker),
                    key => {
                        let settled = self.conns.conn_ready(key as usize, *r);
                        self.worker.settled(key as usize, settled);
                    }
                }
            }
            // Serve what was reported together with the shutdown first, so that a
            // request already waiting counts as in flight: select and poll report the
            // wake pipe (a low fd, the first slot) before the connections.
            if wake {
                self.begin_drain();
            }
            self.conns.clock.tick();
            let now = self.conns.clock.now;
            if self.worker.run_timers(&mut self.conns, now) && self.conns.listener.is_some() {
                if let Err(e) = self.conns.listen() {
                    tracing::error!(
                        "worker {}: cannot watch the listener again: {e}",
                        self.conns.ctx.id
                    );
                }
            }
            if self.worker.finished(&self.conns) {
                return Ok(());
            }
        }
    }

    fn accept_ready(&mut self) {
        let limit = if self.conns.poller.edge() {
            usize::MAX
        } else {
            ACCEPT_BATCH
        };
        let mut batch = AcceptBatch::new(limit);
        loop {
            let c = &mut self.conns;
            let Some(listener) = &c.listener else {
                return;
            };
            let x = &c.ctx;
            let admission = Admission::new(&x.open, x.config.max_conns, &x.stats);
            let Some((stream, addr)) =
                batch.next(listener, &mut self.worker.accept, c.clock.now, admission)
            else {
                break;
            };
            let peer = Peer {
                addr,
                local: Some(x.local_addr),
            };
            let session = crate::panic_guard::open_guarded(&*x.app, &peer, &x.stats);
            if session.wants_close() {
                // Refused at open (--max-conns-per-ip): closed unread.
                x.open.release();
                WorkerStats::add(&x.stats.closed, 1);
                continue;
            }
            let now = c.clock.now;
            c.register(ReadyConn::new(stream, session, now));
        }
        if batch.paused() {
            self.conns.unlisten();
        }
    }

    fn begin_drain(&mut self) {
        let c = &mut self.conns;
        if self.worker.draining() {
            return;
        }
        // The pipe stays readable: stop watching it, or every wait would return at once.
        let _ = c.poller.delete(c.ctx.shutdown.wake_fd(), WAKE);
        c.unlisten();
        c.listener = None;
        let now = c.clock.now;
        self.worker.begin_drain(&mut self.conns, now);
    }
}

impl<A: App, P: Poller> Conns<A, P> {
    fn listen(&mut self) -> io::Result<()> {
        let Some(l) = &self.listener else {
            return Ok(());
        };
        let source = Source::Listener {
            shared: self.ctx.shared_listener,
        };
        let read = Interest {
            read: true,
            write: false,
        };
        self.poller
            .add(l.as_fd(), Watch::new(LISTENER, read, source))?;
        self.listening = true;
        Ok(())
    }

    fn unlisten(&mut self) {
        if let (true, Some(l)) = (self.listening, &self.listener) {
            let _ = self.poller.delete(l.as_fd(), LISTENER);
        }
        self.listening = false;
    }

    fn register(&mut self, conn: ReadyConn<crate::panic_guard::Guarded<A::Session>>) {
        let interest = Interest {
            read: true,
            write: self.poller.edge(),
        };
        let vacant = self.slab.vacant_entry();
        let key = vacant.key();
        if let Err(e) = self.poller.add(
            conn.stream().as_fd(),
            Watch::new(key as u64, interest, Source::Conn),
        ) {
            // The backend cannot watch it (select's FD_SETSIZE, say): refuse it.
            WorkerStats::add(&self.ctx.stats.refused_backend, 1);
            if let Some(n) = self.refused_log.hit(self.clock.now) {
                tracing::warn!("refused {n} connection(s): {e}");
            }
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
            return;
        }
        self.next_serial += 1;
        vacant.insert(Entry {
            conn,
            interest,
            serial: self.next_serial,
            armed: Armed::default(),
        });
    }

    /// Serve `f` on a connection with the loop's environment, then settle it.
    fn serve(
        &mut self,
        key: usize,
        now: Instant,
        f: impl FnOnce(&mut ReadyConn<crate::panic_guard::Guarded<A::Session>>, &mut Bufs, &Env<'_>),
    ) -> Settled {
        if !self.with_conn(key, now, f) {
            return Settled::CLOSED;
        }
        self.settle(key)
    }

    /// Run `f` on a connection with the loop's environment (no settle); false if
    /// there is no connection at `key`.
    fn with_conn(
        &mut self,
        key: usize,
        now: Instant,
        f: impl FnOnce(&mut ReadyConn<crate::panic_guard::Guarded<A::Session>>, &mut Bufs, &Env<'_>),
    ) -> bool {
        let Some(entry) = self.slab.get_mut(key) else {
            return false;
        };
        let serial = entry.serial;
        let inbox = &self.inbox;
        let make = || Some(inbox.mailbox(key, serial));
        let env = self.clock.env(now, &self.ctx.stats, Some(&make));
        f(&mut entry.conn, &mut self.bufs, &env);
        true
    }

    /// The inbox is readable: hand every letter to its connection first, then write
    /// each connection's output once (a fan-out of many messages to one subscriber
    /// is one write, as Redis does it).
    fn deliver_letters(&mut self, worker: &mut WorkerCore) {
        let mut letters = std::mem::take(&mut self.letters);
        self.inbox.take(&mut letters);
        let mut touched = Vec::new();
        for (key, serial, letter) in letters.drain(..) {
            if self.slab.get(key).is_some_and(|e| e.serial == serial) {
                self.with_conn(key, self.clock.now, |conn, bufs, env| {
                    conn.queue_letter(bufs, env, letter);
                });
                if touched.last() != Some(&key) {
                    touched.push(key);
                }
            }
        }
        self.letters = letters;
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            let settled = self.serve(key, self.clock.now, |conn, bufs, env| {
                conn.after_letters(bufs, env);
            });
            worker.settled(key, settled);
        }
    }

    fn conn_ready(&mut self, key: usize, ready: Ready) -> Settled {
        let edge = self.poller.edge();
        self.serve(key, self.clock.now, |conn, bufs, env| {
            if (ready.writable || ready.hup) && conn.wants_write() {
                conn.on_writable(bufs, env, edge);
            }
            if ready.readable || ready.hup {
                conn.on_readable(bufs, env, edge, ready.hup);
            }
        })
    }

    /// After a connection was served: close it, report its new timers, or bring its
    /// registration up to date.
    fn settle(&mut self, key: usize) -> Settled {
        let Some(entry) = self.slab.get_mut(key) else {
            return Settled::CLOSED;
        };
        let settled = entry.armed.settle(entry.conn.core(), entry.serial);
        if settled.closed {
            self.close(key);
            return settled;
        }
        if !self.poller.edge() {
            let want = Interest {
                read: entry.conn.wants_read(self.clock.limits.output_cap),
                write: entry.conn.wants_write(),
            };
            if want != entry.interest {
                if self
                    .poller
                    .modify(entry.conn.stream().as_fd(), key as u64, want)
                    .is_err()
                {
                    self.close(key);
                    return Settled::CLOSED;
                }
                entry.interest = want;
            }
        }
        settled
    }
}

impl<A: App, P: Poller> ConnTable for Conns<A, P> {
    type Session = crate::panic_guard::Guarded<A::Session>;

    type Entry = Entry<Self::Session>;

    fn slots(&self) -> &Slab<Self::Entry> {
        &self.slab
    }

    fn on_timeout(&mut self, key: usize, now: Instant) -> Settled {
        self.serve(key, now, |conn, bufs, env| conn.on_timeout(bufs, env))
    }

    fn end_grace(&mut self, key: usize, now: Instant) -> Settled {
        self.serve(key, now, |conn, bufs, env| conn.end_grace(bufs, env))
    }

    fn start_drain(&mut self, key: usize, now: Instant) -> (bool, Settled) {
        let mut deferred = false;
        let settled = self.serve(key, now, |conn, bufs, env| {
            deferred = conn.start_drain(bufs, env);
        });
        (deferred, settled)
    }

    fn close(&mut self, key: usize) {
        if let Some(entry) = self.slab.try_remove(key) {
            self.poller.forget(entry.conn.stream().as_fd(), key as u64);
            drop(entry);
            self.ctx.open.release();
            WorkerStats::add(&self.ctx.stats.closed, 1);
        }
    }

    fn stats(&self) -> &WorkerStats {
        &self.ctx.stats
    }
}
