//! The library surface: build a server from a strategy, an app and settings; run it
//! in the foreground (signals drain it) or in the background (a handle drains it).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use c10k_proto::App;

use crate::accept::{bind_listeners, bind_one};
use crate::config::{AcceptMode, Config, MAX_STACK_SIZE, MIN_STACK_SIZE};
use crate::gate::GateStats;
use crate::metrics::{Metrics, MetricsEndpoint};
use crate::service::{GateSettings, HANDLER_STRATEGIES, Handler, Service};
use crate::shared_stats::SharedStats;
use crate::shutdown::Shutdown;
use crate::stats::{OpenConns, WorkerStats};
use crate::strategy::{Availability, ProcessModel, Strategy, WorkerCtx};

/// Why a server could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The strategy cannot run here.
    #[error("strategy '{strategy}' is not available: {reason}; use --strategy {instead} instead")]
    Unavailable {
        /// The strategy asked for.
        strategy: Strategy,
        /// Why it cannot run.
        reason: String,
        /// The nearest strategy that can.
        instead: &'static str,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A worker failed.
    #[error("worker {worker} failed: {source}")]
    Worker {
        /// Which worker.
        worker: usize,
        /// The error.
        source: io::Error,
    },
    /// A worker panicked.
    #[error("worker {0} panicked")]
    WorkerPanicked(usize),
    /// The supervisor's children kept dying soon after they started (`--processes`).
    #[error("{0}")]
    ChildrenCrashing(String),
    /// Any other I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Collects a server's settings; [`bind`](ServerBuilder::bind) makes the [`Server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder<A = ()> {
    strategy: Strategy,
    config: Config,
    listen: SocketAddr,
    app: A,
    /// A listening socket to serve instead of binding `listen` (socket activation).
    inherited: Option<Arc<TcpListener>>,
}

/// A bound server: listening (the kernel already queues connections), not yet serving.
pub struct Server<A = ()> {
    pub(crate) strategy: Strategy,
    pub(crate) config: Arc<Config>,
    /// The app or handler, behind the gate (PROXY header, per-address limit).
    pub(crate) app: Arc<A>,
    /// The gate's counters (PROXY headers, per-address refusals).
    pub(crate) gate: Arc<GateStats>,
    pub(crate) listeners: Vec<TcpListener>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) shutdown: Arc<Shutdown>,
    pub(crate) stats: Vec<Arc<WorkerStats>>,
    pub(crate) open: Arc<OpenConns>,
    /// The `/metrics` endpoint, if asked for.
    pub(crate) metrics: Option<MetricsEndpoint>,
    /// Forking strategies: the counters their children publish.
    pub(crate) shared_stats: Option<Arc<SharedStats>>,
}

/// What a server did, returned when it has stopped.
#[derive(Debug)]
pub struct Report {
    /// Counters of each worker.
    pub workers: Vec<Arc<WorkerStats>>,
}

/// A server running in the background.
pub struct ServerHandle {
    shutdown: Arc<Shutdown>,
    local_addr: SocketAddr,
    stats: Vec<Arc<WorkerStats>>,
    open: Arc<OpenConns>,
    thread: JoinHandle<Result<Report, ServerError>>,
    gate: Arc<GateStats>,
}

impl Server<()> {
    /// Start describing a server: epoll edge-triggered, one worker, default limits,
    /// listening on 127.0.0.1:7000 unless told otherwise.
    pub fn builder() -> ServerBuilder<()> {
        ServerBuilder {
            strategy: Strategy::EpollEt,
            config: Config::default(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7000)),
            app: (),
            inherited: None,
        }
    }
}

