//! `prefork`: a fixed pool of `--workers` processes forked at start, each accepting on
//! the shared listener and serving one connection at a time (Apache's prefork MPM).
//!
//! - **Accepting.** Each worker waits in its own epoll instance holding the listener
//!   with `EPOLLEXCLUSIVE` and its shutdown pipes, then accepts one connection and
//!   serves it with the blocking driver. `EPOLLEXCLUSIVE` gives what a blocking
//!   `accept` would (the kernel wakes one idle worker per new connection, no
//!   thundering herd, and a busy worker is skipped) while the wait still ends at
//!   shutdown. Concurrency is the pool size: more connections wait in the backlog
//!   until a worker is free.
//! - **Fork happens before any thread is spawned**: the parent runs in the thread that
//!   called `Server::run` and never spawns one (see `procs.rs`).
//! - **A worker that dies is replaced**: the parent sleeps in `poll(2)` on the
//!   shutdown pipe and a SIGCHLD self-pipe, reaps, and forks a replacement, unless it
//!   is draining. A worker that dies within a second of starting delays the next
//!   replacement (100 ms doubling to 5 s), so a crash loop does not fork-bomb.
//! - **Drain**: the parent closes its listener and forwards SIGTERM to every worker;
//!   each finishes its connection and exits; the parent exits once all are gone, or
//!   kills the rest after `--drain-timeout`.
//! - **The RESP store is per process**: a key is seen only by connections the same
//!   worker serves.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use c10k_proto::Peer;
use rustix::event::Timespec;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::process::Pid;

use super::WorkerCtx;
use super::parent_poll::ParentPoll;
use super::procs::{Children, Forked, child_env, describe, enter_child, require_single_thread};
use crate::accept::{AcceptBatch, AcceptGuard, Admission};
use crate::blocking::serve_blocking;
use crate::config::Config;
use crate::handler::ServeConn;
use crate::ratelog::RateLog;
use crate::shared_stats::SharedStats;
use crate::shutdown::Shutdown;
use crate::stats::WorkerStats;

/// A worker that lived less than this is a crash, and delays the next replacement.
const SHORT_LIFE: Duration = Duration::from_secs(1);
const RESPAWN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESPAWN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Run the parent: fork the pool, replace workers that die, drain on shutdown.
pub(crate) fn run<A: ServeConn>(ctx: WorkerCtx<A>) -> io::Result<()> {
    require_single_thread("prefork")?;
    let config = &ctx.config;
    let shared_stats = match ctx.shared_stats {
        Some(s) => s,
        None => Arc::new(SharedStats::new(config.workers)?),
    };
    let mut metrics = ctx.metrics;
    let mut children = Children::new()?;
    let parent = rustix::process::getpid();
    let mut missing = config.workers;
    // Pool slots (the `worker` label of /metrics): which child serves which.
    let mut free_slots: Vec<usize> = (0..config.workers).rev().collect();
    let mut slot_of: HashMap<Pid, usize> = HashMap::new();
    let mut next_start = Instant::now();
    let mut backoff = RESPAWN_BACKOFF_MIN;
    let mut started = 0u64;
    let mut fork_log = RateLog::new(Duration::from_secs(1));
    while !ctx.shutdown.is_requested() {
        let now = Instant::now();
        while missing > 0 && now >= next_start {
            let Some(l) = ctx.listener.as_ref() else {
                break;
            };
            let slot = free_slots.pop().unwrap_or(0);
            let forked = children.fork(|| {
                drop(metrics.take());
                let publish = Publish {
                    shared: &shared_stats,
                    slot,
                };
                let code = worker_main(
                    l,
                    &ctx.app,
                    &ctx.shutdown,
                    parent,
                    config,
                    ctx.local_addr,
                    &publish,
                );
                if code.is_ok() { 0 } else { 1 }
            })?;
            match forked {
                Forked::Started(pid) => {
                    slot_of.insert(pid, slot);
                    missing -= 1;
                    started += 1;
                }
                Forked::Refused(e) => {
                    free_slots.push(slot);
                    if let Some(n) = fork_log.hit(now) {
                        tracing::warn!(
                            "cannot fork a prefork worker ({e}, {n} time(s)); {} alive, retrying in {backoff:?}",
                            children.len()
                        );
                    }
                    next_start = now + backoff;
                    backoff = (backoff * 2).min(RESPAWN_BACKOFF_MAX);
                }
            }
        }
        let woke = ParentPoll {
            shutdown: &ctx.shutdown,
            children: Some(&children),
            metrics: metrics.as_ref(),
        }
        .wait(None, (missing > 0).then_some(next_start))?;
        if woke.shutdown || ctx.shutdown.is_requested() {
            break;
        }
        let reaped = children.reap();
        for r in reaped {
            if let Some(slot) = slot_of.remove(&r.pid) {
                // A worker killed mid-connection cannot clear its own gauge.
                shared_stats.set_open(slot, 0);
                free_slots.push(slot);
            }
            tracing::warn!(
                "prefork worker {} {} after {:?}; replacing it",
                r.pid.as_raw_nonzero(),
                describe(r.status),
                r.lived
            );
            missing += 1;
            if r.lived < SHORT_LIFE {
                next_start = next_start.max(Instant::now() + backoff);
                backoff = (backoff * 2).min(RESPAWN_BACKOFF_MAX);
            } else {
                backoff = RESPAWN_BACKOFF_MIN;
            }
        }
    }
    drop(ctx.listener);
    drop(metrics);
    children.drain(config.drain_timeout, &ctx.stats, "prefork worker");
    let accepted = (0..shared_stats.blocks())
        .map(|b| accepted_in(&shared_stats, b))
        .sum::<u64>();
    tracing::info!(
        "prefork: {} worker(s), {started} started in all; they accepted {accepted} connection(s)",
        config.workers,
    );
    Ok(())
}

