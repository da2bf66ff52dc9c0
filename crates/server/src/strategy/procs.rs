//! What `fork` and `prefork` share: the parent's table of children (forked, reaped on
//! SIGCHLD, signalled and waited for on drain, killed at the deadline) and a child's
//! set-up (its own signal handlers and shutdown pipe).
//!
//! The rule both strategies follow, and the reason they run without the builder's
//! worker threads: **fork only while the process has a single thread.** The builder
//! runs [`ProcessModel::Processes`](super::ProcessModel) strategies in the thread that
//! called `Server::run` and spawns none; tracing-subscriber and signal-hook, which run
//! before, spawn no thread either; `c10k_sys::process::fork` checks the thread count
//! before every fork and refuses otherwise.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use c10k_sys::process::{Fork, exit_immediately, fork};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus, kill_process, waitpid};
use signal_hook::SigId;

use crate::blocking::BlockingEnv;
use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::stats::WorkerStats;

/// Extra time the parent waits for children beyond the drain timeout before it kills
/// them (each child bounds its own drain; this covers scheduling and exit).
const CHILD_MARGIN: Duration = Duration::from_secs(1);

/// Fail early, with a clear message, if forking would be refused.
pub(crate) fn require_single_thread(strategy: &str) -> io::Result<()> {
    let n = c10k_sys::process::thread_count()?;
    if n != 1 {
        return Err(io::Error::other(format!(
            "strategy {strategy} forks, which is sound only in a single-threaded process, \
             but this one has {n} threads: run it with Server::run from the main thread \
             before spawning any thread"
        )));
    }
    Ok(())
}

/// A child that was reaped.
pub(crate) struct Reaped {
    pub(crate) pid: Pid,
    pub(crate) status: WaitStatus,
    /// How long it lived.
    pub(crate) lived: Duration,
}

/// Describe how a child ended, for logs.
pub(crate) fn describe(status: WaitStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.terminating_signal() {
        format!("was killed by signal {sig}")
    } else {
        "ended".to_string()
    }
}

/// How [`Children::fork`] went, in the parent.
pub(crate) enum Forked {
    /// The child runs; it is in the table.
    Started(Pid),
    /// The system refused (`EAGAIN`: a process limit; `ENOMEM`): log, count, go on.
    Refused(io::Error),
}

/// The parent's children, and the SIGCHLD self-pipe that wakes it when one exits.
pub(crate) struct Children {
    live: HashMap<Pid, Instant>,
    sigchld: Option<OwnedFd>,
    sigchld_id: Option<SigId>,
}

