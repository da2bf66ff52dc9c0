//! poll(2) (C10K item 1): a level-triggered [`Poller`] for the shared
//! [`reactor`](super::reactor), one thread per worker.
//!
//! The pollfd array is kept compact and is never rebuilt: each registration owns one
//! slot, found through the [`FdTable`] (descriptor -> token and slot), and a deleted
//! slot is filled by moving the last entry into it (swap-remove).
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

use super::fd_table::FdTable;
use super::poller::{Interest, Poller, Ready, Watch};

/// A poll(2) poller.
pub(crate) struct Poll {
    /// The array handed to poll(2), compact.
    fds: Vec<PollFd>,
    /// Descriptor -> its token and its slot in `fds`.
    table: FdTable<usize>,
}

impl Poll {
    pub(crate) fn new() -> Self {
        Poll {
            fds: Vec::with_capacity(1024),
            table: FdTable::with_capacity("poll", 1024),
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
    fn add(&mut self, fd: BorrowedFd<'_>, watch: Watch) -> io::Result<()> {
        let Watch {
            token, interest, ..
        } = watch;
        let raw = fd.as_raw_fd();
        self.table.insert(raw, token, self.fds.len())?;
        self.fds.push(PollFd::new(raw, events(interest)));
        Ok(())
    }

    fn modify(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let i = *self.table.get_mut(fd.as_raw_fd(), token)?;
        self.fds[i].set_events(events(interest));
        Ok(())
    }

    fn delete(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let i = self.table.remove(fd.as_raw_fd(), token)?;
        self.fds.swap_remove(i);
        if let Some(moved) = self.fds.get(i) {
            if let Some(slot) = self.table.record_mut(moved.fd()) {
                *slot = i;
            }
        }
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        let mut left = sys::poll(&mut self.fds, timeout)?;
        for pfd in &self.fds {
            if left == 0 {
                break;
            }
            let r = pfd.revents();
            if r == 0 {
                continue;
            }
            left -= 1;
            let Some(token) = self.table.token(pfd.fd()) else {
                continue;
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::poller::Source;
    use crate::strategy::poller::tests::{BOTH, READ, contract, pair, reports};
    use std::os::fd::AsFd;

    /// Every slot's descriptor maps back to it, and nothing else is registered.
    fn assert_consistent(p: &mut Poll) {
        for i in 0..p.fds.len() {
            let fd = p.fds[i].fd();
            assert_eq!(p.table.record_mut(fd).copied(), Some(i), "fd {fd}");
        }
        assert_eq!(p.table.len(), p.fds.len());
    }

    fn tokens(p: &Poll) -> Vec<u64> {
        p.fds.iter().filter_map(|f| p.table.token(f.fd())).collect()
    }

    /// Deleting from the middle moves the last entry into the hole; the moved entry
    /// keeps its token and can still be modified and deleted.
    #[test]
    fn keeps_the_poller_contract() {
        contract(Poll::new());
    }

    #[test]
    fn swap_remove_keeps_the_array_compact_and_the_index_right() {
        let pairs: Vec<_> = (0..4).map(|_| pair()).collect();
        let mut p = Poll::new();
        for (i, (_, b)) in pairs.iter().enumerate() {
            p.add(b.as_fd(), Watch::new(i as u64, BOTH, Source::Conn))
                .unwrap();
        }
        assert_consistent(&mut p);
        p.delete(pairs[1].1.as_fd(), 1).unwrap();
        assert_eq!(p.fds.len(), 3);
        assert_eq!(
            tokens(&p),
            vec![0, 3, 2],
            "the last entry moved into slot 1"
        );
        assert_consistent(&mut p);
        p.modify(pairs[3].1.as_fd(), 3, READ).unwrap();
        assert_eq!(p.fds[1].events(), POLLIN);
        assert!(p.modify(pairs[1].1.as_fd(), 1, READ).is_err(), "deleted");
        assert!(
            p.modify(pairs[2].1.as_fd(), 3, READ).is_err(),
            "fd and token must match"
        );
        assert_eq!(
            reports(&mut p),
            vec![(0, false, true), (2, false, true)],
            "3 now only waits for input"
        );
        p.delete(pairs[3].1.as_fd(), 3).unwrap();
        p.delete(pairs[0].1.as_fd(), 0).unwrap();
        p.delete(pairs[2].1.as_fd(), 2).unwrap();
        assert!(p.fds.is_empty());
        assert_consistent(&mut p);
    }

    #[test]
    fn a_reset_is_reported_as_hang_up() {
        let (a, b) = pair();
        rustix::net::sockopt::set_socket_linger(&a, Some(Duration::ZERO)).unwrap();
        let mut p = Poll::new();
        p.add(b.as_fd(), Watch::new(5, READ, Source::Conn)).unwrap();
        drop(a);
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].hup && out[0].token == 5);
    }
}
