//! `Transport`: asyncio's socket transport with its I/O in Rust.
//!
//! It keeps the observable contract of CPython's `_SelectorSocketTransport`
//! (asyncio/selector_events.py): when callbacks run, which errors reach the loop's
//! exception handler and with which message, when `connection_lost` is called and
//! with what, the write-buffer water marks and `pause_writing`/`resume_writing`. The
//! bytes move through the engine's backend: a direct `send` (epoll) or a send
//! operation on the ring (io_uring).
//!
//! No state is borrowed while Python code runs (a protocol callback may call back
//! into its transport), so every method borrows `State` in short blocks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;

use c10k_sys::thread_bound::ThreadBound;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};

use crate::backend::{Interest, Tag};
use crate::engine::{Core, Io};

/// asyncio's default high-water mark (64 KiB); the low one is a quarter of it.
pub(crate) const DEFAULT_HIGH: usize = 64 * 1024;
/// io_uring: bytes written in one loop turn, with no send in flight, that count as
/// handed to the kernel (see [`Transport::buffered_bytes`]).
pub(crate) const RING_ALLOWANCE: usize = 256 * 1024;
/// Writes after the connection was lost that go unlogged (asyncio's
/// `LOG_THRESHOLD_FOR_CONNLOST_WRITES`).
const CONNLOST_WRITES_LOGGED_AFTER: u32 = 5;

/// The socket, as the backend holds it.
pub(crate) enum Sock {
    Fd(OwnedFd),
    Ring(c10k_sys::uring::Socket),
    Closed,
}

impl Sock {
    pub(crate) fn raw(&self) -> Option<i32> {
        match self {
            Sock::Fd(fd) => Some(fd.as_raw_fd()),
            Sock::Ring(s) => Some(s.as_fd().as_raw_fd()),
            Sock::Closed => None,
        }
    }
}

/// Mutable state of a transport (borrowed only between Python calls).
pub(crate) struct State {
    pub sock: Sock,
    /// Bytes waiting to be written (epoll), or waiting for the send in flight to
    /// finish (io_uring).
    pub wbuf: Vec<u8>,
    pub wpos: usize,
    /// io_uring: a send is in flight, of this many bytes.
    pub inflight: Option<usize>,
    /// io_uring: the send in flight is a remainder the kernel did not take at once:
    /// it counts as buffered.
    pub inflight_counted: bool,
    pub closing: bool,
    /// `write_eof` was called.
    pub eof: bool,
    /// Times the connection was found lost (asyncio's `_conn_lost`).
    pub conn_lost: u32,
    /// `pause_reading` is in effect.
    pub paused: bool,
    /// The peer's end of stream was seen and the protocol kept the transport open
    /// (or the reader is gone): nothing more to read.
    pub read_done: bool,
    pub protocol_paused: bool,
    pub high: usize,
    pub low: usize,
    /// `connection_made` ran (asyncio's `_protocol_connected`).
    pub connected: bool,
    /// Reading has started (after `connection_made`).
    pub started: bool,
    pub peer: Option<SocketAddr>,
    /// io_uring: data (and end of stream) received while paused.
    pub held: VecDeque<Vec<u8>>,
    pub held_eof: bool,
    /// io_uring: the multishot receive in flight.
    pub recv_op: Option<c10k_sys::uring::OpId>,
    /// epoll, level-triggered: what the descriptor is registered for.
    pub registered: Interest,
    /// epoll: the descriptor is in the epoll set.
    pub added: bool,
    /// io_uring: the socket's sends go through the ring.
    pub ring: bool,
    /// io_uring: queued to have its buffer submitted before the loop waits.
    pub queued: bool,
    /// io_uring: the protocol has paused reading at least once, so receive one buffer
    /// at a time (a multishot receive could pull in everything the kernel holds).
    pub throttled: bool,
}

/// asyncio transport over a TCP socket. Weakly referenceable: asyncio's `Server`
/// keeps its transports in a `WeakSet` (Python 3.13+).
///
/// Its state is its loop's (`Rc`, `RefCell`), so it is reachable only on the loop's
/// thread; but Python's garbage collector may free a transport (one in a reference
/// cycle, say through an exception's traceback) on any thread, such as an executor's.
/// There the state is not dropped but handed back to the loop's thread
/// (`c10k_sys::thread_bound`), which drops it at its next turn or when it closes.
#[pyclass(weakref, module = "c10k._engine")]
pub struct Transport(ThreadBound<TransportState>);