impl<A> ServerBuilder<A> {
    /// The app (protocol) to serve.
    pub fn app<B: App>(self, app: B) -> ServerBuilder<B> {
        ServerBuilder {
            strategy: self.strategy,
            config: self.config,
            listen: self.listen,
            app,
            inherited: self.inherited,
        }
    }
    /// A blocking-style connection handler to serve instead of an app (strategies
    /// `thread`, `fork`, `prefork` and `green`; see [`Conn`](crate::Conn)).
    pub fn handler<F>(self, handler: F) -> ServerBuilder<Handler<F>>
    where
        F: Fn(&mut crate::Conn<'_>) -> io::Result<()> + Send + Sync + 'static,
    {
        ServerBuilder {
            strategy: self.strategy,
            config: self.config,
            listen: self.listen,
            app: Handler(handler),
            inherited: self.inherited,
        }
    }
    /// The strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
    /// The address to listen on (port 0: the kernel picks one).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
    /// Number of workers: event loops, or for `pool` the size of its worker pool.
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }
    /// Serve from `n` child processes, each running the strategy with its
    /// `--workers`, under a supervisor that restarts them (see `crate::supervisor`).
    pub fn processes(mut self, n: Option<usize>) -> Self {
        self.config.processes = n;
        self
    }
    /// How workers share the listening address.
    pub fn accept(mut self, mode: AcceptMode) -> Self {
        self.config.accept = mode;
        self
    }
    /// Refuse connections beyond this many.
    pub fn max_conns(mut self, n: usize) -> Self {
        self.config.max_conns = n;
        self
    }
    /// Stop reading a connection whose pending output is over this many bytes.
    pub fn output_cap(mut self, bytes: usize) -> Self {
        self.config.output_cap = bytes;
        self
    }
    /// How long a draining server waits for in-flight requests.
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.config.drain_timeout = d;
        self
    }
    /// Close connections where no byte moved for this long.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }
    /// Close connections whose request stays incomplete this long (HTTP answers 408).
    pub fn header_timeout(mut self, d: Duration) -> Self {
        self.config.header_timeout = d;
        self
    }
    /// Stack size of each connection thread (`thread`) or green thread (`green`).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = bytes;
        self
    }
    /// io_uring settings (the `uring` strategy).
    pub fn uring(mut self, uring: crate::config::UringConfig) -> Self {
        self.config.uring = uring;
        self
    }
    /// Expect a PROXY protocol header of these versions at the start of every
    /// connection (off: none).
    pub fn proxy_protocol(mut self, p: c10k_proto::proxy::ProxyProtocol) -> Self {
        self.config.proxy_protocol = p;
        self
    }
    /// Allow each client address at most this many open connections (`None`: no
    /// limit).
    pub fn max_conns_per_ip(mut self, n: Option<usize>) -> Self {
        self.config.max_conns_per_ip = n;
        self
    }
    /// Log each connection's client address at info level.
    pub fn log_connections(mut self, on: bool) -> Self {
        self.config.log_connections = on;
        self
    }
    /// Replace all settings at once.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
    /// Serve Prometheus metrics (`GET /metrics`) on this address (port 0: the kernel
    /// picks one; see [`Server::metrics_addr`]).
    pub fn metrics(mut self, addr: SocketAddr) -> Self {
        self.config.metrics = Some(addr);
        self
    }
    /// Serve on this already-listening socket instead of binding the `listen` address
    /// (socket activation, see [`crate::activation`]). Every worker shares it,
    /// whatever the accept mode.
    pub fn listener(mut self, listener: TcpListener) -> Self {
        self.inherited = Some(Arc::new(listener));
        self
    }
}

