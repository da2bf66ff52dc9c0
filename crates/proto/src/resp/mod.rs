//! A RESP2 (Redis protocol) server: sans-IO sessions over one shared in-memory [`Store`].
//!
//! Requests are multibulk arrays (`*N\r\n$len\r\nbytes\r\n...`, binary-safe) or inline
//! commands (a line of words, with Redis's quoting rules). They are parsed
//! incrementally: a large request arriving in pieces is consumed piece by piece and
//! never buffered twice, and a declared length is never allocated before its bytes
//! arrive. Protocol errors are answered like Redis answers them, and then the
//! connection closes; command errors do not close it.
//!
//! Commands: `PING`, `ECHO`, `GET`, `SET` (with `EX`/`PX`/`EXAT`/`PXAT`, `NX`/`XX`,
//! `GET`, `KEEPTTL`), `DEL`, `EXISTS`, `INCR`, `DECR`, `INCRBY`, `DECRBY`, `MSET`,
//! `MGET`, `CONFIG GET` (`appendonly` and `save` only), `COMMAND` (always empty), `QUIT`, `SELECT 0`,
//! `FLUSHALL`, `FLUSHDB`, `DBSIZE`, `RESET`.
//!
//! Pub/sub, with Redis 7's RESP2 semantics: `SUBSCRIBE`, `UNSUBSCRIBE`, `PSUBSCRIBE`
//! (glob patterns matched as Redis matches them, [`glob_match`]), `PUNSUBSCRIBE`,
//! `PUBLISH`, `PUBSUB CHANNELS | NUMSUB | NUMPAT | HELP` (and `SHARDCHANNELS` /
//! `SHARDNUMSUB`, always empty: there is no `SSUBSCRIBE`). One [`Broker`] per app, so
//! per process. A subscribing session asks its driver for a [`Mailbox`]
//! ([`Session::wants_mailbox`]) and receives messages through
//! [`Session::handle_message`]; a subscriber whose mailbox is full is disconnected
//! (see [`Broker`] for the policy and [`RespApp::pubsub_stats`] for the counters).
//! Channel names and patterns are bulk strings like any other argument: up to
//! [`MAX_BULK_LEN`] (512 MiB, Redis's `proto-max-bulk-len`) in a multibulk request,
//! [`MAX_INLINE_LEN`] for a whole inline command (Redis's 64 KiB).
//!
//! The client side, [`encode_command`] and [`decode_reply`], is here too.
//!
//! ```
//! use c10k_proto::{App, Cx, Peer, Session, resp::RespApp};
//!
//! let app = RespApp::new();
//! let mut session = app.open(&Peer::unknown());
//! let cx = Cx::new(std::time::UNIX_EPOCH);
//! let mut out = Vec::new();
//! let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\n";
//! assert_eq!(session.handle_input(&cx, input, &mut out).unwrap(), input.len());
//! assert_eq!(out, b"+OK\r\n$1\r\nv\r\n");
//! ```

mod broker;
mod codec;
mod commands;
mod glob;
mod parser;
mod pubsub;
#[cfg(test)]
mod pubsub_tests;
mod store;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use broker::{Broker, PubSubStats};
pub use codec::{MAX_REPLY_DEPTH, Reply, decode_reply, encode_command};
pub use glob::{MATCH_BUDGET, glob_match};
pub use store::{SHARDS, Store};

use crate::{App, Cx, Mailbox, Message, OUT_BATCH_LIMIT, Peer, ProtoError, Session};
use commands::Outcome;
use parser::{Flow, RequestParser};
use pubsub::Subscriptions;

/// The longest bulk string a request may carry (Redis's `proto-max-bulk-len`).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// The most arguments a multibulk request may declare.
pub const MAX_MULTIBULK_LEN: usize = 1024 * 1024;

/// The longest inline command, `*N` or `$len` line, not counting its line ending.
pub const MAX_INLINE_LEN: usize = 64 * 1024;

/// The most argument bytes one request may carry in total (Redis's
/// `client-query-buffer-limit`).
pub const MAX_REQUEST_LEN: usize = 1024 * 1024 * 1024;

/// What went wrong on a RESP connection.
///
/// The protocol errors are answered with `-ERR <display text>\r\n` before the
/// connection closes, in Redis's words; [`RespError::InvalidReply`] comes from the
/// client-side [`decode_reply`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    /// A `*N` header whose count is not a number or exceeds [`MAX_MULTIBULK_LEN`].
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$len` header whose length is not a number, negative, or exceeds
    /// [`MAX_BULK_LEN`].
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// Something other than `$` where a multibulk element should start.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    /// An inline command longer than [`MAX_INLINE_LEN`].
    #[error("Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// A `*N` line longer than [`MAX_INLINE_LEN`].
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$len` line longer than [`MAX_INLINE_LEN`].
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// An inline command with a quote left open (or closed and not followed by a space).
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// Bulk data not followed by `\r\n`.
    #[error("Protocol error: expected CRLF after bulk data")]
    MissingBulkTerminator,
    /// A request whose arguments add up to more than [`MAX_REQUEST_LEN`] bytes.
    #[error("Protocol error: too big request")]
    RequestTooLarge,
    /// Bytes that are not a RESP2 reply (from [`decode_reply`]).
    #[error("invalid reply: {0}")]
    InvalidReply(&'static str),
}

