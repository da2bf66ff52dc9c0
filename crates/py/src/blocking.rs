//! Blocking-style Python handlers (`c10k.serve_blocking`): `handler(conn)` reads and
//! writes a socket-like [`Connection`] the way `socketserver` handlers do, on one OS
//! thread per connection (`thread`) or in forked processes (`fork`, `prefork`).
//!
//! Every wait is here, in Rust, with the interpreter's lock released
//! (`Python::detach`): a `recv` or `sendall` that would block waits in `poll(2)` on the
//! socket and the server's drain descriptor, an accept loop waits on the listener, the
//! drain descriptor and the interpreter's signal wake-up pipe. I/O that need not wait
//! (bytes already there, room in the send buffer) is done without releasing the lock,
//! which would only hand it to another thread and take it back.
//!
//! - [`Gate`]: the server's drain switch. An eventfd that becomes readable, and stays
//!   readable, once the server drains (forked children inherit it, so one write drains
//!   them all), and the drain deadline. A `recv` that would wait once the server
//!   drains returns end of stream (`b""`), as the Rust handlers' reads do; every other
//!   wait is bounded by the drain deadline.
//! - [`Connection`]: what a handler gets. A wait longer than the idle timeout ends a
//!   `recv` with `b""` and shuts the connection down; a `settimeout` deadline raises
//!   `TimeoutError`.
//! - [`Acceptor`]: the accept loop. `accept` returns one connection (the `fork` parent
//!   and the `prefork` workers call it from Python); `serve_threads` is the whole
//!   `thread` strategy: accept, then hand each connection to a waiting thread or start
//!   one, which attaches to the interpreter only to call the handler.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBlockingIOError, PyOSError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::PyBytes;
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

/// How long a connection thread whose connection ended waits for another before it
/// exits (thread creation and exit take process-wide locks; a reused thread does
/// neither).
const IDLE_KEEP: Duration = Duration::from_secs(10);
/// Extra time `serve_threads` waits for connection threads beyond the drain timeout
/// (each wait of a handler is bounded by the drain deadline; this covers scheduling).
const JOIN_MARGIN: Duration = Duration::from_secs(1);
/// The pause before accepting again after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest duration accepted anywhere (a larger or infinite one means "never").
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `seconds` as a duration: not negative, not NaN; infinity (or anything huge) is
/// [`FOREVER`].
fn duration(seconds: f64, what: &str) -> PyResult<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, not {seconds}"
        )));
    }
    Ok(Duration::try_from_secs_f64(seconds).map_or(FOREVER, |d| d.min(FOREVER)))
}

/// `now + d`, or None when that is beyond what an `Instant` holds.
fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The earliest of some deadlines.
fn earliest(deadlines: &[Option<Instant>]) -> Option<Instant> {
    deadlines.iter().flatten().min().copied()
}

/// The drain switch and the limits every connection of one server obeys.
pub(crate) struct GateCore {
    /// An eventfd, readable once the server drains (never read: it stays readable).
    wake: OwnedFd,
    /// Set when this process learns of the drain: the deadline of every wait.
    deadline: OnceLock<Instant>,
    drain_timeout: Duration,
    /// A wait of a connection longer than this ends it (None: no limit).
    idle_timeout: Option<Duration>,
}

impl GateCore {
    fn new(drain_timeout: Duration, idle_timeout: Option<Duration>) -> io::Result<Self> {
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(GateCore {
            wake,
            deadline: OnceLock::new(),
            drain_timeout,
            idle_timeout,
        })
    }

