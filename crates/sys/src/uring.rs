//! A safe io_uring for a socket server: completion I/O that owns its buffers.
//!
//! The io-uring crate's submission API is `unsafe`: the caller promises that whatever
//! an operation points at (a buffer, a descriptor, a timespec) stays valid until the
//! kernel posts its completion. [`Ring`] keeps that promise by ownership, in the style
//! of tokio-uring and monoio:
//!
//! - **Every operation in flight has an entry in the ring's table**, keyed by the
//!   completion's `user_data`, and the entry owns what the kernel uses: a send owns
//!   its `Vec<u8>` (handed back with the completion, [`Event::Sent`]), an accept or a
//!   poll owns (a handle to) its descriptor. The entry is removed only when the last
//!   completion of the operation arrives (for multishot operations, the one without
//!   `IORING_CQE_F_MORE`).
//! - **Receive buffers belong to a provided-buffer ring** (one buffer group per ring):
//!   the kernel picks a buffer when data arrives; the completion hands it out as a
//!   [`RecvBuf`], and dropping that gives it back.
//! - **A connection closed with operations in flight parks its buffers**: the caller
//!   forgets the connection, but the table still owns the send buffer and the pool
//!   the receive buffers until the completions come back.
//! - **Sockets are closed through the ring** ([`Ring::close`]): the close is queued
//!   behind every earlier operation on the descriptor (with `--sqpoll` the kernel
//!   reads submissions later, so closing the number directly could let an earlier
//!   operation hit a newly accepted socket that reused it). A [`Socket`] dropped
//!   without [`Ring::close`] is leaked, never closed behind the ring's back.
//! - **Tearing down** ([`Ring::shutdown`], also run on drop) cancels everything and
//!   waits for the completions; anything the kernel does not return in time is
//!   leaked rather than freed while the kernel might still use it.
//!
//! Availability is probed, never assumed: [`probe`] says why io_uring cannot be used
//! here (disabled by sysctl or seccomp, an old kernel, a missing opcode).
#![allow(unsafe_code)]

mod pool;
mod probe;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use pool::Pool;
pub use pool::{MAX_BUFFERS, RecvBuf};
pub use probe::{explain_setup_error, probe};

/// The one buffer group of a ring.
const BUF_GROUP: u16 = 0;

/// How long the `--sqpoll` kernel thread keeps polling after the last submission
/// before it sleeps (and the next submission has to wake it with a syscall).
pub const SQPOLL_IDLE: Duration = Duration::from_millis(10);

/// How to build a [`Ring`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Submission queue entries (rounded up to a power of two by the kernel); the
    /// completion queue gets four times as many.
    pub entries: u32,
    /// Let a kernel thread poll the submission queue (`IORING_SETUP_SQPOLL`).
    pub sqpoll: bool,
    /// Receive buffers in the provided-buffer ring (a power of two, at most 32768).
    pub buf_count: u16,
    /// Bytes per receive buffer.
    pub buf_size: u32,
}

/// A socket whose operations go through a [`Ring`]. Close it with [`Ring::close`];
/// dropping it leaks the descriptor (see the module docs for why).
///
/// A socket may also sit in the ring's registered file table ([`Ring::fix`]); its
/// operations then name the slot instead of the descriptor, which spares the kernel a
/// file lookup and a reference count round trip per operation.
#[derive(Debug)]
pub struct Socket {
    fd: std::mem::ManuallyDrop<OwnedFd>,
    slot: Option<u32>,
}

