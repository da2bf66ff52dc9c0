//! The blocking-style handler API: one connection, one flow of control, ordinary
//! `Read` and `Write` calls.
//!
//! A [`Conn`] is what a handler (`fn handle(conn: &mut Conn) -> io::Result<()>`)
//! reads and writes. The same handler runs on an OS thread (`thread`), in a process
//! (`fork`, `prefork`) or on a green thread (`green`): the socket is always
//! nonblocking, and a read or write that would block *parks* through a [`Park`]
//! backend: `poll(2)` on the socket and the shutdown fds for the OS-thread strategies,
//! a switch back to the worker's scheduler for `green`. The sans-IO apps run on the
//! same API through the adapter in [`crate::blocking`].
//!
//! What a handler sees:
//! - `read` returns what is there, or waits for it; `Ok(0)` is end of stream: the peer
//!   closed, or the server is draining and nothing more is waiting.
//! - `write` waits while the peer's window is full (backpressure comes for free).
//! - A wait longer than `--idle-timeout` fails with [`io::ErrorKind::TimedOut`]; once
//!   the server drains, every wait is also bounded by `--drain-timeout`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use c10k_proto::Peer;
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use std::sync::Arc;

use c10k_proto::{Mailbox, Message};

use crate::lifecycle::mailbox::{Inbox, Letter, MailSlot};
use crate::stats::WorkerStats;

/// Serve one connection from start to end over a [`Conn`]: all that the strategies
/// giving each connection its own flow of control (`thread`, `fork`, `prefork`,
/// `green`) and the blocking driver need of what they serve. A sans-IO app does it
/// through the adapter, a [`Handler`](crate::Handler) by calling the user's function;
/// both impls are in `service.rs`, whose sealed [`Service`](crate::Service) requires
/// this trait, so the strategies depend on this leaf and never on `service.rs`.
///
/// `pub` only because `Service` names it as a supertrait; this module is private, so
/// no other crate can name or implement it.
pub trait ServeConn: Send + Sync + 'static {
    /// Serve `conn` until it should close; the stream is closed when `conn` drops.
    fn serve(&self, conn: &mut Conn<'_>, peer: &Peer);
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The connection is ready (or hung up: the next read or write says which).
    Ready,
    /// Shutdown was just noticed; the drain deadline is set.
    Drain,
    /// The deadline passed.
    Timeout,
    /// The wait itself failed (it does not on valid fds): give the connection up.
    Failed,
    /// Letters wait in the connection's mailbox ([`Park::take_letters`]).
    Mail,
}

/// How a connection's flow of control waits for its socket: the one thing that
/// differs between an OS thread and a green thread.
pub(crate) trait Park {
    /// Wait until `fd` is ready for `flags` (`IN` or `OUT`), `deadline` passes, or,
    /// when `watch_drain`, the server starts draining. `Waited::Drain` means the
    /// latter; the caller sets its drain deadline.
    fn park(
        &self,
        fd: BorrowedFd<'_>,
        flags: PollFlags,
        deadline: Option<Instant>,
        watch_drain: bool,
    ) -> Waited;

    /// A read or write completed without waiting. A green thread counts these and
    /// yields to its siblings after a bounded amount of work.
    fn progress(&self, _bytes: usize) {}

    /// A read (`IN`) or write (`OUT`) found the socket not ready: readiness an
    /// edge-triggered backend remembered for it is used up.
    fn would_block(&self, _flags: PollFlags) {}

    /// The sans-IO adapter is about to wait for input: it may hand its read buffer
    /// over (green threads: a per-worker pool, so thousands of idle connections cost
    /// their stack pages only) and get `None` back, or keep it (the default: an OS
    /// thread keeps its buffer, issue 4's measured behaviour).
    fn stash_buffer(&self, buf: Vec<u8>) -> Option<Vec<u8>> {
        Some(buf)
    }

    /// A read buffer for an adapter that handed its own over (`len` bytes).
    fn fresh_buffer(&self, len: usize) -> Vec<u8> {
        vec![0; len]
    }

    /// Open this connection's mailbox (once): from then on a wait also ends with
    /// [`Waited::Mail`] when letters wait. `None` when it cannot be opened.
    fn open_mailbox(&self) -> Option<(Mailbox, Arc<MailSlot>)>;

    /// Take the letters waiting for this connection (appended, oldest first).
    fn take_letters(&self, into: &mut Vec<Letter>);
}

/// Waiting by `poll(2)` on the socket, the shutdown fds and the connection's own inbox
/// (`thread`, `fork`, `prefork`).
pub(crate) struct PollPark<'a> {
    /// Fds that become readable, and stay readable, once the server drains.
    pub(crate) wake: &'a [BorrowedFd<'a>],
    /// The connection's inbox, once its mailbox is open.
    pub(crate) inbox: RefCell<Option<Arc<Inbox>>>,
}