    /// Start draining: every process sharing the eventfd sees it readable.
    fn drain(&self) {
        self.noticed();
        // Fails only when the counter would overflow: it is readable either way.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// This process learnt of the drain (first call only): the drain clock starts.
    fn noticed(&self) {
        let now = Instant::now();
        let _ = self
            .deadline
            .set(after(now, self.drain_timeout).unwrap_or(now + FOREVER));
    }

    /// The drain deadline, once this process knows of the drain.
    fn drain_deadline(&self) -> Option<Instant> {
        self.deadline.get().copied()
    }

    /// Draining (asking the eventfd if this process has not heard yet: a forked child
    /// learns of its parent's drain there).
    fn draining(&self) -> bool {
        if self.deadline.get().is_some() {
            return true;
        }
        let mut fds = [PollFd::new(&self.wake, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        if matches!(poll(&mut fds, Some(&zero)), Ok(n) if n > 0) {
            self.noticed();
            return true;
        }
        false
    }
}

/// The server's drain switch (`Gate(drain_timeout, idle_timeout)`; an idle timeout of
/// 0 means none). `drain()` is what SIGTERM calls.
#[pyclass(frozen, module = "c10k._engine")]
pub struct Gate {
    core: Arc<GateCore>,
}

#[pymethods]
impl Gate {
    #[new]
    fn py_new(drain_timeout: f64, idle_timeout: f64) -> PyResult<Self> {
        let drain = duration(drain_timeout, "drain_timeout")?;
        let idle = duration(idle_timeout, "idle_timeout")?;
        let idle = (!idle.is_zero()).then_some(idle);
        Ok(Gate {
            core: Arc::new(GateCore::new(drain, idle)?),
        })
    }

    /// Start draining (idempotent; safe in a signal handler).
    fn drain(&self) {
        self.core.drain();
    }

    /// Whether the server drains (here, or in the parent of this forked process).
    fn draining(&self) -> bool {
        self.core.draining()
    }
}

/// Why a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Woke {
    /// The descriptor is ready (or failed: the next call says how).
    Ready,
    /// The drain descriptor became readable.
    Drain,
    /// A watched signal pipe became readable.
    Signal,
    /// The deadline passed.
    Timeout,
    /// A signal interrupted the wait.
    Interrupted,
}

/// poll(2) on `fd` for `flags`, and for readability on `wake` and `signals`, until
/// `deadline`. Never called with the interpreter's lock held.
fn wait(
    fd: Option<BorrowedFd<'_>>,
    flags: PollFlags,
    wake: Option<BorrowedFd<'_>>,
    signals: Option<BorrowedFd<'_>>,
    deadline: Option<Instant>,
) -> io::Result<Woke> {
    loop {
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Woke::Timeout);
                }
                // Rounded up so that the wait does not end a hair early.
                Timespec::try_from(left + Duration::from_millis(1)).ok()
            }
            None => None,
        };
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
        let mut kinds: [Woke; 3] = [Woke::Ready; 3];
        for (fd, events, kind) in [
            (fd, flags, Woke::Ready),
            (wake, PollFlags::IN, Woke::Drain),
            (signals, PollFlags::IN, Woke::Signal),
        ] {
            if let Some(fd) = fd {
                kinds[fds.len()] = kind;
                fds.push(PollFd::from_borrowed_fd(fd, events));
            }
        }
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(Woke::Interrupted),
            Err(e) => return Err(e.into()),
        }
        if let Some(i) = fds.iter().position(|f| !f.revents().is_empty()) {
            return Ok(kinds[i]);
        }
        // Nothing ready: the deadline is checked at the top.
    }
}

/// The connection threads' way back into the interpreter: one at a time.
///
/// CPython's lock is not a queue: a thread waiting for it wakes every switch interval
/// (5 ms) to ask the holder to let go. With a thread per connection, hundreds of them
/// come back from their waits at once, and their timed wake-ups (hundreds of thousands
/// a second at 1,000 connections, and on two CPUs a hand-off between them each time)
/// cost more CPU than the handlers: measured at 1,000 connections with a 2 ms blocking
/// call per request, 40 context switches and 392 us of CPU per request, against 14 and
/// 126 us for `socketserver`'s threads (docs/notes/python-field.md). So a thread coming
/// back from a wait first takes its turn here, where waiting costs nothing until the
/// turn comes (a futex, no timeout), and lets the turn go as soon as it holds the
/// interpreter: at most one of them waits inside CPython's lock.
struct Turnstile {
    taken: Mutex<bool>,
    free: Condvar,
}

static TURNSTILE: Turnstile = Turnstile {
    taken: Mutex::new(false),
    free: Condvar::new(),
};

/// A thread's turn at the interpreter's lock; dropping it gives the next thread its turn.
struct Turn(&'static Turnstile);

impl Turnstile {
    /// Wait for the turn (never called with the interpreter's lock held).
    fn enter(&'static self) -> Turn {
        let mut taken = lock(&self.taken);
        while *taken {
            taken = match self.free.wait(taken) {
                Ok(t) => t,
                Err(p) => p.into_inner(),
            };
        }
        *taken = true;
        Turn(self)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *lock(&self.0.taken) = false;
        self.0.free.notify_one();
    }
}

/// `py.detach(f)`, coming back to the interpreter through the [`TURNSTILE`].
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    let (value, turn) = py.detach(|| {
        let value = f();
        (value, TURNSTILE.enter())
    });
    drop(turn);
    value
}

/// Bytes to send: a `bytes` or `bytearray` as it is, any other buffer copied.
fn send_data(data: &Bound<'_, PyAny>) -> PyResult<PyBackedBytes> {
    if let Ok(b) = data.extract::<PyBackedBytes>() {
        return Ok(b);
    }
    let buf = PyBuffer::<u8>::get(data)?;
    let copy = buf.to_vec(data.py())?;
    Ok(PyBytes::new(data.py(), &copy).extract::<PyBackedBytes>()?)
}

