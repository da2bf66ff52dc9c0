//! `fork`: one process per connection (C10K item 4; Python's `ForkingMixIn`).
//!
//! The parent accepts (blocking in `poll(2)` on the listener, the shutdown pipe and a
//! SIGCHLD self-pipe), forks, closes its copy of the connection and goes back to
//! accepting. The child closes its copy of the listener, serves the connection with
//! the blocking driver, and `_exit`s.
//!
//! - **Fork happens before any thread is spawned.** This strategy runs in the thread
//!   that called `Server::run`, and the process has no other (checked at start and
//!   before every fork by `c10k_sys::process::fork`). Never spawn a thread in the
//!   parent: a later fork would copy another thread's locks in a held state.
//! - **No zombies.** SIGCHLD writes a byte into a self-pipe; the parent wakes and
//!   reaps with `waitpid(WNOHANG)` until nothing is left to reap.
//! - **`--max-conns`** bounds the children alive (a child is one connection); beyond
//!   it a connection is accepted and closed at once, as in every strategy.
//! - **Drain.** The parent stops accepting, closes the listener, and sends SIGTERM to
//!   every child (its own pipe, which the children also watch, is readable already);
//!   each child finishes its request and exits. The parent exits once they are gone,
//!   or kills the rest with SIGKILL after `--drain-timeout`.
//! - **The RESP store is per process**: each child starts with a copy of the parent's
//!   (empty) store and its writes die with it.

use std::io;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use c10k_proto::Peer;
use c10k_sys::process::{Fork, exit_immediately, fork};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, Signal};

use super::WorkerCtx;
use super::procs::{CHILD_MARGIN, Children, describe, enter_child, require_single_thread};
use crate::accept::{AcceptGuard, Accepted, accept_one};
use crate::blocking::{BlockingEnv, serve_blocking};
use crate::config::Config;
use crate::handler::ServeConn;
use crate::metrics::PARENT_BUDGET;
use crate::ratelog::RateLog;
use crate::shared_stats::SharedStats;
use crate::shutdown::Shutdown;
use crate::stats::WorkerStats;

/// Exit status of a connection process whose session panicked (caught, logged, and
/// counted in the child's counters, which it publishes to the parent's shared block).
const PANIC_EXIT: i32 = 3;

/// Connections accepted per listener report before polling again.
const ACCEPT_BATCH: usize = 64;

