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
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use c10k_sys::select::{self as sys, FD_SETSIZE, FdSet};

use super::reactor::{Interest, Poller, Ready, Source};

/// A select(2) poller.
pub(crate) struct Select {
    /// Descriptors watched for reading / writing.
    read: FdSet,
    write: FdSet,
    /// Token of each watched descriptor, indexed by descriptor.
    tokens: Vec<Option<u64>>,
}

impl Select {
    pub(crate) fn new() -> Self {
        Select {
            read: FdSet::new(),
            write: FdSet::new(),
            tokens: vec![None; FD_SETSIZE],
        }
    }

    fn set(&mut self, fd: usize, interest: Interest) {
        let raw = fd as i32;
        if interest.read {
            self.read.insert(raw);
        } else {
            self.read.remove(raw);
        }
        if interest.write {
            self.write.insert(raw);
        } else {
            self.write.remove(raw);
        }
    }

    /// The slot of a descriptor registered under `token`.
    fn slot(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<usize> {
        let raw = fd.as_raw_fd();
        match usize::try_from(raw) {
            Ok(i) if self.tokens.get(i) == Some(&Some(token)) => Ok(i),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("select: fd {raw} is not registered"),
            )),
        }
    }
}

impl Poller for Select {
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
        let raw = fd.as_raw_fd();
        if !sys::fits(raw) {
            return Err(io::Error::other(format!(
                "fd {raw} is beyond the select FD_SETSIZE limit of {FD_SETSIZE} descriptors \
                 (use --strategy poll or epoll-et for more connections)"
            )));
        }
        let i = raw as usize;
        if self.tokens[i].is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("select: fd {raw} is already registered"),
            ));
        }
        self.tokens[i] = Some(token);
        self.set(i, interest);
        Ok(())
    }

    fn modify(&mut self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let i = self.slot(fd, token)?;
        self.set(i, interest);
        Ok(())
    }

    fn delete(&mut self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let i = self.slot(fd, token)?;
        self.set(i, Interest::default());
        self.tokens[i] = None;
        Ok(())
    }

    fn forget(&mut self, fd: BorrowedFd<'_>, token: u64) {
        // A closed descriptor left in a set would fail every select with EBADF.
        let _ = self.delete(fd, token);
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
            if let Some(token) = self.tokens[fd as usize] {
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
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsFd, OwnedFd};

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

    fn wait(p: &mut Select) -> Vec<(u64, bool, bool)> {
        let mut out = Vec::new();
        p.wait(&mut out, Some(Duration::from_millis(100))).unwrap();
        out.iter()
            .map(|r| (r.token, r.readable, r.writable))
            .collect()
    }

    /// Pins level-triggered semantics: unread data is reported again on every wait,
    /// until it is read.
    #[test]
    fn level_triggered_re_reports_unread_data() {
        let (mut a, mut b) = pair();
        let mut p = Select::new();
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

    #[test]
    fn one_report_per_descriptor_modify_and_delete() {
        let (mut a1, b1) = pair();
        let (_a2, b2) = pair();
        let mut p = Select::new();
        p.add(b1.as_fd(), 1, BOTH, Source::Conn).unwrap();
        p.add(b2.as_fd(), 2, BOTH, Source::Conn).unwrap();
        a1.write_all(b"x").unwrap();
        let mut got = wait(&mut p);
        got.sort_unstable();
        assert_eq!(got, vec![(1, true, true), (2, false, true)]);
        p.modify(b1.as_fd(), 1, READ).unwrap();
        p.delete(b2.as_fd(), 2).unwrap();
        assert_eq!(wait(&mut p), vec![(1, true, false)]);
        assert!(p.modify(b2.as_fd(), 2, READ).is_err(), "deleted");
        assert!(p.add(b1.as_fd(), 9, READ, Source::Conn).is_err(), "twice");
        // forget before close: a closed descriptor must not stay in the sets.
        p.forget(b1.as_fd(), 1);
        drop(b1);
        assert!(wait(&mut p).is_empty());
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
        let e = p.add(high.as_fd(), 1, READ, Source::Conn).unwrap_err();
        assert!(e.to_string().contains("FD_SETSIZE limit of 1024"), "{e}");
        assert!(wait(&mut p).is_empty());
    }
}
