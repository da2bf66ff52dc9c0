//! The readiness contract: what the [`reactor`](super::reactor) asks of a kernel
//! readiness interface, in the style of mio's `sys` backends. epoll (level- or
//! edge-triggered), poll(2) and select(2) each implement [`Poller`]; the contract
//! test at the bottom of this file pins what they agree on, and each backend's tests
//! run it (one `#[test]` per backend: epoll-lt, epoll-et, poll, select).
//!
//! What every backend promises:
//! - `add` watches a descriptor under a token; adding a watched descriptor again is an
//!   error. `modify` changes what it is watched for and `delete` stops watching it;
//!   both are errors for a descriptor that is not watched under that token.
//! - `wait` appends one [`Ready`] per reported descriptor, carrying its token, and
//!   returns without reports when its timeout passes first.
//! - Level-triggered (poll, select, epoll-lt): unread input is reported on every wait
//!   until it is read. Edge-triggered (epoll-et): it is reported once per arrival, so a
//!   connection is read until the kernel has nothing more.
//! - The wake pipe ([`Source::Wake`]) is level-triggered under every backend: it is
//!   never drained, and the loop stops watching it once it has seen it.
//! - A peer's close is reported as readable or hang-up; the read finds the EOF.
//! - `forget` comes before a watched descriptor is closed, so that no closed (or
//!   reused) descriptor number stays watched.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// What a registration is for (a backend may treat them differently: the listener is
/// registered with `EPOLLEXCLUSIVE` when shared, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A listening socket; `shared` when other workers watch it too.
    Listener { shared: bool },
    /// The shutdown pipe.
    Wake,
    /// A connection.
    Conn,
}

/// What to be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Interest {
    pub(crate) read: bool,
    pub(crate) write: bool,
}

/// How to watch a descriptor: its token in reports, what for, and what it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watch {
    pub(crate) token: u64,
    pub(crate) interest: Interest,
    pub(crate) source: Source,
}

impl Watch {
    pub(crate) fn new(token: u64, interest: Interest, source: Source) -> Self {
        Watch {
            token,
            interest,
            source,
        }
    }
}

/// One readiness report.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ready {
    pub(crate) token: u64,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// Hang-up or error: read on to find out (EOF or the error).
    pub(crate) hup: bool,
}