/// The socket-like object a blocking handler gets (see the module docs; the Python
/// methods mirror `socket.socket`'s).
#[pyclass(frozen, module = "c10k._engine")]
pub struct Connection {
    /// None once closed. Calls hold a clone for their duration, so a `close()` from
    /// another thread never closes a descriptor under a wait.
    fd: Mutex<Option<Arc<OwnedFd>>>,
    gate: Arc<GateCore>,
    /// `settimeout`: None blocks (bounded by the idle timeout), zero never waits.
    timeout: Mutex<Option<Duration>>,
    peer: Option<SocketAddr>,
    /// Files from `makefile` still open: `close()` waits for them (as `socket` does).
    io_refs: AtomicUsize,
    close_wanted: AtomicBool,
}

/// How a blocking operation ended.
enum Ended<T> {
    Done(T),
    /// A read found nothing and the server drains: end of stream.
    Drained,
    /// A read waited longer than the idle timeout.
    Idle,
    /// A deadline passed (what to say).
    Timeout(&'static str),
    Failed(io::Error),
    Interrupted,
}

impl Connection {
    fn new(fd: OwnedFd, peer: Option<SocketAddr>, gate: Arc<GateCore>) -> Self {
        // Replies are written whole by sendall: no reason to hold back the last part.
        let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
        Connection {
            fd: Mutex::new(Some(Arc::new(fd))),
            gate,
            timeout: Mutex::new(None),
            peer,
            io_refs: AtomicUsize::new(0),
            close_wanted: AtomicBool::new(false),
        }
    }

    fn fd(&self) -> PyResult<Arc<OwnedFd>> {
        lock(&self.fd)
            .clone()
            .ok_or_else(|| PyOSError::new_err((libc::EBADF, "Bad file descriptor")))
    }

    fn timeout(&self) -> Option<Duration> {
        *lock(&self.timeout)
    }

    /// Run `attempt` (which returns None for "would block") until it is done,
    /// waiting for `flags` with the interpreter's lock released in between. A read
    /// (`reading`) ends with `Drained` when it would wait while the server drains, and
    /// with `Idle` after waiting longer than the idle timeout.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        fd: &OwnedFd,
        flags: PollFlags,
        reading: bool,
        mut attempt: impl FnMut(&OwnedFd) -> io::Result<Option<T>> + Send,
    ) -> PyResult<Ended<T>> {
        // The first try holds the lock: nothing waits.
        match attempt(fd) {
            Ok(Some(v)) => return Ok(Ended::Done(v)),
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Ok(Ended::Failed(e)),
        }
        let user = self.timeout();
        if user == Some(Duration::ZERO) {
            return Err(PyBlockingIOError::new_err((
                libc::EAGAIN,
                "Resource temporarily unavailable",
            )));
        }
        let start = Instant::now();
        let user_deadline = user.and_then(|t| after(start, t));
        let gate = &*self.gate;
        loop {
            let ended = detached(py, || {
                loop {
                    if reading && gate.drain_deadline().is_some() {
                        return Ended::Drained;
                    }
                    let idle_deadline = gate.idle_timeout.and_then(|t| after(Instant::now(), t));
                    let drain_deadline = gate.drain_deadline();
                    let deadline = earliest(&[user_deadline, idle_deadline, drain_deadline]);
                    let wake = drain_deadline.is_none().then(|| gate.wake.as_fd());
                    match wait(Some(fd.as_fd()), flags, wake, None, deadline) {
                        Err(e) => return Ended::Failed(e),
                        Ok(Woke::Interrupted) => return Ended::Interrupted,
                        Ok(Woke::Drain) => gate.noticed(),
                        Ok(Woke::Timeout) => {
                            let now = Instant::now();
                            let passed = |d: Option<Instant>| d.is_some_and(|d| d <= now);
                            if passed(user_deadline) {
                                return Ended::Timeout("timed out");
                            }
                            if passed(drain_deadline) {
                                return Ended::Timeout("the server's drain deadline passed");
                            }
                            if passed(idle_deadline) {
                                if reading {
                                    return Ended::Idle;
                                }
                                return Ended::Timeout(
                                    "the idle timeout passed (the peer read nothing)",
                                );
                            }
                        }
                        Ok(Woke::Ready | Woke::Signal) => {}
                    }
                    match attempt(fd) {
                        Ok(Some(v)) => return Ended::Done(v),
                        Ok(None) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Ended::Failed(e),
                    }
                }
            });
            match ended {
                // PEP 475: run the signal handlers, retry unless one raised.
                Ended::Interrupted => py.check_signals()?,
                other => return Ok(other),
            }
        }
    }

