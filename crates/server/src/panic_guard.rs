//! Panics caught per connection: a bug in one session (or one hostile input that
//! reaches it) closes that connection only, not the worker, its thread or the server.
//!
//! Every strategy opens its sessions through [`open_guarded`], which wraps the app's
//! session in a [`Guarded`] session: each call into the session runs under
//! [`std::panic::catch_unwind`]. After a panic the inner session is dropped (its state
//! may be broken), the bytes it appended to `out` during the failed call are removed,
//! the worker's [`WorkerStats::panics`] counter is bumped and the panic is logged
//! (at most once a second per process); the guarded session then reports an error
//! and asks to close, so every driver closes the connection the way it closes one
//! after a protocol error. The drivers need no change.
//!
//! The panic message itself is still printed by the process's panic hook (a caught
//! panic is a bug to fix, not a normal event).
//!
//! `AssertUnwindSafe` is sound here in the sense that matters: nothing that could be
//! left half-updated by the panic is used again. The session is dropped; `out` is
//! truncated back to where the call started.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use c10k_proto::{App, Cx, Peer, ProtoError, Session};

use crate::ratelog::RateLog;
use crate::stats::WorkerStats;

/// A session whose panics are caught; see the [module docs](self).
pub(crate) struct Guarded<S> {
    /// `None` once the session panicked (or its `open` did).
    inner: Option<S>,
    stats: Arc<WorkerStats>,
}

/// The error a guarded session reports after its session panicked.
#[derive(Debug, thiserror::Error)]
#[error("the session panicked; connection closed")]
pub(crate) struct SessionPanicked;

/// Open `app`'s session for `peer`, guarded. A panic in `App::open` yields a session
/// that refuses all input (the connection is closed at once).
pub(crate) fn open_guarded<A: App>(
    app: &A,
    peer: &Peer,
    stats: &Arc<WorkerStats>,
) -> Guarded<A::Session> {
    let inner = match catch_unwind(AssertUnwindSafe(|| app.open(peer))) {
        Ok(s) => Some(s),
        Err(payload) => {
            caught(stats, "open", payload.as_ref());
            None
        }
    };
    Guarded {
        inner,
        stats: Arc::clone(stats),
    }
}

/// Count and log one caught panic.
fn caught(stats: &WorkerStats, call: &str, payload: &(dyn Any + Send)) {
    WorkerStats::add(&stats.panics, 1);
    static LOG: Mutex<Option<RateLog>> = Mutex::new(None);
    let mut log = match LOG.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    let hit = log
        .get_or_insert_with(|| RateLog::new(Duration::from_secs(1)))
        .hit(Instant::now());
    if let Some(n) = hit {
        let msg = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(non-string payload)");
        tracing::error!(
            "a session panicked in {call} ({msg}); its connection is closed ({n} caught panic(s) this second)"
        );
    }
}

impl<S: Session> Guarded<S> {
    /// Run `f` on the inner session; on a panic drop the session, count and log it.
    fn guard<R>(&mut self, call: &str, f: impl FnOnce(&mut S) -> R) -> Option<R> {
        let s = self.inner.as_mut()?;
        match catch_unwind(AssertUnwindSafe(|| f(s))) {
            Ok(r) => Some(r),
            Err(payload) => {
                caught(&self.stats, call, payload.as_ref());
                self.poison();
                None
            }
        }
    }

    /// [`guard`](Self::guard) a call that appends to `out`: when it panics, what it
    /// appended is removed.
    fn guard_out<R>(
        &mut self,
        call: &str,
        out: &mut Vec<u8>,
        f: impl FnOnce(&mut S, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        let mark = out.len();
        let r = self.guard(call, |s| f(s, out));
        if r.is_none() {
            out.truncate(mark);
        }
        r
    }

    /// Ask the inner session something; `fallback` without one or when it panics (the
    /// session is kept: the next call that can change it finds out).
    fn ask<R>(&self, call: &str, fallback: R, f: impl FnOnce(&S) -> R) -> R {
        let Some(s) = &self.inner else {
            return fallback;
        };
        match catch_unwind(AssertUnwindSafe(|| f(s))) {
            Ok(r) => r,
            Err(payload) => {
                caught(&self.stats, call, payload.as_ref());
                fallback
            }
        }
    }
}

impl<S> Guarded<S> {
    /// Drop the inner session; a panic in its `drop` is caught too.
    fn poison(&mut self) {
        if let Some(s) = self.inner.take() {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(s)));
        }
    }
}

