//! poll(2) over a caller-owned array of raw descriptors.
//!
//! rustix's safe `poll` takes `PollFd<'fd>`s that borrow each descriptor, so an array
//! of them cannot outlive one loop iteration unless it is rebuilt from the connection
//! table before every call (O(n) for nothing). [`PollFd`] holds a raw descriptor
//! instead; an event loop keeps one array for its whole life and edits it in place.
//! Nothing unsafe can come of a stale entry: a descriptor that is not open is reported
//! as [`POLLNVAL`], and a negative one is skipped by the kernel.
#![allow(unsafe_code)]

use std::io;
use std::mem::{align_of, offset_of, size_of};
use std::os::fd::RawFd;
use std::time::Duration;

/// Readable (or, for a listener, a connection to accept).
pub const POLLIN: i16 = libc::POLLIN;
/// Urgent (out-of-band) data.
pub const POLLPRI: i16 = libc::POLLPRI;
/// Writable.
pub const POLLOUT: i16 = libc::POLLOUT;
/// An error is pending (reported even when not asked for).
pub const POLLERR: i16 = libc::POLLERR;
/// Hung up (reported even when not asked for).
pub const POLLHUP: i16 = libc::POLLHUP;
/// The descriptor is not open (reported even when not asked for).
pub const POLLNVAL: i16 = libc::POLLNVAL;

/// One entry of a poll(2) array: a descriptor, what to watch it for, and what the
/// last call reported. Laid out exactly like C's `struct pollfd`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollFd {
    fd: RawFd,
    events: i16,
    revents: i16,
}

// The kernel reads and writes `PollFd`s as `struct pollfd`s: the layouts must agree.
const _: () = {
    assert!(size_of::<PollFd>() == size_of::<libc::pollfd>());
    assert!(align_of::<PollFd>() == align_of::<libc::pollfd>());
    assert!(offset_of!(PollFd, fd) == offset_of!(libc::pollfd, fd));
    assert!(offset_of!(PollFd, events) == offset_of!(libc::pollfd, events));
    assert!(offset_of!(PollFd, revents) == offset_of!(libc::pollfd, revents));
};

impl PollFd {
    /// Watch `fd` for `events` (a union of [`POLLIN`], [`POLLOUT`], [`POLLPRI`]; 0
    /// watches for errors and hang-ups only). A negative `fd` is skipped by poll(2).
    pub const fn new(fd: RawFd, events: i16) -> Self {
        PollFd {
            fd,
            events,
            revents: 0,
        }
    }

    /// The descriptor.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// What it is watched for.
    pub fn events(&self) -> i16 {
        self.events
    }

    /// Change what it is watched for.
    pub fn set_events(&mut self, events: i16) {
        self.events = events;
    }

    /// What the last [`poll`] reported for it (0: nothing).
    pub fn revents(&self) -> i16 {
        self.revents
    }
}

/// poll(2): wait until an entry of `fds` is ready, the timeout passes (`None`: no
/// timeout), or a signal arrives (an error of kind
/// [`Interrupted`](io::ErrorKind::Interrupted)). Sets every entry's `revents` and
/// returns how many entries have a non-zero `revents`.
///
/// The timeout is rounded up to the millisecond, so a wait for a timer due in less
/// than one does not spin. The cost is O(`fds.len()`) in the kernel per call.
pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms: libc::c_int = match timeout {
        None => -1,
        Some(d) => {
            let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    };
    // SAFETY: `fds` is an exclusive borrow of `fds.len()` initialised `PollFd`s, which
    // have the layout of `struct pollfd` (checked at compile time above); the kernel
    // reads each entry and writes only its `revents`, within the slice, and keeps no
    // pointer after returning. It reads no descriptor's data and closes none: an entry
    // whose descriptor is not open gets POLLNVAL.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr().cast::<libc::pollfd>(),
            fds.len() as libc::nfds_t,
            ms,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn poll_reports_readable_and_writable() {
        let (mut a, b) = pair();
        let mut fds = [PollFd::new(b.as_raw_fd(), POLLIN)];
        assert_eq!(poll(&mut fds, Some(Duration::from_millis(10))).unwrap(), 0);
        assert_eq!(fds[0].revents(), 0);
        a.write_all(b"x").unwrap();
        fds[0].set_events(POLLIN | POLLOUT);
        assert_eq!(poll(&mut fds, Some(Duration::from_secs(5))).unwrap(), 1);
        assert_eq!(fds[0].revents(), POLLIN | POLLOUT);
        assert_eq!(fds[0].events(), POLLIN | POLLOUT);
        assert_eq!(fds[0].fd(), b.as_raw_fd());
    }

    #[test]
    fn a_closed_descriptor_is_pollnval_and_a_negative_one_is_skipped() {
        // A high number, so that tests running in parallel (which get the lowest free
        // numbers) do not reuse it meanwhile.
        let (a, _b) = pair();
        let high = rustix::io::fcntl_dupfd_cloexec(&a, 900).unwrap();
        let stale = high.as_raw_fd();
        drop(high);
        let mut fds = [PollFd::new(-1, POLLIN), PollFd::new(stale, POLLIN)];
        assert_eq!(poll(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
        assert_eq!(fds[0].revents(), 0);
        assert_eq!(fds[1].revents(), POLLNVAL);
    }

    #[test]
    fn a_reset_is_reported_without_asking() {
        let (a, b) = pair();
        // SO_LINGER 0: closing sends a reset instead of a FIN.
        rustix::net::sockopt::set_socket_linger(&a, Some(Duration::ZERO)).unwrap();
        drop(a);
        let mut fds = [PollFd::new(b.as_raw_fd(), 0)];
        assert_eq!(poll(&mut fds, Some(Duration::from_secs(5))).unwrap(), 1);
        let r = fds[0].revents();
        assert_ne!(r & (POLLERR | POLLHUP), 0, "{r:#x}");
        assert_eq!(r & (POLLIN | POLLOUT), 0, "not asked for: {r:#x}");
    }

    #[test]
    fn empty_array_just_sleeps() {
        assert_eq!(poll(&mut [], Some(Duration::from_millis(1))).unwrap(), 0);
    }
}
