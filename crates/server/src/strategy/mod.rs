//! The C10K strategies, each a way of moving bytes between sockets and sessions.
//!
//! Every strategy runs every [`App`]; which one runs is a value
//! ([`Strategy`]), so the command line, the tests and `c10k compare` pick it by name.
//! The registry ([`Strategy::ALL`]) is the one list of them: adding a strategy means
//! adding a variant, its [`StrategyInfo`], and its arm in [`run_worker`] (or, for a
//! strategy that forks, [`run_processes`]; see [`ProcessModel`]).

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use c10k_proto::App;

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::stats::{OpenConns, WorkerStats};

pub(crate) mod epoll;
pub(crate) mod fork;
pub(crate) mod green;
mod parent_poll;
pub(crate) mod poll;
pub(crate) mod pool;
pub(crate) mod prefork;
pub(crate) mod procs;
pub(crate) mod reactor;
pub(crate) mod select;
pub(crate) mod thread;
pub(crate) mod uring;

/// A server architecture from the C10K list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// One thread, select(2), level-triggered.
    Select,
    /// One thread, poll(2), level-triggered.
    Poll,
    /// An epoll loop per worker, level-triggered.
    EpollLt,
    /// An epoll loop per worker, edge-triggered.
    EpollEt,
    /// io_uring completions.
    Uring,
    /// One OS thread per connection, blocking I/O.
    Thread,
    /// One process per connection.
    Fork,
    /// A fixed pool of processes blocking in accept.
    Prefork,
    /// A reactor thread handing ready connections to a worker pool.
    Pool,
    /// Stackful coroutines over epoll.
    Green,
    /// eBPF sockmap: the kernel answers.
    Kernel,
}

/// Whether a strategy can run here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It runs.
    Available,
    /// Not written yet.
    NotBuilt {
        /// Where it is planned.
        planned: &'static str,
    },
    /// Written, but this machine cannot run it.
    Unavailable {
        /// Why not.
        reason: String,
    },
}

/// How a strategy uses threads and processes; the builder runs it accordingly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessModel {
    /// One process: the builder spawns `--workers` worker threads, each running the
    /// strategy (an event loop, or an accept loop that spawns connection threads).
    Threads,
    /// The strategy forks processes. `fork` is sound only in a single-threaded
    /// process, so the builder spawns no thread for it: the strategy runs in the
    /// thread that called [`Server::run`](crate::Server::run), which must be the only
    /// thread of the process (`Server::spawn` refuses these strategies).
    Processes,
}

/// What the registry knows about a strategy.
#[derive(Debug, Clone, Copy)]
pub struct StrategyInfo {
    /// The strategy.
    pub strategy: Strategy,
    /// Its command-line name.
    pub name: &'static str,
    /// Its item in Dan Kegel's C10K list ("1".."5", or the answer it comes from).
    pub item: &'static str,
    /// How it works, in a line.
    pub summary: &'static str,
    /// Its limits, in a line.
    pub limits: &'static str,
    /// The nearest strategy to use when this one is not available.
    pub instead: &'static str,
}