    /// Receive up to `n` bytes (empty: end of stream, drained, or idle too long).
    fn receive(&self, py: Python<'_>, n: usize) -> PyResult<Vec<u8>> {
        let fd = self.fd()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        // Not zeroed: `recv(65536)` is the usual call, for a few bytes.
        let mut buf: Vec<u8> = Vec::with_capacity(n);
        let ended = self.run(py, &fd, PollFlags::IN, true, |fd| {
            let room = rustix::buffer::spare_capacity(&mut buf);
            match rustix::net::recv(fd, room, RecvFlags::empty()) {
                Ok((got, _)) => Ok(Some(got)),
                Err(Errno::AGAIN) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })?;
        let got = match ended {
            Ended::Done(got) => got,
            Ended::Drained => 0,
            Ended::Idle => {
                // The connection is over: the peer sees it closed now.
                let _ = rustix::net::shutdown(&*fd, rustix::net::Shutdown::Both);
                0
            }
            other => return Err(ended_err(other)),
        };
        buf.truncate(got);
        Ok(buf)
    }

    /// Send from `data[*sent..]` until all is sent (`all`) or some is.
    fn transmit(&self, py: Python<'_>, data: &[u8], all: bool) -> PyResult<usize> {
        let fd = self.fd()?;
        let mut sent = 0usize;
        let ended = self.run(py, &fd, PollFlags::OUT, false, |fd| {
            loop {
                match rustix::net::send(fd, &data[sent..], SendFlags::NOSIGNAL) {
                    Ok(n) => {
                        sent += n;
                        if sent == data.len() || !all {
                            return Ok(Some(()));
                        }
                    }
                    Err(Errno::AGAIN) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
        })?;
        match ended {
            Ended::Done(()) => Ok(sent),
            other => Err(ended_err(other)),
        }
    }

    /// Close the descriptor now (the server, after the handler returned).
    fn finish_now(&self) {
        self.close_wanted.store(true, Ordering::Release);
        lock(&self.fd).take();
    }

    fn close_if_unused(&self) {
        if self.io_refs.load(Ordering::Acquire) == 0 {
            lock(&self.fd).take();
        }
    }
}

/// `socket.timeout(what)`, as a socket's own timeout raises: the same class as
/// `TimeoutError` from 3.10 on, a subclass of `OSError` of its own on 3.9 (where a
/// handler catches `socket.timeout`).
fn timeout_err(what: &'static str) -> PyErr {
    Python::attach(|py| {
        let class = py
            .import("socket")
            .and_then(|m| m.getattr("timeout"))
            .and_then(|t| t.cast_into::<pyo3::types::PyType>().map_err(PyErr::from));
        match class {
            Ok(class) => PyErr::from_type(class, what),
            Err(_) => PyTimeoutError::new_err(what),
        }
    })
}

/// The Python exception for how an operation ended.
fn ended_err<T>(ended: Ended<T>) -> PyErr {
    match ended {
        Ended::Timeout(what) => timeout_err(what),
        Ended::Failed(e) => e.into(),
        Ended::Done(_) | Ended::Drained | Ended::Idle | Ended::Interrupted => {
            PyOSError::new_err("unexpected end of a blocking operation")
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A socket address as `socket` gives it: `(host, port)` or, for IPv6,
/// `(host, port, flowinfo, scope_id)`.
pub(crate) fn address_tuple(py: Python<'_>, addr: SocketAddr) -> PyResult<Py<PyAny>> {
    Ok(match addr {
        SocketAddr::V4(a) => (a.ip().to_string(), a.port())
            .into_pyobject(py)?
            .into_any()
            .unbind(),
        SocketAddr::V6(a) => (a.ip().to_string(), a.port(), a.flowinfo(), a.scope_id())
            .into_pyobject(py)?
            .into_any()
            .unbind(),
    })
}

fn no_flags(flags: i32) -> PyResult<()> {
    if flags != 0 {
        return Err(PyValueError::new_err(
            "flags are not supported on a c10k connection (only 0)",
        ));
    }
    Ok(())
}

#[pymethods]
impl Connection {
    /// Receive up to `bufsize` bytes; `b""` at end of stream, once the server drains
    /// and nothing is waiting, or after the idle timeout (the connection is then shut
    /// down).
    #[pyo3(signature = (bufsize, flags = 0))]
    fn recv<'py>(
        &self,
        py: Python<'py>,
        bufsize: isize,
        flags: i32,
    ) -> PyResult<Bound<'py, PyBytes>> {
        no_flags(flags)?;
        let n = usize::try_from(bufsize)
            .map_err(|_| PyValueError::new_err("negative buffersize in recv"))?;
        let data = self.receive(py, n)?;
        Ok(PyBytes::new(py, &data))
    }

    /// Receive into `buffer` (at most `nbytes` bytes, 0: its length); returns how
    /// many bytes were received (0 as `recv` returns `b""`).
    #[pyo3(signature = (buffer, nbytes = 0, flags = 0))]
    fn recv_into(
        &self,
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        nbytes: isize,
        flags: i32,
    ) -> PyResult<usize> {
        no_flags(flags)?;
        let buf = PyBuffer::<u8>::get(buffer)?;
        if buf.readonly() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "recv_into() needs a writable buffer",
            ));
        }
        let len = buf.item_count();
        let n = match usize::try_from(nbytes) {
            Err(_) => return Err(PyValueError::new_err("negative buffersize in recv_into")),
            Ok(0) => len,
            Ok(n) if n > len => {
                return Err(PyValueError::new_err(
                    "buffer too small for requested bytes",
                ));
            }
            Ok(n) => n,
        };
        let data = self.receive(py, n)?;
        let cells = buf
            .as_mut_slice(py)
            .ok_or_else(|| PyValueError::new_err("recv_into() needs a contiguous buffer"))?;
        for (cell, byte) in cells.iter().zip(&data) {
            cell.set(*byte);
        }
        Ok(data.len())
    }

    /// Send some of `data` (waiting until some can be sent); returns how many bytes.
    #[pyo3(signature = (data, flags = 0))]
    fn send(&self, py: Python<'_>, data: &Bound<'_, PyAny>, flags: i32) -> PyResult<usize> {
        no_flags(flags)?;
        let data = send_data(data)?;
        if data.is_empty() {
            return Ok(0);
        }
        self.transmit(py, &data, false)
    }

    /// Send all of `data`, waiting while the peer's window is full; `TimeoutError`
    /// after the `settimeout` time, the idle timeout without progress, or the drain
    /// deadline.
    #[pyo3(signature = (data, flags = 0))]
    fn sendall(&self, py: Python<'_>, data: &Bound<'_, PyAny>, flags: i32) -> PyResult<()> {
        no_flags(flags)?;
        let data = send_data(data)?;
        if !data.is_empty() {
            self.transmit(py, &data, true)?;
        }
        Ok(())
    }

    /// `None`: block (bounded by the idle timeout); 0: never wait
    /// (`BlockingIOError`); t > 0: `TimeoutError` after t seconds.
    fn settimeout(&self, value: Option<f64>) -> PyResult<()> {
        let t = value.map(|s| duration(s, "timeout")).transpose()?;
        *lock(&self.timeout) = t;
        Ok(())
    }

    fn gettimeout(&self) -> Option<f64> {
        self.timeout().map(|d| d.as_secs_f64())
    }

    fn setblocking(&self, flag: bool) {
        *lock(&self.timeout) = if flag { None } else { Some(Duration::ZERO) };
    }

    fn getblocking(&self) -> bool {
        self.timeout() != Some(Duration::ZERO)
    }

    fn getpeername(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let fd = self.fd()?;
        let addr = match self.peer {
            Some(a) => a,
            None => rustix::net::getpeername(&*fd)
                .map_err(io::Error::from)?
                .and_then(|a| SocketAddr::try_from(a).ok())
                .ok_or_else(|| PyOSError::new_err("not an internet socket"))?,
        };
        address_tuple(py, addr)
    }

    fn getsockname(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let fd = self.fd()?;
        let addr = SocketAddr::try_from(rustix::net::getsockname(&*fd).map_err(io::Error::from)?)
            .map_err(|_| PyOSError::new_err("not an internet socket"))?;
        address_tuple(py, addr)
    }

    /// The descriptor's number, -1 once closed.
    fn fileno(&self) -> i32 {
        lock(&self.fd).as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// `socket.SHUT_RD` (0), `SHUT_WR` (1) or `SHUT_RDWR` (2).
    fn shutdown(&self, how: i32) -> PyResult<()> {
        let how = match how {
            0 => rustix::net::Shutdown::Read,
            1 => rustix::net::Shutdown::Write,
            2 => rustix::net::Shutdown::Both,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "invalid shutdown how: {how}"
                )));
            }
        };
        let fd = self.fd()?;
        rustix::net::shutdown(&*fd, how).map_err(io::Error::from)?;
        Ok(())
    }

    /// Close (once the files from `makefile` are closed too, as `socket` does).
    fn close(&self) {
        self.close_wanted.store(true, Ordering::Release);
        self.close_if_unused();
    }

    /// `makefile(mode="r", buffering=None, *, encoding=None, errors=None,
    /// newline=None)`: a file object over the connection, as `socket.makefile`.
    #[pyo3(signature = (mode = "r", buffering = None, *, encoding = None, errors = None, newline = None))]
    fn makefile(
        slf: &Bound<'_, Self>,
        mode: &str,
        buffering: Option<isize>,
        encoding: Option<&str>,
        errors: Option<&str>,
        newline: Option<&str>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let make = py.import("c10k._blocking")?.getattr("_makefile")?;
        Ok(make
            .call1((slf, mode, buffering, encoding, errors, newline))?
            .unbind())
    }

    /// A file from `makefile` opened (called by `c10k._blocking._makefile`).
    fn _incref_socketios(&self) {
        self.io_refs.fetch_add(1, Ordering::AcqRel);
    }

    /// A file from `makefile` closed (called by `socket.SocketIO.close`).
    fn _decref_socketios(&self) {
        let before = self.io_refs.fetch_sub(1, Ordering::AcqRel);
        if before == 1 && self.close_wanted.load(Ordering::Acquire) {
            self.close_if_unused();
        }
    }

    /// The server's own close after the handler returned: now, whatever is open.
    fn _finish(&self) {
        self.finish_now();
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) {
        self.close();
    }

    fn __repr__(&self) -> String {
        let fd = self.fileno();
        match self.peer {
            Some(p) => format!("<c10k.Connection fd={fd} peer={p}>"),
            None => format!("<c10k.Connection fd={fd}>"),
        }
    }
}