impl std::ops::Deref for Transport {
    type Target = TransportState;

    fn deref(&self) -> &TransportState {
        match self.0.get() {
            Some(t) => t,
            // As asyncio's own transports, not thread-safe: a caller on another
            // thread gets an exception (pyo3 turns the panic into one), not a race.
            None => panic!("a c10k Transport was used outside its event loop's thread"),
        }
    }
}

/// What a [`Transport`] holds, on its loop's thread.
pub struct TransportState {
    pub(crate) core: Rc<Core>,
    pub(crate) slot: usize,
    pub(crate) serial: u32,
    pub(crate) st: RefCell<State>,
    pub(crate) protocol: RefCell<Option<Py<PyAny>>>,
    /// The protocol's bound `data_received` (None for a `BufferedProtocol`).
    pub(crate) on_data: RefCell<Option<Py<PyAny>>>,
    pub(crate) buffered: Cell<bool>,
    pub(crate) server: RefCell<Option<Py<PyAny>>>,
    pub(crate) extra: RefCell<Option<Py<PyDict>>>,
    /// The Python socket object, made on first `get_extra_info('socket')` or
    /// handed in by `create_connection`; closed with the transport.
    pub(crate) pysock: RefCell<Option<Py<PyAny>>>,
}

/// The bytes of a `bytes`, `bytearray` or `memoryview` (asyncio's TypeError
/// otherwise), passed to `f`.
pub(crate) fn with_bytes<R>(data: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(f(b.as_bytes()));
    }
    if data.is_instance_of::<PyByteArray>() || data.is_instance_of::<PyMemoryView>() {
        let buf = pyo3::buffer::PyBuffer::<u8>::get(data)?;
        let v = buf.to_vec(data.py())?;
        return Ok(f(&v));
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not {:?}",
        data.get_type().name()?.to_string()
    )))
}

impl Transport {
    pub(crate) fn new(core: Rc<Core>, slot: usize, serial: u32, sock: Sock) -> Transport {
        Transport(ThreadBound::new(TransportState {
            core,
            slot,
            serial,
            st: RefCell::new(State {
                ring: matches!(sock, Sock::Ring(_)),
                queued: false,
                throttled: false,
                sock,
                wbuf: Vec::new(),
                wpos: 0,
                inflight: None,
                inflight_counted: false,
                closing: false,
                eof: false,
                conn_lost: 0,
                paused: false,
                read_done: false,
                protocol_paused: false,
                high: DEFAULT_HIGH,
                low: DEFAULT_HIGH / 4,
                connected: false,
                started: false,
                peer: None,
                held: VecDeque::new(),
                held_eof: false,
                recv_op: None,
                registered: Interest::default(),
                added: false,
            }),
            protocol: RefCell::new(None),
            on_data: RefCell::new(None),
            buffered: Cell::new(false),
            server: RefCell::new(None),
            extra: RefCell::new(None),
            pysock: RefCell::new(None),
        }))
    }

    pub(crate) fn tag(&self) -> Tag {
        Tag::Conn(self.slot, self.serial)
    }

