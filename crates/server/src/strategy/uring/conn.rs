//! The completion shell: a socket driven through io_uring and its [`ConnCore`].
//!
//! What differs from the readiness shell is who holds the bytes. Received bytes
//! arrive in a buffer of the ring's pool: the core reads them in place (what the
//! session leaves unconsumed it copies), and the buffer goes back to the kernel at
//! once. A send owns its buffer until its completion: the shell takes it from the
//! core ([`ConnCore::take_transmit`]) and gives it back with the result
//! ([`ConnCore::sent_owned`]); one send is in flight per connection, so bytes never
//! overtake each other.

use c10k_sys::uring::{OpId, Socket};

use c10k_proto::Session;

use crate::lifecycle::{ConnCore, Env, OutputPool, Phase};

/// One connection of a ring worker.
pub(super) struct RingConn<S> {
    socket: Socket,
    core: ConnCore<S>,
    /// The receive, while armed; and whether it is being cancelled.
    pub(super) recv: Option<OpId>,
    pub(super) recv_cancelled: bool,
    /// Backpressure stopped this connection's reading at least once: from then on it
    /// receives one buffer at a time, as a multishot receive keeps delivering until
    /// its cancel lands (with SQPOLL on a busy machine, megabytes later).
    pub(super) throttled: bool,
}

impl<S: Session> RingConn<S> {
    pub(super) fn new(socket: Socket, session: S, now: std::time::Instant) -> Self {
        RingConn {
            socket,
            core: ConnCore::new(session, now),
            recv: None,
            recv_cancelled: false,
            throttled: false,
        }
    }

    pub(super) fn socket(&self) -> &Socket {
        &self.socket
    }

    pub(super) fn core(&self) -> &ConnCore<S> {
        &self.core
    }

    pub(super) fn core_mut(&mut self) -> &mut ConnCore<S> {
        &mut self.core
    }

    /// The socket (to close) and the output buffers (to reuse).
    pub(super) fn into_socket(self) -> (Socket, [Vec<u8>; 2]) {
        (self.socket, self.core.into_buffers())
    }

    /// Bytes arrived.
    pub(super) fn on_data(&mut self, data: &[u8], pool: &mut OutputPool, env: &Env<'_>) {
        self.core.received(env, data, pool);
    }

    /// The peer closed its write side.
    pub(super) fn on_eof(&mut self, pool: &mut OutputPool, env: &Env<'_>) {
        self.core.eof(env, pool);
    }

    /// The receive failed (reset, ...).
    pub(super) fn on_recv_error(&mut self, env: &Env<'_>) {
        self.core.failed(env);
    }

    /// A send finished; returns its buffer for reuse when done with.
    pub(super) fn on_sent(
        &mut self,
        result: std::io::Result<usize>,
        buf: Vec<u8>,
        pos: usize,
        pool: &mut OutputPool,
        env: &Env<'_>,
    ) -> Option<Vec<u8>> {
        self.core.sent_owned(env, result, buf, pos, pool)
    }

    /// The server drains. Received bytes whose completion has not been processed yet
    /// are a request in flight: the drain waits for them like for a fresh
    /// connection's first request. Returns whether it was deferred.
    pub(super) fn start_drain(&mut self, pool: &mut OutputPool, env: &Env<'_>) -> bool {
        let waiting =
            self.core.phase() == Phase::Open && self.core.is_idle() && self.bytes_waiting();
        self.core.start_drain(env, waiting, pool)
    }

    /// A drained connection went idle: it may close once nothing waits in the
    /// kernel (what does is delivered by the armed receive, and looked at again).
    pub(super) fn check_quiet(&mut self, pool: &mut OutputPool, env: &Env<'_>) {
        if self.core.needs_quiet_check() && !self.bytes_waiting() {
            self.core.read_would_block(env, pool);
        }
    }

    /// Whether the kernel holds received bytes not delivered to us yet (a peek; a
    /// receive completion may be on its way or its task work not run yet).
    fn bytes_waiting(&self) -> bool {
        let mut one = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(rustix::net::recv(&self.socket, &mut one[..], flags), Ok((n, _)) if n > 0)
    }

    /// Shut our write side if the core says so (it does once the last reply is
    /// taken by the kernel: no send is in flight then).
    pub(super) fn shutdown_if_due(&mut self) {
        if self.core.take_shutdown_write() {
            let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Write);
        }
    }
}
