//! poll(2) (C10K item 1): a level-triggered [`Poller`] for the shared
//! [`reactor`](super::reactor), one thread per worker.
//!
//! The pollfd array is kept compact and is never rebuilt: each registration owns one
//! slot, found through a token -> slot index, and a deleted slot is filled by moving
//! the last entry into it (swap-remove).
//!
//! Cost: add O(1) (push), modify O(1) (index, then edit `events` in place), delete O(1)
//! (swap-remove and re-index the moved entry). A wait is O(n) in the kernel, which
//! checks every entry, plus O(n) here to scan `revents` for the ready ones (the scan
//! stops once it has found as many as poll said were ready), n being the number of
//! watched descriptors. That per-wait O(n) is what epoll removes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use c10k_sys::poll::{self as sys, POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, PollFd};

use super::reactor::{Interest, Poller, Ready, Source};

/// A poll(2) poller.
pub(crate) struct Poll {
    /// The array handed to poll(2), compact.
    fds: Vec<PollFd>,
    /// The token of each slot of `fds`.
    tokens: Vec<u64>,
    /// Token -> slot.
    slots: SlotIndex,
}

impl Poll {
    pub(crate) fn new() -> Self {
        Poll {
            fds: Vec::with_capacity(1024),
            tokens: Vec::with_capacity(1024),
            slots: SlotIndex::default(),
        }
    }

    fn slot(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<usize> {
        match self.slots.get(token) {
            Some(i) if self.fds[i].fd() == fd.as_raw_fd() => Ok(i),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("poll: fd {} is not registered", fd.as_raw_fd()),
            )),
        }
    }
}

fn events(interest: Interest) -> i16 {
    let mut ev = 0;
    if interest.read {
        ev |= POLLIN;
    }
    if interest.write {
        ev |= POLLOUT;
    }
    ev
}

impl Poller for Poll {
    fn edge(&self) -> bool {
        false
    }

    fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        token: u64,
        interest: Interest,
        _source: Source,
    ) -> io::Result<()> {
        if self.slots.get(token).is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("poll: token {token} is already registered"),
            ));
        }
        self.slots.set(token, self.fds.len());
        self.fds.push(PollFd::new(fd.as_raw_fd(), events(interest)));
        self.tokens.push(token);
        Ok(())
    }

    fn modify(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let i = self.slot(fd, token)?;
        self.fds[i].set_events(events(interest));
        Ok(())
    }

    fn delete(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let i = self.slot(fd, token)?;
        self.slots.remove(token);
        self.fds.swap_remove(i);
        self.tokens.swap_remove(i);
        if let Some(&moved) = self.tokens.get(i) {
            self.slots.set(moved, i);
        }
        Ok(())
    }

    fn forget(&mut self, fd: BorrowedFd<'_>, token: u64) {
        // A closed descriptor left in the array would be reported as POLLNVAL on every
        // wait (or, once its number is reused, stand for another file).
        let _ = self.delete(fd, token);
    }

    fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        let mut left = sys::poll(&mut self.fds, timeout)?;
        for (pfd, &token) in self.fds.iter().zip(&self.tokens) {
            if left == 0 {
                break;
            }
            let r = pfd.revents();
            if r == 0 {
                continue;
            }
            left -= 1;
            out.push(Ready {
                token,
                readable: r & POLLIN != 0,
                writable: r & POLLOUT != 0,
                hup: r & (POLLHUP | POLLERR | POLLNVAL) != 0,
            });
        }
        Ok(())
    }
}

/// Token -> slot, O(1). Connection tokens are slab keys, small and dense: a vector
/// indexed by token holds them. The few others (the listener's and the wake pipe's,
/// near `u64::MAX`) sit in a short list.
#[derive(Default)]
struct SlotIndex {
    dense: Vec<usize>,
    other: Vec<(u64, usize)>,
}

const NONE: usize = usize::MAX;
/// Tokens below this are indexed directly.
const DENSE_LIMIT: u64 = 1 << 32;

impl SlotIndex {
    fn get(&self, token: u64) -> Option<usize> {
        if token < DENSE_LIMIT {
            let slot = *self.dense.get(token as usize)?;
            (slot != NONE).then_some(slot)
        } else {
            self.other.iter().find(|e| e.0 == token).map(|e| e.1)
        }
    }

    fn set(&mut self, token: u64, slot: usize) {
        if token < DENSE_LIMIT {
            let t = token as usize;
            if t >= self.dense.len() {
                self.dense.resize(t + 1, NONE);
            }
            self.dense[t] = slot;
        } else if let Some(e) = self.other.iter_mut().find(|e| e.0 == token) {
            e.1 = slot;
        } else {
            self.other.push((token, slot));
        }
    }