/// Run the parent until shutdown, then drain the children.
pub(crate) fn run<A: ServeConn>(ctx: WorkerCtx<A>) -> io::Result<()> {
    require_single_thread("fork")?;
    let WorkerCtx {
        app,
        listener,
        local_addr,
        config,
        shutdown,
        stats,
        open,
        shared_stats,
        metrics,
        ..
    } = ctx;
    let mut listener = listener;
    let mut metrics = metrics;
    let mut children = Children::new()?;
    let parent = rustix::process::getpid();
    let mut guard = AcceptGuard::new();
    let mut fork_log = RateLog::new(Duration::from_secs(1));
    loop {
        for r in children.reap() {
            open.release();
            WorkerStats::add(&stats.closed, 1);
            // PANIC_EXIT: the child caught its session's panic, logged it and
            // published the count through the shared counters (`/metrics`, Report).
            if !matches!(r.status.exit_status(), Some(0 | PANIC_EXIT)) {
                tracing::warn!(
                    "connection process {} {}",
                    r.pid.as_raw_nonzero(),
                    describe(r.status)
                );
            }
        }
        let Some(l) = listener.as_ref() else {
            break;
        };
        let now = Instant::now();
        guard.resume_due(now);
        let paused = guard.paused_until();
        let timeout = paused
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
            .and_then(|t| Timespec::try_from(t).ok());
        let listen_flags = if paused.is_some() {
            PollFlags::empty()
        } else {
            PollFlags::IN
        };
        let (metrics_fd, metrics_flags) = match &metrics {
            Some(m) => (m.listener.as_fd(), PollFlags::IN),
            None => (shutdown.wake_fd(), PollFlags::empty()),
        };
        let mut fds = [
            PollFd::from_borrowed_fd(shutdown.wake_fd(), PollFlags::IN),
            PollFd::from_borrowed_fd(l.as_fd(), listen_flags),
            PollFd::from_borrowed_fd(children.fd().unwrap_or(shutdown.wake_fd()), PollFlags::IN),
            PollFd::from_borrowed_fd(metrics_fd, metrics_flags),
        ];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().is_empty() {
            break;
        }
        if !fds[3].revents().is_empty() {
            if let Some(m) = &metrics {
                m.serve_ready(PARENT_BUDGET);
            }
        }
        if fds[1].revents().is_empty() {
            continue; // SIGCHLD or the end of a pause: handled at the top
        }
        for _ in 0..ACCEPT_BATCH {
            let now = Instant::now();
            let Some(l) = listener.as_ref() else {
                break;
            };
            match accept_one(l) {
                Accepted::Conn(stream, addr) => {
                    if !guard.admit(now, &open, config.max_conns, &stats) {
                        continue;
                    }
                    let peer = Peer {
                        addr,
                        local: Some(local_addr),
                    };
                    match fork() {
                        Ok(Fork::Child) => {
                            // The child: it must not keep the listener open (the
                            // socket would outlive the parent's close on drain).
                            drop(listener.take());
                            drop(metrics.take());
                            children.forget_in_child();
                            let code = child_main(
                                stream,
                                &*app,
                                &peer,
                                &shutdown,
                                parent,
                                &config,
                                shared_stats.as_deref(),
                            );
                            exit_immediately(code);
                        }
                        Ok(Fork::Parent(pid)) => {
                            children.insert(pid);
                            drop(stream);
                        }
                        // Not an OS error: the process is not single-threaded, a bug
                        // that every later fork would hit too.
                        Err(e) if e.raw_os_error().is_none() => return Err(e),
                        Err(e) => {
                            open.release();
                            WorkerStats::add(&stats.refused_backend, 1);
                            WorkerStats::add(&stats.closed, 1);
                            if let Some(n) = fork_log.hit(now) {
                                tracing::warn!(
                                    "refused {n} connection(s): cannot fork ({e}); {} processes alive",
                                    children.len()
                                );
                            }
                        }
                    }
                }
                Accepted::Empty => break,
                Accepted::Retry => {}
                Accepted::Exhausted(e) => {
                    guard.exhausted(now, &e, &stats, &open);
                    break;
                }
                Accepted::Failed(e) => {
                    guard.failed(now, &e, &stats);
                    break;
                }
            }
        }
    }
    drop(listener);
    drain_children(
        &mut children,
        config.drain_timeout,
        &stats,
        "connection process",
    );
    Ok(())
}

/// Forward SIGTERM to every child, wait for them until the drain timeout (plus a
/// margin), kill the rest. Shared with `prefork`.
pub(crate) fn drain_children(
    children: &mut Children,
    drain_timeout: Duration,
    stats: &WorkerStats,
    what: &str,
) {
    let n = children.len();
    if n > 0 {
        tracing::debug!("draining {n} {what}(es)");
    }
    children.signal_all(Signal::TERM);
    let killed = children.wait_all(Instant::now() + drain_timeout + CHILD_MARGIN);
    if killed > 0 {
        WorkerStats::add(&stats.drain_forced, killed as u64);
        tracing::warn!("{killed} {what}(es) still running at the drain deadline: killed");
    }
}

/// The child: serve one connection, return the exit status.
fn child_main<A: ServeConn>(
    stream: TcpStream,
    app: &A,
    peer: &Peer,
    parent_shutdown: &Arc<Shutdown>,
    parent: Pid,
    config: &Config,
    shared_stats: Option<&SharedStats>,
) -> i32 {
    let own = match enter_child(parent_shutdown, parent) {
        Ok(own) => own,
        Err(e) => {
            tracing::error!("connection process: set-up failed: {e}");
            return 1;
        }
    };
    let stats = Arc::new(WorkerStats::default());
    let wake = [own.wake_fd(), parent_shutdown.wake_fd()];
    let env = BlockingEnv {
        stats: &stats,
        wake: &wake,
        drain_timeout: config.drain_timeout,
        idle_timeout: config.idle_timeout,
        header_timeout: config.header_timeout,
    };
    serve_blocking(stream, app, peer, &env);
    // What this connection counted (bytes, requests, errors, timeouts) goes to the
    // parent's `/metrics`; accepting and closing the parent counted itself.
    if let Some(shared) = shared_stats {
        shared.publish(0, &stats, &mut Vec::new());
    }
    if WorkerStats::get(&stats.panics) > 0 {
        PANIC_EXIT
    } else {
        0
    }
}