    /// Point the transport at `protocol` (caching its `data_received`).
    pub(crate) fn bind_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = protocol.py();
        let buffered = protocol.is_instance(self.core.buffered_protocol.bind(py))?;
        self.buffered.set(buffered);
        *self.on_data.borrow_mut() = if buffered {
            None
        } else {
            Some(
                protocol
                    .getattr(pyo3::intern!(py, "data_received"))?
                    .unbind(),
            )
        };
        *self.protocol.borrow_mut() = Some(protocol.clone().unbind());
        Ok(())
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.borrow().as_ref().map(|p| p.clone_ref(py))
    }

    /// Bytes buffered in user space (asyncio's `get_write_buffer_size`).
    ///
    /// io_uring: what is written during a loop turn is submitted at its end, in one
    /// send per connection. While no send is in flight, the first [`RING_ALLOWANCE`]
    /// bytes of it count as handed to the kernel (stock asyncio would have sent them
    /// directly); behind a send in flight all of it counts as buffered, and so does
    /// the remainder of a send the kernel took only part of.
    pub(crate) fn buffered_bytes(st: &State) -> usize {
        let pending = st.wbuf.len() - st.wpos;
        let pending = if st.ring && st.inflight.is_none() {
            pending.saturating_sub(RING_ALLOWANCE)
        } else {
            pending
        };
        match st.inflight {
            Some(n) if st.inflight_counted => pending + n,
            _ => pending,
        }
    }

    /// Whether anything is still to be written (buffered or in flight).
    fn unflushed(st: &State) -> bool {
        st.wbuf.len() > st.wpos || st.inflight.is_some()
    }

    /// Whether received data is to be handed to the protocol now.
    pub(crate) fn reading_now(&self) -> bool {
        let st = self.st.borrow();
        st.started && !st.paused && !st.closing && st.conn_lost == 0 && !st.read_done
    }

    /// `connection_made`, then start reading (asyncio: both queued by call_soon;
    /// here run at once, the transport being created by the loop itself).
    pub(crate) fn start(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let t = slf.borrow();
        let Some(protocol) = t.protocol(py) else {
            return;
        };
        t.st.borrow_mut().connected = true;
        if let Err(e) = protocol
            .bind(py)
            .call_method1(pyo3::intern!(py, "connection_made"), (slf,))
        {
            drop(t);
            Self::fatal_error(
                slf,
                e,
                "Fatal error: protocol.connection_made() call failed.",
            );
            return;
        }
        let closing = {
            let mut st = t.st.borrow_mut();
            st.started = true;
            st.closing
        };
        if !closing {
            t.core.start_reading(&t);
        }
    }

    /// Hand `data` to the protocol: `data_received`, or `get_buffer`/`buffer_updated`.
    pub(crate) fn deliver(slf: &Bound<'_, Self>, data: &[u8]) {
        let py = slf.py();
        let t = slf.borrow();
        if !t.buffered.get() {
            let cb = match t.on_data.borrow().as_ref() {
                Some(c) => c.clone_ref(py),
                None => return,
            };
            let bytes = PyBytes::new(py, data);
            if let Err(e) = cb.bind(py).call1((bytes,)) {
                drop(t);
                Self::fatal_error(slf, e, "Fatal error: protocol.data_received() call failed.");
            }
            return;
        }
        let Some(protocol) = t.protocol(py) else {
            return;
        };
        drop(t);
        let protocol = protocol.bind(py);
        let mut rest = data;
        while !rest.is_empty() {
            let got = (|| -> PyResult<usize> {
                let buf = protocol.call_method1(pyo3::intern!(py, "get_buffer"), (-1,))?;
                let view = PyMemoryView::from(&buf)?;
                let len = view.len()?;
                if len == 0 {
                    return Err(PyRuntimeError::new_err(
                        "get_buffer() returned an empty buffer",
                    ));
                }
                let n = len.min(rest.len());
                let slice = pyo3::types::PySlice::new(py, 0, n as isize, 1);
                view.set_item(slice, PyBytes::new(py, &rest[..n]))?;
                Ok(n)
            })();
            let n = match got {
                Ok(n) => n,
                Err(e) => {
                    Self::fatal_error(slf, e, "Fatal error: protocol.get_buffer() call failed.");
                    return;
                }
            };
            if let Err(e) = protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (n,)) {
                Self::fatal_error(
                    slf,
                    e,
                    "Fatal error: protocol.buffer_updated() call failed.",
                );
                return;
            }
            rest = &rest[n..];
            if !rest.is_empty() && !slf.borrow().reading_now() {
                // Paused (or closed) in the middle of a piece: keep the rest.
                slf.borrow().core.hold(&slf.borrow(), rest.to_vec());
                return;
            }
        }
    }

    /// The peer's end of stream (asyncio's `_read_ready__on_eof`).
    pub(crate) fn on_eof(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let Some(protocol) = slf.borrow().protocol(py) else {
            return;
        };
        let keep_open = match protocol
            .bind(py)
            .call_method0(pyo3::intern!(py, "eof_received"))
        {
            Ok(v) => v.is_truthy().unwrap_or(false),
            Err(e) => {
                Self::fatal_error(slf, e, "Fatal error: protocol.eof_received() call failed.");
                return;
            }
        };
        let t = slf.borrow();
        t.st.borrow_mut().read_done = true;
        if keep_open {
            t.core.stop_reading(&t);
        } else {
            drop(t);
            Self::do_close(slf);
        }
    }

    /// asyncio's `_fatal_error`: an `OSError` is the connection's end (not logged);
    /// anything else goes to the loop's exception handler. Then `_force_close`.
    pub(crate) fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) {
        let py = slf.py();
        if err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
            || err.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
        {
            // asyncio lets these through; the engine re-raises them from select().
            slf.borrow().core.set_pending_error(err.clone_ref(py));
        }
        let exc = err.value(py).clone();
        if !err.is_instance_of::<pyo3::exceptions::PyOSError>(py) {
            let ctx = PyDict::new(py);
            let protocol = slf.borrow().protocol(py);
            let filled = ctx
                .set_item("message", message)
                .and_then(|_| ctx.set_item("exception", &exc))
                .and_then(|_| ctx.set_item("transport", slf))
                .and_then(|_| ctx.set_item("protocol", protocol));
            let handler = slf.borrow().core.exception_handler(py);
            if let (true, Some(handler)) = (filled.is_ok(), handler) {
                if let Err(e) = handler.bind(py).call1((ctx,)) {
                    e.write_unraisable(py, None);
                }
            }
        }
        Self::force_close(slf, Some(exc.into_any().unbind()));
    }

    /// asyncio's `_force_close`: drop the buffer, stop reading, and have
    /// `connection_lost(exc)` called soon.
    pub(crate) fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) {
        let t = slf.borrow();
        {
            let mut st = t.st.borrow_mut();
            if st.conn_lost > 0 {
                return;
            }
            st.wbuf.clear();
            st.wpos = 0;
            st.closing = true;
            st.conn_lost += 1;
        }
        t.core.stop_reading(&t);
        t.core.stop_writing(&t);
        t.core.abandon_io(&t);
        drop(t);
        Self::schedule_lost(slf, exc);
    }

    fn schedule_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) {
        let py = slf.py();
        let t = slf.borrow();
        let cb = match slf.getattr(pyo3::intern!(py, "_call_connection_lost")) {
            Ok(cb) => cb,
            Err(e) => {
                e.write_unraisable(py, None);
                return;
            }
        };
        let Some(call_soon) = t.core.call_soon(py) else {
            return;
        };
        drop(t);
        if let Err(e) = call_soon.bind(py).call1((cb, exc)) {
            e.write_unraisable(py, None);
        }
    }

    /// asyncio's `close`.
    pub(crate) fn do_close(slf: &Bound<'_, Self>) {
        let t = slf.borrow();
        let lost_now = {
            let mut st = t.st.borrow_mut();
            if st.closing {
                return;
            }
            st.closing = true;
            if Self::unflushed(&st) {
                false
            } else {
                st.conn_lost += 1;
                true
            }
        };
        t.core.stop_reading(&t);
        if lost_now {
            t.core.stop_writing(&t);
            drop(t);
            Self::schedule_lost(slf, None);
        }
    }

    /// The buffer drained (asyncio's tail of `_write_ready`): resume the protocol,
    /// then finish a close or a `write_eof` that waited for it.
    pub(crate) fn drained(slf: &Bound<'_, Self>) {
        let t = slf.borrow();
        t.core.stop_writing(&t);
        drop(t);
        Self::maybe_resume_protocol(slf);
        let t = slf.borrow();
        let (closing, eof) = {
            let st = t.st.borrow();
            if Self::unflushed(&st) {
                // The protocol wrote more from resume_writing().
                return;
            }
            (st.closing, st.eof)
        };
        if closing {
            t.st.borrow_mut().conn_lost += 1;
            drop(t);
            let py = slf.py();
            if let Err(e) = Self::call_connection_lost(slf, py, None) {
                e.restore(py);
                let err = PyErr::fetch(py);
                err.write_unraisable(py, None);
            }
        } else if eof {
            t.shutdown_write();
        }
    }

    fn shutdown_write(&self) {
        let st = self.st.borrow();
        let r = match &st.sock {
            Sock::Fd(fd) => rustix::net::shutdown(fd, rustix::net::Shutdown::Write),
            Sock::Ring(s) => rustix::net::shutdown(s, rustix::net::Shutdown::Write),
            Sock::Closed => Ok(()),
        };
        // A peer that is gone already: the next read reports it.
        let _ = r;
    }

    pub(crate) fn maybe_pause_protocol(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let t = slf.borrow();
        {
            let mut st = t.st.borrow_mut();
            if Self::buffered_bytes(&st) <= st.high || st.protocol_paused {
                return;
            }
            st.protocol_paused = true;
        }
        let Some(protocol) = t.protocol(py) else {
            return;
        };
        drop(t);
        if let Err(e) = protocol
            .bind(py)
            .call_method0(pyo3::intern!(py, "pause_writing"))
        {
            Self::report(slf, e, "protocol.pause_writing() failed", &protocol);
        }
    }

    pub(crate) fn maybe_resume_protocol(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let t = slf.borrow();
        {
            let mut st = t.st.borrow_mut();
            if !st.protocol_paused || Self::buffered_bytes(&st) > st.low {
                return;
            }
            st.protocol_paused = false;
        }
        let Some(protocol) = t.protocol(py) else {
            return;
        };
        drop(t);
        if let Err(e) = protocol
            .bind(py)
            .call_method0(pyo3::intern!(py, "resume_writing"))
        {
            Self::report(slf, e, "protocol.resume_writing() failed", &protocol);
        }
    }

    /// Hand an error to the loop's exception handler without closing.
    fn report(slf: &Bound<'_, Self>, err: PyErr, message: &str, protocol: &Py<PyAny>) {
        let py = slf.py();
        let ctx = PyDict::new(py);
        let filled = ctx
            .set_item("message", message)
            .and_then(|_| ctx.set_item("exception", err.value(py)))
            .and_then(|_| ctx.set_item("transport", slf))
            .and_then(|_| ctx.set_item("protocol", protocol));
        let handler = slf.borrow().core.exception_handler(py);
        if let (true, Some(handler)) = (filled.is_ok(), handler) {
            if let Err(e) = handler.bind(py).call1((ctx,)) {
                e.write_unraisable(py, None);
            }
        }
    }

    fn call_connection_lost(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        exc: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let t = slf.borrow();
        let connected = std::mem::take(&mut t.st.borrow_mut().connected);
        let protocol = t.protocol.borrow_mut().take();
        *t.on_data.borrow_mut() = None;
        drop(t);
        let result = match (connected, protocol) {
            (true, Some(p)) => p
                .bind(py)
                .call_method1(pyo3::intern!(py, "connection_lost"), (exc,))
                .map(drop),
            _ => Ok(()),
        };
        let t = slf.borrow();
        t.core.release(&t);
        let pysock = t.pysock.borrow_mut().take();
        let server = t.server.borrow_mut().take();
        drop(t);
        if let Some(s) = pysock {
            let _ = s.bind(py).call_method0(pyo3::intern!(py, "close"));
        }
        if let Some(server) = server {
            let core = slf.borrow().core.clone();
            core.server_count(server.bind(py), "_detach", slf)?;
        }
        result
    }
}

