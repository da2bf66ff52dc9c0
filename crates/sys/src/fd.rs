//! Descriptors named by number, as an embedding runtime hands them over.
//!
//! An interpreter (CPython's `socket.fileno()`) names its sockets by raw number and
//! keeps owning them. [`dup_raw`] gives Rust a descriptor of its own for the same
//! open file, without ever claiming ownership of the caller's number: if the number
//! is not open the call fails with `EBADF`; if it names some other file, the copy
//! is of that file. Either way no descriptor is closed twice, so the call is safe.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A new close-on-exec descriptor (`fcntl(F_DUPFD_CLOEXEC)`) for the open file that
/// `raw` names in this process. The caller keeps `raw`; the result is Rust's.
pub fn dup_raw(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: fcntl with F_DUPFD_CLOEXEC only reads its integer arguments; a number
    // that is not open yields EBADF, never memory unsafety.
    let fd = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by fcntl: it is open and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_copy_outlives_the_original() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let copy = dup_raw(a.as_raw_fd()).unwrap();
        assert_ne!(copy.as_raw_fd(), a.as_raw_fd());
        drop(a);
        let mut copy = std::os::unix::net::UnixStream::from(copy);
        std::io::Write::write_all(&mut copy, b"x").unwrap();
        let mut got = [0u8; 1];
        std::io::Read::read_exact(&mut &b, &mut got).unwrap();
        assert_eq!(&got, b"x");
    }

    #[test]
    fn a_closed_number_is_ebadf() {
        assert_eq!(dup_raw(-1).unwrap_err().raw_os_error(), Some(libc::EBADF));
        let f = std::fs::File::open("/dev/null").unwrap();
        let raw = f.as_raw_fd();
        drop(f);
        // Nothing in this test opens a descriptor between the drop and the call, but
        // another test thread might: only check that a failure is EBADF.
        if let Err(e) = dup_raw(raw) {
            assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        }
    }
}
