//! `thread`: one OS thread per connection, blocking I/O (C10K item 4).
//!
//! The worker thread is an accept loop blocking in `poll(2)` on the listener and the
//! shutdown pipe. Each admitted connection gets a new thread with a small stack
//! (`--stack-size`, 64 KiB by default) that serves it from start to end with the
//! blocking driver ([`serve_blocking`]) and exits. `--max-conns` (the process-wide
//! [`OpenConns`](crate::OpenConns)) bounds the number of connection threads.
//!
//! Thread creation can fail (`EAGAIN`: `RLIMIT_NPROC`, `threads-max`, the cgroup's
//! `pids.max`, or no address space for the stack). The connection is then closed at
//! once, counted in `refused_backend`, and logged at most once a second; the server
//! keeps running and serves the next connection as soon as a thread can be made.
//!
//! Drain: stop accepting and close the listener; every connection thread notices the
//! shutdown pipe in its own `poll` and drains its connection (bounded by
//! `--drain-timeout`); the accept loop waits for them, with the same bound plus a
//! margin, and returns.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use c10k_proto::Peer;
use rustix::event::{PollFd, PollFlags, Timespec, poll};

use super::WorkerCtx;
use crate::accept::{AcceptGuard, Accepted, accept_one};
use crate::blocking::{BlockingEnv, serve_blocking};
use crate::handler::ServeConn;
use crate::ratelog::RateLog;
use crate::stats::{OpenConns, WorkerStats};

/// Connections accepted per listener report before polling again.
const ACCEPT_BATCH: usize = 64;

/// Extra time the accept loop waits for connection threads beyond the drain timeout
/// (each thread bounds its own drain; this covers scheduling).
const JOIN_MARGIN: Duration = Duration::from_secs(1);

/// The number of live connection threads of one worker.
#[derive(Default)]
struct Live {
    count: Mutex<usize>,
    zero: Condvar,
}

impl Live {
    fn add(&self, n: isize) {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *count = count.saturating_add_signed(n);
        if *count == 0 {
            self.zero.notify_all();
        }
    }

    /// Wait until no thread is live or `deadline` passes; returns how many are left.
    fn wait_zero(&self, deadline: Instant) -> usize {
        let mut count = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            count = match self.zero.wait_timeout(count, left) {
                Ok((c, _)) => c,
                Err(p) => p.into_inner().0,
            };
        }
        *count
    }
}

/// Held by a connection thread; releases its slot however the thread ends (a panic in
/// a session included).
struct ConnSlot {
    live: Arc<Live>,
    open: Arc<OpenConns>,
    stats: Arc<WorkerStats>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.release();
        WorkerStats::add(&self.stats.closed, 1);
        self.live.add(-1);
    }
}

/// Run one accept loop until shutdown, then wait for its connection threads.
pub(crate) fn run<A: ServeConn>(ctx: WorkerCtx<A>) -> io::Result<()> {
    let WorkerCtx {
        id,
        app,
        listener,
        local_addr,
        config,
        shutdown,
        stats,
        open,
        ..
    } = ctx;
    let listener = listener.ok_or_else(|| io::Error::other("thread: no listener"))?;
    let live = Arc::new(Live::default());
    let mut guard = AcceptGuard::new();
    let mut spawn_log = RateLog::new(Duration::from_secs(1));
    loop {
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
        let mut fds = [
            PollFd::from_borrowed_fd(shutdown.wake_fd(), PollFlags::IN),
            PollFd::from_borrowed_fd(listener.as_fd(), listen_flags),
        ];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().is_empty() {
            break;
        }
        if fds[1].revents().is_empty() {
            continue;
        }
        for _ in 0..ACCEPT_BATCH {
            let now = Instant::now();
            match accept_one(&listener) {
                Accepted::Conn(stream, addr) => {
                    if !guard.admit(now, &open, config.max_conns, &stats) {
                        continue;
                    }
                    live.add(1);
                    let slot = ConnSlot {
                        live: Arc::clone(&live),
                        open: Arc::clone(&open),
                        stats: Arc::clone(&stats),
                    };
                    let app = Arc::clone(&app);
                    let shutdown = Arc::clone(&shutdown);
                    let drain_timeout = config.drain_timeout;
                    let idle_timeout = config.idle_timeout;
                    let header_timeout = config.header_timeout;
                    let spawned = std::thread::Builder::new()
                        .stack_size(config.stack_size)
                        .spawn(move || {
                            let peer = Peer {
                                addr,
                                local: Some(local_addr),
                            };
                            let wake = [shutdown.wake_fd()];
                            let env = BlockingEnv {
                                stats: &slot.stats,
                                wake: &wake,
                                drain_timeout,
                                idle_timeout,
                                header_timeout,
                            };
                            serve_blocking(stream, &*app, &peer, &env);
                            drop(slot);
                        });
                    if let Err(e) = spawned {
                        // The closure was dropped: the connection is closed and its
                        // slot released.
                        WorkerStats::add(&stats.refused_backend, 1);
                        if let Some(n) = spawn_log.hit(now) {
                            tracing::warn!(
                                "refused {n} connection(s): cannot create a thread ({e}); {} open",
                                open.current()
                            );
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
    // Close the listener (this worker holds the last reference): new connections are
    // refused while the connection threads drain.
    drop(listener);
    let deadline = Instant::now() + config.drain_timeout + JOIN_MARGIN;
    let left = live.wait_zero(deadline);
    if left > 0 {
        tracing::warn!("worker {id}: {left} connection thread(s) still running at the deadline");
    }
    Ok(())
}