/// A connection accepted, not yet given to Python.
struct Job {
    fd: OwnedFd,
    peer: Option<SocketAddr>,
}

/// What the accept loop found.
enum Next {
    Conn(Job),
    /// The server drains, or a signal handler ran: the caller looks again.
    Woken,
}

/// The accept loop of one process: `Acceptor(listener_fd, gate, signal_fd, warn)`
/// works on its own copy of the listener (the caller may close its socket), wakes on
/// the gate and on `signal_fd` (the read end of the interpreter's
/// `signal.set_wakeup_fd` pipe, so that a signal delivered to any thread reaches the
/// handlers, which run on this one), and reports trouble through `warn(message)`.
#[pyclass(frozen, module = "c10k._engine")]
pub struct Acceptor {
    listener: Mutex<Option<Arc<OwnedFd>>>,
    gate: Arc<GateCore>,
    signals: Option<OwnedFd>,
    warn: Py<PyAny>,
}

impl Acceptor {
    fn warn(&self, py: Python<'_>, message: String) {
        if let Err(e) = self.warn.bind(py).call1((message,)) {
            e.write_unraisable(py, Some(self.warn.bind(py)));
        }
    }

    /// Empty the signal pipe (the handlers are run by `check_signals`).
    fn empty_signals(&self) {
        if let Some(fd) = &self.signals {
            let mut buf = [0u8; 64];
            while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
        }
    }