impl<S: Session> Session for Guarded<S> {
    fn handle_input(
        &mut self,
        cx: &Cx,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, ProtoError> {
        self.guard_out("handle_input", out, |s, out| s.handle_input(cx, input, out))
            .unwrap_or_else(|| Err(ProtoError::Other(Box::new(SessionPanicked))))
    }

    fn handle_eof(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        let _ = self.guard_out("handle_eof", out, |s, out| s.handle_eof(cx, out));
    }

    fn wants_close(&self) -> bool {
        self.ask("wants_close", true, |s| s.wants_close())
    }

    fn mid_request(&self) -> bool {
        self.ask("mid_request", false, |s| s.mid_request())
    }

    fn start_drain(&mut self) {
        let _ = self.guard("start_drain", |s| s.start_drain());
    }

    fn handle_timeout(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        let _ = self.guard_out("handle_timeout", out, |s, out| s.handle_timeout(cx, out));
    }

    fn take_requests(&mut self) -> u64 {
        self.guard("take_requests", |s| s.take_requests())
            .unwrap_or(0)
    }

    fn wants_mailbox(&self) -> bool {
        self.ask("wants_mailbox", false, |s| s.wants_mailbox())
    }

    fn attach_mailbox(&mut self, mailbox: c10k_proto::Mailbox) {
        let _ = self.guard("attach_mailbox", |s| s.attach_mailbox(mailbox));
    }

    fn handle_message(&mut self, cx: &Cx, msg: c10k_proto::Message, out: &mut Vec<u8>) {
        let _ = self.guard_out("handle_message", out, |s, out| {
            s.handle_message(cx, msg, out)
        });
    }

    fn poll_timer(&self) -> Option<std::time::Instant> {
        self.ask("poll_timer", None, |s| s.poll_timer())
    }

    fn handle_timer(&mut self, cx: &Cx, out: &mut Vec<u8>) {
        let _ = self.guard_out("handle_timer", out, |s, out| s.handle_timer(cx, out));
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.poison();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Boom;
    struct BoomSession;
    impl App for Boom {
        type Session = BoomSession;
        fn open(&self, _peer: &Peer) -> BoomSession {
            BoomSession
        }
    }
    impl Session for BoomSession {
        fn handle_input(
            &mut self,
            _cx: &Cx,
            input: &[u8],
            out: &mut Vec<u8>,
        ) -> Result<usize, ProtoError> {
            out.extend_from_slice(b"partial");
            if input.starts_with(b"boom") {
                panic!("boom");
            }
            out.clear();
            out.extend_from_slice(input);
            Ok(input.len())
        }
        fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {
            panic!("eof");
        }
        fn wants_close(&self) -> bool {
            false
        }
    }

    #[test]
    fn a_panic_is_caught_counted_and_closes_the_session() {
        let stats = Arc::new(WorkerStats::default());
        let mut s = open_guarded(&Boom, &Peer::unknown(), &stats);
        let cx = Cx::new(std::time::UNIX_EPOCH);
        let mut out = Vec::new();
        assert_eq!(s.handle_input(&cx, b"hi", &mut out).unwrap(), 2);
        assert_eq!(out, b"hi");
        assert!(!s.wants_close());
        out.clear();
        out.extend_from_slice(b"kept");
        assert!(s.handle_input(&cx, b"boom", &mut out).is_err());
        assert_eq!(out, b"kept", "the panicking call's output is removed");
        assert!(s.wants_close());
        assert!(s.handle_input(&cx, b"hi", &mut out).is_err());
        assert_eq!(WorkerStats::get(&stats.panics), 1);
    }

    #[test]
    fn a_panic_at_eof_is_caught_too() {
        let stats = Arc::new(WorkerStats::default());
        let mut s = open_guarded(&Boom, &Peer::unknown(), &stats);
        let cx = Cx::new(std::time::UNIX_EPOCH);
        let mut out = Vec::new();
        s.handle_eof(&cx, &mut out);
        assert!(out.is_empty());
        assert!(s.wants_close());
        assert_eq!(WorkerStats::get(&stats.panics), 1);
    }
}
