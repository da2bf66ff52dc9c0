//! The engine under the asyncio loop: it waits on the kernel (GIL released), then,
//! under one acquisition, accepts, reads and writes for every ready connection and
//! calls the protocols. asyncio's own scheduling (the ready queue, timers, futures)
//! stays in Python: the loop calls [`Engine::select`] from `_run_once` where a
//! selector loop would call `selector.select`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use c10k_sys::uring::{Completion, Event, OpId};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use slab::Slab;

use crate::backend::{self, Epoll, Interest, Kind, Ready, Tag, Uring};
use crate::transport::{Sock, Transport};

/// asyncio's `max_size`: the most one read takes.
const READ_SIZE: usize = 256 * 1024;
/// Connections accepted per listener report (asyncio's backlog-sized batches).
const ACCEPT_BATCH: usize = 128;

/// The backend, as the engine holds it.
pub(crate) enum Backend {
    Epoll(Epoll),
    Uring(Box<Uring>),
    Closed,
}

/// The outcome of a write.
pub(crate) enum Io {
    /// All of it is with the kernel (or on its way in a send operation).
    Done,
    /// Some of it waits in the transport's buffer.
    Buffered,
    /// The socket failed.
    Failed(io::Error),
}

/// A listening socket the engine accepts on.
struct Listener {
    fd: Rc<OwnedFd>,
    raw: i32,
    factory: Py<PyAny>,
    server: Option<Py<PyAny>>,
    /// Accepting, or backing off after running out of descriptors.
    active: bool,
    op: Option<OpId>,
}

/// A descriptor watched for `add_reader` / `add_writer`.
struct Watch {
    fd: Rc<OwnedFd>,
    reader: Option<Py<PyAny>>,
    writer: Option<Py<PyAny>>,
    /// epoll: what it is registered for.
    registered: Interest,
    read_op: Option<OpId>,
    write_op: Option<OpId>,
}

/// Python objects the engine calls (dropped at close, which breaks the cycle
/// loop -> engine -> loop).
pub(crate) struct Refs {
    call_soon: Py<PyAny>,
    call_exception_handler: Py<PyAny>,
    helpers: Py<PyAny>,
}

/// State shared by the engine and its transports.
pub(crate) struct Core {
    pub kind: Kind,
    backend: RefCell<Backend>,
    /// Open connections, with their serials (checked without borrowing them).
    conns: RefCell<Slab<(u32, Py<Transport>)>>,
    serial: Cell<u32>,
    /// Connections to look at again without a kernel event: held data to deliver
    /// after `resume_reading`, an edge-triggered socket to drain, a ring receive to
    /// re-arm.
    pending: RefCell<Vec<(usize, u32)>>,
    /// io_uring: connections with bytes to submit before the loop waits.
    dirty: RefCell<Vec<(usize, u32)>>,
    pending_error: RefCell<Option<PyErr>>,
    listeners: RefCell<Slab<Listener>>,
    watches: RefCell<HashMap<i32, Watch>>,
    rbuf: RefCell<Vec<u8>>,
    free_bufs: RefCell<Vec<Vec<u8>>>,
    refs: RefCell<Option<Refs>>,
    pub buffered_protocol: Py<PyAny>,
    attach_takes_transport: bool,
    /// Python 3.12+: `writelines` has its own checks and messages.
    pub own_writelines: bool,
}