    fn remove(&mut self, token: u64) {
        if token < DENSE_LIMIT {
            if let Some(s) = self.dense.get_mut(token as usize) {
                *s = NONE;
            }
        } else {
            self.other.retain(|e| e.0 != token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    const READ: Interest = Interest {
        read: true,
        write: false,
    };
    const BOTH: Interest = Interest {
        read: true,
        write: true,
    };

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        (a, b)
    }

    fn wait(p: &mut Poll) -> Vec<(u64, bool, bool)> {
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::from_millis(100))).unwrap();
        let mut got: Vec<_> = out
            .iter()
            .map(|r| (r.token, r.readable, r.writable))
            .collect();
        got.sort_unstable();
        got
    }

    /// Every slot's token maps back to it, and nothing else is indexed.
    fn assert_consistent(p: &Poll) {
        assert_eq!(p.fds.len(), p.tokens.len());
        for (i, &t) in p.tokens.iter().enumerate() {
            assert_eq!(p.slots.get(t), Some(i), "token {t}");
        }
        let indexed = p.slots.dense.iter().filter(|&&s| s != NONE).count() + p.slots.other.len();
        assert_eq!(indexed, p.tokens.len());
    }

    /// Pins level-triggered semantics: unread data is reported again on every wait,
    /// until it is read.
    #[test]
    fn level_triggered_re_reports_unread_data() {
        let (mut a, mut b) = pair();
        let mut p = Poll::new();
        p.add(b.as_fd(), 7, READ, Source::Conn).unwrap();
        assert!(wait(&mut p).is_empty(), "nothing sent yet");
        a.write_all(b"unread").unwrap();
        assert_eq!(wait(&mut p), vec![(7, true, false)], "first report");
        assert_eq!(
            wait(&mut p),
            vec![(7, true, false)],
            "second wait, data still unread"
        );
        let mut buf = [0u8; 16];
        assert_eq!(b.read(&mut buf).unwrap(), 6);
        assert!(wait(&mut p).is_empty(), "read: no more reports");
    }

    /// Deleting from the middle moves the last entry into the hole; the moved entry
    /// keeps its token and can still be modified and deleted.
    #[test]
    fn swap_remove_keeps_the_array_compact_and_the_index_right() {
        let pairs: Vec<_> = (0..4).map(|_| pair()).collect();
        let mut p = Poll::new();
        for (i, (_, b)) in pairs.iter().enumerate() {
            p.add(b.as_fd(), i as u64, BOTH, Source::Conn).unwrap();
        }
        assert_consistent(&p);
        p.delete(pairs[1].1.as_fd(), 1).unwrap();
        assert_eq!(p.fds.len(), 3);
        assert_eq!(p.tokens, vec![0, 3, 2], "the last entry moved into slot 1");
        assert_consistent(&p);
        p.modify(pairs[3].1.as_fd(), 3, READ).unwrap();
        assert_eq!(p.fds[1].events(), POLLIN);
        assert!(p.modify(pairs[1].1.as_fd(), 1, READ).is_err(), "deleted");
        assert!(
            p.modify(pairs[2].1.as_fd(), 3, READ).is_err(),
            "fd and token must match"
        );
        assert_eq!(
            wait(&mut p),
            vec![(0, false, true), (2, false, true)],
            "3 now only waits for input"
        );
        p.delete(pairs[3].1.as_fd(), 3).unwrap();
        p.delete(pairs[0].1.as_fd(), 0).unwrap();
        p.delete(pairs[2].1.as_fd(), 2).unwrap();
        assert!(p.fds.is_empty());
        assert_consistent(&p);
    }

    #[test]
    fn reserved_tokens_and_duplicates() {
        let (_a, b) = pair();
        let (_c, d) = pair();
        let mut p = Poll::new();
        p.add(
            b.as_fd(),
            u64::MAX,
            READ,
            Source::Listener { shared: false },
        )
        .unwrap();
        p.add(d.as_fd(), u64::MAX - 1, READ, Source::Wake).unwrap();
        assert!(p.add(d.as_fd(), u64::MAX - 1, READ, Source::Wake).is_err());
        assert_consistent(&p);
        p.delete(b.as_fd(), u64::MAX).unwrap();
        assert_eq!(p.tokens, vec![u64::MAX - 1]);
        assert_consistent(&p);
    }

    #[test]
    fn a_reset_is_reported_as_hang_up() {
        let (a, b) = pair();
        rustix::net::sockopt::set_socket_linger(&a, Some(Duration::ZERO)).unwrap();
        let mut p = Poll::new();
        p.add(b.as_fd(), 5, READ, Source::Conn).unwrap();
        drop(a);
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].hup && out[0].token == 5);
    }
}
