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
//! A connection thread runs at a lower priority than the accept loop (see
//! [`accept_priority`]): with every connection busy on one CPU, the accept loop
//! would otherwise get 1/N of the CPU and leave new connections waiting for seconds.
//!
//! Drain: stop accepting and close the listener; every connection thread notices the
//! shutdown pipe in its own `poll` and drains its connection (bounded by
//! `--drain-timeout`); the accept loop waits for them, with the same bound plus a
//! margin, and returns.

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use c10k_proto::Peer;

use super::WorkerCtx;
use super::accept_priority;
use super::parent_poll::ParentPoll;
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::blocking::{BlockingEnv, serve_blocking};
use crate::handler::ServeConn;
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
    let listener = ctx
        .listener
        .ok_or_else(|| io::Error::other("thread: no listener"))?;
    let (config, open, stats) = (&ctx.config, &ctx.open, &ctx.stats);
    let live = Arc::new(Live::default());
    let mut guard = AcceptGuard::new();
    let parent = ParentPoll {
        shutdown: &ctx.shutdown,
        children: None,
        metrics: None,
    };
    let admission = Admission::new(open, config.max_conns, stats);
    loop {
        let woke = parent.wait(Some((&listener, &mut guard)), None)?;
        if woke.shutdown {
            break;
        }
        if !woke.listener {
            continue;
        }
        let mut batch = AcceptBatch::new(ACCEPT_BATCH);
        loop {
            let now = Instant::now();
            let Some((stream, addr)) = batch.next(&listener, &mut guard, now, admission) else {
                break;
            };
            live.add(1);
            let slot = ConnSlot {
                live: Arc::clone(&live),
                open: Arc::clone(open),
                stats: Arc::clone(stats),
            };
            let app = Arc::clone(&ctx.app);
            let shutdown = Arc::clone(&ctx.shutdown);
            let config = Arc::clone(config);
            let peer = Peer {
                addr,
                local: Some(ctx.local_addr),
            };
            let spawned = std::thread::Builder::new()
                .stack_size(config.stack_size)
                .spawn(move || {
                    accept_priority::yield_to_accept_loop();
                    let wake = [shutdown.wake_fd()];
                    let env = BlockingEnv {
                        stats: &slot.stats,
                        wake: &wake,
                        drain_timeout: config.drain_timeout,
                        idle_timeout: config.idle_timeout,
                        header_timeout: config.header_timeout,
                    };
                    serve_blocking(stream, &*app, &peer, &env);
                    drop(slot);
                });
            if let Err(e) = spawned {
                // The closure was dropped: the connection is closed and its slot
                // released.
                guard.refused_backend(
                    now,
                    format_args!("cannot create a thread ({e})"),
                    stats,
                    open,
                );
            }
        }
    }
    // Close the listener (this worker holds the last reference): new connections are
    // refused while the connection threads drain.
    drop(listener);
    let deadline = Instant::now() + config.drain_timeout + JOIN_MARGIN;
    let left = live.wait_zero(deadline);
    if left > 0 {
        tracing::warn!(
            "worker {}: {left} connection thread(s) still running at the deadline",
            ctx.id
        );
    }
    Ok(())
}