impl Strategy {
    /// Every strategy, in the order of the C10K list.
    pub const ALL: [StrategyInfo; 11] = [
        info(
            Strategy::Select,
            "select",
            "1",
            "one thread, select(2), level-triggered",
            "fds below 1024 (FD_SETSIZE) per process: connections beyond it are refused; O(maxfd) per wait",
            "poll",
        ),
        info(
            Strategy::Poll,
            "poll",
            "1",
            "one thread, poll(2), level-triggered",
            "O(connections) per wait (kernel scan and revents scan)",
            "epoll-lt",
        ),
        info(
            Strategy::EpollLt,
            "epoll-lt",
            "1",
            "epoll loop per worker, level-triggered",
            "one epoll_ctl per interest change",
            "epoll-et",
        ),
        info(
            Strategy::EpollEt,
            "epoll-et",
            "2",
            "epoll loop per worker, edge-triggered, read/write until EAGAIN",
            "none beyond fds and memory",
            "epoll-lt",
        ),
        info(
            Strategy::Uring,
            "uring",
            "3",
            "io_uring completions, multishot accept and recv",
            "needs io_uring (kernel >= 6.0, not disabled)",
            "epoll-et",
        ),
        info(
            Strategy::Thread,
            "thread",
            "4",
            "one OS thread per connection, blocking I/O",
            "a thread and its stack (--stack-size) per connection, up to --max-conns",
            "epoll-et",
        ),
        info(
            Strategy::Fork,
            "fork",
            "4",
            "one process per connection",
            "a process per connection, up to --max-conns; RESP store per process: a key SET on one connection is not seen by another",
            "prefork",
        ),
        info(
            Strategy::Prefork,
            "prefork",
            "4",
            "fixed pool of processes blocking in accept",
            "concurrency = --workers processes, more connections wait in the backlog; RESP store per process: a key is seen only by connections served by the same worker",
            "thread",
        ),
        info(
            Strategy::Pool,
            "pool",
            "answer 5",
            "reactor thread hands ready connections to a worker pool",
            "hand-off cost per request (a wake-up, an epoll_ctl); --workers is the pool size",
            "epoll-et",
        ),
        info(
            Strategy::Green,
            "green",
            "answers 3, 4",
            "stackful coroutines over epoll",
            "a blocking call or long computation in a connection stalls its worker; a --stack-size stack (touched pages only) per connection",
            "epoll-et",
        ),
        info(
            Strategy::Kernel,
            "kernel",
            "5",
            "eBPF sockmap, the kernel answers (echo)",
            "echo only; needs BPF",
            "epoll-et",
        ),
    ];

    /// The registry entry.
    pub fn info(self) -> &'static StrategyInfo {
        Self::ALL
            .iter()
            .find(|i| i.strategy == self)
            .unwrap_or(&Self::ALL[3])
    }

    /// The command-line name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Look a strategy up by its command-line name.
    pub fn from_name(name: &str) -> Option<Strategy> {
        Self::ALL
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.strategy)
    }

    /// How it uses threads and processes.
    pub fn process_model(self) -> ProcessModel {
        match self {
            Strategy::Fork | Strategy::Prefork => ProcessModel::Processes,
            _ => ProcessModel::Threads,
        }
    }

    /// The most connections the strategy can hold at once by its design, when it has
    /// such a limit (`select`: descriptors at or above FD_SETSIZE cannot be watched).
    /// `c10k compare` shows the cells beyond it as "n/a" instead of running them.
    pub fn conn_limit(self) -> Option<usize> {
        match self {
            Strategy::Select => Some(1024),
            // Not a hard limit, a practical one: a process per connection past a few
            // thousand takes longer to start than a compare cell lasts.
            Strategy::Fork | Strategy::Prefork => Some(2000),
            _ => None,
        }
    }

    /// Whether it can run on this machine, and if not, why.
    pub fn availability(self) -> Availability {
        match self {
            Strategy::Select
            | Strategy::Poll
            | Strategy::EpollLt
            | Strategy::EpollEt
            | Strategy::Pool
            | Strategy::Thread
            | Strategy::Fork
            | Strategy::Prefork
            | Strategy::Green => Availability::Available,
            Strategy::Uring => uring::availability(),
            Strategy::Kernel => Availability::NotBuilt {
                planned: "a later issue",
            },
        }
    }
}

/// How a strategy turns `--workers N` into threads (see [`Strategy::loops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// N independent loops: N [`run_worker`] calls, each on its own thread with its
    /// own listener (or one shared listener) and its own counters.
    Loops,
    /// One [`run_worker`] call with one listener, which starts N threads of its own
    /// (`pool`: one reactor thread plus a pool of N workers).
    Pool,
}

impl Strategy {
    /// How this strategy uses `--workers`.
    pub(crate) fn threads(self) -> Threads {
        match self {
            Strategy::Pool => Threads::Pool,
            _ => Threads::Loops,
        }
    }

