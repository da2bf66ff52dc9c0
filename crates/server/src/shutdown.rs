//! Graceful shutdown: one trigger shared by every worker of a server.
//!
//! The trigger is a self-pipe. A worker registers its read end (level-triggered) in its
//! own event loop, so a single byte written on SIGTERM/SIGINT, or by
//! [`ServerHandle::shutdown`](crate::ServerHandle::shutdown), wakes every worker at once.
//! The byte is never read: the pipe stays readable, and each worker removes it from its
//! loop once it has started draining.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The shutdown trigger of one server.
#[derive(Debug)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    read: OwnedFd,
    write: OwnedFd,
}

impl Shutdown {
    /// A new, untriggered shutdown.
    pub fn new() -> io::Result<Arc<Self>> {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        Ok(Arc::new(Shutdown {
            requested: Arc::new(AtomicBool::new(false)),
            read,
            write,
        }))
    }

    /// Ask every worker to drain and stop.
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        // A full pipe already wakes everybody; any other error cannot be helped here.
        let _ = rustix::io::write(&self.write, &[1]);
    }

    /// True once shutdown was asked for.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The fd that becomes readable on shutdown (register it level-triggered).
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Trigger on SIGTERM and SIGINT. A second signal while draining exits at once
    /// with status 1, so an impatient operator is never stuck.
    pub fn install_signal_handlers(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&self.requested))?;
            signal_hook::flag::register(sig, Arc::clone(&self.requested))?;
            signal_hook::low_level::pipe::register(sig, self.write.try_clone()?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_sets_the_flag_and_makes_the_pipe_readable() {
        let s = Shutdown::new().unwrap();
        assert!(!s.is_requested());
        let mut buf = [0u8; 1];
        assert!(
            rustix::io::read(s.wake_fd(), &mut buf).is_err(),
            "empty pipe would block"
        );
        s.trigger();
        assert!(s.is_requested());
        assert_eq!(rustix::io::read(s.wake_fd(), &mut buf).unwrap(), 1);
    }
}