impl From<OwnedFd> for Socket {
    fn from(fd: OwnedFd) -> Self {
        Socket {
            fd: std::mem::ManuallyDrop::new(fd),
            slot: None,
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Socket {
    fn into_raw(self) -> (i32, Option<u32>) {
        let slot = self.slot;
        (
            std::mem::ManuallyDrop::into_inner(self.fd).into_raw_fd(),
            slot,
        )
    }

    /// Whether the socket is in its ring's registered file table.
    pub fn is_fixed(&self) -> bool {
        self.slot.is_some()
    }
}

/// How an operation names its socket: the registered slot if it has one.
macro_rules! target {
    ($socket:expr, $build:expr) => {
        match $socket.slot {
            Some(slot) => $build(types::Fixed(slot)),
            None => $build(types::Fd($socket.as_fd().as_raw_fd())),
        }
    };
}

/// Names an operation in flight (for [`Ring::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(u64);

/// One completion, handed to the caller by [`Ring::reap`].
#[derive(Debug)]
pub struct Completion {
    /// The tag the operation was submitted with.
    pub tag: u64,
    /// More completions of this (multishot) operation will follow; when false, the
    /// operation is over.
    pub more: bool,
    /// What happened.
    pub event: Event,
}

/// What a completed operation produced.
#[derive(Debug)]
pub enum Event {
    /// A multishot accept produced a connection (or failed).
    Accepted(io::Result<Socket>),
    /// A multishot receive produced bytes, or `None` at end of stream (or failed).
    Received(io::Result<Option<RecvBuf>>),
    /// A send finished: `result` bytes of `buf[pos..]` were sent. The buffer is the
    /// caller's again.
    Sent {
        /// Bytes sent, or the error.
        result: io::Result<usize>,
        /// The buffer the send owned.
        buf: Vec<u8>,
        /// Where in `buf` the send started.
        pos: usize,
    },
    /// A one-shot poll fired (the returned events), or failed.
    Polled(io::Result<u32>),
}

/// Counters of one ring, for logs and leak tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RingStats {
    /// Calls that submit and may wait (each is at most one `io_uring_enter`).
    pub enters: u64,
    /// Of those, the ones that found no completion waiting and so asked the kernel to
    /// wait for one (the rest only submitted).
    pub waits: u64,
    /// Reaps that found at least one completion: `cqes / batches` is the batch size.
    pub batches: u64,
    /// Submission entries queued.
    pub sqes: u64,
    /// Completions reaped.
    pub cqes: u64,
    /// Receive completions.
    pub recv_cqes: u64,
    /// Send completions.
    pub send_cqes: u64,
    /// Receives that ended because the buffer ring was empty (`ENOBUFS`).
    pub enobufs: u64,
    /// Receive buffers handed out by completions.
    pub bufs_out: u64,
    /// Receive buffers given back to the kernel.
    pub bufs_in: u64,
    /// Send buffers handed to the kernel.
    pub sends_out: u64,
    /// Send buffers that came back (with their completion, or at teardown).
    pub sends_in: u64,
    /// Sockets closed through the ring.
    pub closes: u64,
    /// Sockets put in the registered file table ([`Ring::fix`]).
    pub fixed: u64,
    /// Sockets left out of it (table full or not registered).
    pub unfixed: u64,
    /// Operations that were still in flight when their socket was closed (cancelled
    /// by the close; their buffers waited in the ring for the completions).
    pub parked_at_close: u64,
    /// Operations in flight right now.
    pub in_flight: u64,
    /// Operations the kernel had not completed when the ring was torn down (their
    /// memory was leaked on purpose).
    pub leaked_ops: u64,
}

/// What an entry of the operation table owns while the kernel works.
enum Kind {
    Accept(#[allow(dead_code)] Box<dyn AsFd>),
    Recv,
    Send {
        buf: Vec<u8>,
        pos: usize,
    },
    Poll(#[allow(dead_code)] Box<dyn AsFd>),
    /// The cancel in front of a close (its result counts what it cancelled).
    CloseCancel,
    /// A cancel or close: nothing to own, nothing to report.
    Internal,
    /// The close of a registered file table slot: the slot is free again when it
    /// completes.
    CloseSlot(u32),
}

/// Which kind of operation an entry is, without what it owns.
#[derive(Clone, Copy)]
enum What {
    Accept,
    Recv,
    Send,
    Poll,
    CloseCancel,
    Internal,
    CloseSlot(u32),
}

impl What {
    fn of(kind: &Kind) -> What {
        match kind {
            Kind::Accept(_) => What::Accept,
            Kind::Recv => What::Recv,
            Kind::Send { .. } => What::Send,
            Kind::Poll(_) => What::Poll,
            Kind::CloseCancel => What::CloseCancel,
            Kind::Internal => What::Internal,
            Kind::CloseSlot(slot) => What::CloseSlot(*slot),
        }
    }
}

struct Op {
    generation: u32,
    tag: u64,
    kind: Kind,
}

/// An io_uring with a provided-buffer ring and a table of operations in flight.
///
/// Not `Send`: a ring belongs to the thread that made it (it is set up with
/// `IORING_SETUP_SINGLE_ISSUER`).
pub struct Ring {
    ring: IoUring,
    ops: Slab<Op>,
    generation: u32,
    pool: Option<Rc<Pool>>,
    cqes: Vec<(u64, i32, u32)>,
    stats: RingStats,
    sqpoll: bool,
    torn_down: bool,
    /// Free slots of the registered file table (empty: none registered, or all used).
    free_slots: Vec<u32>,
}

impl Ring {
    /// Set up a ring and register its buffer ring.
    pub fn new(config: RingConfig) -> io::Result<Ring> {
        let pool = Pool::new(config.buf_count, config.buf_size)?;
        let entries = config.entries.clamp(1, 32768);
        let ring = build(entries, config.sqpoll)?;
        // SAFETY: the entry ring stays allocated until the group is unregistered or
        // the ring is gone: `Ring` holds the pool until `shutdown` unregistered it,
        // and leaks it otherwise.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                pool.ring_addr(),
                pool.count(),
                BUF_GROUP,
                0,
            )?;
        }
        Ok(Ring {
            ring,
            ops: Slab::with_capacity(1024),
            generation: 0,
            pool: Some(Rc::new(pool)),
            cqes: Vec::with_capacity(1024),
            stats: RingStats::default(),
            sqpoll: config.sqpoll,
            torn_down: false,
            free_slots: Vec::new(),
        })
    }

    /// Register a sparse file table of `slots` entries, for [`Ring::fix`]. Call once.
    pub fn register_files(&mut self, slots: u32) -> io::Result<()> {
        if slots == 0 {
            return Ok(());
        }
        self.ring.submitter().register_files_sparse(slots)?;
        self.free_slots = (0..slots).rev().collect();
        Ok(())
    }

    /// Put `socket` in the registered file table (one `io_uring_register` call), so
    /// that its receives, sends and cancels name the slot. Returns false, leaving the
    /// socket as it was, when there is no table or no free slot, or the kernel refuses.
    pub fn fix(&mut self, socket: &mut Socket) -> bool {
        if socket.slot.is_some() {
            return true;
        }
        let Some(slot) = self.free_slots.pop() else {
            self.stats.unfixed += 1;
            return false;
        };
        let raw = socket.as_fd().as_raw_fd();
        match self.ring.submitter().register_files_update(slot, &[raw]) {
            Ok(1) => {
                socket.slot = Some(slot);
                self.stats.fixed += 1;
                true
            }
            _ => {
                self.free_slots.push(slot);
                self.stats.unfixed += 1;
                false
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> RingStats {
        let mut s = self.stats;
        if let Some(pool) = &self.pool {
            (s.bufs_out, s.bufs_in) = pool.counts();
        }
        s.in_flight = self.ops.len() as u64;
        s
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Accept connections on `listener` until cancelled or failed; each one is an
    /// [`Event::Accepted`] with `tag`. The operation keeps `listener` open.
    pub fn accept_multi<F: AsFd + 'static>(&mut self, listener: F, tag: u64) -> io::Result<OpId> {
        let fd = types::Fd(listener.as_fd().as_raw_fd());
        let entry = opcode::AcceptMulti::new(fd)
            .flags(libc::SOCK_CLOEXEC)
            .build();
        self.start(tag, Kind::Accept(Box::new(listener)), entry, None, None)
            .map_err(|(e, _)| e)
    }

    /// Receive on `socket` into the buffer ring until cancelled, failed, out of
    /// buffers (`ENOBUFS`) or at end of stream; each piece is an [`Event::Received`].
    pub fn recv_multi(&mut self, socket: &Socket, tag: u64) -> io::Result<OpId> {
        let entry = target!(socket, |fd| opcode::RecvMulti::new(fd, BUF_GROUP).build());
        self.start(tag, Kind::Recv, entry, None, None)
            .map_err(|(e, _)| e)
    }

    /// Receive once on `socket` into a buffer of the buffer ring: one
    /// [`Event::Received`] (at most one buffer's worth), then the operation is over.
    /// For a reader under flow control: after it stops asking, at most one more piece
    /// arrives, where a multishot receive could deliver everything queued.
    pub fn recv_once(&mut self, socket: &Socket, tag: u64) -> io::Result<OpId> {
        let len = self.pool.as_ref().map_or(0, |p| p.size());
        let entry = target!(socket, |fd| opcode::Recv::new(
            fd,
            std::ptr::null_mut(),
            len
        )
        .buf_group(BUF_GROUP)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT));
        self.start(tag, Kind::Recv, entry, None, None)
            .map_err(|(e, _)| e)
    }

    /// Send `buf[pos..]` on `socket`. The buffer belongs to the operation until its
    /// [`Event::Sent`] completion hands it back; on error it is returned at once.
    pub fn send(
        &mut self,
        socket: &Socket,
        buf: Vec<u8>,
        pos: usize,
        tag: u64,
    ) -> Result<OpId, (io::Error, Vec<u8>)> {
        if pos >= buf.len() {
            let e = io::Error::new(io::ErrorKind::InvalidInput, "nothing to send");
            return Err((e, buf));
        }
        let len = u32::try_from(buf.len() - pos).unwrap_or(u32::MAX);
        // The pointer stays valid when the Vec moves into the table: moving a Vec
        // does not move its heap buffer, and nobody touches it until the completion.
        let ptr = buf[pos..].as_ptr();
        let entry = target!(socket, |fd| opcode::Send::new(fd, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build());
        self.stats.sends_out += 1;
        match self.start(tag, Kind::Send { buf, pos }, entry, None, None) {
            Ok(id) => Ok(id),
            Err((e, kind)) => {
                self.stats.sends_in += 1;
                match kind {
                    Kind::Send { buf, .. } => Err((e, buf)),
                    _ => Err((e, Vec::new())),
                }
            }
        }
    }

    /// Wait (once) for `fd` to become readable; an [`Event::Polled`] with `tag`. The
    /// operation keeps `fd` open.
    pub fn poll_readable<F: AsFd + 'static>(&mut self, fd: F, tag: u64) -> io::Result<OpId> {
        let raw = types::Fd(fd.as_fd().as_raw_fd());
        let entry = opcode::PollAdd::new(raw, libc::POLLIN as u32).build();
        self.start(tag, Kind::Poll(Box::new(fd)), entry, None, None)
            .map_err(|(e, _)| e)
    }

    /// Ask the kernel to cancel `op` (a no-op if it already finished). Its final
    /// completion still arrives, and with it whatever it owned.
    pub fn cancel(&mut self, op: OpId) -> io::Result<()> {
        let (slot, generation) = split(op.0);
        if self
            .ops
            .get(slot)
            .is_none_or(|o| o.generation != generation)
        {
            return Ok(());
        }
        let entry = opcode::AsyncCancel::new(op.0).build();
        self.start(0, Kind::Internal, entry, None, None)
            .map(drop)
            .map_err(|(e, _)| e)
    }

    /// Cancel every operation on `socket`, then close it, both through the ring (the
    /// close is hard-linked behind the cancel; a registered socket's slot is closed
    /// between the two, and reused once that completes). Operations cancelled this way
    /// still complete, and their buffers come back with the completions. If the ring
    /// cannot take the close, the descriptor is leaked (and the error returned).
    pub fn close(&mut self, socket: Socket) -> io::Result<()> {
        let (raw, slot) = socket.into_raw();
        let cancel = match slot {
            Some(slot) => types::CancelBuilder::fd(types::Fixed(slot)),
            None => types::CancelBuilder::fd(types::Fd(raw)),
        };
        let cancel = opcode::AsyncCancel2::new(cancel.all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK);
        let close = opcode::Close::new(types::Fd(raw)).build();
        let close_slot = slot.map(|slot| {
            let entry = opcode::Close::new(types::Fixed(slot))
                .build()
                .flags(squeue::Flags::IO_HARDLINK);
            (entry, Kind::CloseSlot(slot))
        });
        self.stats.closes += 1;
        match self.start(0, Kind::CloseCancel, cancel, close_slot, Some(close)) {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                // Could not queue it (the ring is failing). Submissions naming the
                // descriptor may still be queued, so closing the number directly could
                // let them reach whatever reuses it: leak it instead.
                self.stats.closes -= 1;
                Err(e)
            }
        }
    }

    /// Queue `entry` as a new operation owning `kind`, then `middle` and `then`
    /// (each hard-linked behind the one before it by the caller, internal operations
    /// of their own) if given.
    fn start(
        &mut self,
        tag: u64,
        kind: Kind,
        entry: squeue::Entry,
        middle: Option<(squeue::Entry, Kind)>,
        then: Option<squeue::Entry>,
    ) -> Result<OpId, (io::Error, Kind)> {
        let first = self.insert(tag, kind);
        if middle.is_none() && then.is_none() {
            return match self.push(&[entry.user_data(first)]) {
                Ok(()) => Ok(OpId(first)),
                Err(e) => Err((e, self.ops.remove(split(first).0).kind)),
            };
        }
        // Unused places are never pushed (only `chain[..n]` is).
        let filler = opcode::Nop::new().build();
        let mut chain = [entry.user_data(first), filler.clone(), filler];
        let mut extra = [0u64; 2];
        let mut n = 1;
        for (entry, kind) in middle.into_iter().chain(then.map(|e| (e, Kind::Internal))) {
            let id = self.insert(0, kind);
            extra[n - 1] = id;
            chain[n] = entry.user_data(id);
            n += 1;
        }
        let pushed = self.push(&chain[..n]);
        if pushed.is_err() {
            // The slot of a CloseSlot dropped here is lost (the ring is failing).
            for &id in &extra[..n - 1] {
                self.ops.remove(split(id).0);
            }
        }
        match pushed {
            Ok(()) => Ok(OpId(first)),
            Err(e) => Err((e, self.ops.remove(split(first).0).kind)),
        }
    }

    fn insert(&mut self, tag: u64, kind: Kind) -> u64 {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let slot = self.ops.insert(Op {
            generation,
            tag,
            kind,
        });
        join(slot, generation)
    }

    fn push(&mut self, entries: &[squeue::Entry]) -> io::Result<()> {
        for _ in 0..64 {
            // SAFETY: every entry was built by this module, and what it points at is
            // owned by its operation's table entry (a send's Vec, an accept's or a
            // poll's descriptor) or is a socket that can only be closed through this
            // ring, behind the entry. Table entries are removed only when the
            // operation's last completion is reaped, or leaked at teardown.
            let pushed = unsafe { self.ring.submission().push_multiple(entries) };
            if pushed.is_ok() {
                self.stats.sqes += entries.len() as u64;
                return Ok(());
            }
            // Full: hand what is queued to the kernel and try again.
            self.stats.enters += 1;
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e),
            }
            if self.sqpoll {
                match self.ring.submitter().squeue_wait() {
                    Ok(_) => {}
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(io::Error::other("io_uring submission queue stays full"))
    }

    /// Submit everything queued and wait for at least one completion, at most
    /// `timeout` (`None`: no limit). Returns at once when completions are waiting.
    ///
    /// A signal makes it return an `ErrorKind::Interrupted` error: call it again.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.waiter().submit_and_wait(timeout)
    }

    /// The waiting half of the ring, which is `Send`: the wait may run where the ring
    /// itself may not go, e.g. in a closure that an embedding interpreter runs with
    /// its global lock released.
    pub fn waiter(&mut self) -> Waiter<'_> {
        self.stats.enters += 1;
        let ready = !self.ring.completion().is_empty();
        if !ready {
            self.stats.waits += 1;
        }
        Waiter {
            ring: &mut self.ring,
            ready,
        }
    }

    /// Wait (once) for `fd` to become writable; an [`Event::Polled`] with `tag`. The
    /// operation keeps `fd` open.
    pub fn poll_writable<F: AsFd + 'static>(&mut self, fd: F, tag: u64) -> io::Result<OpId> {
        let raw = types::Fd(fd.as_fd().as_raw_fd());
        let entry = opcode::PollAdd::new(raw, libc::POLLOUT as u32).build();
        self.start(tag, Kind::Poll(Box::new(fd)), entry, None, None)
            .map_err(|(e, _)| e)
    }

    /// Move every waiting completion into `out` (appending). Completions of internal
    /// operations (cancels, closes) are counted, not reported.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        self.cqes.clear();
        self.cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let cqes = std::mem::take(&mut self.cqes);
        if !cqes.is_empty() {
            self.stats.batches += 1;
        }
        for &(user_data, res, flags) in &cqes {
            if let Some(c) = self.complete(user_data, res, flags) {
                out.push(c);
            }
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, user_data: u64, res: i32, flags: u32) -> Option<Completion> {
        self.stats.cqes += 1;
        // A buffer the kernel picked belongs to user space now, whatever became of
        // the operation: wrap it so that it goes back to the ring on every path.
        let buf = match (cqueue::buffer_select(flags), &self.pool) {
            (Some(bid), Some(pool)) => pool.take(bid, u32::try_from(res).unwrap_or(0)),
            _ => None,
        };
        let (slot, generation) = split(user_data);
        let op = self.ops.get(slot).filter(|o| o.generation == generation)?;
        let tag = op.tag;
        let what = What::of(&op.kind);
        let more = cqueue::more(flags);
        // A multishot operation keeps its entry (and what it owns) until its last
        // completion.
        let owned = if more {
            None
        } else {
            Some(self.ops.remove(slot))
        };
        let event = match what {
            What::Accept => return Some(accepted(tag, more, res)),
            What::Recv => {
                self.stats.recv_cqes += 1;
                Event::Received(if res < 0 {
                    if -res == libc::ENOBUFS {
                        self.stats.enobufs += 1;
                    }
                    Err(io::Error::from_raw_os_error(-res))
                } else if res == 0 {
                    Ok(None)
                } else {
                    buf.map(Some)
                        .ok_or_else(|| io::Error::other("receive completion without a buffer"))
                })
            }
            What::Send => {
                let Some(Op {
                    kind: Kind::Send { buf, pos },
                    ..
                }) = owned
                else {
                    return None;
                };
                self.stats.send_cqes += 1;
                self.stats.sends_in += 1;
                let result = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
                Event::Sent { result, buf, pos }
            }
            What::Poll => Event::Polled(if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else {
                Ok(res as u32)
            }),
            What::CloseCancel => {
                // With IORING_ASYNC_CANCEL_ALL the result is how many were cancelled.
                self.stats.parked_at_close += u64::try_from(res).unwrap_or(0);
                return None;
            }
            What::Internal => return None,
            What::CloseSlot(slot) => {
                // Closed (or failed because it was empty): either way the slot names
                // nothing we use any more.
                self.free_slots.push(slot);
                return None;
            }
        };
        Some(Completion { tag, more, event })
    }

    /// Cancel every operation and wait (at most `timeout`) for their completions;
    /// then unregister the buffer ring. Completions reaped here are dropped (accepted
    /// sockets closed, buffers given back). Whatever is still in flight afterwards is
    /// leaked on purpose, and counted in [`RingStats::leaked_ops`]. Returns that
    /// count. Idempotent; also run when the ring is dropped.
    pub fn shutdown(&mut self, timeout: Duration) -> usize {
        if self.torn_down {
            return self.stats.leaked_ops as usize;
        }
        self.torn_down = true;
        let deadline = Instant::now() + timeout;
        let mut done = Vec::new();
        if !self.ops.is_empty() {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any().all()).build();
            let _ = self.start(0, Kind::Internal, cancel, None, None);
        }
        // Bounded by the deadline: each wait returns by then.
        while !self.ops.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if let Err(e) = self.submit_and_wait(Some(deadline - now)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            self.reap(&mut done);
            for c in done.drain(..) {
                if let Event::Accepted(Ok(socket)) = c.event {
                    // Nothing was ever queued on it: closing it directly is safe.
                    drop(std::mem::ManuallyDrop::into_inner(socket.fd));
                }
            }
        }
        let left = self.ops.len();
        self.stats.leaked_ops = left as u64;
        if let Some(pool) = &self.pool {
            (self.stats.bufs_out, self.stats.bufs_in) = pool.counts();
        }
        if left == 0 && self.ring.submitter().unregister_buf_ring(BUF_GROUP).is_ok() {
            // The kernel no longer knows the memory: the pool is freed when the
            // last RecvBuf is dropped.
            self.pool = None;
        } else {
            // The kernel may still write into the buffers or read the sends: leak
            // them rather than free memory it uses.
            std::mem::forget(self.pool.take());
            std::mem::forget(std::mem::take(&mut self.ops));
        }
        left
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

fn accepted(tag: u64, more: bool, res: i32) -> Completion {
    let result = if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        // SAFETY: a successful accept completion's result is a descriptor the kernel
        // just installed in our table for us; nothing else owns it.
        Ok(Socket::from(unsafe { OwnedFd::from_raw_fd(res) }))
    };
    Completion {
        tag,
        more,
        event: Event::Accepted(result),
    }
}

/// Errors after which the ring is fine: reap completions and go on.
/// The waiting half of a [`Ring`] ([`Ring::waiter`]): submits what is queued and waits
/// for a completion. It borrows the ring, so nothing can be queued meanwhile.
pub struct Waiter<'a> {
    ring: &'a mut IoUring,
    /// Completions were already waiting when it was made: only submit.
    ready: bool,
}