/// Connections accepted by pool slot `b`, as its workers published.
fn accepted_in(shared: &SharedStats, b: usize) -> u64 {
    let i = crate::metrics::SERIES
        .iter()
        .position(|s| s.name == "c10k_connections_accepted_total")
        .unwrap_or(0);
    shared.snapshot(b).get(i).copied().unwrap_or(0)
}

/// Where a worker publishes its counters: its pool slot's block of the mapping the
/// parent reads for `/metrics`.
struct Publish<'a> {
    shared: &'a SharedStats,
    slot: usize,
}

const LISTENER: u64 = 0;
const WAKE: u64 = 1;

/// A worker: accept and serve one connection at a time until shutdown. Returns how
/// many connections it accepted, or `Err` after logging a failure.
fn worker_main<A: ServeConn>(
    listener: &Arc<TcpListener>,
    app: &Arc<A>,
    parent_shutdown: &Arc<Shutdown>,
    parent: Pid,
    config: &Config,
    local_addr: std::net::SocketAddr,
    publish: &Publish<'_>,
) -> Result<u64, ()> {
    let own = enter_child(parent_shutdown, parent).map_err(|e| {
        tracing::error!("prefork worker: set-up failed: {e}");
    })?;
    match serve_pool_slot(
        listener,
        &**app,
        &own,
        parent_shutdown,
        config,
        local_addr,
        publish,
    ) {
        Ok(accepted) => {
            tracing::debug!(
                "prefork worker {}: accepted {accepted} connection(s)",
                rustix::process::getpid().as_raw_nonzero()
            );
            Ok(accepted)
        }
        Err(e) => {
            tracing::error!("prefork worker: {e}");
            Err(())
        }
    }
}

fn serve_pool_slot<A: ServeConn>(
    listener: &TcpListener,
    app: &A,
    own: &Shutdown,
    parent_shutdown: &Shutdown,
    config: &Config,
    local_addr: std::net::SocketAddr,
    publish: &Publish<'_>,
) -> io::Result<u64> {
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    let listen = EventFlags::IN | EventFlags::EXCLUSIVE;
    epoll::add(&ep, listener.as_fd(), EventData::new_u64(LISTENER), listen)?;
    for fd in [own.wake_fd(), parent_shutdown.wake_fd()] {
        epoll::add(&ep, fd, EventData::new_u64(WAKE), EventFlags::IN)?;
    }
    let stats = Arc::new(WorkerStats::default());
    let mut published = Vec::new();
    let open = crate::stats::OpenConns::default();
    let mut guard = AcceptGuard::new();
    let mut events: Vec<epoll::Event> = Vec::with_capacity(4);
    let wake = [own.wake_fd(), parent_shutdown.wake_fd()];
    let env = child_env(&stats, &wake, config);
    loop {
        let now = Instant::now();
        if guard.resume_due(now) {
            epoll::add(&ep, listener.as_fd(), EventData::new_u64(LISTENER), listen)?;
        }
        let timeout = guard
            .paused_until()
            .map(|t| t.saturating_duration_since(now) + Duration::from_millis(1))
            .and_then(|t| Timespec::try_from(t).ok());
        events.clear();
        match epoll::wait(
            &ep,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        // What the last round counted goes to the parent's /metrics.
        publish.shared.publish(publish.slot, &stats, &mut published);
        if events.iter().any(|e| e.data.u64() == WAKE) {
            break;
        }
        if !events.iter().any(|e| e.data.u64() == LISTENER) {
            continue;
        }
        // One connection at a time: the slot is free again when it returns.
        let admission = Admission::new(&open, 1, &stats);
        let mut batch = AcceptBatch::new(1);
        let Some((stream, addr)) = batch.next(listener, &mut guard, now, admission) else {
            // Another worker took it, or accepting paused or failed.
            if batch.paused() {
                epoll::delete(&ep, listener.as_fd())?;
            }
            continue;
        };
        publish.shared.set_open(publish.slot, 1);
        publish.shared.publish(publish.slot, &stats, &mut published);
        let peer = Peer {
            addr,
            local: Some(local_addr),
        };
        let outcome = serve_blocking(stream, app, &peer, &env);
        open.release();
        WorkerStats::add(&stats.closed, 1);
        publish.shared.publish(publish.slot, &stats, &mut published);
        publish.shared.set_open(publish.slot, 0);
        if outcome.drained {
            break;
        }
    }
    publish.shared.publish(publish.slot, &stats, &mut published);
    Ok(WorkerStats::get(&stats.accepted))
}