#[pymethods]
impl Transport {
    /// Write `data` (bytes-like) to the transport. Never blocks: what the kernel does
    /// not take at once is buffered, and the protocol's `pause_writing()` is called
    /// when the buffer passes the high-water mark.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let t = slf.borrow();
        {
            let mut st = t.st.borrow_mut();
            if !(data.is_instance_of::<PyBytes>()
                || data.is_instance_of::<PyByteArray>()
                || data.is_instance_of::<PyMemoryView>())
            {
                return Err(PyTypeError::new_err(format!(
                    "data argument must be a bytes-like object, not '{}'",
                    data.get_type().name()?
                )));
            }
            if st.eof {
                return Err(PyRuntimeError::new_err(
                    "Cannot call write() after write_eof()",
                ));
            }
            if data.len()? == 0 {
                return Ok(());
            }
            if st.conn_lost > 0 {
                if st.conn_lost >= CONNLOST_WRITES_LOGGED_AFTER {
                    drop(st);
                    t.core
                        .log_warning(slf.py(), "socket.send() raised exception.");
                    st = t.st.borrow_mut();
                }
                st.conn_lost += 1;
                return Ok(());
            }
        }
        let outcome = with_bytes(data, |bytes| t.core.send(&t, bytes))?;
        drop(t);
        match outcome {
            Io::Done => Ok(()),
            Io::Buffered => {
                Self::maybe_pause_protocol(slf);
                Ok(())
            }
            Io::Failed(e) => {
                let err = PyErr::from(e);
                Self::fatal_error(slf, err, "Fatal write error on socket transport");
                Ok(())
            }
        }
    }

    /// Write each bytes-like object of `list_of_data`, in order.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        // Python 3.12+ transports check for themselves, with their own message (3.11's
        // join and call write()).
        if slf.borrow().core.own_writelines && slf.borrow().st.borrow().eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call writelines() after write_eof()",
            ));
        }
        // One write of the joined pieces, as asyncio 3.12+ does.
        let mut joined = Vec::new();
        for item in list_of_data.try_iter()? {
            let item = item?;
            with_bytes(&item, |b| joined.extend_from_slice(b))?;
        }
        let bytes = PyBytes::new(slf.py(), &joined);
        Self::write(slf, bytes.as_any())
    }

    /// Close the write side once the buffer is flushed (TCP FIN).
    fn write_eof(&self) {
        let unflushed = {
            let mut st = self.st.borrow_mut();
            if st.closing || st.eof {
                return;
            }
            st.eof = true;
            Self::unflushed(&st)
        };
        if !unflushed {
            self.shutdown_write();
        }
    }

    /// True: TCP can half-close.
    fn can_write_eof(&self) -> bool {
        true
    }

    /// Close after the buffered data is flushed; `connection_lost(None)` follows.
    fn close(slf: &Bound<'_, Self>) {
        Self::do_close(slf);
    }

    /// Close at once, dropping buffered data; `connection_lost(None)` follows.
    fn abort(slf: &Bound<'_, Self>) {
        Self::force_close(slf, None);
    }

    /// Whether the transport is closing or closed.
    fn is_closing(&self) -> bool {
        self.st.borrow().closing
    }

    /// Whether the transport is receiving.
    fn is_reading(&self) -> bool {
        let st = self.st.borrow();
        !st.paused && !st.closing
    }

    /// Stop calling `data_received` until `resume_reading()`.
    fn pause_reading(&self) {
        {
            let mut st = self.st.borrow_mut();
            if st.paused || st.closing {
                return;
            }
            st.paused = true;
            st.throttled = true;
        }
        self.core.stop_reading(self);
    }

    /// Resume receiving after `pause_reading()`.
    fn resume_reading(&self) {
        {
            let mut st = self.st.borrow_mut();
            if st.closing || !st.paused {
                return;
            }
            st.paused = false;
        }
        self.core.resume_reading(self);
    }

    /// Set the write buffer's water marks (asyncio's defaults: 64 KiB and a quarter
    /// of the high mark).
    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<isize>,
        low: Option<isize>,
    ) -> PyResult<()> {
        let high = match (high, low) {
            (Some(h), _) => h,
            (None, Some(l)) => 4 * l,
            (None, None) => DEFAULT_HIGH as isize,
        };
        let low = low.unwrap_or(high / 4);
        if !(high >= low && low >= 0) {
            return Err(PyValueError::new_err(format!(
                "high ({high}) must be >= low ({low}) must be >= 0"
            )));
        }
        {
            let t = slf.borrow();
            let mut st = t.st.borrow_mut();
            st.high = high as usize;
            st.low = low as usize;
        }
        Self::maybe_pause_protocol(slf);
        Ok(())
    }

    /// `(low, high)`.
    fn get_write_buffer_limits(&self) -> (usize, usize) {
        let st = self.st.borrow();
        (st.low, st.high)
    }

    /// Bytes buffered for writing.
    fn get_write_buffer_size(&self) -> usize {
        Self::buffered_bytes(&self.st.borrow())
    }

    /// `peername`, `sockname`, `socket`, or an extra given at creation.
    #[pyo3(signature = (name, default=None))]
    fn get_extra_info(
        slf: &Bound<'_, Self>,
        name: &str,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        let t = slf.borrow();
        if let Some(extra) = t.extra.borrow().as_ref() {
            if let Some(v) = extra.bind(py).get_item(name)? {
                return Ok(Some(v.unbind()));
            }
        }
        let value = match name {
            "peername" => {
                let peer = {
                    let mut st = t.st.borrow_mut();
                    if st.peer.is_none() {
                        st.peer = match &st.sock {
                            Sock::Fd(fd) => peer_of(fd),
                            Sock::Ring(s) => peer_of(s),
                            Sock::Closed => None,
                        };
                    }
                    st.peer
                };
                peer.map(|a| crate::blocking::address_tuple(py, a))
                    .transpose()?
            }
            "sockname" => {
                let local = match &t.st.borrow().sock {
                    Sock::Fd(fd) => local_of(fd),
                    Sock::Ring(s) => local_of(s),
                    Sock::Closed => None,
                };
                let v = local
                    .map(|a| crate::blocking::address_tuple(py, a))
                    .transpose()?;
                if let Some(v) = &v {
                    t.cache_extra(py, "sockname", v)?;
                }
                v
            }
            "socket" => {
                if let Some(s) = t.pysock.borrow().as_ref() {
                    return Ok(Some(t.core.transport_socket(py, s.bind(py))?));
                }
                let raw = t.st.borrow().sock.raw();
                match raw {
                    Some(raw) => {
                        let s = t.core.make_socket(py, raw)?;
                        *t.pysock.borrow_mut() = Some(s.clone_ref(py));
                        Some(t.core.transport_socket(py, s.bind(py))?)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        Ok(value.or(default))
    }

    /// Switch the protocol the transport calls.
    fn set_protocol(&self, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.bind_protocol(protocol)
    }

    /// The protocol the transport calls.
    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    /// Run `connection_made` and start reading (a transport made by `adopt`).
    fn _start(slf: &Bound<'_, Self>) {
        Self::start(slf);
    }

    /// Called soon after the connection is lost (asyncio's `_call_connection_lost`).
    #[pyo3(signature = (exc=None))]
    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        Self::call_connection_lost(slf, py, exc)
    }

    fn __repr__(&self) -> String {
        let st = self.st.borrow();
        let state = if st.conn_lost > 0 || matches!(st.sock, Sock::Closed) {
            "closed".to_string()
        } else if st.closing {
            "closing".to_string()
        } else {
            format!(
                "fd={} {}",
                st.sock.raw().unwrap_or(-1),
                if st.paused {
                    "read=paused"
                } else {
                    "read=polling"
                }
            )
        };
        format!(
            "<c10k.Transport {} {state} write=<bufsize={}>>",
            self.core.kind.name(),
            Self::buffered_bytes(&st)
        )
    }

    /// Transports are not copyable; pickling one is an error (as in asyncio).
    fn __getstate__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err("cannot pickle 'Transport' object"))
    }
}

impl Transport {
    fn cache_extra(&self, py: Python<'_>, name: &str, value: &Py<PyAny>) -> PyResult<()> {
        let mut extra = self.extra.borrow_mut();
        let dict = extra.get_or_insert_with(|| PyDict::new(py).unbind());
        dict.bind(py).set_item(name, value)
    }
}

fn peer_of(fd: impl AsFd) -> Option<SocketAddr> {
    rustix::net::getpeername(fd)
        .ok()
        .flatten()
        .and_then(|a| SocketAddr::try_from(a).ok())
}

fn local_of(fd: impl AsFd) -> Option<SocketAddr> {
    rustix::net::getsockname(fd)
        .ok()
        .and_then(|a| SocketAddr::try_from(a).ok())
}
