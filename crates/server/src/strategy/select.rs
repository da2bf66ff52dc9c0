//! select(2) (C10K item 1): a level-triggered [`Poller`] for the shared
//! [`reactor`](super::reactor), one thread per worker.
//!
//! Two master sets (read and write interest) are kept up to date as registrations
//! change; each wait copies them (select overwrites its sets with the ready
//! descriptors), asks the kernel, and scans the result.
//!
//! Cost: add, modify and delete are O(1) (a bit each). A wait is O(maxfd): the kernel
//! walks every bit below the highest watched descriptor + 1 (and checks each watched
//! socket), and the loop copies and scans the two 128-byte sets, O(maxfd / 64) words
//! plus one step per ready descriptor. The cost depends on the highest descriptor, not on
//! how many are watched.
//!
//! The hard limit: a set holds descriptors `0..FD_SETSIZE` (1024). A connection whose
//! descriptor does not fit is refused by [`add`](Poller::add) (the reactor closes it,
//! counts it in `refused_backend`, and logs the error at most once a second); nothing
//! is ever written outside a set. Descriptors are per process, so the limit is shared by
//! every worker of a server: `--workers N` does not raise it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use c10k_sys::select::{self as sys, FD_SETSIZE, FdSet};

use super::fd_table::FdTable;
use super::poller::{Interest, Poller, Ready, Watch};

/// A select(2) poller.
pub(crate) struct Select {
    /// Descriptors watched for reading / writing.
    read: FdSet,
    write: FdSet,
    /// The token of each watched descriptor.
    table: FdTable<()>,
}

impl Select {
    pub(crate) fn new() -> Self {
        Select {
            read: FdSet::new(),
            write: FdSet::new(),
            table: FdTable::with_capacity("select", FD_SETSIZE),
        }
    }

    fn set(&mut self, fd: RawFd, interest: Interest) {
        if interest.read {
            self.read.insert(fd);
        } else {
            self.read.remove(fd);
        }
        if interest.write {
            self.write.insert(fd);
        } else {
            self.write.remove(fd);
        }
    }
}

impl Poller for Select {
    fn add(&mut self, fd: BorrowedFd<'_>, watch: Watch) -> io::Result<()> {
        let Watch {
            token, interest, ..
        } = watch;
        let raw = fd.as_raw_fd();
        if !sys::fits(raw) {
            return Err(io::Error::other(format!(
                "fd {raw} is beyond the select FD_SETSIZE limit of {FD_SETSIZE} descriptors \
                 (use --strategy poll or epoll-et for more connections)"
            )));
        }
        self.table.insert(raw, token, ())?;
        self.set(raw, interest);
        Ok(())
    }

    fn modify(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        self.table.get_mut(fd.as_raw_fd(), token)?;
        self.set(fd.as_raw_fd(), interest);
        Ok(())
    }

    fn delete(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.table.remove(fd.as_raw_fd(), token)?;
        self.set(fd.as_raw_fd(), Interest::default());
        Ok(())
    }

    fn wait(&mut self, out: &mut Vec<Ready>, timeout: Option<Duration>) -> io::Result<()> {
        let nfds = self.read.bound().max(self.write.bound());
        let (mut r, mut w) = (self.read, self.write);
        sys::select(nfds, &mut r, &mut w, timeout)?;
        // Both iterators are ascending: one report per descriptor, readable and/or
        // writable.
        let mut ri = r.iter().peekable();
        let mut wi = w.iter().peekable();
        loop {
            let (fd, readable, writable) = match (ri.peek().copied(), wi.peek().copied()) {
                (None, None) => break,
                (Some(a), Some(b)) if a == b => {
                    ri.next();
                    wi.next();
                    (a, true, true)
                }
                (Some(a), Some(b)) if a < b => {
                    ri.next();
                    (a, true, false)
                }
                (Some(a), None) => {
                    ri.next();
                    (a, true, false)
                }
                (_, Some(b)) => {
                    wi.next();
                    (b, false, true)
                }
            };
            if let Some(token) = self.table.token(fd) {
                out.push(Ready {
                    token,
                    readable,
                    writable,
                    // select has no hang-up report: a closed or failed socket is
                    // readable, and the read finds the EOF or the error.
                    hup: false,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::poller::Source;
    use crate::strategy::poller::tests::{BOTH, READ, contract, pair, quiet, reports};
    use std::io::Write;
    use std::os::fd::{AsFd, OwnedFd};

    /// A descriptor ready for reading and writing is one report, not one per set.
    #[test]
    fn keeps_the_poller_contract() {
        contract(Select::new());
    }

    #[test]
    fn one_report_per_descriptor() {
        let (mut a1, b1) = pair();
        let (_a2, b2) = pair();
        let mut p = Select::new();
        p.add(b1.as_fd(), Watch::new(1, BOTH, Source::Conn))
            .unwrap();
        p.add(b2.as_fd(), Watch::new(2, BOTH, Source::Conn))
            .unwrap();
        a1.write_all(b"x").unwrap();
        assert_eq!(reports(&mut p), vec![(1, true, true), (2, false, true)]);
    }

    #[test]
    fn a_descriptor_beyond_fd_setsize_is_refused() {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim.current.is_some_and(|c| c < 1100) {
            lim.current = lim.maximum;
            setrlimit(Resource::Nofile, lim).unwrap();
        }
        let (_a, b) = pair();
        let high: OwnedFd = rustix::io::fcntl_dupfd_cloexec(&b, FD_SETSIZE as i32)
            .expect("RLIMIT_NOFILE must allow descriptors above 1024 for this test");
        let mut p = Select::new();
        let e = p
            .add(high.as_fd(), Watch::new(1, READ, Source::Conn))
            .unwrap_err();
        assert!(e.to_string().contains("FD_SETSIZE limit of 1024"), "{e}");
        assert!(quiet(&mut p).is_empty());
    }
}