/// A kernel readiness interface.
pub(crate) trait Poller {
    /// Edge-triggered: connections are registered once for reading and writing and
    /// are read until the kernel has nothing more. Level-triggered (the default)
    /// otherwise.
    fn edge(&self) -> bool {
        false
    }
    /// Watch `fd`.
    fn add(&mut self, fd: BorrowedFd<'_>, watch: Watch) -> io::Result<()>;
    /// Change what `fd` is watched for (level-triggered connections only).
    fn modify(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()>;
    /// Stop watching `fd`, which stays open.
    fn delete(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()>;
    /// `fd` is about to be closed. By default it is deleted: a backend that keeps its
    /// own table (poll, select) must not keep a closed descriptor, which would fail
    /// every wait (select: `EBADF`) or be reported on every wait (poll: `POLLNVAL`).
    /// A backend whose registrations end with the descriptor itself (epoll) does
    /// nothing.
    fn forget(&mut self, fd: BorrowedFd<'_>, token: u64) {
        let _ = self.delete(fd, token);
    }
    /// Wait for readiness; append reports to `out`.
    fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()>;
}

/// Helpers for the backends' own tests, and the contract every backend is held to.
#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use super::*;
    use crate::shutdown::Shutdown;

    pub(crate) const READ: Interest = Interest {
        read: true,
        write: false,
    };
    pub(crate) const BOTH: Interest = Interest {
        read: true,
        write: true,
    };
    /// The tokens the reactor gives the listener and the wake pipe: the largest ones.
    const LISTENER: u64 = u64::MAX;
    const WAKE: u64 = u64::MAX - 1;

    /// A connected loopback pair: the client, and the server's end (nonblocking).
    pub(crate) fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    /// One wait: `(token, readable, writable)` per report, sorted. Something expected
    /// is there at once on loopback; the timeout only bounds a broken backend.
    pub(crate) fn reports<P: Poller>(p: &mut P) -> Vec<(u64, bool, bool)> {
        wait(p, Duration::from_secs(5))
    }

    /// One short wait that must report nothing.
    pub(crate) fn quiet<P: Poller>(p: &mut P) -> Vec<(u64, bool, bool)> {
        wait(p, Duration::from_millis(50))
    }

    fn wait<P: Poller>(p: &mut P, timeout: Duration) -> Vec<(u64, bool, bool)> {
        let mut out = Vec::new();
        p.wait(&mut out, Some(timeout)).unwrap();
        let mut got: Vec<_> = out
            .iter()
            .map(|r| (r.token, r.readable, r.writable))
            .collect();
        got.sort_unstable();
        got
    }

    /// Read what is waiting on a nonblocking socket, until the kernel has nothing more.
    fn drain(s: &mut TcpStream) -> usize {
        let mut buf = [0u8; 256];
        let mut n = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return n,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return n,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The contract every backend is held to (see the [module docs](super)), over real
    /// loopback sockets; each backend's tests run it on a fresh poller. The only waits
    /// that must time out are the ones asserting that nothing is reported.
    pub(crate) fn contract<P: Poller>(mut p: P) {
        let edge = p.edge();
        let nothing: Vec<(u64, bool, bool)> = Vec::new();
        assert_eq!(
            quiet(&mut p),
            nothing,
            "nothing watched: the wait times out"
        );

        // The wake pipe: level-triggered under every backend (it is never drained).
        let shutdown = Shutdown::new().unwrap();
        p.add(shutdown.wake_fd(), Watch::new(WAKE, READ, Source::Wake))
            .unwrap();
        assert_eq!(quiet(&mut p), nothing, "wake pipe empty");
        shutdown.trigger();
        assert_eq!(reports(&mut p), vec![(WAKE, true, false)], "woken");
        assert_eq!(reports(&mut p), vec![(WAKE, true, false)], "still woken");
        p.delete(shutdown.wake_fd(), WAKE).unwrap();
        assert_eq!(quiet(&mut p), nothing, "wake pipe deleted");

        // The listener: readable when a connection waits to be accepted.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let source = Source::Listener { shared: false };
        p.add(l.as_fd(), Watch::new(LISTENER, READ, source))
            .unwrap();
        assert_eq!(quiet(&mut p), nothing, "no connection yet");
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(reports(&mut p), vec![(LISTENER, true, false)], "to accept");
        let (mut b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        p.delete(l.as_fd(), LISTENER).unwrap();

        // A connection: readable on data; level re-notifies while it is unread, edge
        // does not until new data arrives.
        p.add(b.as_fd(), Watch::new(7, READ, Source::Conn)).unwrap();
        assert!(
            p.add(b.as_fd(), Watch::new(8, READ, Source::Conn)).is_err(),
            "watched twice"
        );
        assert_eq!(quiet(&mut p), nothing, "nothing sent yet");
        a.write_all(b"one").unwrap();
        assert_eq!(reports(&mut p), vec![(7, true, false)], "data");
        if edge {
            assert_eq!(quiet(&mut p), nothing, "edge: unread, but not new");
        } else {
            assert_eq!(reports(&mut p), vec![(7, true, false)], "level: unread");
        }
        a.write_all(b"two").unwrap();
        assert_eq!(reports(&mut p), vec![(7, true, false)], "new data");
        assert_eq!(drain(&mut b), 6);
        assert_eq!(quiet(&mut p), nothing, "all read");

        // Writable, through modify; and back.
        p.modify(b.as_fd(), 7, BOTH).unwrap();
        assert_eq!(reports(&mut p), vec![(7, false, true)], "room to write");
        if edge {
            assert_eq!(quiet(&mut p), nothing, "edge: no change since");
        } else {
            assert_eq!(reports(&mut p), vec![(7, false, true)], "level: still room");
        }
        p.modify(b.as_fd(), 7, READ).unwrap();
        assert_eq!(quiet(&mut p), nothing, "not watched for writing");

        // Deleted: no reports, and it is no longer there to modify or delete; it can
        // be added again (under another token), and what waits is reported at once.
        p.delete(b.as_fd(), 7).unwrap();
        a.write_all(b"three").unwrap();
        assert_eq!(quiet(&mut p), nothing, "deleted");
        assert!(p.modify(b.as_fd(), 7, READ).is_err(), "modify after delete");
        assert!(p.delete(b.as_fd(), 7).is_err(), "delete after delete");
        p.add(b.as_fd(), Watch::new(8, READ, Source::Conn)).unwrap();
        assert_eq!(reports(&mut p), vec![(8, true, false)], "waiting data");
        assert_eq!(drain(&mut b), 5);

        // The peer's close: readable or hang-up (the read finds the EOF).
        drop(a);
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].token == 8 && (out[0].readable || out[0].hup),
            "{out:?}"
        );
        assert_eq!(drain(&mut b), 0, "EOF");

        // Forgotten, then closed: the waits go on, without it.
        p.forget(b.as_fd(), 8);
        drop(b);
        assert_eq!(quiet(&mut p), nothing, "forgotten and closed");
    }
}
