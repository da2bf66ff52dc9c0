//! The C10K strategies, each a way of moving bytes between sockets and sessions.
//!
//! Every strategy runs every [`App`]; which one runs is a value
//! ([`Strategy`]), so the command line, the tests and `c10k compare` pick it by name.
//! This module is the registry, the one place that knows them all: what each is
//! ([`Strategy::info`], listed in [`Strategy::ALL`]), whether it can run here, and
//! which code runs it ([`run`]). Every `match` on a strategy here names each variant
//! (no `_` arm), so a new strategy does not compile until each of them has its arm.
//! A strategy is handed a [`WorkerCtx`], defined in `worker.rs` (re-exported here), so
//! that no strategy depends on the registry that depends on it.

use std::fmt;
use std::io;

use c10k_proto::App;

use crate::config::Config;
use crate::handler::ServeConn;

mod accept_priority;
pub(crate) mod epoll;
mod fd_table;
pub(crate) mod fork;
pub(crate) mod green;
pub(crate) mod kernel;
pub(crate) mod parent_poll;
pub(crate) mod poll;
pub(crate) mod poller;
pub(crate) mod pool;
pub(crate) mod prefork;
pub(crate) mod procs;
pub(crate) mod reactor;
pub(crate) mod select;
pub(crate) mod thread;
pub(crate) mod uring;
mod worker;

pub use worker::Availability;
pub(crate) use worker::WorkerCtx;

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
    /// eBPF sockmap: the kernel answers. (The last variant: the registry's test
    /// counts them by it.)
    Kernel,
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

/// How a strategy turns `--workers N` into threads (see [`Strategy::loops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// N independent loops: N [`run`] calls, each on its own thread with its
    /// own listener (or one shared listener) and its own counters.
    Loops,
    /// One [`run`] call with one listener, which starts N threads of its own
    /// (`pool`: one reactor thread plus a pool of N workers).
    Pool,
}

/// Everything the registry knows about a strategy, but the code that runs it
/// ([`run`]).
struct Entry {
    info: StrategyInfo,
    process_model: ProcessModel,
    threads: Threads,
    /// See [`Strategy::conn_limit`].
    conn_limit: Option<usize>,
    /// Whether it can run here.
    availability: fn() -> Availability,
    /// Check the settings only this strategy reads.
    check_config: fn(&Config) -> Result<(), String>,
    /// The one app it serves, when it cannot serve every app.
    only_app: Option<OnlyApp>,
}

/// The one app a strategy serves (`kernel`: echo), and why no other.
#[derive(Debug, Clone, Copy)]
struct OnlyApp {
    /// Its `--app` name.
    name: &'static str,
    /// Its type (the builder checks the app it is given).
    type_id: fn() -> std::any::TypeId,
    /// Why the strategy serves no other app.
    why: &'static str,
}

impl Entry {
    /// A strategy that runs `--workers` loops in threads, holds as many connections as
    /// descriptors and memory allow, runs everywhere and reads no settings of its own.
    const fn new(info: StrategyInfo) -> Self {
        Entry {
            info,
            process_model: ProcessModel::Threads,
            threads: Threads::Loops,
            conn_limit: None,
            availability: || Availability::Available,
            check_config: |_| Ok(()),
            only_app: None,
        }
    }

    const fn only_app(mut self, app: OnlyApp) -> Self {
        self.only_app = Some(app);
        self
    }

    const fn forks(mut self) -> Self {
        self.process_model = ProcessModel::Processes;
        self
    }

    const fn pool(mut self) -> Self {
        self.threads = Threads::Pool;
        self
    }

    const fn conn_limit(mut self, conns: usize) -> Self {
        self.conn_limit = Some(conns);
        self
    }

    const fn availability(mut self, availability: fn() -> Availability) -> Self {
        self.availability = availability;
        self
    }

    const fn check_config(mut self, check: fn(&Config) -> Result<(), String>) -> Self {
        self.check_config = check;
        self
    }
}

impl Strategy {
    /// Every strategy, in the order of the C10K list (the order of the variants).
    pub const ALL: [StrategyInfo; 11] = [
        *Strategy::Select.info(),
        *Strategy::Poll.info(),
        *Strategy::EpollLt.info(),
        *Strategy::EpollEt.info(),
        *Strategy::Uring.info(),
        *Strategy::Thread.info(),
        *Strategy::Fork.info(),
        *Strategy::Prefork.info(),
        *Strategy::Pool.info(),
        *Strategy::Green.info(),
        *Strategy::Kernel.info(),
    ];

