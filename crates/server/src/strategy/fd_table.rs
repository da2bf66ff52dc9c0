//! The registrations of a [`Poller`](super::poller::Poller) that keeps them itself:
//! poll(2) and select(2) hand the kernel a fresh list on every wait, so they must know
//! which descriptors they watch, under which token (epoll's registrations live in the
//! kernel).
//!
//! Indexed by descriptor number, which the kernel keeps small and dense (the lowest
//! free one is handed out), so every operation is O(1): a vector slot per descriptor
//! up to the highest watched one. Each entry holds the token the descriptor was
//! registered under and the backend's own record of it (poll: its slot in the pollfd
//! array; select: nothing, the fd sets say the rest).

use std::io;
use std::os::fd::RawFd;

/// Descriptor -> (token, the backend's record).
pub(crate) struct FdTable<T> {
    /// The backend, for error messages.
    backend: &'static str,
    by_fd: Vec<Option<(u64, T)>>,
}

impl<T> FdTable<T> {
    /// An empty table with room for descriptors below `fds`.
    pub(crate) fn with_capacity(backend: &'static str, fds: usize) -> Self {
        let mut by_fd = Vec::with_capacity(fds);
        by_fd.resize_with(fds, || None);
        FdTable { backend, by_fd }
    }

    /// Register `fd` under `token`; a descriptor that is registered already is an error.
    pub(crate) fn insert(&mut self, fd: RawFd, token: u64, record: T) -> io::Result<()> {
        let Ok(i) = usize::try_from(fd) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {fd} is not a descriptor", self.backend),
            ));
        };
        if i >= self.by_fd.len() {
            self.by_fd.resize_with(i + 1, || None);
        }
        if self.by_fd[i].is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: fd {fd} is already registered", self.backend),
            ));
        }
        self.by_fd[i] = Some((token, record));
        Ok(())
    }

    /// The record of `fd`, which must be registered under `token`.
    pub(crate) fn get_mut(&mut self, fd: RawFd, token: u64) -> io::Result<&mut T> {
        let backend = self.backend;
        match self.entry(fd) {
            Some((t, record)) if *t == token => Ok(record),
            _ => Err(not_registered(backend, fd)),
        }
    }

    /// Unregister `fd`, which must be registered under `token`; returns its record.
    pub(crate) fn remove(&mut self, fd: RawFd, token: u64) -> io::Result<T> {
        let slot = usize::try_from(fd).ok().and_then(|i| self.by_fd.get_mut(i));
        if let Some(slot) = slot {
            if matches!(slot, Some((t, _)) if *t == token) {
                if let Some((_, record)) = slot.take() {
                    return Ok(record);
                }
            }
        }
        Err(not_registered(self.backend, fd))
    }

    /// The token `fd` is registered under (to turn what the kernel reported into a
    /// report).
    pub(crate) fn token(&self, fd: RawFd) -> Option<u64> {
        let i = usize::try_from(fd).ok()?;
        self.by_fd.get(i)?.as_ref().map(|e| e.0)
    }

    /// The record of `fd`, whatever its token.
    pub(crate) fn record_mut(&mut self, fd: RawFd) -> Option<&mut T> {
        self.entry(fd).map(|e| &mut e.1)
    }

    /// How many descriptors are registered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_fd.iter().flatten().count()
    }

    fn entry(&mut self, fd: RawFd) -> Option<&mut (u64, T)> {
        let i = usize::try_from(fd).ok()?;
        self.by_fd.get_mut(i)?.as_mut()
    }
}

fn not_registered(backend: &str, fd: RawFd) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{backend}: fd {fd} is not registered"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_is_found_only_under_its_token() {
        let mut t: FdTable<usize> = FdTable::with_capacity("test", 4);
        t.insert(3, 30, 0).unwrap();
        t.insert(9, u64::MAX, 1).unwrap();
        assert_eq!(t.token(9), Some(u64::MAX), "grows past its capacity");
        assert_eq!(
            t.insert(3, 31, 2).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(*t.get_mut(3, 30).unwrap(), 0);
        assert_eq!(
            t.get_mut(3, 31).unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "another token"
        );
        assert!(t.get_mut(4, 30).is_err(), "another descriptor");
        assert!(t.get_mut(-1, 30).is_err());
        *t.record_mut(9).unwrap() = 5;
        assert_eq!(t.remove(9, u64::MAX).unwrap(), 5);
        assert!(t.remove(9, u64::MAX).is_err(), "removed");
        assert_eq!(t.token(9), None);
        assert_eq!(t.token(3), Some(30));
        assert_eq!(t.len(), 1);
        assert!(t.insert(-1, 1, 0).is_err());
    }
}