    /// After a wait: run the signal handlers if a signal came; whether to report
    /// [`Next::Woken`].
    fn woke(&self, py: Python<'_>, woke: io::Result<Woke>) -> PyResult<bool> {
        match woke? {
            Woke::Ready | Woke::Timeout => Ok(false),
            Woke::Drain => {
                self.gate.noticed();
                Ok(true)
            }
            Woke::Signal => {
                self.empty_signals();
                py.check_signals()?;
                Ok(true)
            }
            Woke::Interrupted => {
                py.check_signals()?;
                Ok(true)
            }
        }
    }

    /// The next connection, waiting (lock released) for one.
    fn next(&self, py: Python<'_>) -> PyResult<Next> {
        let listener = lock(&self.listener)
            .clone()
            .ok_or_else(|| PyOSError::new_err((libc::EBADF, "the acceptor is closed")))?;
        let signals = self.signals.as_ref().map(|f| f.as_fd());
        loop {
            if self.gate.drain_deadline().is_some() {
                return Ok(Next::Woken);
            }
            let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
            match rustix::net::acceptfrom_with(&*listener, flags) {
                Ok((fd, addr)) => {
                    let peer = addr.and_then(|a| SocketAddr::try_from(a).ok());
                    return Ok(Next::Conn(Job { fd, peer }));
                }
                Err(Errno::AGAIN) => {}
                // The peer gave up before it was accepted, or a firewall said no.
                Err(Errno::INTR | Errno::CONNABORTED | Errno::PROTO | Errno::PERM) => continue,
                Err(e @ (Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)) => {
                    self.warn(
                        py,
                        format!(
                            "cannot accept a connection ({}); accepting again in {} ms",
                            io::Error::from(e),
                            ACCEPT_BACKOFF.as_millis()
                        ),
                    );
                    let until = after(Instant::now(), ACCEPT_BACKOFF);
                    let wake = self.gate.wake.as_fd();
                    let woke =
                        py.detach(|| wait(None, PollFlags::empty(), Some(wake), signals, until));
                    if self.woke(py, woke)? {
                        return Ok(Next::Woken);
                    }
                    continue;
                }
                Err(e) => return Err(io::Error::from(e).into()),
            }
            let wake = self.gate.wake.as_fd();
            let woke = py.detach(|| {
                wait(
                    Some(listener.as_fd()),
                    PollFlags::IN,
                    Some(wake),
                    signals,
                    None,
                )
            });
            if self.woke(py, woke)? {
                return Ok(Next::Woken);
            }
        }
    }

