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
//! - **Accept priority.** A connection process runs at a lower priority than the
//!   parent (see [`accept_priority`]): with every connection busy on one CPU, the
//!   parent would otherwise get 1/N of the CPU and fork too slowly to keep up.
//! - **The RESP store is per process**: each child starts with a copy of the parent's
//!   (empty) store and its writes die with it.

use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use c10k_proto::Peer;
use rustix::process::Pid;

use super::WorkerCtx;
use super::accept_priority;
use super::parent_poll::ParentPoll;
use super::procs::{Children, Forked, child_env, describe, enter_child, require_single_thread};
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::blocking::serve_blocking;
use crate::config::Config;
use crate::handler::ServeConn;
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
        let Some(l) = listener.as_deref() else {
            break;
        };
        let woke = ParentPoll {
            shutdown: &shutdown,
            children: Some(&children),
            metrics: metrics.as_ref(),
        }
        .wait(Some((l, &mut guard)), None)?;
        if woke.shutdown {
            break;
        }
        if !woke.listener {
            continue; // SIGCHLD or the end of a pause: handled at the top
        }
        let mut batch = AcceptBatch::new(ACCEPT_BATCH);
        loop {
            let now = Instant::now();
            let Some(l) = listener.as_deref() else {
                break;
            };
            let admission = Admission::new(&open, config.max_conns, &stats);
            let Some((stream, addr)) = batch.next(l, &mut guard, now, admission) else {
                break;
            };
            let peer = Peer {
                addr,
                local: Some(local_addr),
            };
            // In the parent, the closure (and with it the connection) is dropped.
            let forked = children.fork(|| {
                // The child must not keep the listener open (the socket would
                // outlive the parent's close on drain).
                drop(listener.take());
                drop(metrics.take());
                child_main(
                    stream,
                    &*app,
                    &peer,
                    &shutdown,
                    parent,
                    &config,
                    shared_stats.as_deref(),
                )
            })?;
            if let Forked::Refused(e) = forked {
                open.release();
                WorkerStats::add(&stats.closed, 1);
                guard.refused_backend(now, format_args!("cannot fork ({e})"), &stats, &open);
            }
        }
    }
    drop(listener);
    children.drain(config.drain_timeout, &stats, "connection process");
    Ok(())
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
    accept_priority::yield_to_accept_loop();
    let own = match enter_child(parent_shutdown, parent) {
        Ok(own) => own,
        Err(e) => {
            tracing::error!("connection process: set-up failed: {e}");
            return 1;
        }
    };
    let stats = Arc::new(WorkerStats::default());
    let wake = [own.wake_fd(), parent_shutdown.wake_fd()];
    let env = child_env(&stats, &wake, config);
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