impl Children {
    /// Start catching SIGCHLD (a byte in a pipe the parent polls).
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(
            rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
        )?;
        let id = signal_hook::low_level::pipe::register(signal_hook::consts::SIGCHLD, write)?;
        Ok(Children {
            live: HashMap::new(),
            sigchld: Some(read),
            sigchld_id: Some(id),
        })
    }

    /// The fd that becomes readable when a child exits.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.sigchld.as_ref().map(|fd| fd.as_fd())
    }

    /// Fork a child that runs `child` and exits with the status it returns (the
    /// closure is dropped unrun in the parent). The child forgets the parent's table
    /// first. `Err` when the process is not single-threaded: a bug that every later
    /// fork would hit too.
    pub(crate) fn fork(&mut self, child: impl FnOnce() -> i32) -> io::Result<Forked> {
        match fork() {
            Ok(Fork::Child) => {
                self.forget_in_child();
                exit_immediately(child())
            }
            Ok(Fork::Parent(pid)) => {
                self.live.insert(pid, Instant::now());
                Ok(Forked::Started(pid))
            }
            // Not an OS error: the process has other threads.
            Err(e) if e.raw_os_error().is_none() => Err(e),
            Err(e) => Ok(Forked::Refused(e)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Reap every child that has exited (no zombies are left behind).
    pub(crate) fn reap(&mut self) -> Vec<Reaped> {
        if let Some(fd) = &self.sigchld {
            let mut buf = [0u8; 64];
            while matches!(rustix::io::read(fd, &mut buf), Ok(n) if n > 0) {}
        }
        let mut reaped = Vec::new();
        // Bounded: each round reaps one child, and there are at most `live` of them
        // (plus one spare round to see "none left").
        for _ in 0..=self.live.len() {
            match waitpid(None, WaitOptions::NOHANG) {
                Ok(Some((pid, status))) => {
                    let lived = self
                        .live
                        .remove(&pid)
                        .map(|t| t.elapsed())
                        .unwrap_or_default();
                    reaped.push(Reaped { pid, status, lived });
                }
                Ok(None) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => break, // ECHILD: no children at all
            }
        }
        reaped
    }

    /// Send `sig` to every live child.
    fn signal_all(&self, sig: Signal) {
        for &pid in self.live.keys() {
            // ESRCH: it exited and is waiting to be reaped.
            let _ = kill_process(pid, sig);
        }
    }

    /// Wait for every child to exit, reaping them, until `deadline`; then kill the
    /// ones left with SIGKILL and reap them too. Returns how many were killed.
    fn wait_all(&mut self, deadline: Instant) -> usize {
        loop {
            self.reap();
            if self.live.is_empty() {
                return 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let timeout = Timespec::try_from(left.min(Duration::from_millis(100))).ok();
            // Poll the SIGCHLD pipe; the 100 ms cap also covers a lost wake-up.
            if let Some(fd) = self.fd() {
                let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
                let _ = poll(&mut fds, timeout.as_ref());
            }
        }
        let killed = self.live.len();
        self.signal_all(Signal::KILL);
        let pids: Vec<Pid> = self.live.keys().copied().collect();
        for pid in pids {
            // SIGKILL cannot be caught: this returns as soon as the child is gone.
            let _ = waitpid(Some(pid), WaitOptions::empty());
            self.live.remove(&pid);
        }
        killed
    }

    /// Forward SIGTERM to every child, wait for them until the drain timeout (plus a
    /// margin), kill the rest (counted in `drain_forced`).
    pub(crate) fn drain(&mut self, drain_timeout: Duration, stats: &WorkerStats, what: &str) {
        let n = self.len();
        if n > 0 {
            tracing::debug!("draining {n} {what}(es)");
        }
        self.signal_all(Signal::TERM);
        let killed = self.wait_all(Instant::now() + drain_timeout + CHILD_MARGIN);
        if killed > 0 {
            WorkerStats::add(&stats.drain_forced, killed as u64);
            tracing::warn!("{killed} {what}(es) still running at the drain deadline: killed");
        }
    }

    /// In a newly forked child: drop the copy of the parent's table and its SIGCHLD
    /// handler.
    fn forget_in_child(&mut self) {
        if let Some(id) = self.sigchld_id.take() {
            signal_hook::low_level::unregister(id);
        }
        self.sigchld = None;
        self.live.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        if let Some(id) = self.sigchld_id.take() {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// In a newly forked child: replace the parent's signal handlers with the child's
/// own, and return the child's shutdown trigger.
///
/// - The copies of the parent's SIGTERM/SIGINT handlers are removed: they would write
///   into the pipe the child shares with its parent, so a signal to one child would
///   drain the whole server, and a second signal would exit the child mid-request.
/// - SIGTERM/SIGINT to the child now trigger its own pipe, any number of times (it
///   gets the signal from its parent on drain, and maybe from the terminal too).
/// - The parent's death (even by SIGKILL) sends the child SIGTERM
///   (`PR_SET_PDEATHSIG`), so no child outlives its server by more than its drain.
///
/// The child also keeps watching its parent's pipe: a parent that starts draining
/// makes it readable in every child at once.
pub(crate) fn enter_child(parent_shutdown: &Shutdown, parent: Pid) -> io::Result<Arc<Shutdown>> {
    parent_shutdown.uninstall_signal_handlers();
    let own = Shutdown::new()?;
    own.install_child_signal_handlers()?;
    rustix::process::set_parent_process_death_signal(Some(Signal::TERM))?;
    if rustix::process::getppid() != Some(parent) {
        // The parent died before the death signal was set.
        own.trigger();
    }
    Ok(own)
}

/// The blocking driver's environment in a child: its counters, its `wake` fds (its own
/// shutdown pipe and its parent's: either one drains it) and the timeouts of `config`.
pub(crate) fn child_env<'a>(
    stats: &'a Arc<WorkerStats>,
    wake: &'a [BorrowedFd<'a>; 2],
    config: &Config,
) -> BlockingEnv<'a> {
    BlockingEnv {
        stats,
        wake,
        drain_timeout: config.drain_timeout,
        idle_timeout: config.idle_timeout,
        header_timeout: config.header_timeout,
    }
}