    /// The `thread` strategy's accept loop, until the server drains.
    fn accept_loop(
        &self,
        py: Python<'_>,
        pool: &Arc<Pool>,
        max_conns: usize,
        stack_size: usize,
    ) -> PyResult<()> {
        loop {
            let job = match self.next(py)? {
                Next::Conn(job) => job,
                Next::Woken if self.gate.draining() => return Ok(()),
                Next::Woken => continue,
            };
            if pool.open.load(Ordering::Acquire) >= max_conns {
                let peer = job.peer.map_or_else(|| "?".to_string(), |p| p.to_string());
                drop(job);
                self.warn(
                    py,
                    format!(
                        "{max_conns} connections open (max_conns): closed a new one from {peer}"
                    ),
                );
                continue;
            }
            pool.open.fetch_add(1, Ordering::AcqRel);
            let Err(job) = pool.idle.hand_off(job) else {
                continue;
            };
            pool.live.started();
            let slot = LiveSlot(Arc::clone(pool));
            let spawned = std::thread::Builder::new()
                .name("c10k-conn".into())
                .stack_size(stack_size)
                .spawn(move || connection_thread(job, slot));
            if let Err(e) = spawned {
                // The closure was dropped: the connection is closed, the slot freed.
                pool.open.fetch_sub(1, Ordering::AcqRel);
                self.warn(
                    py,
                    format!("cannot create a thread ({e}): closed a new connection"),
                );
            }
        }
    }
}

#[pymethods]
impl Acceptor {
    #[new]
    fn py_new(
        listener: i32,
        gate: &Gate,
        signal_fd: Option<i32>,
        warn: Py<PyAny>,
    ) -> PyResult<Self> {
        let listener = c10k_sys::fd::dup_raw(listener)?;
        rustix::io::ioctl_fionbio(&listener, true).map_err(io::Error::from)?;
        let signals = signal_fd.map(c10k_sys::fd::dup_raw).transpose()?;
        Ok(Acceptor {
            listener: Mutex::new(Some(Arc::new(listener))),
            gate: Arc::clone(&gate.core),
            signals,
            warn,
        })
    }

    /// The next connection (waiting with the lock released), or None when the server
    /// drains or a signal handler ran (look at the gate and call again).
    fn accept(&self, py: Python<'_>) -> PyResult<Option<Py<Connection>>> {
        match self.next(py)? {
            Next::Conn(job) => Ok(Some(Py::new(
                py,
                Connection::new(job.fd, job.peer, Arc::clone(&self.gate)),
            )?)),
            Next::Woken => Ok(None),
        }
    }

    /// The `thread` strategy: accept until the server drains, calling `runner(conn)`
    /// for each connection on a thread of its own (a thread whose connection ended
    /// takes the next for a while). More than `max_conns` open: a new connection is
    /// closed at once. After the drain (or a signal handler raising), stop accepting
    /// and wait up to the drain timeout (plus a margin) for the connection threads;
    /// returns how many were still running.
    fn serve_threads(
        &self,
        py: Python<'_>,
        runner: Py<PyAny>,
        max_conns: usize,
        stack_size: usize,
    ) -> PyResult<usize> {
        let pool = Arc::new(Pool {
            runner,
            gate: Arc::clone(&self.gate),
            idle: Idle::default(),
            live: Live::default(),
            open: AtomicUsize::new(0),
        });
        let result = self.accept_loop(py, &pool, max_conns, stack_size);
        if result.is_err() {
            // A signal handler raised (KeyboardInterrupt): the handlers drain too.
            self.gate.drain();
        }
        self.close();
        pool.idle.close();
        let deadline = after(Instant::now(), self.gate.drain_timeout + JOIN_MARGIN);
        let left = py.detach(|| pool.live.wait_zero(deadline));
        result.map(|()| left)
    }

