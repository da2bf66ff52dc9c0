//! `--processes N`: one process per core, each running the strategy in its threads,
//! under a supervisor (the oldest answer to the question: processes share nothing, a
//! crash takes one down, and each has its own descriptor limit).
//!
//! - **Fork before any thread.** The supervisor is the process `Server::run` runs in;
//!   it forks its N children before it (or anything before it) spawns a thread, and
//!   never spawns one: it serves `/metrics` itself from its `poll(2)`. Each child then
//!   starts its own worker threads (`--workers` of them) like a server of its own.
//! - **Listeners.** With `--accept reuseport` (the default) the supervisor binds
//!   N x loops `SO_REUSEPORT` listeners up front and hands each child its own; it keeps
//!   its copies, so a child that dies leaves its listeners open and the connections
//!   queued on them wait for its replacement instead of being reset. With
//!   `--accept exclusive` or an inherited socket (socket activation, the zero-downtime
//!   restart) every child shares the one listener.
//! - **Restarts.** A child that dies while the server is not draining is restarted in
//!   its slot, logged and counted (`c10k_process_restarts_total`); one that lived less
//!   than a second delays the next start (100 ms doubling to 5 s). When every child
//!   has died young [`CRASH_ROUNDS`] times in a row the supervisor gives up: it drains
//!   the rest and `Server::run` returns [`ServerError::ChildrenCrashing`] (exit 1).
//! - **Drain.** SIGTERM/SIGINT reach the supervisor, which forwards SIGTERM to every
//!   child; each drains as a single server does, and the supervisor returns once all
//!   are gone (killing the rest after `--drain-timeout`).
//! - **Counters.** Each child publishes what its workers counted into its block of a
//!   shared mapping (the one `fork`/`prefork` use), a few times a second and at exit;
//!   `/metrics` on the supervisor renders one row per process (`process="i"`) and the
//!   open connections of all of them.
//! - **State is per process**: the RESP store, the pub/sub broker, the chat room, the
//!   gate's counters and `--max-conns` are each child's own.

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::Pid;

use crate::builder::{Loops, Report, Server, ServerError, run_loops};
use crate::config::Config;
use crate::ratelog::RateLog;
use crate::service::Service;
use crate::shared_stats::SharedStats;
use crate::shutdown::Shutdown;
use crate::stats::{OpenConns, WorkerStats};
use crate::strategy::parent_poll::ParentPoll;
use crate::strategy::procs::{Children, Forked, describe, enter_child, require_single_thread};
use crate::strategy::{ProcessModel, Strategy};

/// A child that lived less than this died young, and delays the next start.
const SHORT_LIFE: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The supervisor gives up after this many young deaths per child, in a row.
pub(crate) const CRASH_ROUNDS: usize = 3;
/// How often a child publishes its counters.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// Processes per CPU beyond which `--processes` is refused.
pub(crate) const MAX_PER_CPU: usize = 64;