impl<A: Service> ServerBuilder<A> {
    /// Check the strategy is available, then bind and listen.
    pub fn bind(self) -> Result<Server<A::Gated>, ServerError> {
        let strategy = self.strategy;
        let instead = strategy.info().instead;
        match strategy.availability() {
            Availability::Available => {}
            Availability::NotBuilt { planned } => {
                return Err(ServerError::Unavailable {
                    strategy,
                    reason: format!("not built yet ({planned})"),
                    instead,
                });
            }
            Availability::Unavailable { reason } => {
                return Err(ServerError::Unavailable {
                    strategy,
                    reason,
                    instead,
                });
            }
        }
        if !A::runs_on(strategy) {
            let names: Vec<&str> = HANDLER_STRATEGIES.iter().map(|s| s.name()).collect();
            return Err(ServerError::Config(format!(
                "strategy {strategy} serves sans-IO apps only; a blocking-style handler runs on {}",
                names.join(", ")
            )));
        }
        strategy
            .serves_app_type(std::any::TypeId::of::<A>())
            .map_err(|reason| ServerError::Unavailable {
                strategy,
                reason,
                instead,
            })?;
        let c = &self.config;
        if c.workers == 0 || c.workers > 1024 {
            return Err(ServerError::Config(format!(
                "workers must be 1..=1024, not {}",
                c.workers
            )));
        }
        if c.idle_timeout.is_zero() || c.header_timeout.is_zero() {
            return Err(ServerError::Config(
                "timeouts must be longer than zero".into(),
            ));
        }
        if c.max_conns == 0 {
            return Err(ServerError::Config("max-conns must be at least 1".into()));
        }
        if c.max_conns_per_ip == Some(0) {
            return Err(ServerError::Config(
                "max-conns-per-ip must be at least 1".into(),
            ));
        }
        if c.max_conns_per_ip.is_some() && strategy.process_model() == ProcessModel::Processes {
            // Each process would count only its own connections: the limit would
            // never hold (fork: one connection per process).
            return Err(ServerError::Config(format!(
                "max-conns-per-ip needs one count shared by every connection, which {strategy} \
                 (a process per connection or per worker) does not have; use --strategy thread \
                 or an event-loop strategy"
            )));
        }
        strategy.check_config(c).map_err(ServerError::Config)?;
        if let Some(n) = c.processes {
            crate::supervisor::check(strategy, n, c).map_err(ServerError::Config)?;
        }
        if c.accept == AcceptMode::Exclusive
            && c.workers > 1
            && matches!(strategy, Strategy::Select | Strategy::Poll)
        {
            // Without EPOLLEXCLUSIVE every loop would wake for every new connection.
            return Err(ServerError::Config(format!(
                "accept mode exclusive needs epoll's EPOLLEXCLUSIVE, which {strategy} does not have; \
                 use --accept reuseport (the default) with {} workers",
                c.workers
            )));
        }
        if !(MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(&c.stack_size) {
            return Err(ServerError::Config(format!(
                "stack-size must be {}KiB..={}MiB, not {} bytes",
                MIN_STACK_SIZE >> 10,
                MAX_STACK_SIZE >> 20,
                c.stack_size
            )));
        }
        // A forking strategy runs in one thread of the parent with one listener that
        // its processes share; `--workers` is its pool size (prefork).
        let forks = strategy.process_model() == ProcessModel::Processes;
        // Otherwise `loops` event loops, each its own thread, listener (or shared
        // listener) and counters: `--workers` of them, except for a strategy that runs
        // its own threads (`pool`: one loop, one listener; `--workers` is its pool size).
        let (loops, accept) = if forks {
            (1, AcceptMode::Exclusive)
        } else {
            (strategy.loops(c.workers), c.accept)
        };
        let was_inherited = self.inherited.is_some();
        let inherited = self.inherited.map(|l| match Arc::try_unwrap(l) {
            Ok(l) => Ok(l),
            Err(shared) => shared.try_clone(),
        });
        let listeners = match inherited {
            Some(l) => {
                if loops > 1 && matches!(strategy, Strategy::Select | Strategy::Poll) {
                    return Err(ServerError::Config(format!(
                        "an inherited listening socket is shared by every worker, which needs \
                         epoll's EPOLLEXCLUSIVE; {strategy} can serve it with --workers 1 only"
                    )));
                }
                let l = l?;
                l.set_nonblocking(true)?;
                vec![l]
            }
            // Under a supervisor each process has its own loops' listeners.
            None => bind_listeners(
                self.listen,
                loops * c.processes.unwrap_or(1),
                accept,
                c.backlog,
            )
            .map_err(|source| ServerError::Bind {
                addr: self.listen,
                source,
            })?,
        };
        let accept_label = if was_inherited {
            "inherited"
        } else {
            accept.name()
        };
        let local_addr = listeners[0].local_addr()?;
        // A supervisor counts in one row (its own drain); its children publish theirs.
        let rows = if c.processes.is_some() { 1 } else { loops };
        let stats: Vec<Arc<WorkerStats>> = (0..rows)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        let open = Arc::new(OpenConns::default());
        // Forked children count in copies of memory: they publish into a shared
        // mapping, one block per prefork pool slot (one for all fork children).
        let shared_stats = if let Some(n) = c.processes {
            Some(Arc::new(SharedStats::new(n)?))
        } else if forks {
            let blocks = if strategy == Strategy::Prefork {
                c.workers
            } else {
                1
            };
            Some(Arc::new(SharedStats::new(blocks)?))
        } else {
            None
        };
        let (app, gate) = self
            .app
            .gated(&GateSettings {
                proxy: c.proxy_protocol,
                max_conns_per_ip: c.max_conns_per_ip,
                log_connections: c.log_connections,
            })
            .map_err(ServerError::Config)?;
        let metrics = match c.metrics {
            None => None,
            Some(addr) => {
                let listener = bind_one(addr, false, 64)
                    .map_err(|source| ServerError::Bind { addr, source })?;
                Some(MetricsEndpoint {
                    listener,
                    metrics: Metrics {
                        strategy: strategy.name(),
                        uring: strategy == Strategy::Uring,
                        accept: accept_label,
                        max_conns: c.max_conns,
                        stats: stats.clone(),
                        open: Arc::clone(&open),
                        shared: shared_stats.clone(),
                        // Under a supervisor the gate counts in the children.
                        gate: c.processes.is_none().then(|| Arc::clone(&gate)),
                        started: SystemTime::now(),
                        restarts: c.processes.map(|_| Arc::default()),
                        row_label: if c.processes.is_some() {
                            "process"
                        } else {
                            "worker"
                        },
                    },
                })
            }
        };
        Ok(Server {
            strategy,
            config: Arc::new(self.config),
            app: Arc::new(app),
            gate,
            listeners,
            local_addr,
            shutdown: Shutdown::new()?,
            stats,
            open,
            metrics,
            shared_stats,
        })
    }

    /// Bind and run in the foreground until SIGTERM/SIGINT (see [`Server::run`]).
    pub fn run(self) -> Result<Report, ServerError> {
        self.bind()?.run()
    }
}

impl<A: Service> Server<A> {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live counters, one per worker (one per event loop: `pool` has one set, shared
    /// by its reactor and its worker threads).
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// The address of the `/metrics` endpoint, if one was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// Counters of the gate: PROXY headers and per-address refusals (process-wide).
    pub fn gate_stats(&self) -> Arc<GateStats> {
        Arc::clone(&self.gate)
    }

    /// Serve until SIGTERM or SIGINT, then drain: stop accepting, finish in-flight
    /// requests, close idle connections, and return within the drain timeout.
    pub fn run(self) -> Result<Report, ServerError> {
        self.shutdown.install_signal_handlers()?;
        self.serve()
    }

    /// Serve on a background thread; the handle stops it.
    ///
    /// Strategies that fork ([`ProcessModel::Processes`]) cannot: a fork is sound only
    /// while the process has one thread; use [`run`](Server::run) from the main thread.
    pub fn spawn(self) -> Result<ServerHandle, ServerError> {
        if self.config.processes.is_some() {
            return Err(ServerError::Config(
                "--processes forks its children and can only run in the foreground \
                 (Server::run, from the main thread, before any thread is spawned)"
                    .into(),
            ));
        }
        if self.strategy.process_model() == ProcessModel::Processes {
            return Err(ServerError::Config(format!(
                "strategy {} forks processes and can only run in the foreground \
                 (Server::run, from the main thread, before any thread is spawned)",
                self.strategy
            )));
        }
        let shutdown = Arc::clone(&self.shutdown);
        let stats = self.stats.clone();
        let open = Arc::clone(&self.open);
        let local_addr = self.local_addr;
        let gate = self.gate_stats();
        let thread = std::thread::Builder::new()
            .name("c10k-server".into())
            .spawn(move || self.serve())?;
        Ok(ServerHandle {
            shutdown,
            local_addr,
            stats,
            open,
            thread,
            gate,
        })
    }

    fn serve(mut self) -> Result<Report, ServerError> {
        if let Some(n) = self.config.processes {
            return self.serve_supervised(n);
        }
        if self.strategy.process_model() == ProcessModel::Processes {
            return self.serve_processes();
        }
        let metrics_thread = match self.metrics.take() {
            Some(m) => Some(m.spawn(Arc::clone(&self.shutdown))?),
            None => None,
        };
        let listeners = std::mem::take(&mut self.listeners);
        let first_error = run_loops(
            &Loops {
                strategy: self.strategy,
                app: &self.app,
                local_addr: self.local_addr,
                config: &self.config,
                shutdown: &self.shutdown,
                open: &self.open,
            },
            listeners,
            &self.stats,
        );
        if let Some(t) = metrics_thread {
            // It stops at the shutdown trigger, like the workers.
            self.shutdown.trigger();
            let _ = t.join();
        }
        for (id, s) in self.stats.iter().enumerate() {
            tracing::info!(
                "worker {id}: accepted {} connection(s), refused {} (max-conns) and {} (strategy limit), accept pauses {}",
                WorkerStats::get(&s.accepted),
                WorkerStats::get(&s.refused_max_conns),
                WorkerStats::get(&s.refused_backend),
                WorkerStats::get(&s.accept_pauses),
            );
        }
        crate::gate::log_summary(
            self.config.proxy_protocol,
            self.config.max_conns_per_ip,
            &self.gate,
        );
        match first_error {
            Some(e) => Err(e),
            None => Ok(Report {
                workers: self.stats,
            }),
        }
    }
}

/// What every event loop (or accept loop) of a process shares.
pub(crate) struct Loops<'a, A> {
    pub(crate) strategy: Strategy,
    pub(crate) app: &'a Arc<A>,
    pub(crate) local_addr: SocketAddr,
    pub(crate) config: &'a Arc<Config>,
    pub(crate) shutdown: &'a Arc<Shutdown>,
    pub(crate) open: &'a Arc<OpenConns>,
}

/// Run one thread per row of `stats` (an event loop, an accept loop, or `pool`'s
/// reactor with its pool), loop `i` on `listeners[i % len]`, until they all return;
/// the first failure triggers the shutdown and is returned.
pub(crate) fn run_loops<A: Service>(
    l: &Loops<'_, A>,
    listeners: Vec<TcpListener>,
    stats: &[Arc<WorkerStats>],
) -> Option<ServerError> {
    let loops = stats.len();
    let shared = listeners.len() == 1 && loops > 1;
    let listeners: Vec<Arc<TcpListener>> = listeners.into_iter().map(Arc::new).collect();
    let mut threads = Vec::with_capacity(loops);
    for (id, stats) in stats.iter().enumerate() {
        let ctx = WorkerCtx {
            id,
            app: Arc::clone(l.app),
            listener: Some(Arc::clone(&listeners[id % listeners.len()])),
            local_addr: l.local_addr,
            shared_listener: shared,
            config: Arc::clone(l.config),
            shutdown: Arc::clone(l.shutdown),
            stats: Arc::clone(stats),
            open: Arc::clone(l.open),
            shared_stats: None,
            metrics: None,
        };
        let strategy = l.strategy;
        let t = std::thread::Builder::new()
            .name(format!("c10k-w{id}"))
            .spawn(move || A::run_worker(strategy, ctx));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                l.shutdown.trigger();
                for t in threads {
                    let _ = t.join();
                }
                return Some(ServerError::Worker {
                    worker: id,
                    source: e,
                });
            }
        }
    }
    // Workers hold the only references now: a listener closes as soon as every
    // worker using it has started draining.
    drop(listeners);
    let mut first_error = None;
    for (id, t) in threads.into_iter().enumerate() {
        let result = match t.join() {
            Ok(Ok(())) => continue,
            Ok(Err(source)) => ServerError::Worker { worker: id, source },
            Err(_) => ServerError::WorkerPanicked(id),
        };
        tracing::error!("{result}");
        l.shutdown.trigger();
        first_error.get_or_insert(result);
    }
    first_error
}