    /// Stop accepting (closes this copy of the listener).
    fn close(&self) {
        lock(&self.listener).take();
    }
}

/// What the connection threads of one `serve_threads` share.
struct Pool {
    runner: Py<PyAny>,
    gate: Arc<GateCore>,
    idle: Idle,
    live: Live,
    /// Connections being served (for `max_conns`).
    open: AtomicUsize,
}

/// Held by a connection thread for its life: counts it live until it ends, however
/// it ends.
struct LiveSlot(Arc<Pool>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.live.ended();
    }
}

/// A connection thread: serve `first`, then each connection handed to it while it
/// waits, until none comes within [`IDLE_KEEP`] or the server drains. It holds the
/// interpreter only inside `runner(conn)`, which releases it at every wait.
fn connection_thread(first: Job, slot: LiveSlot) {
    let pool = &*slot.0;
    let mut job = Some(first);
    while let Some(Job { fd, peer }) = job.take() {
        let turn = TURNSTILE.enter();
        Python::attach(|py| {
            drop(turn);
            let conn = Connection::new(fd, peer, Arc::clone(&pool.gate));
            let runner = pool.runner.bind(py);
            let called = Bound::new(py, conn).and_then(|c| runner.call1((c,)));
            if let Err(e) = called {
                // `runner` logs the handler's exceptions; this is anything else
                // (SystemExit raised in a handler, say).
                e.write_unraisable(py, Some(runner));
            }
        });
        pool.open.fetch_sub(1, Ordering::AcqRel);
        job = pool.idle.wait(IDLE_KEEP);
    }
}

/// The number of live connection threads, and a wait for it to reach zero.
#[derive(Default)]
struct Live {
    count: Mutex<usize>,
    zero: Condvar,
}

impl Live {
    fn started(&self) {
        *lock(&self.count) += 1;
    }

    fn ended(&self) {
        let mut count = lock(&self.count);
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.zero.notify_all();
        }
    }

    /// Wait until no thread is live or `deadline` passes; returns how many are left.
    fn wait_zero(&self, deadline: Option<Instant>) -> usize {
        let mut count = lock(&self.count);
        loop {
            if *count == 0 {
                return 0;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => FOREVER,
            };
            if left.is_zero() {
                return *count;
            }
            count = match self.zero.wait_timeout(count, left) {
                Ok((c, _)) => c,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Connection threads waiting for their next connection. The accept loop never
/// waits for them: it `try_lock`s the list and `try_send`s into the channel of the
/// thread that waited last; if the list is busy or empty it starts a thread instead.
#[derive(Default)]
struct Idle {
    list: Mutex<IdleList>,
}

#[derive(Default)]
struct IdleList {
    /// The server drains: nobody waits any more.
    closed: bool,
    waiting: Vec<(u64, SyncSender<Job>)>,
    next_id: u64,
}

impl Idle {
    /// Give `job` to the thread that waited last, or have it back.
    fn hand_off(&self, job: Job) -> Result<(), Job> {
        let waiter = match self.list.try_lock() {
            Ok(mut list) => list.waiting.pop(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().waiting.pop(),
            Err(TryLockError::WouldBlock) => None,
        };
        let Some((_, tx)) = waiter else {
            return Err(job);
        };
        // One slot, one send, and the thread keeps its receiver until it has the job
        // or found itself off the list: neither full nor disconnected.
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) | TrySendError::Disconnected(job) => job,
        })
    }

    /// Wait up to `keep` for the next job; None: exit.
    fn wait(&self, keep: Duration) -> Option<Job> {
        let (id, rx): (u64, Receiver<Job>) = {
            let mut list = lock(&self.list);
            if list.closed {
                return None;
            }
            let (tx, rx) = sync_channel(1);
            let id = list.next_id;
            list.next_id = list.next_id.wrapping_add(1);
            list.waiting.push((id, tx));
            (id, rx)
        };
        match rx.recv_timeout(keep) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                let mut list = lock(&self.list);
                if let Some(i) = list.waiting.iter().position(|(w, _)| *w == id) {
                    list.waiting.swap_remove(i);
                    return None;
                }
                drop(list);
                // Taken off the list by the accept loop: the job is on its way (or the
                // list was closed, and the channel with it).
                rx.recv().ok()
            }
        }
    }

    /// The waiting threads exit; no more wait.
    fn close(&self) {
        let mut list = lock(&self.list);
        list.closed = true;
        list.waiting.clear();
    }
}
