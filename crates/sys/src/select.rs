//! select(2) with a bounds-checked descriptor set.
//!
//! An `fd_set` is a bitmap of [`FD_SETSIZE`] (1024) bits. C's `FD_SET(fd, set)` with
//! `fd >= FD_SETSIZE` writes outside it (glibc only catches that when built with
//! `_FORTIFY_SOURCE`); [`FdSet::insert`] refuses such a descriptor and returns `false`,
//! so a caller can turn the connection away instead.
#![allow(unsafe_code)]

use std::io;
use std::mem::{align_of, size_of};
use std::os::fd::RawFd;
use std::time::Duration;

/// The number of descriptors an `fd_set` holds: select(2) can only watch descriptors
/// `0..FD_SETSIZE`.
pub const FD_SETSIZE: usize = 1024;

type Word = libc::c_ulong;
const WORD_BITS: usize = Word::BITS as usize;
const WORDS: usize = FD_SETSIZE / WORD_BITS;

/// A set of descriptors below [`FD_SETSIZE`], laid out exactly like C's `fd_set`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FdSet {
    bits: [Word; WORDS],
}

// The kernel reads and writes `FdSet`s as `fd_set`s: the layouts must agree.
const _: () = {
    assert!(FD_SETSIZE == libc::FD_SETSIZE);
    assert!(size_of::<FdSet>() == size_of::<libc::fd_set>());
    assert!(align_of::<FdSet>() == align_of::<libc::fd_set>());
};

impl Default for FdSet {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FdSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Whether `fd` can be put in an [`FdSet`] (`0 <= fd < FD_SETSIZE`).
pub fn fits(fd: RawFd) -> bool {
    usize::try_from(fd).is_ok_and(|fd| fd < FD_SETSIZE)
}

impl FdSet {
    /// The empty set.
    pub const fn new() -> Self {
        FdSet { bits: [0; WORDS] }
    }

    fn slot(fd: RawFd) -> Option<(usize, Word)> {
        if !fits(fd) {
            return None;
        }
        let fd = fd as usize;
        Some((fd / WORD_BITS, 1 << (fd % WORD_BITS)))
    }

    /// Add `fd`. Returns `false`, leaving the set unchanged, when `fd` is negative or
    /// not below [`FD_SETSIZE`].
    pub fn insert(&mut self, fd: RawFd) -> bool {
        match Self::slot(fd) {
            Some((w, bit)) => {
                self.bits[w] |= bit;
                true
            }
            None => false,
        }
    }

    /// Remove `fd` (a descriptor that cannot be in the set is ignored).
    pub fn remove(&mut self, fd: RawFd) {
        if let Some((w, bit)) = Self::slot(fd) {
            self.bits[w] &= !bit;
        }
    }

    /// Whether `fd` is in the set.
    pub fn contains(&self, fd: RawFd) -> bool {
        Self::slot(fd).is_some_and(|(w, bit)| self.bits[w] & bit != 0)
    }

    /// Remove every descriptor.
    pub fn clear(&mut self) {
        self.bits = [0; WORDS];
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }

    /// One more than the highest descriptor in the set (0 when empty): the `nfds`
    /// that select(2) needs for it.
    pub fn bound(&self) -> usize {
        match self.bits.iter().rposition(|&w| w != 0) {
            Some(w) => w * WORD_BITS + (WORD_BITS - self.bits[w].leading_zeros() as usize),
            None => 0,
        }
    }

    /// The descriptors in the set, in ascending order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            set: self,
            word: 0,
            rest: self.bits[0],
        }
    }
}

/// The descriptors of an [`FdSet`], ascending.
#[derive(Debug)]
pub struct Iter<'a> {
    set: &'a FdSet,
    word: usize,
    rest: Word,
}

impl Iterator for Iter<'_> {
    type Item = RawFd;

    fn next(&mut self) -> Option<RawFd> {
        while self.rest == 0 {
            self.word += 1;
            self.rest = *self.set.bits.get(self.word)?;
        }
        let bit = self.rest.trailing_zeros() as usize;
        self.rest &= self.rest - 1;
        // Below FD_SETSIZE, so it fits.
        Some((self.word * WORD_BITS + bit) as RawFd)
    }
}