/// Whether `--processes n` can apply to `strategy` with `config`.
pub(crate) fn check(strategy: Strategy, n: usize, config: &Config) -> Result<(), String> {
    if strategy.process_model() == ProcessModel::Processes {
        return Err(format!(
            "--processes is for the strategies that run in threads; {strategy} runs \
             processes already (its --workers)"
        ));
    }
    if strategy == Strategy::Kernel {
        return Err(
            "--processes with kernel: its echo runs in the kernel, on every CPU already; \
             serve it from one process"
                .into(),
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if n == 0 || n > cpus * MAX_PER_CPU {
        return Err(format!(
            "--processes must be 1..={} ({cpus} CPUs x {MAX_PER_CPU}), not {n}",
            cpus * MAX_PER_CPU
        ));
    }
    if config.max_conns_per_ip.is_some() {
        return Err(
            "--max-conns-per-ip needs one count shared by every connection, which separate \
             processes do not have; drop --processes or the limit"
                .into(),
        );
    }
    Ok(())
}

/// One child slot: which listeners it serves and who serves it now.
struct Slot {
    listeners: Vec<Arc<TcpListener>>,
    pid: Option<Pid>,
}

impl<A: Service> Server<A> {
    /// Run the supervisor in this thread (see the module documentation).
    pub(crate) fn serve_supervised(mut self, n: usize) -> Result<Report, ServerError> {
        require_single_thread(&format!("{} --processes", self.strategy))?;
        let shared = match &self.shared_stats {
            Some(s) => Arc::clone(s),
            None => Arc::new(SharedStats::new(n)?),
        };
        let listeners: Vec<Arc<TcpListener>> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(Arc::new)
            .collect();
        let per = if listeners.len() >= n {
            listeners.len() / n
        } else {
            0
        };
        let mut slots: Vec<Slot> = (0..n)
            .map(|i| Slot {
                listeners: if per == 0 {
                    listeners.clone()
                } else {
                    listeners[i * per..(i + 1) * per].to_vec()
                },
                pid: None,
            })
            .collect();
        let metrics = self.metrics.take();
        let restarts = metrics
            .as_ref()
            .and_then(|m| m.metrics.restarts.clone())
            .unwrap_or_default();
        let mut children = Children::new()?;
        let parent = rustix::process::getpid();
        tracing::info!(
            "{} process(es) of {} with {} worker(s) each; the RESP store, pub/sub, chat \
             room and --max-conns are per process",
            n,
            self.strategy,
            self.config.workers
        );
        let mut next_start = Instant::now();
        let mut backoff = BACKOFF_MIN;
        let mut young_in_a_row = 0usize;
        let mut fork_log = RateLog::new(Duration::from_secs(1));
        let mut gave_up = None;
        while !self.shutdown.is_requested() {
            let now = Instant::now();
            if now >= next_start {
                for (i, slot) in slots.iter_mut().enumerate() {
                    if slot.pid.is_some() {
                        continue;
                    }
                    let child = Child {
                        index: i,
                        strategy: self.strategy,
                        app: &self.app,
                        listeners: &slot.listeners,
                        local_addr: self.local_addr,
                        config: &self.config,
                        parent_shutdown: &self.shutdown,
                        parent,
                        shared: &shared,
                    };
                    match children.fork(|| child.run())? {
                        Forked::Started(pid) => slot.pid = Some(pid),
                        Forked::Refused(e) => {
                            if let Some(k) = fork_log.hit(now) {
                                tracing::warn!(
                                    "cannot fork process {i} ({e}, {k} time(s)); retrying in {backoff:?}"
                                );
                            }
                            next_start = now + backoff;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            break;
                        }
                    }
                }
            }
            let missing = slots.iter().any(|s| s.pid.is_none());
            let woke = ParentPoll {
                shutdown: &self.shutdown,
                children: Some(&children),
                metrics: metrics.as_ref(),
            }
            .wait(None, missing.then_some(next_start))?;
            if woke.shutdown || self.shutdown.is_requested() {
                break;
            }
            for r in children.reap() {
                let Some((i, slot)) = slots
                    .iter_mut()
                    .enumerate()
                    .find(|(_, s)| s.pid == Some(r.pid))
                else {
                    continue;
                };
                slot.pid = None;
                // A child killed mid-connection cannot clear its own gauge.
                shared.set_open(i, 0);
                restarts.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "process {i} (pid {}) {} after {:?}; restarting it",
                    r.pid.as_raw_nonzero(),
                    describe(r.status),
                    r.lived
                );
                if r.lived < SHORT_LIFE {
                    young_in_a_row += 1;
                    next_start = next_start.max(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                } else {
                    young_in_a_row = 0;
                    backoff = BACKOFF_MIN;
                }
            }
            if young_in_a_row >= CRASH_ROUNDS * n {
                let why = format!(
                    "--processes: the children died within {SHORT_LIFE:?} of starting \
                     {young_in_a_row} times in a row; giving up (see the log above for why)"
                );
                tracing::error!("{why}");
                gave_up = Some(why);
                break;
            }
        }
        drop(slots);
        drop(listeners);
        drop(metrics);
        children.drain(self.config.drain_timeout, &self.stats[0], "process");
        shared.fold_into(&self.stats[0]);
        let s = &self.stats[0];
        tracing::info!(
            "{n} process(es) of {}: accepted {} connection(s) in all, {} restart(s)",
            self.strategy,
            WorkerStats::get(&s.accepted),
            restarts.load(Ordering::Relaxed)
        );
        if let Some(why) = gave_up {
            return Err(ServerError::ChildrenCrashing(why));
        }
        Ok(Report {
            workers: self.stats,
        })
    }
}

/// What a child needs; [`run`](Child::run) is its whole life.
struct Child<'a, A> {
    index: usize,
    strategy: Strategy,
    app: &'a Arc<A>,
    listeners: &'a [Arc<TcpListener>],
    local_addr: std::net::SocketAddr,
    config: &'a Arc<Config>,
    parent_shutdown: &'a Arc<Shutdown>,
    parent: Pid,
    shared: &'a Arc<SharedStats>,
}

impl<A: Service> Child<'_, A> {
    /// Serve as a server of its own until drained; the exit status.
    fn run(self) -> i32 {
        let own = match enter_child(self.parent_shutdown, self.parent) {
            Ok(own) => own,
            Err(e) => {
                tracing::error!("process {}: set-up failed: {e}", self.index);
                return 1;
            }
        };
        let listeners: Vec<TcpListener> = match self
            .listeners
            .iter()
            .map(|l| l.try_clone())
            .collect::<Result<_, _>>()
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("process {}: cannot take its listeners: {e}", self.index);
                return 1;
            }
        };
        let loops = self.strategy.loops(self.config.workers);
        let stats: Vec<Arc<WorkerStats>> = (0..loops).map(|_| Arc::default()).collect();
        let open = Arc::new(OpenConns::default());
        let done = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (stats, open, done) = (stats.clone(), Arc::clone(&open), Arc::clone(&done));
            let shared = Arc::clone(self.shared);
            let index = self.index;
            std::thread::Builder::new()
                .name("c10k-publish".into())
                .spawn(move || {
                    let mut last = vec![Vec::new(); stats.len()];
                    loop {
                        let finished = done.load(Ordering::Acquire);
                        for (s, l) in stats.iter().zip(last.iter_mut()) {
                            shared.publish(index, s, l);
                        }
                        shared.set_open(index, open.current() as u64);
                        if finished {
                            return;
                        }
                        std::thread::park_timeout(PUBLISH_EVERY);
                    }
                })
        };
        let failed = run_loops(
            &Loops {
                strategy: self.strategy,
                app: self.app,
                local_addr: self.local_addr,
                config: self.config,
                shutdown: &own,
                open: &open,
            },
            listeners,
            &stats,
        );
        done.store(true, Ordering::Release);
        if let Ok(t) = publisher {
            t.thread().unpark();
            let _ = t.join();
        }
        match failed {
            Some(e) => {
                tracing::error!("process {}: {e}", self.index);
                1
            }
            None => 0,
        }
    }
}
