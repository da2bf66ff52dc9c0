//! `thread`: one OS thread per connection, blocking I/O (C10K item 4).
//!
//! The worker thread is an accept loop blocking in `poll(2)` on the listener and the
//! shutdown pipe. Each admitted connection is served from start to end by one thread
//! with a small stack (`--stack-size`, 64 KiB by default), with the blocking driver
//! ([`serve_blocking`]). A thread whose connection ended waits a while for another
//! before it exits ([`idle`]): the accept loop hands a new connection to a waiting
//! thread, and starts a thread only when none waits. `--max-conns` (the process-wide
//! [`OpenConns`](crate::OpenConns)) bounds the number of busy connection threads.
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
//! Drain: stop accepting and close the listener; the waiting threads exit; every
//! connection thread notices the shutdown pipe in its own `poll`, drains its
//! connection (bounded by `--drain-timeout`) and exits; the accept loop waits for
//! them, with the same bound plus a margin, and returns.

mod idle;

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use c10k_proto::Peer;

use self::idle::{IDLE_KEEP, Idle};
use super::WorkerCtx;
use super::accept_priority;
use super::parent_poll::ParentPoll;
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::blocking::{BlockingEnv, serve_blocking};
use crate::config::Config;
use crate::handler::ServeConn;
use crate::shutdown::Shutdown;
use crate::stats::{OpenConns, WorkerStats};

/// Connections accepted per listener report before polling again.
const ACCEPT_BATCH: usize = 64;

/// Extra time the accept loop waits for connection threads beyond the drain timeout
/// (each thread bounds its own drain; this covers scheduling).
const JOIN_MARGIN: Duration = Duration::from_secs(1);

/// The number of live connection threads of one worker. Counting is lock-free: the
/// accept loop must not wait on a lock a low-priority connection thread could hold
/// (see `thread/idle.rs`); the lock is only taken to signal the last exit.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    lock: Mutex<()>,
    zero: Condvar,
}

impl Live {
    fn started(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn ended(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The waiter checks the count holding the lock: taking it here means it
            // is either before its check or waiting, and is woken.
            let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.zero.notify_all();
        }
    }

    /// Wait until no thread is live or `deadline` passes; returns how many are left.
    fn wait_zero(&self, deadline: Instant) -> usize {
        let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let count = self.count.load(Ordering::Acquire);
            let left = deadline.saturating_duration_since(Instant::now());
            if count == 0 || left.is_zero() {
                return count;
            }
            held = match self.zero.wait_timeout(held, left) {
                Ok((h, _)) => h,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// Released when a connection ends, however it ends (a panic in a session included):
/// its `--max-conns` slot and the closed count.
struct ConnSlot {
    open: Arc<OpenConns>,
    stats: Arc<WorkerStats>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.open.release();
        WorkerStats::add(&self.stats.closed, 1);
    }
}

/// A connection for a connection thread.
struct Job {
    stream: TcpStream,
    peer: Peer,
    slot: ConnSlot,
}

/// Held by a connection thread for its life: counts it live until it ends.
struct ThreadSlot {
    live: Arc<Live>,
}

impl Drop for ThreadSlot {
    fn drop(&mut self) {
        self.live.ended();
    }
}

/// What every connection thread of a worker shares.
struct Shared<A> {
    app: Arc<A>,
    shutdown: Arc<Shutdown>,
    config: Arc<Config>,
    stats: Arc<WorkerStats>,
    idle: Idle<Job>,
}

/// A connection thread: serve `first`, then each connection handed to it while it
/// waits, until none comes within [`IDLE_KEEP`] or the server drains.
fn connection_thread<A: ServeConn>(first: Job, shared: &Shared<A>, _slot: ThreadSlot) {
    accept_priority::yield_to_accept_loop();
    let wake = [shared.shutdown.wake_fd()];
    let env = BlockingEnv {
        stats: &shared.stats,
        wake: &wake,
        drain_timeout: shared.config.drain_timeout,
        idle_timeout: shared.config.idle_timeout,
        header_timeout: shared.config.header_timeout,
    };
    let mut job = Some(first);
    while let Some(Job { stream, peer, slot }) = job.take() {
        serve_blocking(stream, &*shared.app, &peer, &env);
        drop(slot);
        job = shared.idle.wait(IDLE_KEEP);
    }
}

/// Run one accept loop until shutdown, then wait for its connection threads.
pub(crate) fn run<A: ServeConn>(ctx: WorkerCtx<A>) -> io::Result<()> {
    let listener = ctx
        .listener
        .ok_or_else(|| io::Error::other("thread: no listener"))?;
    let (config, open, stats) = (&ctx.config, &ctx.open, &ctx.stats);
    let live = Arc::new(Live::default());
    let shared = Arc::new(Shared {
        app: Arc::clone(&ctx.app),
        shutdown: Arc::clone(&ctx.shutdown),
        config: Arc::clone(config),
        stats: Arc::clone(stats),
        idle: Idle::default(),
    });
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
            let job = Job {
                stream,
                peer: Peer {
                    addr,
                    local: Some(ctx.local_addr),
                },
                slot: ConnSlot {
                    open: Arc::clone(open),
                    stats: Arc::clone(stats),
                },
            };
            let Err(job) = shared.idle.hand_off(job) else {
                continue;
            };
            live.started();
            let slot = ThreadSlot {
                live: Arc::clone(&live),
            };
            let thread_shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .stack_size(config.stack_size)
                .spawn(move || connection_thread(job, &thread_shared, slot));
            if let Err(e) = spawned {
                // The closure was dropped: the connection is closed and its slots
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
    // refused while the connection threads drain. The waiting threads exit now.
    drop(listener);
    shared.idle.close();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_wait_ends_at_the_last_exit_or_the_deadline() {
        let live = Arc::new(Live::default());
        live.started();
        live.started();
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(live.wait_zero(soon), 2, "the deadline passes");
        let ender = std::thread::spawn({
            let live = Arc::clone(&live);
            move || {
                live.ended();
                std::thread::sleep(Duration::from_millis(20));
                live.ended();
            }
        });
        let later = Instant::now() + Duration::from_secs(20);
        assert_eq!(live.wait_zero(later), 0);
        ender.join().unwrap();
    }
}