    /// The registry: one entry per strategy (no `_` arm: a new variant does not
    /// compile until it has its entry).
    const fn entry(self) -> &'static Entry {
        match self {
            Strategy::Select => &SELECT,
            Strategy::Poll => &POLL,
            Strategy::EpollLt => &EPOLL_LT,
            Strategy::EpollEt => &EPOLL_ET,
            Strategy::Uring => &URING,
            Strategy::Thread => &THREAD,
            Strategy::Fork => &FORK,
            Strategy::Prefork => &PREFORK,
            Strategy::Pool => &POOL,
            Strategy::Green => &GREEN,
            Strategy::Kernel => &KERNEL,
        }
    }

    /// The registry entry.
    pub const fn info(self) -> &'static StrategyInfo {
        &self.entry().info
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
        self.entry().process_model
    }

    /// The most connections the strategy can hold at once by its design, when it has
    /// such a limit (`select`: descriptors at or above FD_SETSIZE cannot be watched).
    /// `c10k compare` shows the cells beyond it as "n/a" instead of running them.
    pub fn conn_limit(self) -> Option<usize> {
        self.entry().conn_limit
    }

    /// Whether it can run on this machine, and if not, why.
    pub fn availability(self) -> Availability {
        (self.entry().availability)()
    }

    /// Check the settings only this strategy reads (`--uring-*`).
    pub(crate) fn check_config(self, config: &Config) -> Result<(), String> {
        (self.entry().check_config)(config)
    }

    /// Whether it serves the app of this `--app` name (`echo`, `http`, `resp`); `Err`
    /// says why not (`c10k compare` shows the reason in the cells it does not run).
    pub fn serves_app(self, app: &str) -> Result<(), String> {
        match self.entry().only_app {
            Some(only) if only.name != app => Err(only_refusal(&only)),
            _ => Ok(()),
        }
    }

    /// [`serves_app`](Self::serves_app) for the app type the builder was given.
    pub(crate) fn serves_app_type(self, app: std::any::TypeId) -> Result<(), String> {
        match self.entry().only_app {
            Some(only) if (only.type_id)() != app => Err(only_refusal(&only)),
            _ => Ok(()),
        }
    }

    /// How this strategy uses `--workers`.
    pub(crate) fn threads(self) -> Threads {
        self.entry().threads
    }

    /// How many [`run`] calls (threads started by the builder, listeners,
    /// counter sets) serve `workers`.
    pub(crate) fn loops(self, workers: usize) -> usize {
        match self.threads() {
            Threads::Loops => workers,
            Threads::Pool => 1,
        }
    }
}

fn only_refusal(only: &OnlyApp) -> String {
    format!("it serves --app {} only ({})", only.name, only.why)
}

const SELECT: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Select,
    name: "select",
    item: "1",
    summary: "one thread, select(2), level-triggered",
    limits: "fds below 1024 (FD_SETSIZE) per process: connections beyond it are refused; O(maxfd) per wait",
    instead: "poll",
})
.conn_limit(1024);

const POLL: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Poll,
    name: "poll",
    item: "1",
    summary: "one thread, poll(2), level-triggered",
    limits: "O(connections) per wait (kernel scan and revents scan)",
    instead: "epoll-lt",
});

const EPOLL_LT: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::EpollLt,
    name: "epoll-lt",
    item: "1",
    summary: "epoll loop per worker, level-triggered",
    limits: "one epoll_ctl per interest change",
    instead: "epoll-et",
});

const EPOLL_ET: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::EpollEt,
    name: "epoll-et",
    item: "2",
    summary: "epoll loop per worker, edge-triggered, read/write until EAGAIN",
    limits: "none beyond fds and memory",
    instead: "epoll-lt",
});

const URING: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Uring,
    name: "uring",
    item: "3",
    summary: "io_uring completions, multishot accept and recv",
    limits: "needs io_uring (kernel >= 6.0, not disabled)",
    instead: "epoll-et",
})
.availability(uring::availability)
.check_config(|c| uring::check_config(&c.uring));

const THREAD: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Thread,
    name: "thread",
    item: "4",
    summary: "one OS thread per connection, blocking I/O",
    limits: "a thread and its stack (--stack-size) per connection, up to --max-conns",
    instead: "epoll-et",
});

const FORK: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Fork,
    name: "fork",
    item: "4",
    summary: "one process per connection",
    limits: "a process per connection, up to --max-conns; RESP store, pub/sub broker and chat room per process: a key SET or a message PUBLISHed on one connection is not seen by another",
    instead: "prefork",
})
.forks()
// Not a hard limit, a practical one: a process per connection past a few thousand
// takes longer to start than a compare cell lasts.
.conn_limit(2000);

const PREFORK: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Prefork,
    name: "prefork",
    item: "4",
    summary: "fixed pool of processes blocking in accept",
    limits: "concurrency = --workers processes, more connections wait in the backlog; RESP store, pub/sub broker and chat room per process: seen only by connections the same worker serves (one at a time: PUBLISH reaches no other connection)",
    instead: "thread",
})
.forks()
// As fork: a practical limit.
.conn_limit(2000);

