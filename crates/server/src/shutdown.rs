//! Graceful shutdown: one trigger shared by every worker of a server.
//!
//! The trigger is a self-pipe. A worker registers its read end (level-triggered) in its
//! own event loop, so a single byte written on SIGTERM/SIGINT, or by
//! [`ServerHandle::shutdown`](crate::ServerHandle::shutdown), wakes every worker at once.
//! The byte is never read: the pipe stays readable, and each worker removes it from its
//! loop once it has started draining.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use signal_hook::SigId;

/// The shutdown trigger of one server.
#[derive(Debug)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    read: OwnedFd,
    write: OwnedFd,
    /// The signal handlers installed for it, so that a forked child can remove them.
    handlers: Mutex<Vec<SigId>>,
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
            handlers: Mutex::new(Vec::new()),
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
        self.install(true)
    }

    /// Trigger on SIGTERM and SIGINT, any number of times: the handlers of a forked
    /// child, which may get the same signal twice (from the terminal's process group
    /// and from its parent) and must still finish its request; its parent bounds it.
    pub(crate) fn install_child_signal_handlers(&self) -> io::Result<()> {
        self.install(false)
    }

    fn install(&self, exit_on_second: bool) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut ids = self.handlers.lock().unwrap_or_else(|p| p.into_inner());
        for sig in [SIGTERM, SIGINT] {
            if exit_on_second {
                ids.push(signal_hook::flag::register_conditional_shutdown(
                    sig,
                    1,
                    Arc::clone(&self.requested),
                )?);
            }
            ids.push(signal_hook::flag::register(
                sig,
                Arc::clone(&self.requested),
            )?);
            ids.push(signal_hook::low_level::pipe::register(
                sig,
                self.write.try_clone()?,
            )?);
        }
        Ok(())
    }

    /// Remove the signal handlers installed for this trigger. A forked child calls
    /// this on the copy of its parent's trigger, so that a signal to the child does
    /// not write into the pipe it shares with its parent (and drain the whole server).
    pub(crate) fn uninstall_signal_handlers(&self) {
        let mut ids = self.handlers.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
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