impl<'a> PollPark<'a> {
    pub(crate) fn new(wake: &'a [BorrowedFd<'a>]) -> Self {
        PollPark {
            wake,
            inbox: RefCell::new(None),
        }
    }
}

/// At most this many shutdown fds are watched (a forked child watches its own and its
/// parent's).
pub(crate) const MAX_WAKE_FDS: usize = 3;

impl Park for PollPark<'_> {
    fn park(
        &self,
        conn: BorrowedFd<'_>,
        flags: PollFlags,
        deadline: Option<Instant>,
        watch_drain: bool,
    ) -> Waited {
        loop {
            let timeout = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Waited::Timeout;
                    }
                    // Round up so that the wait does not end a hair early.
                    Some(left + Duration::from_millis(1))
                }
                None => None,
            };
            let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
            let inbox = self.inbox.borrow().clone();
            let mut fds: [PollFd<'_>; 2 + MAX_WAKE_FDS] =
                std::array::from_fn(|_| PollFd::from_borrowed_fd(conn, flags));
            let mut n = 1;
            let mail = inbox.as_ref().map(|inbox| {
                fds[1] = PollFd::from_borrowed_fd(inbox.fd(), PollFlags::IN);
                n = 2;
                1
            });
            let first_wake = n;
            if watch_drain {
                for fd in self.wake {
                    fds[n] = PollFd::from_borrowed_fd(*fd, PollFlags::IN);
                    n += 1;
                }
            }
            match poll(&mut fds[..n], timeout.as_ref()) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    tracing::debug!("poll failed: {e}");
                    return Waited::Failed;
                }
            }
            if !fds[0].revents().is_empty() {
                return Waited::Ready;
            }
            if mail.is_some_and(|i| !fds[i].revents().is_empty()) {
                return Waited::Mail;
            }
            if fds[first_wake..n].iter().any(|f| !f.revents().is_empty()) {
                return Waited::Drain;
            }
            // Nothing ready: the timeout passed (checked at the top of the loop).
        }
    }

    fn open_mailbox(&self) -> Option<(Mailbox, Arc<MailSlot>)> {
        let mut slot = self.inbox.borrow_mut();
        if slot.is_some() {
            return None;
        }
        match Inbox::new() {
            Ok(inbox) => {
                let mailbox = inbox.mailbox(0, 0);
                *slot = Some(inbox);
                Some(mailbox)
            }
            Err(e) => {
                tracing::warn!("cannot open a connection's mailbox: {e}");
                None
            }
        }
    }

    fn take_letters(&self, into: &mut Vec<Letter>) {
        if let Some(inbox) = self.inbox.borrow().as_ref() {
            let mut got = Vec::new();
            inbox.take(&mut got);
            into.extend(got.into_iter().map(|(_, _, letter)| letter));
        }
    }
}

/// The settings a connection's waits obey.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// How long a connection may stay busy once it has seen the shutdown.
    pub(crate) drain_timeout: Duration,
    /// A wait for the peer longer than this fails.
    pub(crate) idle_timeout: Duration,
    /// Answer (HTTP 408) and close a request that stays incomplete this long (the
    /// sans-IO adapter; a handler keeps its own request clock).
    pub(crate) header_timeout: Duration,
}

/// One connection, seen by a blocking-style handler: `Read` and `Write` (also through
/// `&Conn`, so that a `BufReader` and a writer can share it) that park the calling
/// flow of control (an OS thread or a green thread) while the socket is not ready.
///
/// ```no_run
/// use std::io::{self, BufRead, BufReader, Write};
/// use c10k_server::{Conn, Server, Strategy};
///
/// /// Echo every line back, upper-cased.
/// fn handle(conn: &mut Conn) -> io::Result<()> {
///     let mut lines = BufReader::new(&*conn);
///     let mut line = String::new();
///     while lines.read_line(&mut line)? > 0 {
///         (&*conn).write_all(line.to_uppercase().as_bytes())?;
///         line.clear();
///     }
///     Ok(())
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// Server::builder()
///     .strategy(Strategy::Green) // or Thread, Fork, Prefork
///     .listen("127.0.0.1:7000".parse()?)
///     .handler(handle)
///     .run()?;
/// # Ok(())
/// # }
/// ```
pub struct Conn<'a> {
    stream: TcpStream,
    park: &'a dyn Park,
    stats: &'a Arc<WorkerStats>,
    limits: ConnLimits,
    drain_deadline: Cell<Option<Instant>>,
    last_active: Cell<Instant>,
    /// The handler's mailbox, once it asked for it ([`Conn::mailbox`]).
    mailbox: RefCell<Option<(Mailbox, Arc<MailSlot>)>>,
    /// Letters taken from the park and not handed to the handler yet.
    letters: RefCell<std::collections::VecDeque<Letter>>,
}