const POOL: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Pool,
    name: "pool",
    item: "answer 5",
    summary: "reactor thread hands ready connections to a worker pool",
    limits: "hand-off cost per request (a wake-up, an epoll_ctl); --workers is the pool size",
    instead: "epoll-et",
})
.pool();

const GREEN: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Green,
    name: "green",
    item: "answers 3, 4",
    summary: "stackful coroutines over epoll",
    limits: "a blocking call or long computation in a connection stalls its worker; a --stack-size stack (touched pages only) per connection",
    instead: "epoll-et",
});

const KERNEL: Entry = Entry::new(StrategyInfo {
    strategy: Strategy::Kernel,
    name: "kernel",
    item: "5",
    summary: "eBPF sk_skb verdict on a SOCKHASH echoes each segment in the kernel",
    limits: "echo only; needs CAP_BPF and CAP_NET_ADMIN; a peer with more than --output-cap unread is reset",
    instead: "epoll-et",
})
.availability(kernel::availability)
.check_config(kernel::check_config)
.only_app(OnlyApp {
    name: "echo",
    type_id: kernel::echo_type,
    why: kernel::ONLY_ECHO,
});

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

/// Run `strategy` until it has drained: the one map from a strategy to the code that
/// runs it. A [`ProcessModel::Threads`] strategy is run once per worker thread
/// ([`Strategy::loops`] of them; for a [`Threads::Pool`] strategy the one call runs
/// the whole pool). A [`ProcessModel::Processes`] strategy is run in the calling
/// thread, which must be the only thread of the process, and `ctx` must hold the only
/// reference to the listener (a forked child closes it).
pub(crate) fn run<A: App>(strategy: Strategy, ctx: WorkerCtx<A>) -> io::Result<()> {
    match strategy {
        Strategy::Select => reactor::run(ctx, select::Select::new()),
        Strategy::Poll => reactor::run(ctx, poll::Poll::new()),
        Strategy::EpollLt => reactor::run(ctx, epoll::Epoll::new(epoll::Trigger::Level)?),
        Strategy::EpollEt => reactor::run(ctx, epoll::Epoll::new(epoll::Trigger::Edge)?),
        Strategy::Uring => uring::run(ctx),
        Strategy::Pool => pool::run(ctx),
        Strategy::Thread | Strategy::Fork | Strategy::Prefork | Strategy::Green => {
            run_blocking(strategy, ctx)
        }
        Strategy::Kernel => kernel::run(ctx),
    }
}

/// [`run`] for the strategies that give each connection its own flow of control: they
/// serve anything that serves a [`Conn`](crate::Conn) (a blocking-style handler as well
/// as an app, through the sans-IO adapter).
pub(crate) fn run_blocking<S: ServeConn>(strategy: Strategy, ctx: WorkerCtx<S>) -> io::Result<()> {
    match strategy {
        Strategy::Thread => thread::run(ctx),
        Strategy::Fork => fork::run(ctx),
        Strategy::Prefork => prefork::run(ctx),
        Strategy::Green => green::run(ctx),
        Strategy::Select
        | Strategy::Poll
        | Strategy::EpollLt
        | Strategy::EpollEt
        | Strategy::Uring
        | Strategy::Pool
        | Strategy::Kernel => Err(io::Error::other(format!(
            "strategy {strategy} serves sans-IO apps only"
        ))),
    }
}

/// [`run`] one worker of a [`ProcessModel::Threads`] strategy.
pub(crate) fn run_worker<A: App>(strategy: Strategy, ctx: WorkerCtx<A>) -> io::Result<()> {
    match strategy.process_model() {
        ProcessModel::Threads => run(strategy, ctx),
        ProcessModel::Processes => Err(io::Error::other(format!(
            "strategy {strategy} does not run in worker threads"
        ))),
    }
}

/// [`run`] a [`ProcessModel::Processes`] strategy in the calling thread.
pub(crate) fn run_processes<A: App>(strategy: Strategy, ctx: WorkerCtx<A>) -> io::Result<()> {
    match strategy.process_model() {
        ProcessModel::Processes => run(strategy, ctx),
        ProcessModel::Threads => Err(io::Error::other(format!(
            "strategy {strategy} does not fork processes"
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

    #[test]
    fn all_lists_every_strategy_once_in_order() {
        for (i, info) in Strategy::ALL.iter().enumerate() {
            assert_eq!(info.strategy as usize, i, "{}: variant order", info.name);
            assert_eq!(info.strategy.info().name, info.name);
        }
        assert_eq!(
            Strategy::ALL.len(),
            Strategy::Kernel as usize + 1,
            "every variant"
        );
    }
}