impl<A: Service> Server<A> {
    /// Run a forking strategy in this thread. RULE: fork only while the process has a
    /// single thread, so no worker thread is spawned here, and nothing before this
    /// point (logging, signal handlers) may have spawned one; `c10k_sys` checks it
    /// before every fork.
    fn serve_processes(mut self) -> Result<Report, ServerError> {
        let Some(listener) = self.listeners.pop() else {
            return Err(ServerError::Config("no listener".into()));
        };
        let ctx = WorkerCtx {
            id: 0,
            app: Arc::clone(&self.app),
            // The only reference: a forked child closes the listener by dropping it.
            listener: Some(Arc::new(listener)),
            local_addr: self.local_addr,
            shared_listener: true,
            config: Arc::clone(&self.config),
            shutdown: Arc::clone(&self.shutdown),
            stats: Arc::clone(&self.stats[0]),
            open: Arc::clone(&self.open),
            shared_stats: self.shared_stats.clone(),
            metrics: self.metrics.take(),
        };
        if let Err(source) = A::run_processes(self.strategy, ctx) {
            return Err(ServerError::Worker { worker: 0, source });
        }
        let s = &self.stats[0];
        // The children are gone: their published counters join the parent's.
        if let Some(shared) = &self.shared_stats {
            shared.fold_into(s);
        }
        tracing::info!(
            "{}: accepted {} connection(s) in all, refused {}, accept pauses {}",
            self.strategy,
            WorkerStats::get(&s.accepted),
            WorkerStats::get(&s.refused_max_conns) + WorkerStats::get(&s.refused_backend),
            WorkerStats::get(&s.accept_pauses),
        );
        Ok(Report {
            workers: self.stats,
        })
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live counters, one per worker.
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// Counters of the gate: PROXY headers and per-address refusals.
    pub fn gate_stats(&self) -> &Arc<GateStats> {
        &self.gate
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.open.current()
    }

    /// Start draining (like SIGTERM); returns at once.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Wait for the server to stop.
    pub fn join(self) -> Result<Report, ServerError> {
        self.thread
            .join()
            .map_err(|_| ServerError::WorkerPanicked(usize::MAX))?
    }
}

impl Report {
    /// Connections accepted, per worker.
    pub fn accepted_per_worker(&self) -> Vec<u64> {
        self.workers
            .iter()
            .map(|s| WorkerStats::get(&s.accepted))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c10k_proto::echo::EchoApp;

    #[test]
    fn forking_strategies_refuse_to_run_in_the_background() {
        for strategy in [Strategy::Fork, Strategy::Prefork] {
            let server = Server::builder()
                .strategy(strategy)
                .workers(4)
                .listen("127.0.0.1:0".parse().unwrap())
                .app(EchoApp)
                .bind()
                .unwrap();
            // One shared listener, whatever --workers says.
            assert_eq!(server.listeners.len(), 1);
            let err = server.spawn().err().unwrap();
            assert!(err.to_string().contains("foreground"), "{err}");
        }
    }

    #[test]
    fn stack_size_is_checked() {
        let err = Server::builder()
            .strategy(Strategy::Thread)
            .stack_size(1024)
            .listen("127.0.0.1:0".parse().unwrap())
            .app(EchoApp)
            .bind()
            .err()
            .unwrap();
        assert!(err.to_string().contains("stack-size"), "{err}");
    }
}