impl Waiter<'_> {
    /// Submit everything queued and wait for at least one completion, at most
    /// `timeout` (`None`: no limit); only submit when completions are waiting.
    pub fn submit_and_wait(self, timeout: Option<Duration>) -> io::Result<()> {
        let result = if self.ready {
            self.ring.submit()
        } else if let Some(t) = timeout {
            let ts = types::Timespec::from(t);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(1, &args)
        } else {
            self.ring.submit_and_wait(1)
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || is_transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN))
}

fn join(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (slot as u64 & 0xffff_ffff)
}

fn split(user_data: u64) -> (usize, u32) {
    ((user_data & 0xffff_ffff) as usize, (user_data >> 32) as u32)
}

/// Set up the kernel ring with the fastest flags this kernel accepts.
fn build(entries: u32, sqpoll: bool) -> io::Result<IoUring> {
    let cq = entries.saturating_mul(4).max(1024);
    let mut last = None;
    for attempt in 0..3 {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        if sqpoll {
            b.setup_sqpoll(SQPOLL_IDLE.as_millis() as u32);
            if attempt == 0 {
                b.setup_single_issuer();
            }
        } else {
            match attempt {
                // Completions are produced only when the loop waits (no interrupting
                // task work while it runs), for one issuing thread.
                // SUBMIT_ALL: one failed entry does not stop the rest of a batch
                // (each failure still gets its own completion).
                0 => {
                    b.setup_single_issuer()
                        .setup_defer_taskrun()
                        .setup_submit_all();
                }
                1 => {
                    b.setup_coop_taskrun()
                        .setup_taskrun_flag()
                        .setup_submit_all();
                }
                _ => {}
            }
        }
        match b.build(entries) {
            Ok(ring) => return Ok(ring),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

#[cfg(test)]
mod tests;