/// What [`Conn::wait_event`] ended with.
#[derive(Debug)]
pub enum Event {
    /// Bytes (or end of stream) wait: a read returns without waiting.
    Readable,
    /// A message posted to this connection's [`mailbox`](Conn::mailbox).
    Message(Message),
    /// The deadline passed.
    Timeout,
    /// The server started draining: finish up (a read that would wait returns end
    /// of stream from now on).
    Draining,
}

impl fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .field("draining", &self.draining())
            .finish()
    }
}

impl<'a> Conn<'a> {
    /// A connection over `stream`, made nonblocking here.
    pub(crate) fn new(
        stream: TcpStream,
        park: &'a dyn Park,
        stats: &'a Arc<WorkerStats>,
        limits: ConnLimits,
    ) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            park,
            stats,
            limits,
            drain_deadline: Cell::new(None),
            last_active: Cell::new(Instant::now()),
            mailbox: RefCell::new(None),
            letters: RefCell::new(std::collections::VecDeque::new()),
        })
    }

    /// This connection's mailbox, opened on the first call: hand clones of it to
    /// whoever should be able to post to this connection (a chat room, a broker).
    /// Its messages come out of [`wait_event`](Conn::wait_event), in order. It holds
    /// a bounded number of messages (posts beyond fail with
    /// [`PostError::Full`](c10k_proto::PostError::Full)); once this connection is
    /// closed, posts fail with `Closed`.
    pub fn mailbox(&self) -> io::Result<Mailbox> {
        let mut slot = self.mailbox.borrow_mut();
        if let Some((mailbox, _)) = slot.as_ref() {
            return Ok(mailbox.clone());
        }
        let opened = self
            .park
            .open_mailbox()
            .ok_or_else(|| io::Error::other("cannot open the connection's mailbox"))?;
        let mailbox = opened.0.clone();
        *slot = Some(opened);
        Ok(mailbox)
    }

    /// Wait until the socket has bytes (or end of stream) to read, a message
    /// arrives in this connection's mailbox, the server starts draining, or
    /// `deadline` passes, whichever comes first. Like every wait of a handler it is
    /// bounded by the idle timeout (an error then). A message whose poster gave up
    /// on this connection (a full mailbox) ends it with an error.
    pub fn wait_event(&self, deadline: Option<Instant>) -> io::Result<Event> {
        loop {
            let next = self.letters.borrow_mut().pop_front();
            if let Some(letter) = next {
                return match letter {
                    Letter::Message(msg) => {
                        if let Some((_, slot)) = self.mailbox.borrow().as_ref() {
                            slot.delivered();
                        }
                        WorkerStats::add(&self.stats.messages_delivered, 1);
                        Ok(Event::Message(msg))
                    }
                    Letter::Disconnect => {
                        WorkerStats::add(&self.stats.mailbox_disconnects, 1);
                        Err(io::Error::other(
                            "disconnected: the connection did not keep up with its messages",
                        ))
                    }
                };
            }
            if self.draining() {
                return Ok(Event::Draining);
            }
            let idle = self.last_active.get() + self.limits.idle_timeout;
            let until = deadline.map_or(idle, |d| d.min(idle));
            match self.wait(PollFlags::IN, Some(until)) {
                Waited::Ready if self.readable_now() => return Ok(Event::Readable),
                Waited::Ready => {}
                Waited::Drain => return Ok(Event::Draining),
                Waited::Mail => {}
                Waited::Timeout if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Ok(Event::Timeout);
                }
                Waited::Timeout | Waited::Failed => {
                    // The idle or drain deadline: the same errors as a read's wait.
                    self.handler_wait(PollFlags::IN)?;
                }
            }
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The local address the peer connected to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// The server is draining (SIGTERM): finish what is in flight and return. A
    /// read that has to wait now returns end of stream.
    pub fn draining(&self) -> bool {
        self.drain_deadline.get().is_some()
    }

    /// A clone of the socket (nonblocking, like the connection itself) for another
    /// flow of control to write to *without waiting*: a chat's broadcast, say. A
    /// write on it that would block fails with `WouldBlock` instead of parking.
    pub fn try_clone_stream(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Shut the writing side: the peer reads end of stream after what was written.
    pub fn shutdown_write(&self) -> io::Result<()> {
        self.stream.shutdown(NetShutdown::Write)
    }

    /// See [`Park::open_mailbox`].
    pub(crate) fn open_mailbox(&self) -> Option<(Mailbox, Arc<MailSlot>)> {
        self.park.open_mailbox()
    }

    /// Take every letter for this connection (those a wait already pulled first).
    pub(crate) fn take_letters(&self, into: &mut Vec<Letter>) {
        self.pull_letters();
        into.extend(self.letters.borrow_mut().drain(..));
    }

    /// Move the park's letters into this connection's queue (which resets the
    /// park's wake-up: a later wait blocks until more come).
    fn pull_letters(&self) {
        let mut got = Vec::new();
        self.park.take_letters(&mut got);
        self.letters.borrow_mut().extend(got);
    }

    /// A letter asked to disconnect this connection.
    fn disconnect_asked(&self) -> bool {
        self.letters
            .borrow()
            .iter()
            .any(|l| matches!(l, Letter::Disconnect))
    }

    /// Whether a read would return at once: bytes, end of stream or an error wait.
    fn readable_now(&self) -> bool {
        let mut one = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        match rustix::net::recv(&self.stream, &mut one[..], flags) {
            Err(rustix::io::Errno::AGAIN) => {
                self.park.would_block(PollFlags::IN);
                false
            }
            Err(rustix::io::Errno::INTR) => false,
            _ => true,
        }
    }

    /// See [`Park::stash_buffer`].
    pub(crate) fn stash_buffer(&self, buf: Vec<u8>) -> Option<Vec<u8>> {
        self.park.stash_buffer(buf)
    }

    /// See [`Park::fresh_buffer`].
    pub(crate) fn fresh_buffer(&self, len: usize) -> Vec<u8> {
        self.park.fresh_buffer(len)
    }

    pub(crate) fn stats(&self) -> &'a WorkerStats {
        self.stats
    }

    /// The same counters, shared (what a guarded session keeps).
    pub(crate) fn stats_arc(&self) -> &'a Arc<WorkerStats> {
        self.stats
    }

    pub(crate) fn limits(&self) -> ConnLimits {
        self.limits
    }

    /// When a draining connection is closed however busy it is.
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.get()
    }

    /// The drain deadline has passed.
    pub(crate) fn drain_passed(&self) -> bool {
        self.drain_deadline
            .get()
            .is_some_and(|d| Instant::now() >= d)
    }

    /// Start the drain clock (the first call only).
    pub(crate) fn begin_drain(&self) {
        if self.drain_deadline.get().is_none() {
            self.drain_deadline
                .set(Some(Instant::now() + self.limits.drain_timeout));
        }
    }

    /// One nonblocking read.
    pub(crate) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (&self.stream).read(buf).inspect_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                self.park.would_block(PollFlags::IN);
            }
        })?;
        self.park.progress(n);
        Ok(n)
    }

    /// One nonblocking write.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        let n = (&self.stream).write(buf).inspect_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                self.park.would_block(PollFlags::OUT);
            }
        })?;
        self.park.progress(n);
        Ok(n)
    }

    /// Wait until the connection is ready for `flags`, shutdown is noticed (the first
    /// time only), or `until` / the drain deadline passes.
    pub(crate) fn wait(&self, flags: PollFlags, until: Option<Instant>) -> Waited {
        let deadline = match (until, self.drain_deadline.get()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Waited::Timeout;
        }
        let watch_drain = self.drain_deadline.get().is_none();
        let waited = self
            .park
            .park(self.stream.as_fd(), flags, deadline, watch_drain);
        match waited {
            Waited::Drain => self.begin_drain(),
            Waited::Mail => self.pull_letters(),
            _ => {}
        }
        waited
    }

    /// A handler's wait: bounded by the idle timeout (counted as an idle timeout).
    fn handler_wait(&self, flags: PollFlags) -> io::Result<Waited> {
        let idle = self.last_active.get() + self.limits.idle_timeout;
        match self.wait(flags, Some(idle)) {
            Waited::Timeout if self.drain_passed() => {
                WorkerStats::add(&self.stats.drain_forced, 1);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server's drain deadline passed",
                ))
            }
            Waited::Timeout => {
                WorkerStats::add(&self.stats.timeouts_idle, 1);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle timeout: the peer did not move a byte",
                ))
            }
            Waited::Failed => Err(io::Error::other("waiting for the socket failed")),
            // Messages wait for `wait_event`; a disconnect ends the connection.
            Waited::Mail if self.disconnect_asked() => {
                WorkerStats::add(&self.stats.mailbox_disconnects, 1);
                Err(io::Error::other(
                    "disconnected: the connection did not keep up with its messages",
                ))
            }
            w => Ok(w),
        }
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some((_, slot)) = self.mailbox.get_mut().as_ref() {
            slot.close();
        }
    }
}

impl Read for &Conn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.try_read(buf) {
                Ok(n) => {
                    WorkerStats::add(&self.stats.bytes_in, n as u64);
                    self.last_active.set(Instant::now());
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.draining() {
                        return Ok(0);
                    }
                    self.handler_wait(PollFlags::IN)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for &Conn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.try_write(buf) {
                Ok(n) => {
                    WorkerStats::add(&self.stats.bytes_out, n as u64);
                    self.last_active.set(Instant::now());
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.handler_wait(PollFlags::OUT)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Conn<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Conn<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