/// select(2) on `read` and `write` for descriptors `0..nfds`, with no exception set.
///
/// Waits until a descriptor in `read` is readable or one in `write` is writable, the
/// timeout passes (`None`: no timeout), or a signal arrives (an error of kind
/// [`Interrupted`](io::ErrorKind::Interrupted)). On success the sets hold only the
/// ready descriptors and the result is how many (a descriptor ready both ways counts
/// twice); on error their contents are unspecified.
///
/// `nfds` above [`FD_SETSIZE`] is refused ([`InvalidInput`](io::ErrorKind::InvalidInput))
/// since the kernel would read and write that many bits. A descriptor in a set that is
/// not open makes the call fail with `EBADF`.
///
/// The cost is in `nfds`, not in the number of descriptors in the sets: the kernel
/// walks every bit below `nfds`.
pub fn select(
    nfds: usize,
    read: &mut FdSet,
    write: &mut FdSet,
    timeout: Option<Duration>,
) -> io::Result<usize> {
    if nfds > FD_SETSIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("select: nfds {nfds} is over FD_SETSIZE ({FD_SETSIZE})"),
        ));
    }
    let mut tv = timeout.map(timeval);
    let tv_ptr = match &mut tv {
        Some(tv) => tv as *mut libc::timeval,
        None => std::ptr::null_mut(),
    };
    // SAFETY: `read` and `write` are exclusive references to live `FdSet`s, which have
    // the layout of `fd_set` (checked at compile time above), and `nfds <= FD_SETSIZE`,
    // so the kernel reads and writes only inside them. The exception set is null.
    // `tv_ptr` is null or points to the live local `tv`. select(2) does not keep any
    // pointer after it returns. It reads no descriptor's data and closes none: a
    // descriptor that is not open fails the call with EBADF.
    let n = unsafe {
        libc::select(
            nfds as libc::c_int,
            (read as *mut FdSet).cast::<libc::fd_set>(),
            (write as *mut FdSet).cast::<libc::fd_set>(),
            std::ptr::null_mut(),
            tv_ptr,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A timeout as a `timeval`, rounded up to the microsecond (so that a wait for a timer
/// due in 0.5 µs does not spin) and capped at a year.
fn timeval(d: Duration) -> libc::timeval {
    const CAP: Duration = Duration::from_secs(365 * 24 * 3600);
    let d = d.min(CAP);
    let mut sec = d.as_secs();
    let mut usec = d.subsec_nanos().div_ceil(1000);
    if usec == 1_000_000 {
        sec += 1;
        usec = 0;
    }
    libc::timeval {
        tv_sec: sec as libc::time_t,
        tv_usec: usec as libc::suseconds_t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, OwnedFd};

    #[test]
    fn insert_refuses_descriptors_outside_the_set() {
        let mut s = FdSet::new();
        assert!(!s.insert(1024), "FD_SETSIZE itself does not fit");
        assert!(!s.insert(1025));
        assert!(!s.insert(RawFd::MAX));
        assert!(!s.insert(-1));
        assert!(s.is_empty(), "a refused insert leaves the set unchanged");
        assert!(!s.contains(1024));
        s.remove(5000); // ignored, no panic
        assert!(s.insert(1023), "the last descriptor fits");
        assert!(s.contains(1023));
        assert_eq!(s.bound(), 1024);
        assert!(!fits(1024) && fits(1023) && fits(0) && !fits(-1));
    }

    #[test]
    fn insert_remove_contains_iter_bound() {
        let mut s = FdSet::new();
        assert_eq!(s.bound(), 0);
        for fd in [0, 3, 63, 64, 65, 700, 1023] {
            assert!(s.insert(fd));
        }
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![0, 3, 63, 64, 65, 700, 1023]
        );
        assert_eq!(s.bound(), 1024);
        s.remove(1023);
        assert_eq!(s.bound(), 701);
        s.remove(64);
        assert!(!s.contains(64) && s.contains(63) && s.contains(65));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 3, 63, 65, 700]);
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.iter().next(), None);
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn select_reports_readable_and_writable() {
        let (mut a, b) = pair();
        let fd = b.as_raw_fd();
        let (mut r, mut w) = (FdSet::new(), FdSet::new());
        assert!(r.insert(fd));
        let n = select(r.bound(), &mut r, &mut w, Some(Duration::from_millis(10))).unwrap();
        assert_eq!(n, 0, "nothing to read yet");
        assert!(r.is_empty(), "select clears what is not ready");

        a.write_all(b"x").unwrap();
        let (mut r, mut w) = (FdSet::new(), FdSet::new());
        r.insert(fd);
        w.insert(fd);
        let n = select(
            fd as usize + 1,
            &mut r,
            &mut w,
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(n, 2);
        assert!(r.contains(fd) && w.contains(fd));
    }

    /// A descriptor number that was just closed. High, so that other tests running in
    /// parallel (which get the lowest free numbers) do not reuse it meanwhile.
    fn closed_fd() -> RawFd {
        let (a, _b) = pair();
        let high: OwnedFd = rustix::io::fcntl_dupfd_cloexec(&a, 900).unwrap();
        let fd = high.as_raw_fd();
        assert!(fits(fd));
        drop(high);
        fd
    }

    #[test]
    fn select_refuses_nfds_over_fd_setsize_and_reports_ebadf() {
        let (mut r, mut w) = (FdSet::new(), FdSet::new());
        let e = select(FD_SETSIZE + 1, &mut r, &mut w, Some(Duration::ZERO)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);

        // A descriptor that is not open: an error, not memory unsafety.
        let fd = closed_fd();
        let mut r = FdSet::new();
        r.insert(fd);
        let e = select(fd as usize + 1, &mut r, &mut w, Some(Duration::ZERO)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    /// A real descriptor numbered 1024 or more cannot be put in a set.
    #[test]
    fn a_real_descriptor_above_fd_setsize_is_refused() {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut lim = getrlimit(Resource::Nofile);
        if lim.current.is_some_and(|c| c < 1100) {
            lim.current = lim.maximum;
            setrlimit(Resource::Nofile, lim).unwrap();
        }
        let (a, _b) = pair();
        let high: OwnedFd = rustix::io::fcntl_dupfd_cloexec(&a, 1024)
            .expect("RLIMIT_NOFILE must allow descriptors above 1024 for this test");
        assert!(high.as_raw_fd() >= 1024);
        let mut s = FdSet::new();
        assert!(!s.insert(high.as_raw_fd()));
        assert!(s.is_empty());
    }

    #[test]
    fn timeval_rounds_up() {
        let tv = timeval(Duration::from_nanos(1));
        assert_eq!((tv.tv_sec, tv.tv_usec), (0, 1));
        let tv = timeval(Duration::from_nanos(1_999_999_999));
        assert_eq!((tv.tv_sec, tv.tv_usec), (2, 0));
        let tv = timeval(Duration::MAX);
        assert_eq!(tv.tv_sec, 365 * 24 * 3600);
    }
}