impl RespError {
    /// Appends the error reply a server sends for this error.
    fn write_reply(&self, out: &mut Vec<u8>) {
        let mut message = b"ERR ".to_vec();
        match self {
            // The offending byte goes out raw, as Redis sends it.
            RespError::ExpectedBulk(got) => {
                message.extend_from_slice(b"Protocol error: expected '$', got '");
                message.push(*got);
                message.push(b'\'');
            }
            other => message.extend_from_slice(other.to_string().as_bytes()),
        }
        codec::write_error(out, &message);
    }
}

/// The RESP protocol: opens [`RespSession`]s over one shared [`Store`] and one shared
/// pub/sub [`Broker`].
///
/// Clones share the store and the broker. There is one broker per app, so one per
/// process: with `fork` and `prefork` a message reaches the subscribers connected to
/// the publisher's process only.
#[derive(Debug, Clone, Default)]
pub struct RespApp {
    store: Arc<Store>,
    broker: Arc<Broker>,
}

impl RespApp {
    /// An app with a new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An app over an existing store (to share it, or to look into it), with a new
    /// broker.
    pub fn with_store(store: Arc<Store>) -> Self {
        RespApp {
            store,
            broker: Arc::default(),
        }
    }

    /// The store this app's sessions use.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The pub/sub broker this app's sessions use.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Pub/sub counters: messages published and delivered, slow subscribers
    /// disconnected (see [`Broker`]).
    pub fn pubsub_stats(&self) -> PubSubStats {
        self.broker.stats()
    }
}

impl App for RespApp {
    type Session = RespSession;

    fn open(&self, _peer: &Peer) -> RespSession {
        RespSession {
            store: Arc::clone(&self.store),
            subs: Subscriptions::new(Arc::clone(&self.broker)),
            parser: RequestParser::new(),
            close: false,
            draining: false,
            answered: 0,
        }
    }
}

/// One RESP connection: the request parser's state, a handle on the store, and its
/// pub/sub subscriptions (unregistered when it closes or is dropped).
#[derive(Debug)]
pub struct RespSession {
    store: Arc<Store>,
    subs: Subscriptions,
    parser: RequestParser,
    /// Set by `QUIT`, a protocol error, the end of input or the end of a drain.
    close: bool,
    /// The server is shutting down: close after the request in progress.
    draining: bool,
    /// Commands answered since the last [`Session::take_requests`].
    answered: u64,
}

impl Session for RespSession {
    fn handle_input(
        &mut self,
        cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        if self.close || (out.len() >= OUT_BATCH_LIMIT && self.parser.is_idle()) {
            return Ok(0);
        }
        let now = cx.unix_millis();
        let store = &self.store;
        let subs = &mut self.subs;
        let close = &mut self.close;
        let draining = self.draining;
        let answered = &mut self.answered;
        let fed = self.parser.feed(input, |args| {
            let outcome = commands::execute(store, subs, now, args, out);
            *answered += 1;
            if outcome == Outcome::Close || draining {
                *close = true;
                Flow::Stop
            } else if out.len() >= OUT_BATCH_LIMIT {
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        let result = match fed {
            Ok(used) => Ok(used),
            Err(err) => {
                err.write_reply(out);
                self.close = true;
                Err(err.into())
            }
        };
        if self.close {
            self.subs.leave();
        }
        result
    }

    fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
        self.close = true;
        self.subs.leave();
    }

    fn wants_close(&self) -> bool {
        self.close
    }

    fn mid_request(&self) -> bool {
        !self.close && self.parser.mid_request()
    }

    fn start_drain(&mut self) {
        self.draining = true;
        if !self.parser.mid_request() {
            self.close = true;
            self.subs.leave();
        }
    }

    fn take_requests(&mut self) -> u64 {
        std::mem::take(&mut self.answered)
    }

    fn wants_mailbox(&self) -> bool {
        self.subs.wants_mailbox()
    }

    fn attach_mailbox(&mut self, mailbox: Mailbox) {
        self.subs.attach(mailbox);
    }

    fn handle_message(&mut self, _cx: &Cx, msg: Message, out: &mut Vec<u8>) {
        if !self.close {
            self.subs.deliver(msg, out);
        }
    }
}
