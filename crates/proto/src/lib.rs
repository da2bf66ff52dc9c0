//! Sans-IO protocol sessions for c10k.
//!
//! A [`Session`] is one connection's protocol state: bytes in, bytes out. It never
//! touches a socket, a clock or a thread; the strategy that drives it (epoll, io_uring,
//! a thread per connection...) owns all of that. An [`App`] opens one session per
//! accepted connection and holds what the sessions share (the RESP store, say).
//!
//! The same session type therefore runs on every strategy, and a test can drive it
//! entirely in memory.
//!
//! ```
//! use c10k_proto::{App, Cx, Peer, Session, echo::EchoApp};
//!
//! let app = EchoApp;
//! let mut session = app.open(&Peer::unknown());
//! let cx = Cx::new(std::time::UNIX_EPOCH);
//! let mut out = Vec::new();
//! let used = session.handle_input(&cx, b"hello", &mut out).unwrap();
//! assert_eq!(used, 5);
//! assert_eq!(out, b"hello");
//! ```
#![forbid(unsafe_code)]

pub mod chat;
pub mod cx;
pub mod echo;
pub mod harness;
pub mod http;
pub mod mailbox;
pub mod proxy;
pub mod resp;

use std::net::SocketAddr;

pub use cx::Cx;
pub use mailbox::{Mailbox, Message, PostError};

/// A session may stop consuming pipelined input once `out` holds at least this many
/// bytes: it returns what it consumed so far, and the driver offers the rest again
/// once the output has drained. This bounds the output a burst of pipelined requests
/// can create in one call.
pub const OUT_BATCH_LIMIT: usize = 256 * 1024;

/// Who is on the other end of a connection, as far as the driver knows.
///
/// With the PROXY protocol the address is the one the proxy reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer {
    /// The client's address, when known.
    pub addr: Option<SocketAddr>,
    /// The local address the client connected to, when known.
    pub local: Option<SocketAddr>,
}

impl Peer {
    /// A peer whose addresses are unknown (tests, in-memory drivers).
    pub fn unknown() -> Self {
        Self::default()
    }
}

/// Why a session gave up on its connection.
///
/// When [`Session::handle_input`] returns an error, the session has already appended
/// its protocol's error reply (HTTP 400, RESP `-ERR Protocol error`...) to `out`, and
/// [`Session::wants_close`] is true: the driver flushes `out` and closes.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The HTTP request could not be served.
    #[error("http: {0}")]
    Http(#[from] http::HttpError),
    /// The RESP stream was malformed.
    #[error("resp: {0}")]
    Resp(#[from] resp::RespError),
    /// An error from an application protocol outside this crate.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// One connection's protocol state. Pure: bytes in, bytes out.
///
/// The driver's contract:
/// - it calls [`handle_input`](Session::handle_input) with every byte received and
///   not yet consumed, oldest first; bytes the session did not consume are offered
///   again, with more appended, on the next call;
/// - a session consumes every complete unit it can (a pipelined batch in one call),
///   except that it may stop early once `out.len() >= OUT_BATCH_LIMIT`; the driver
///   offers the rest again once `out` has been flushed;
/// - once [`wants_close`](Session::wants_close) is true the driver stops offering
///   input, flushes `out`, and closes the connection.
pub trait Session: Send {
    /// Offer received bytes. Append replies to `out`. Return how many input bytes
    /// were consumed; needing more bytes is not an error (return fewer).
    ///
    /// On error the protocol's error reply is already in `out` and the session
    /// wants the connection closed.
    fn handle_input(
        &mut self,
        cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError>;

    /// The peer closed its write side. Append any final bytes to `out`. Bytes still
    /// unconsumed at this point are an incomplete request and are dropped.
    fn handle_eof(&mut self, cx: &Cx, out: &mut Vec<u8>);

    /// True once the session wants the connection closed after `out` is flushed.
    ///
    /// A session that wants to close as soon as it is opened (a connection refused by
    /// a limit) is closed by the driver at once, without reading from it.
    fn wants_close(&self) -> bool;

    /// True while a request has started but is not complete (a partial HTTP head or
    /// body, a partial RESP multibulk). A draining server keeps such connections
    /// open until the request completes; idle ones it closes at once.
    fn mid_request(&self) -> bool {
        false
    }

    /// The server is shutting down: finish the request in progress and then ask to
    /// close (HTTP answers it with `Connection: close`).
    fn start_drain(&mut self) {}

    /// A request stayed incomplete for longer than the server's request timeout (a
    /// slow or stalled client, slowloris). Append a final reply if the protocol has one
    /// (HTTP: `408 Request Timeout`); the driver then flushes `out` and closes.
    fn handle_timeout(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {}

    /// Requests answered since the last call, for the server's request counter
    /// (`c10k_requests_total`). The driver calls it after each
    /// [`handle_input`](Session::handle_input). A protocol without request boundaries
    /// (echo) keeps the default, 0.
    fn take_requests(&mut self) -> u64 {
        0
    }

    /// Whether this session wants a [`Mailbox`]: asked after every call until it is
    /// given one, and given right after the call that said yes (before any of that
    /// call's output is written). Only sessions that are spoken to (a subscriber, a
    /// chat member) pay for one.
    fn wants_mailbox(&self) -> bool {
        false
    }

    /// The session's own mailbox, given once it
    /// [`wants_mailbox`](Session::wants_mailbox). Clones of it may be handed to
    /// anyone who will post to this connection (a broker, another session).
    fn attach_mailbox(&mut self, _mailbox: Mailbox) {}

    /// A message posted to this connection's mailbox. Called on the connection's own
    /// worker, in posting order, never concurrently with the other calls. Append any
    /// output to `out`.
    fn handle_message(&mut self, _cx: &Cx, _msg: Message, _out: &mut Vec<u8>) {}

    /// When the session wants [`handle_timer`](Session::handle_timer) called (an
    /// instant of the driver's monotonic clock, [`Cx::instant`]); `None`: no timer.
    /// Asked after every call; the latest answer wins.
    fn poll_timer(&self) -> Option<std::time::Instant> {
        None
    }

    /// The instant of [`poll_timer`](Session::poll_timer) has come. Append any
    /// output to `out`.
    fn handle_timer(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {}
}

/// A protocol: opens one [`Session`] per connection and owns what they share.
pub trait App: Send + Sync + 'static {
    /// The per-connection state.
    type Session: Session;
    /// Open a session for a newly accepted connection.
    fn open(&self, peer: &Peer) -> Self::Session;
}

impl<A: App> App for std::sync::Arc<A> {
    type Session = A::Session;
    fn open(&self, peer: &Peer) -> Self::Session {
        (**self).open(peer)
    }
}