    /// How many [`run_worker`] calls (threads started by the builder, listeners,
    /// counter sets) serve `workers`.
    pub(crate) fn loops(self, workers: usize) -> usize {
        match self.threads() {
            Threads::Loops => workers,
            Threads::Pool => 1,
        }
    }
}

#[allow(clippy::too_many_arguments)]
const fn info(
    strategy: Strategy,
    name: &'static str,
    item: &'static str,
    summary: &'static str,
    limits: &'static str,
    instead: &'static str,
) -> StrategyInfo {
    StrategyInfo {
        strategy,
        name,
        item,
        summary,
        limits,
        instead,
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::from_name(s).ok_or_else(|| {
            let names: Vec<&str> = Strategy::ALL.iter().map(|i| i.name).collect();
            format!("unknown strategy '{s}': use one of {}", names.join(", "))
        })
    }
}

/// Everything one worker (event loop, thread or process) needs.
pub(crate) struct WorkerCtx<A> {
    pub(crate) id: usize,
    pub(crate) app: Arc<A>,
    /// The listener; a worker takes it (`Option::take`) so that dropping its copy at
    /// drain closes it (nothing else holds one once the workers run).
    pub(crate) listener: Option<Arc<TcpListener>>,
    pub(crate) local_addr: SocketAddr,
    /// The listener is shared with other workers (register it with EPOLLEXCLUSIVE).
    pub(crate) shared_listener: bool,
    pub(crate) config: Arc<Config>,
    pub(crate) shutdown: Arc<Shutdown>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) open: Arc<OpenConns>,
    /// Forking strategies: where children publish their counters.
    pub(crate) shared_stats: Option<Arc<crate::shared_stats::SharedStats>>,
    /// Forking strategies: the metrics endpoint, served by the parent's own loop.
    pub(crate) metrics: Option<crate::metrics::MetricsEndpoint>,
}

/// Run one worker of `strategy` until it has drained after shutdown. For a
/// [`Threads::Pool`] strategy this is the one call that runs the whole pool.
pub(crate) fn run_worker<A: App>(strategy: Strategy, ctx: WorkerCtx<A>) -> std::io::Result<()> {
    match strategy {
        Strategy::EpollLt => reactor::run(ctx, epoll::Epoll::new(epoll::Trigger::Level)?),
        Strategy::EpollEt => reactor::run(ctx, epoll::Epoll::new(epoll::Trigger::Edge)?),
        Strategy::Pool => pool::run(ctx),
        Strategy::Select => reactor::run(ctx, select::Select::new()),
        Strategy::Poll => reactor::run(ctx, poll::Poll::new()),
        Strategy::Thread => thread::run(ctx),
        Strategy::Uring => uring::run(ctx),
        Strategy::Green => green::run(ctx),
        other => Err(std::io::Error::other(format!(
            "strategy {other} does not run in worker threads"
        ))),
    }
}

/// Run a [`ProcessModel::Processes`] strategy in the calling thread until it has
/// drained. The caller must be the only thread of the process, and `ctx` must hold
/// the only reference to the listener (a forked child closes it).
pub(crate) fn run_processes<A: App>(strategy: Strategy, ctx: WorkerCtx<A>) -> std::io::Result<()> {
    match strategy {
        Strategy::Fork => fork::run(ctx),
        Strategy::Prefork => prefork::run(ctx),
        other => Err(std::io::Error::other(format!(
            "strategy {other} does not fork processes"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for i in &Strategy::ALL {
            assert_eq!(Strategy::from_name(i.name), Some(i.strategy));
            assert_eq!(i.strategy.name(), i.name);
            assert!(
                Strategy::from_name(i.instead).is_some(),
                "{} names a real fallback",
                i.name
            );
        }
        assert!("nope".parse::<Strategy>().unwrap_err().contains("epoll-et"));
    }
}
