//! The library surface: build a server from a strategy, an app and settings; run it
//! in the foreground (signals drain it) or in the background (a handle drains it).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use c10k_proto::App;

use crate::accept::bind_listeners;
use crate::config::{AcceptMode, Config};
use crate::shutdown::Shutdown;
use crate::stats::{OpenConns, WorkerStats};
use crate::strategy::{Availability, Strategy, WorkerCtx, run_worker};

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
}

/// A bound server: listening (the kernel already queues connections), not yet serving.
pub struct Server<A = ()> {
    strategy: Strategy,
    config: Arc<Config>,
    app: Arc<A>,
    listeners: Vec<TcpListener>,
    local_addr: SocketAddr,
    shutdown: Arc<Shutdown>,
    stats: Vec<Arc<WorkerStats>>,
    open: Arc<OpenConns>,
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
    /// Number of workers (event loops).
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
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
    /// io_uring settings (the `uring` strategy).
    pub fn uring(mut self, uring: crate::config::UringConfig) -> Self {
        self.config.uring = uring;
        self
    }
    /// Replace all settings at once.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
}

impl<A: App> ServerBuilder<A> {
    /// Check the strategy is available, then bind and listen.
    pub fn bind(self) -> Result<Server<A>, ServerError> {
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
        if strategy == Strategy::Uring {
            crate::strategy::uring::check_config(&c.uring).map_err(ServerError::Config)?;
        }
        let listeners =
            bind_listeners(self.listen, c.workers, c.accept, c.backlog).map_err(|source| {
                ServerError::Bind {
                    addr: self.listen,
                    source,
                }
            })?;
        let local_addr = listeners[0].local_addr()?;
        let stats = (0..c.workers)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        Ok(Server {
            strategy,
            config: Arc::new(self.config),
            app: Arc::new(self.app),
            listeners,
            local_addr,
            shutdown: Shutdown::new()?,
            stats,
            open: Arc::new(OpenConns::default()),
        })
    }

    /// Bind and run in the foreground until SIGTERM/SIGINT (see [`Server::run`]).
    pub fn run(self) -> Result<Report, ServerError> {
        self.bind()?.run()
    }
}

impl<A: App> Server<A> {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Live counters, one per worker.
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// Serve until SIGTERM or SIGINT, then drain: stop accepting, finish in-flight
    /// requests, close idle connections, and return within the drain timeout.
    pub fn run(self) -> Result<Report, ServerError> {
        self.shutdown.install_signal_handlers()?;
        self.serve()
    }

    /// Serve on a background thread; the handle stops it.
    pub fn spawn(self) -> Result<ServerHandle, ServerError> {
        let shutdown = Arc::clone(&self.shutdown);
        let stats = self.stats.clone();
        let open = Arc::clone(&self.open);
        let local_addr = self.local_addr;
        let thread = std::thread::Builder::new()
            .name("c10k-server".into())
            .spawn(move || self.serve())?;
        Ok(ServerHandle {
            shutdown,
            local_addr,
            stats,
            open,
            thread,
        })
    }

    fn serve(self) -> Result<Report, ServerError> {
        let shared = self.listeners.len() == 1 && self.config.workers > 1;
        let listeners: Vec<Arc<TcpListener>> = self.listeners.into_iter().map(Arc::new).collect();
        let mut threads = Vec::with_capacity(self.config.workers);
        for id in 0..self.config.workers {
            let ctx = WorkerCtx {
                id,
                app: Arc::clone(&self.app),
                listener: Arc::clone(&listeners[id % listeners.len()]),
                local_addr: self.local_addr,
                shared_listener: shared,
                config: Arc::clone(&self.config),
                shutdown: Arc::clone(&self.shutdown),
                stats: Arc::clone(&self.stats[id]),
                open: Arc::clone(&self.open),
            };
            let strategy = self.strategy;
            let t = std::thread::Builder::new()
                .name(format!("c10k-w{id}"))
                .spawn(move || run_worker(strategy, ctx));
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    self.shutdown.trigger();
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(ServerError::Worker {
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
            self.shutdown.trigger();
            first_error.get_or_insert(result);
        }
        for (id, s) in self.stats.iter().enumerate() {
            tracing::info!(
                "worker {id}: accepted {} connection(s), refused {}, accept pauses {}",
                WorkerStats::get(&s.accepted),
                WorkerStats::get(&s.refused_max_conns),
                WorkerStats::get(&s.accept_pauses),
            );
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(Report {
                workers: self.stats,
            }),
        }
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
