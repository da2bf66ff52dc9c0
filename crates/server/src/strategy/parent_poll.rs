//! The `poll(2)` a blocking strategy's parent sleeps in: `thread`'s accept loop (the
//! parent of its connection threads), `fork`'s parent (of its connection processes)
//! and `prefork`'s parent (of its pool).
//!
//! One wait watches the shutdown pipe, the listener unless accepting is paused (the
//! wait then ends when the pause does), the SIGCHLD self-pipe of a parent process, and
//! the metrics endpoint a parent process serves itself (a scrape is answered within
//! the wait, bounded by [`PARENT_BUDGET`]).

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::procs::Children;
use crate::accept::AcceptGuard;
use crate::metrics::{MetricsEndpoint, PARENT_BUDGET};
use crate::shutdown::Shutdown;

/// What a parent watches besides the listener.
pub(crate) struct ParentPoll<'a> {
    pub(crate) shutdown: &'a Shutdown,
    /// A parent process's children: their SIGCHLD pipe ends the wait.
    pub(crate) children: Option<&'a Children>,
    /// A parent process's metrics endpoint.
    pub(crate) metrics: Option<&'a MetricsEndpoint>,
}

/// What ended a wait (nothing, for a timeout, a child's exit or a signal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Woke {
    /// The server is shutting down.
    pub(crate) shutdown: bool,
    /// Connections are waiting on the listener.
    pub(crate) listener: bool,
}

impl ParentPoll<'_> {
    /// Sleep until shutdown, a connection on the `accepting` listener (not watched
    /// while its guard pauses accepting), a child's exit, the end of the pause, or
    /// `until`. A metrics scrape is answered on the way.
    pub(crate) fn wait(
        &self,
        accepting: Option<(&TcpListener, &mut AcceptGuard)>,
        until: Option<Instant>,
    ) -> io::Result<Woke> {
        let now = Instant::now();
        let mut deadline = until;
        let listener = accepting.and_then(|(listener, guard)| {
            guard.resume_due(now);
            match guard.paused_until() {
                Some(t) => {
                    deadline = Some(deadline.map_or(t, |d| d.min(t)));
                    None
                }
                None => Some(listener),
            }
        });
        let timeout = deadline
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
            .and_then(|t| Timespec::try_from(t).ok());
        let wake = self.shutdown.wake_fd();
        let mut fds: [PollFd<'_>; 4] =
            std::array::from_fn(|_| PollFd::from_borrowed_fd(wake, PollFlags::IN));
        let mut n = 1;
        let listener = watch(&mut fds, &mut n, listener.map(|l| l.as_fd()));
        watch(&mut fds, &mut n, self.children.and_then(|c| c.fd()));
        let metrics = watch(&mut fds, &mut n, self.metrics.map(|m| m.listener.as_fd()));
        match poll(&mut fds[..n], timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Woke::default()),
            Err(e) => return Err(e.into()),
        }
        let ready = |i: Option<usize>| i.is_some_and(|i| !fds[i].revents().is_empty());
        let woke = Woke {
            shutdown: ready(Some(0)),
            listener: ready(listener),
        };
        if !woke.shutdown && ready(metrics) {
            if let Some(m) = self.metrics {
                m.serve_ready(PARENT_BUDGET);
            }
        }
        Ok(woke)
    }
}

/// Add `fd`, if any, to the `n` entries of `fds` in use; returns its index.
fn watch<'a>(fds: &mut [PollFd<'a>], n: &mut usize, fd: Option<BorrowedFd<'a>>) -> Option<usize> {
    let fd = fd?;
    fds[*n] = PollFd::from_borrowed_fd(fd, PollFlags::IN);
    *n += 1;
    Some(*n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::bind_one;
    use crate::stats::{OpenConns, WorkerStats};

    fn listener() -> TcpListener {
        bind_one("127.0.0.1:0".parse().unwrap(), false, 16).unwrap()
    }

    #[test]
    fn a_waiting_connection_or_the_shutdown_ends_the_wait() {
        let shutdown = Shutdown::new().unwrap();
        let l = listener();
        let mut guard = AcceptGuard::new();
        let parent = ParentPoll {
            shutdown: &shutdown,
            children: None,
            metrics: None,
        };
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert_eq!(
            parent.wait(Some((&l, &mut guard)), soon).unwrap(),
            Woke::default()
        );
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let woke = parent.wait(Some((&l, &mut guard)), None).unwrap();
        assert!(woke.listener && !woke.shutdown);
        shutdown.trigger();
        assert!(parent.wait(None, None).unwrap().shutdown);
    }

    #[test]
    fn a_paused_listener_is_not_watched_until_the_pause_ends() {
        let shutdown = Shutdown::new().unwrap();
        let l = listener();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (stats, open) = (WorkerStats::default(), OpenConns::default());
        let mut guard = AcceptGuard::new();
        let t0 = Instant::now();
        let until = guard.exhausted(t0, &io::Error::from_raw_os_error(24), &stats, &open);
        let parent = ParentPoll {
            shutdown: &shutdown,
            children: None,
            metrics: None,
        };
        // Paused: the queued connection does not end the wait; the pause's end does.
        assert_eq!(
            parent.wait(Some((&l, &mut guard)), None).unwrap(),
            Woke::default()
        );
        assert!(Instant::now() >= until);
        // The next wait resumes accepting and sees the connection at once.
        let woke = parent.wait(Some((&l, &mut guard)), None).unwrap();
        assert!(woke.listener);
        assert_eq!(guard.paused_until(), None);
    }
}