fn closed_err() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Core {
    fn helpers(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.refs
            .borrow()
            .as_ref()
            .map(|r| r.helpers.clone_ref(py))
            .ok_or_else(|| PyRuntimeError::new_err("Event loop is closed"))
    }

    /// The loop's `call_soon` (None once the engine is closed).
    pub(crate) fn call_soon(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.refs
            .borrow()
            .as_ref()
            .map(|r| r.call_soon.clone_ref(py))
    }

    /// The loop's `call_exception_handler` (None once the engine is closed).
    pub(crate) fn exception_handler(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.refs
            .borrow()
            .as_ref()
            .map(|r| r.call_exception_handler.clone_ref(py))
    }

    pub(crate) fn set_pending_error(&self, err: PyErr) {
        let mut slot = self.pending_error.borrow_mut();
        if slot.is_none() {
            *slot = Some(err);
        }
    }

    pub(crate) fn log_warning(&self, py: Python<'_>, message: &str) {
        if let Ok(h) = self.helpers(py) {
            let _ = h.bind(py).call_method1("log_warning", (message,));
        }
    }

    pub(crate) fn make_socket(&self, py: Python<'_>, raw: i32) -> PyResult<Py<PyAny>> {
        Ok(self
            .helpers(py)?
            .bind(py)
            .call_method1("make_socket", (raw,))?
            .unbind())
    }

    pub(crate) fn transport_socket(
        &self,
        py: Python<'_>,
        sock: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        Ok(self
            .helpers(py)?
            .bind(py)
            .call_method1("transport_socket", (sock,))?
            .unbind())
    }

    /// asyncio `Server._attach` / `_detach` (`method`): with the transport on 3.13+,
    /// without before.
    pub(crate) fn server_count(
        &self,
        server: &Bound<'_, PyAny>,
        method: &str,
        t: &Bound<'_, Transport>,
    ) -> PyResult<()> {
        if self.attach_takes_transport {
            server.call_method1(method, (t,))?;
        } else {
            server.call_method0(method)?;
        }
        Ok(())
    }

    fn edge(&self) -> bool {
        self.kind == Kind::EpollEdge
    }

    fn conn(&self, py: Python<'_>, slot: usize, serial: u32) -> Option<Py<Transport>> {
        match self.conns.borrow().get(slot) {
            Some((s, t)) if *s == serial => Some(t.clone_ref(py)),
            _ => None,
        }
    }

    fn want_pending(&self, t: &Transport) {
        self.pending.borrow_mut().push((t.slot, t.serial));
    }

    /// Bring a level-triggered registration in line with the transport's state.
    fn update_interest(&self, t: &Transport) {
        let Backend::Epoll(ep) = &*self.backend.borrow() else {
            return;
        };
        let mut st = t.st.borrow_mut();
        let want = Interest {
            read: st.started && !st.paused && !st.closing && !st.read_done && st.conn_lost == 0,
            write: st.wbuf.len() > st.wpos && st.conn_lost == 0,
        };
        let Sock::Fd(fd) = &st.sock else {
            return;
        };
        if st.added && want == st.registered {
            return;
        }
        let r = if st.added {
            ep.modify(fd, t.tag(), want, false)
        } else {
            ep.add(fd, t.tag(), want, false)
        };
        if r.is_ok() {
            st.added = true;
            st.registered = want;
        }
    }

    /// After `connection_made`: watch the socket.
    pub(crate) fn start_reading(&self, t: &Transport) {
        match self.kind {
            Kind::EpollLevel => self.update_interest(t),
            Kind::EpollEdge => {
                let Backend::Epoll(ep) = &*self.backend.borrow() else {
                    return;
                };
                let mut st = t.st.borrow_mut();
                if let Sock::Fd(fd) = &st.sock {
                    let all = Interest {
                        read: true,
                        write: true,
                    };
                    if ep.add(fd, t.tag(), all, true).is_ok() {
                        st.added = true;
                    }
                }
            }
            Kind::Uring => self.arm_recv(t),
        }
    }

    fn arm_recv(&self, t: &Transport) {
        let mut backend = self.backend.borrow_mut();
        let Backend::Uring(u) = &mut *backend else {
            return;
        };
        let mut st = t.st.borrow_mut();
        if st.recv_op.is_some() || st.read_done || st.closing || st.paused {
            return;
        }
        if let Sock::Ring(s) = &st.sock {
            let armed = if st.throttled {
                u.ring.recv_once(s, t.tag().encode())
            } else {
                u.ring.recv_multi(s, t.tag().encode())
            };
            if let Ok(op) = armed {
                st.recv_op = Some(op);
            }
        }
    }

    pub(crate) fn stop_reading(&self, t: &Transport) {
        match self.kind {
            Kind::EpollLevel => self.update_interest(t),
            Kind::EpollEdge => {}
            Kind::Uring => {
                let mut backend = self.backend.borrow_mut();
                if let Backend::Uring(u) = &mut *backend {
                    if let Some(op) = t.st.borrow().recv_op {
                        let _ = u.ring.cancel(op);
                    }
                }
            }
        }
    }

    pub(crate) fn resume_reading(&self, t: &Transport) {
        match self.kind {
            Kind::EpollLevel => {
                self.update_interest(t);
                if !t.st.borrow().held.is_empty() {
                    self.want_pending(t);
                }
            }
            Kind::EpollEdge | Kind::Uring => self.want_pending(t),
        }
    }

    pub(crate) fn stop_writing(&self, t: &Transport) {
        if self.kind == Kind::EpollLevel {
            self.update_interest(t);
        }
    }

    /// After `abort`/a fatal error: nothing more to do until `connection_lost`.
    pub(crate) fn abandon_io(&self, _t: &Transport) {}

    /// Keep `data` received while the protocol cannot take it.
    pub(crate) fn hold(&self, t: &Transport, data: Vec<u8>) {
        t.st.borrow_mut().held.push_back(data);
    }

    /// Write `bytes` (or buffer them).
    pub(crate) fn send(&self, t: &Transport, bytes: &[u8]) -> Io {
        let mut backend = self.backend.borrow_mut();
        match &mut *backend {
            Backend::Epoll(_) => {
                let mut st = t.st.borrow_mut();
                if st.wbuf.len() > st.wpos {
                    st.wbuf.extend_from_slice(bytes);
                    return Io::Buffered;
                }
                let Sock::Fd(fd) = &st.sock else {
                    return Io::Failed(closed_err());
                };
                let rest = match rustix::net::send(fd, bytes, rustix::net::SendFlags::NOSIGNAL) {
                    Ok(n) if n == bytes.len() => return Io::Done,
                    Ok(n) => &bytes[n..],
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => bytes,
                    Err(e) => return Io::Failed(e.into()),
                };
                st.wbuf.clear();
                st.wpos = 0;
                st.wbuf.extend_from_slice(rest);
                drop(st);
                drop(backend);
                if self.kind == Kind::EpollLevel {
                    self.update_interest(t);
                }
                Io::Buffered
            }
            Backend::Uring(_) => {
                let mut st = t.st.borrow_mut();
                if matches!(st.sock, Sock::Closed) {
                    return Io::Failed(closed_err());
                }
                st.wbuf.extend_from_slice(bytes);
                if st.inflight.is_none() && !st.queued {
                    st.queued = true;
                    self.dirty.borrow_mut().push((t.slot, t.serial));
                }
                Io::Buffered
            }
            Backend::Closed => Io::Failed(closed_err()),
        }
    }

    /// Forget a transport whose `connection_lost` ran, and close its socket.
    pub(crate) fn release(&self, t: &Transport) {
        let sock = std::mem::replace(&mut t.st.borrow_mut().sock, Sock::Closed);
        {
            let mut conns = self.conns.borrow_mut();
            if conns.get(t.slot).is_some_and(|(s, _)| *s == t.serial) {
                conns.remove(t.slot);
            }
        }
        match sock {
            Sock::Fd(fd) => drop(fd),
            Sock::Ring(s) => {
                if let Backend::Uring(u) = &mut *self.backend.borrow_mut() {
                    let _ = u.ring.close(s);
                }
            }
            Sock::Closed => {}
        }
    }

    /// Take a new connection: transport, protocol, `connection_made`, reading.
    fn new_conn(
        self: &Rc<Self>,
        py: Python<'_>,
        sock: Sock,
        peer: Option<SocketAddr>,
        factory: &Py<PyAny>,
        server: Option<&Py<PyAny>>,
    ) -> PyResult<()> {
        if let Some(raw) = sock.raw() {
            let _ = set_nodelay(raw, &sock);
        }
        let serial = self.serial.get().wrapping_add(1) & 0x00ff_ffff;
        self.serial.set(serial);
        let slot = self.conns.borrow().vacant_key();
        let t = Transport::new(self.clone(), slot, serial, sock);
        t.st.borrow_mut().peer = peer;
        let t = Bound::new(py, t)?;
        self.conns.borrow_mut().insert((serial, t.clone().unbind()));
        let protocol = match factory.bind(py).call0() {
            Ok(p) => p,
            Err(e) => {
                self.report(py, "Error on transport creation for incoming connection", e);
                self.release(&t.borrow());
                return Ok(());
            }
        };
        t.borrow().bind_protocol(&protocol)?;
        if let Some(server) = server {
            self.server_count(server.bind(py), "_attach", &t)?;
            *t.borrow().server.borrow_mut() = Some(server.clone_ref(py));
        }
        Transport::start(&t);
        Ok(())
    }

    fn report(&self, py: Python<'_>, message: &str, err: PyErr) {
        let ctx = PyDict::new(py);
        let _ = ctx.set_item("message", message);
        let _ = ctx.set_item("exception", err.value(py));
        if let Some(handler) = self.exception_handler(py) {
            if let Err(e) = handler.bind(py).call1((ctx,)) {
                e.write_unraisable(py, None);
            }
        }
    }

    /// Ran out of descriptors (or memory) accepting: tell the exception handler, stop
    /// accepting, try again in a second (as asyncio does).
    fn accept_exhausted(&self, py: Python<'_>, slot: usize, err: io::Error) {
        let raw = {
            let mut listeners = self.listeners.borrow_mut();
            let Some(l) = listeners.get_mut(slot) else {
                return;
            };
            l.active = false;
            l.raw
        };
        self.pause_listener(slot);
        if let Ok(h) = self.helpers(py) {
            let exc = PyErr::from(err);
            if let Err(e) = h
                .bind(py)
                .call_method1("accept_exhausted", (slot, raw, exc.value(py)))
            {
                e.write_unraisable(py, None);
            }
        }
    }

    fn pause_listener(&self, slot: usize) {
        let listeners = self.listeners.borrow();
        let Some(l) = listeners.get(slot) else {
            return;
        };
        match &mut *self.backend.borrow_mut() {
            Backend::Epoll(ep) => {
                let _ = ep.delete(&*l.fd);
            }
            Backend::Uring(u) => {
                if let Some(op) = l.op {
                    let _ = u.ring.cancel(op);
                }
            }
            Backend::Closed => {}
        }
    }

    fn arm_listener(&self, slot: usize) -> io::Result<()> {
        let mut listeners = self.listeners.borrow_mut();
        let Some(l) = listeners.get_mut(slot) else {
            return Ok(());
        };
        l.active = true;
        match &mut *self.backend.borrow_mut() {
            Backend::Epoll(ep) => {
                let read = Interest {
                    read: true,
                    write: false,
                };
                ep.add(&*l.fd, Tag::Listener(slot), read, false)
            }
            Backend::Uring(u) => {
                let fd = l.fd.clone();
                l.op = Some(
                    u.ring
                        .accept_multi(RcFd(fd), Tag::Listener(slot).encode())?,
                );
                Ok(())
            }
            Backend::Closed => Err(closed_err()),
        }
    }

    fn accept_ready(self: &Rc<Self>, py: Python<'_>, slot: usize) -> PyResult<()> {
        for _ in 0..ACCEPT_BATCH {
            let (fd, factory, server) = {
                let listeners = self.listeners.borrow();
                let Some(l) = listeners.get(slot).filter(|l| l.active) else {
                    return Ok(());
                };
                (
                    l.fd.clone(),
                    l.factory.clone_ref(py),
                    l.server.as_ref().map(|s| s.clone_ref(py)),
                )
            };
            let flags = rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC;
            match rustix::net::acceptfrom_with(&*fd, flags) {
                Ok((conn, addr)) => {
                    let peer = addr.and_then(|a| SocketAddr::try_from(a).ok());
                    self.new_conn(py, Sock::Fd(conn), peer, &factory, server.as_ref())?;
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => return Ok(()),
                Err(
                    e @ (rustix::io::Errno::MFILE
                    | rustix::io::Errno::NFILE
                    | rustix::io::Errno::NOBUFS
                    | rustix::io::Errno::NOMEM),
                ) => {
                    self.accept_exhausted(py, slot, e.into());
                    return Ok(());
                }
                // The peer gave up before we accepted (ECONNABORTED), a firewall
                // said no (EPERM): next.
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Read what a ready connection has (asyncio's `_read_ready`).
    fn read_ready(&self, py: Python<'_>, t: &Bound<'_, Transport>, hup: bool) {
        let edge = self.edge();
        loop {
            if !t.borrow().reading_now() {
                return;
            }
            let mut rbuf = self.rbuf.borrow_mut();
            let r = {
                let tr = t.borrow();
                let st = tr.st.borrow();
                match &st.sock {
                    Sock::Fd(fd) => {
                        rustix::net::recv(fd, &mut rbuf[..], rustix::net::RecvFlags::empty())
                            .map(|(n, _)| n)
                    }
                    _ => return,
                }
            };
            match r {
                Ok(0) => {
                    drop(rbuf);
                    Transport::on_eof(t);
                    return;
                }
                Ok(n) => {
                    let data = PyBytes::new(py, &rbuf[..n]);
                    drop(rbuf);
                    Transport::deliver(t, data.as_bytes());
                    if !edge || (n < READ_SIZE && !hup) {
                        return;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => return,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    drop(rbuf);
                    let err = PyErr::from(io::Error::from(e));
                    Transport::fatal_error(t, err, "Fatal read error on socket transport");
                    return;
                }
            }
        }
    }

    /// Write what a transport has buffered (asyncio's `_write_ready`).
    fn write_ready(&self, t: &Bound<'_, Transport>) {
        let r = {
            let tr = t.borrow();
            let mut st = tr.st.borrow_mut();
            if st.conn_lost > 0 || st.wbuf.len() == st.wpos {
                return;
            }
            let mut result = Ok(());
            while st.wbuf.len() > st.wpos {
                let sent = match &st.sock {
                    Sock::Fd(fd) => {
                        rustix::net::send(fd, &st.wbuf[st.wpos..], rustix::net::SendFlags::NOSIGNAL)
                    }
                    _ => Err(rustix::io::Errno::BADF),
                };
                match sent {
                    Ok(n) => st.wpos += n,
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(rustix::io::Errno::INTR) => {}
                    Err(e) => {
                        result = Err(io::Error::from(e));
                        break;
                    }
                }
            }
            if st.wpos == st.wbuf.len() {
                st.wbuf.clear();
                st.wpos = 0;
            } else if st.wpos > st.wbuf.len() / 2 {
                let wpos = st.wpos;
                st.wbuf.drain(..wpos);
                st.wpos = 0;
            }
            result.map(|()| st.wbuf.is_empty())
        };
        match r {
            Ok(true) => Transport::drained(t),
            Ok(false) => Transport::maybe_resume_protocol(t),
            Err(e) => {
                {
                    let tr = t.borrow();
                    let mut st = tr.st.borrow_mut();
                    st.wbuf.clear();
                    st.wpos = 0;
                }
                Transport::fatal_error(t, PyErr::from(e), "Fatal write error on socket transport");
            }
        }
    }

    /// A ring send finished.
    fn on_sent(
        &self,
        t: &Bound<'_, Transport>,
        result: io::Result<usize>,
        buf: Vec<u8>,
        pos: usize,
    ) {
        let tr = t.borrow();
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                tr.st.borrow_mut().inflight = None;
                let lost = tr.st.borrow().conn_lost > 0;
                drop(tr);
                if !lost {
                    Transport::fatal_error(
                        t,
                        PyErr::from(e),
                        "Fatal write error on socket transport",
                    );
                }
                return;
            }
        };
        let mut backend = self.backend.borrow_mut();
        let Backend::Uring(u) = &mut *backend else {
            return;
        };
        let mut st = tr.st.borrow_mut();
        st.inflight = None;
        if st.conn_lost > 0 {
            return;
        }
        let Sock::Ring(s) = &st.sock else {
            return;
        };
        if pos + n < buf.len() {
            // The kernel took part of it: the rest counts as buffered.
            let left = buf.len() - pos - n;
            match u.ring.send(s, buf, pos + n, t.borrow().tag().encode()) {
                Ok(_) => {
                    st.inflight = Some(left);
                    st.inflight_counted = true;
                }
                Err((e, _)) => {
                    drop(st);
                    drop(backend);
                    drop(tr);
                    Transport::fatal_error(
                        t,
                        PyErr::from(e),
                        "Fatal write error on socket transport",
                    );
                }
            }
            return;
        }
        let mut spare = buf;
        spare.clear();
        let mut free = self.free_bufs.borrow_mut();
        if free.len() < 256 && spare.capacity() <= READ_SIZE {
            free.push(spare);
        }
        drop(free);
        let more = st.wbuf.len() > st.wpos;
        drop(st);
        drop(backend);
        drop(tr);
        if more {
            if let Err(e) = self.submit(&t.borrow()) {
                Transport::fatal_error(t, PyErr::from(e), "Fatal write error on socket transport");
                return;
            }
            Transport::maybe_resume_protocol(t);
        } else {
            Transport::drained(t);
        }
    }

    /// io_uring: send what the transport has buffered (one operation), unless a send
    /// is in flight already.
    fn submit(&self, t: &Transport) -> io::Result<()> {
        let mut backend = self.backend.borrow_mut();
        let Backend::Uring(u) = &mut *backend else {
            return Ok(());
        };
        let mut st = t.st.borrow_mut();
        st.queued = false;
        if st.inflight.is_some() || st.wbuf.len() == st.wpos || st.conn_lost > 0 {
            return Ok(());
        }
        let spare = self.free_bufs.borrow_mut().pop().unwrap_or_default();
        let mut next = std::mem::replace(&mut st.wbuf, spare);
        let wpos = std::mem::take(&mut st.wpos);
        if wpos > 0 {
            next.drain(..wpos);
        }
        let len = next.len();
        let Sock::Ring(s) = &st.sock else {
            return Err(closed_err());
        };
        match u.ring.send(s, next, 0, t.tag().encode()) {
            Ok(_) => {
                st.inflight = Some(len);
                st.inflight_counted = false;
                Ok(())
            }
            Err((e, _)) => Err(e),
        }
    }

    /// io_uring: submit the sends of every connection written to during this turn.
    fn submit_dirty(&self, py: Python<'_>) {
        let dirty = std::mem::take(&mut *self.dirty.borrow_mut());
        for (slot, serial) in dirty {
            let Some(t) = self.conn(py, slot, serial) else {
                continue;
            };
            let t = t.bind(py);
            if let Err(e) = self.submit(&t.borrow()) {
                Transport::fatal_error(t, PyErr::from(e), "Fatal write error on socket transport");
            }
        }
    }

    /// A ring receive produced something.
    fn on_received(
        &self,
        t: &Bound<'_, Transport>,
        more: bool,
        got: io::Result<Option<c10k_sys::uring::RecvBuf>>,
    ) {
        let tr = t.borrow();
        if !more {
            tr.st.borrow_mut().recv_op = None;
        }
        let now = tr.reading_now() && tr.st.borrow().held.is_empty();
        match got {
            Ok(Some(buf)) => {
                if now {
                    Transport::deliver(t, &buf);
                } else {
                    self.hold(&tr, buf.to_vec());
                }
            }
            Ok(None) => {
                if now {
                    drop(tr);
                    Transport::on_eof(t);
                } else {
                    tr.st.borrow_mut().held_eof = true;
                }
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) => {
                let lost = tr.st.borrow().conn_lost > 0;
                drop(tr);
                if !lost {
                    Transport::fatal_error(
                        t,
                        PyErr::from(e),
                        "Fatal read error on socket transport",
                    );
                }
                return;
            }
        }
        if !more {
            self.arm_recv(&tr);
        }
    }

    /// Look again at the connections in `pending`.
    fn run_pending(&self, py: Python<'_>) {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (slot, serial) in pending {
            let Some(t) = self.conn(py, slot, serial) else {
                continue;
            };
            let t = t.bind(py);
            loop {
                if !t.borrow().reading_now() {
                    break;
                }
                let next = t.borrow().st.borrow_mut().held.pop_front();
                match next {
                    Some(data) => Transport::deliver(t, &data),
                    None => break,
                }
            }
            if !t.borrow().reading_now() || !t.borrow().st.borrow().held.is_empty() {
                continue;
            }
            let held_eof = std::mem::take(&mut t.borrow().st.borrow_mut().held_eof);
            if held_eof {
                Transport::on_eof(t);
                continue;
            }
            match self.kind {
                Kind::EpollEdge => self.read_ready(py, t, true),
                Kind::Uring => self.arm_recv(&t.borrow()),
                Kind::EpollLevel => {}
            }
        }
    }

    /// Wait (GIL released) and handle what is ready; returns the watcher callbacks to
    /// run (`add_reader`/`add_writer` handles), in the order asyncio would queue them.
    fn poll(
        self: &Rc<Self>,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        if self.kind == Kind::Uring {
            self.submit_dirty(py);
        }
        let timeout = if self.pending.borrow().is_empty() && self.dirty.borrow().is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let mut handles = Vec::new();
        let mut backend = self.backend.borrow_mut();
        match &mut *backend {
            Backend::Epoll(ep) => {
                let mut ready: Vec<Ready> = Vec::new();
                ep.wait(timeout, &mut ready, |wait| py.detach(wait))?;
                drop(backend);
                self.run_pending(py);
                for ev in ready {
                    self.on_ready(py, ev, &mut handles)?;
                }
            }
            Backend::Uring(u) => {
                let mut done: Vec<Completion> = Vec::new();
                u.wait(timeout, &mut done, |wait| py.detach(wait))?;
                drop(backend);
                self.run_pending(py);
                for c in done {
                    self.on_completion(py, c, &mut handles)?;
                }
            }
            Backend::Closed => return Err(PyRuntimeError::new_err("Event loop is closed")),
        }
        if let Some(err) = self.pending_error.borrow_mut().take() {
            return Err(err);
        }
        Ok(handles)
    }

    fn on_ready(
        self: &Rc<Self>,
        py: Python<'_>,
        ev: Ready,
        handles: &mut Vec<Py<PyAny>>,
    ) -> PyResult<()> {
        match Tag::decode(ev.tag) {
            Some(Tag::Conn(slot, serial)) => {
                let Some(t) = self.conn(py, slot, serial) else {
                    return Ok(());
                };
                let t = t.bind(py);
                if ev.readable || ev.hup {
                    self.read_ready(py, t, ev.hup);
                }
                if ev.writable || ev.hup {
                    self.write_ready(t);
                }
            }
            Some(Tag::Listener(slot)) => self.accept_ready(py, slot)?,
            Some(Tag::Watch(fd)) => {
                let watches = self.watches.borrow();
                if let Some(w) = watches.get(&fd) {
                    if ev.readable || ev.hup {
                        if let Some(h) = &w.reader {
                            handles.push(h.clone_ref(py));
                        }
                    }
                    if ev.writable || ev.hup {
                        if let Some(h) = &w.writer {
                            handles.push(h.clone_ref(py));
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_completion(
        self: &Rc<Self>,
        py: Python<'_>,
        c: Completion,
        handles: &mut Vec<Py<PyAny>>,
    ) -> PyResult<()> {
        match (Tag::decode(c.tag), c.event) {
            (Some(Tag::Conn(slot, serial)), event) => {
                let Some(t) = self.conn(py, slot, serial) else {
                    if let Event::Sent { mut buf, .. } = event {
                        buf.clear();
                        let mut free = self.free_bufs.borrow_mut();
                        if free.len() < 256 && buf.capacity() <= READ_SIZE {
                            free.push(buf);
                        }
                    }
                    return Ok(());
                };
                let t = t.bind(py);
                match event {
                    Event::Received(got) => self.on_received(t, c.more, got),
                    Event::Sent { result, buf, pos } => self.on_sent(t, result, buf, pos),
                    _ => {}
                }
            }
            (Some(Tag::Listener(slot)), Event::Accepted(got)) => {
                if !c.more {
                    if let Some(l) = self.listeners.borrow_mut().get_mut(slot) {
                        l.op = None;
                    }
                }
                match got {
                    Ok(sock) => {
                        let (factory, server) = {
                            let listeners = self.listeners.borrow();
                            match listeners.get(slot) {
                                Some(l) if l.active => (
                                    l.factory.clone_ref(py),
                                    l.server.as_ref().map(|s| s.clone_ref(py)),
                                ),
                                _ => {
                                    drop(listeners);
                                    if let Backend::Uring(u) = &mut *self.backend.borrow_mut() {
                                        let _ = u.ring.close(sock);
                                    }
                                    return Ok(());
                                }
                            }
                        };
                        let peer = rustix::net::getpeername(&sock)
                            .ok()
                            .flatten()
                            .and_then(|a| SocketAddr::try_from(a).ok());
                        let mut sock = sock;
                        if let Backend::Uring(u) = &mut *self.backend.borrow_mut() {
                            u.ring.fix(&mut sock);
                        }
                        self.new_conn(py, Sock::Ring(sock), peer, &factory, server.as_ref())?;
                    }
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                        ) =>
                    {
                        self.accept_exhausted(py, slot, e);
                        return Ok(());
                    }
                    Err(_) => {}
                }
                let rearm = !c.more
                    && self
                        .listeners
                        .borrow()
                        .get(slot)
                        .is_some_and(|l| l.active && l.op.is_none());
                if rearm {
                    let _ = self.arm_listener(slot);
                }
            }
            (Some(Tag::Reader(_) | Tag::Writer(_)), Event::Polled(Err(e)))
                if e.raw_os_error() == Some(libc::ECANCELED) =>
            {
                // Cancelled by remove_reader/remove_writer, which forgot the op.
            }
            (Some(tag @ (Tag::Reader(fd) | Tag::Writer(fd))), Event::Polled(_)) => {
                let reading = matches!(tag, Tag::Reader(_));
                let handle = {
                    let mut watches = self.watches.borrow_mut();
                    let Some(w) = watches.get_mut(&fd) else {
                        return Ok(());
                    };
                    if reading {
                        w.read_op = None;
                        w.reader.as_ref().map(|h| h.clone_ref(py))
                    } else {
                        w.write_op = None;
                        w.writer.as_ref().map(|h| h.clone_ref(py))
                    }
                };
                if let Some(h) = handle {
                    handles.push(h);
                    // Level-triggered, like a selector: armed again for the next turn.
                    self.arm_watch(fd, reading)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Watch `fd` (epoll: register its combined interest; io_uring: a one-shot poll).
    fn arm_watch(&self, fd: i32, reading: bool) -> io::Result<()> {
        let mut watches = self.watches.borrow_mut();
        let Some(w) = watches.get_mut(&fd) else {
            return Ok(());
        };
        match &mut *self.backend.borrow_mut() {
            Backend::Epoll(ep) => {
                let want = Interest {
                    read: w.reader.is_some(),
                    write: w.writer.is_some(),
                };
                if want == w.registered {
                    return Ok(());
                }
                let r = if !want.read && !want.write {
                    ep.delete(&*w.fd)
                } else if !w.registered.read && !w.registered.write {
                    ep.add(&*w.fd, Tag::Watch(fd), want, false)
                } else {
                    ep.modify(&*w.fd, Tag::Watch(fd), want, false)
                };
                w.registered = want;
                r
            }
            Backend::Uring(u) => {
                if reading {
                    if w.reader.is_some() && w.read_op.is_none() {
                        w.read_op = Some(
                            u.ring
                                .poll_readable(RcFd(w.fd.clone()), Tag::Reader(fd).encode())?,
                        );
                    } else if w.reader.is_none() {
                        if let Some(op) = w.read_op.take() {
                            u.ring.cancel(op)?;
                        }
                    }
                } else if w.writer.is_some() && w.write_op.is_none() {
                    w.write_op = Some(
                        u.ring
                            .poll_writable(RcFd(w.fd.clone()), Tag::Writer(fd).encode())?,
                    );
                } else if w.writer.is_none() {
                    if let Some(op) = w.write_op.take() {
                        u.ring.cancel(op)?;
                    }
                }
                Ok(())
            }
            Backend::Closed => Err(closed_err()),
        }
    }

    fn close(&self, py: Python<'_>) {
        let conns: Vec<Py<Transport>> = self.conns.borrow_mut().drain().map(|(_, t)| t).collect();
        for t in conns {
            let t = t.bind(py).borrow();
            let sock = std::mem::replace(&mut t.st.borrow_mut().sock, Sock::Closed);
            if let Sock::Ring(s) = sock {
                if let Backend::Uring(u) = &mut *self.backend.borrow_mut() {
                    let _ = u.ring.close(s);
                }
            }
        }
        self.listeners.borrow_mut().clear();
        self.watches.borrow_mut().clear();
        let backend = std::mem::replace(&mut *self.backend.borrow_mut(), Backend::Closed);
        if let Backend::Uring(mut u) = backend {
            u.ring.shutdown(Duration::from_secs(1));
        }
        self.refs.borrow_mut().take();
        *self.rbuf.borrow_mut() = Vec::new();
    }
}

/// A shared descriptor handed to a ring operation (which keeps it open).
struct RcFd(Rc<OwnedFd>);

impl AsFd for RcFd {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

fn set_nodelay(_raw: i32, sock: &Sock) -> io::Result<()> {
    match sock {
        Sock::Fd(fd) => Ok(rustix::net::sockopt::set_tcp_nodelay(fd, true)?),
        Sock::Ring(s) => Ok(rustix::net::sockopt::set_tcp_nodelay(s, true)?),
        Sock::Closed => Ok(()),
    }
}

/// The I/O engine of one event loop (one per loop, used from the loop's thread).
#[pyclass(unsendable, module = "c10k._engine")]
pub struct Engine {
    core: Rc<Core>,
}

#[pymethods]
impl Engine {
    /// An engine for `loop` on `strategy` (`epoll-et`, `epoll-lt` or `uring`).
    /// `helpers` is the Python module with `make_socket`, `transport_socket`,
    /// `log_warning` and `accept_exhausted`.
    #[new]
    #[pyo3(signature = (event_loop, strategy, helpers, buffered_protocol, attach_takes_transport))]
    fn new(
        event_loop: &Bound<'_, PyAny>,
        strategy: &str,
        helpers: Py<PyAny>,
        buffered_protocol: Py<PyAny>,
        attach_takes_transport: bool,
    ) -> PyResult<Engine> {
        let kind = Kind::parse(strategy).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown strategy {strategy:?}: choose epoll-et, epoll-lt or uring"
            ))
        })?;
        let backend = match kind {
            Kind::EpollLevel => Backend::Epoll(Epoll::new()?),
            Kind::EpollEdge => Backend::Epoll(Epoll::new()?),
            Kind::Uring => Backend::Uring(Box::new(Uring::new().map_err(|e| {
                PyOSError::new_err(format!(
                    "io_uring is not available here ({e}): use strategy=\"epoll-et\""
                ))
            })?)),
        };
        let call_soon = event_loop.getattr("call_soon")?.unbind();
        let call_exception_handler = event_loop.getattr("call_exception_handler")?.unbind();
        Ok(Engine {
            core: Rc::new(Core {
                kind,
                backend: RefCell::new(backend),
                conns: RefCell::new(Slab::with_capacity(1024)),
                serial: Cell::new(0),
                pending: RefCell::new(Vec::new()),
                dirty: RefCell::new(Vec::new()),
                pending_error: RefCell::new(None),
                listeners: RefCell::new(Slab::new()),
                watches: RefCell::new(HashMap::new()),
                rbuf: RefCell::new(vec![0; READ_SIZE]),
                free_bufs: RefCell::new(Vec::new()),
                refs: RefCell::new(Some(Refs {
                    call_soon,
                    call_exception_handler,
                    helpers,
                })),
                buffered_protocol,
                attach_takes_transport,
                own_writelines: event_loop.py().version_info() >= (3, 12),
            }),
        })
    }

    /// The strategy's name.
    #[getter]
    fn strategy(&self) -> &'static str {
        self.core.kind.name()
    }

    /// Wait at most `timeout` seconds (None: until something happens) with the GIL
    /// released, then handle every ready connection (protocol callbacks run here) and
    /// return the `add_reader`/`add_writer` handles that are due.
    #[pyo3(signature = (timeout=None))]
    fn select(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Py<PyList>> {
        let timeout = match timeout {
            Some(t) if t.is_finite() => Some(Duration::from_secs_f64(t.max(0.0))),
            Some(_) => None,
            None => None,
        };
        // Transports the garbage collector freed on another thread, dropped here.
        c10k_sys::thread_bound::sweep();
        let handles = self.core.poll(py, timeout)?;
        Ok(PyList::new(py, handles)?.unbind())
    }

    /// Accept on the listening socket `fd` (a copy of it is kept), calling
    /// `protocol_factory` per connection; `server` is asyncio's `Server`.
    #[pyo3(signature = (fd, protocol_factory, server=None))]
    fn serve(
        &self,
        fd: i32,
        protocol_factory: Py<PyAny>,
        server: Option<Py<PyAny>>,
    ) -> PyResult<usize> {
        let owned = c10k_sys::fd::dup_raw(fd)?;
        rustix::fs::fcntl_setfl(&owned, rustix::fs::OFlags::NONBLOCK).map_err(io::Error::from)?;
        let slot = self.core.listeners.borrow_mut().insert(Listener {
            fd: Rc::new(owned),
            raw: fd,
            factory: protocol_factory,
            server,
            active: false,
            op: None,
        });
        self.core.arm_listener(slot)?;
        Ok(slot)
    }

    /// Stop accepting on `fd`. Returns whether it was served.
    fn unserve(&self, fd: i32) -> bool {
        let slot = self
            .core
            .listeners
            .borrow()
            .iter()
            .find(|(_, l)| l.raw == fd)
            .map(|(k, _)| k);
        let Some(slot) = slot else {
            return false;
        };
        self.core.pause_listener(slot);
        self.core.listeners.borrow_mut().remove(slot);
        true
    }

    /// Accept again after a back-off (see `accept_exhausted`).
    fn resume_listener(&self, slot: usize) -> PyResult<()> {
        let idle = self
            .core
            .listeners
            .borrow()
            .get(slot)
            .is_some_and(|l| !l.active);
        if idle {
            self.core.arm_listener(slot)?;
        }
        Ok(())
    }

    /// A transport over an already connected socket (`create_connection`,
    /// `connect_accepted_socket`): the engine works on a copy of `fd`; `sock` (the
    /// Python socket) is closed with the transport. Call `_start()` on it to run
    /// `connection_made` and start reading.
    #[pyo3(signature = (fd, sock, protocol, server=None, extra=None))]
    fn adopt(
        &self,
        py: Python<'_>,
        fd: i32,
        sock: Py<PyAny>,
        protocol: &Bound<'_, PyAny>,
        server: Option<Py<PyAny>>,
        extra: Option<Py<PyDict>>,
    ) -> PyResult<Py<Transport>> {
        let owned = c10k_sys::fd::dup_raw(fd)?;
        rustix::fs::fcntl_setfl(&owned, rustix::fs::OFlags::NONBLOCK).map_err(io::Error::from)?;
        let sock_kind = match self.core.kind {
            Kind::Uring => Sock::Ring(c10k_sys::uring::Socket::from(owned)),
            _ => Sock::Fd(owned),
        };
        let _ = set_nodelay(fd, &sock_kind);
        let serial = self.core.serial.get().wrapping_add(1) & 0x00ff_ffff;
        self.core.serial.set(serial);
        let slot = self.core.conns.borrow().vacant_key();
        let t = Transport::new(self.core.clone(), slot, serial, sock_kind);
        *t.pysock.borrow_mut() = Some(sock);
        *t.extra.borrow_mut() = extra;
        t.bind_protocol(protocol)?;
        let t = Bound::new(py, t)?;
        self.core
            .conns
            .borrow_mut()
            .insert((serial, t.clone().unbind()));
        if let Some(server) = server {
            self.core.server_count(server.bind(py), "_attach", &t)?;
            *t.borrow().server.borrow_mut() = Some(server);
        }
        Ok(t.unbind())
    }

    /// Run `handle` when `fd` is readable (level-triggered, like a selector).
    fn add_reader(&self, fd: i32, handle: Py<PyAny>) -> PyResult<()> {
        self.watch(fd, Some(handle), true)
    }

    /// Stop watching `fd` for reading. Returns whether it was watched.
    fn remove_reader(&self, fd: i32) -> PyResult<bool> {
        self.unwatch(fd, true)
    }

    /// Run `handle` when `fd` is writable.
    fn add_writer(&self, fd: i32, handle: Py<PyAny>) -> PyResult<()> {
        self.watch(fd, Some(handle), false)
    }

    /// Stop watching `fd` for writing. Returns whether it was watched.
    fn remove_writer(&self, fd: i32) -> PyResult<bool> {
        self.unwatch(fd, false)
    }

    /// The handle watching `fd` for reading (or writing), if any.
    fn watcher(&self, py: Python<'_>, fd: i32, reading: bool) -> Option<Py<PyAny>> {
        let watches = self.core.watches.borrow();
        let w = watches.get(&fd)?;
        let h = if reading { &w.reader } else { &w.writer };
        h.as_ref().map(|h| h.clone_ref(py))
    }

    /// Open connections.
    fn connections(&self) -> usize {
        self.core.conns.borrow().len()
    }

    /// Close every socket and the kernel interface.
    fn close(&self, py: Python<'_>) {
        self.core.close(py);
        c10k_sys::thread_bound::sweep();
    }
}

impl Engine {
    fn watch(&self, fd: i32, handle: Option<Py<PyAny>>, reading: bool) -> PyResult<()> {
        {
            let mut watches = self.core.watches.borrow_mut();
            if let std::collections::hash_map::Entry::Vacant(slot) = watches.entry(fd) {
                let owned = c10k_sys::fd::dup_raw(fd)?;
                slot.insert(Watch {
                    fd: Rc::new(owned),
                    reader: None,
                    writer: None,
                    registered: Interest::default(),
                    read_op: None,
                    write_op: None,
                });
            }
            let Some(w) = watches.get_mut(&fd) else {
                return Ok(());
            };
            if reading {
                w.reader = handle;
            } else {
                w.writer = handle;
            }
        }
        self.core.arm_watch(fd, reading)?;
        Ok(())
    }

    fn unwatch(&self, fd: i32, reading: bool) -> PyResult<bool> {
        let had = {
            let mut watches = self.core.watches.borrow_mut();
            let Some(w) = watches.get_mut(&fd) else {
                return Ok(false);
            };
            if reading {
                w.reader.take().is_some()
            } else {
                w.writer.take().is_some()
            }
        };
        self.core.arm_watch(fd, reading)?;
        let gone = self.core.watches.borrow().get(&fd).is_some_and(|w| {
            w.reader.is_none() && w.writer.is_none() && w.read_op.is_none() && w.write_op.is_none()
        });
        if gone {
            self.core.watches.borrow_mut().remove(&fd);
        }
        Ok(had)
    }
}

/// Whether `strategy` can run here: None, or why not.
#[pyfunction]
pub fn probe(strategy: &str) -> PyResult<Option<String>> {
    let kind = Kind::parse(strategy).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown strategy {strategy:?}: choose epoll-et, epoll-lt or uring"
        ))
    })?;
    Ok(backend::probe(kind).err())
}
