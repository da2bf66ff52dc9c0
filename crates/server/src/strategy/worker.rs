//! What the registry and a strategy exchange: the [`WorkerCtx`] a strategy is handed
//! to run one worker, and the [`Availability`] it reports about itself. Kept apart from
//! the registry (`mod.rs`), which depends on every strategy, so that no strategy
//! depends back on it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::MetricsEndpoint;
use crate::shared_stats::SharedStats;
use crate::shutdown::Shutdown;
use crate::stats::{OpenConns, WorkerStats};

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
    pub(crate) shared_stats: Option<Arc<SharedStats>>,
    /// Forking strategies: the metrics endpoint, served by the parent's own loop.
    pub(crate) metrics: Option<MetricsEndpoint>,
}
