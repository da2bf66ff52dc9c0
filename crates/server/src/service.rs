//! What a server serves: a sans-IO [`App`] (every strategy), or a blocking-style
//! [`Handler`] (the strategies that give each connection its own flow of control:
//! `thread`, `fork`, `prefork`, `green`).
//!
//! Both are a [`Service`]: something that serves one [`Conn`] from start to end
//! ([`ServeConn`], the leaf trait the blocking strategies and driver depend on). An app
//! does it through the sans-IO adapter ([`serve_session`]), a handler by calling the
//! user's function. The event-loop strategies (`select` ... `uring`, `pool`) drive
//! sessions themselves and take apps only. `Service` is sealed: these two are all.

use std::io;
use std::sync::Arc;

use c10k_proto::{App, Peer};

use crate::blocking::serve_session;
use crate::gate::{GateApp, GateStats};
use crate::handler::{Conn, ServeConn};
use crate::stats::WorkerStats;
use crate::strategy::{ProcessModel, Strategy, WorkerCtx, run_blocking, run_processes, run_worker};

/// The seal: [`Service`] requires this trait, which no other crate can name, so it
/// cannot be implemented outside this crate.
mod sealed {
    /// Implemented for [`App`](super::App)s and [`Handler`](super::Handler)s only.
    pub trait Sealed {}
}

/// Something a server serves: any [`App`], or a [`Handler`]. Sealed: not
/// implemented outside this crate.
pub trait Service: sealed::Sealed + ServeConn + Send + Sync + Sized + 'static {
    /// What the server runs: this service behind the gate (PROXY header,
    /// `--max-conns-per-ip`; see [`GateApp`]).
    type Gated: Service;

    /// Put the service behind the gate; `Err` says why these gate settings cannot
    /// apply to it.
    #[doc(hidden)]
    fn gated(self, gate: &GateSettings) -> Result<(Self::Gated, Arc<GateStats>), String>;

    /// Whether `strategy` can serve it.
    fn runs_on(strategy: Strategy) -> bool;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn run_worker(strategy: Strategy, ctx: WorkerCtx<Self>) -> io::Result<()>;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn run_processes(strategy: Strategy, ctx: WorkerCtx<Self>) -> io::Result<()>;
}

/// The gate's settings, from the server's configuration.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct GateSettings {
    /// `--proxy-protocol`.
    pub proxy: c10k_proto::proxy::ProxyProtocol,
    /// `--max-conns-per-ip`.
    pub max_conns_per_ip: Option<usize>,
    /// `--log-connections`.
    pub log_connections: bool,
}

impl<A: App> sealed::Sealed for A {}

/// An app serves a connection through the sans-IO adapter.
impl<A: App> ServeConn for A {
    fn serve(&self, conn: &mut Conn<'_>, peer: &Peer) {
        let session = crate::panic_guard::open_guarded(self, peer, conn.stats_arc());
        serve_session(conn, session);
    }
}

impl<A: App> Service for A {
    type Gated = GateApp<A>;

    fn gated(self, gate: &GateSettings) -> Result<(Self::Gated, Arc<GateStats>), String> {
        let app = GateApp::new(
            self,
            gate.proxy,
            gate.max_conns_per_ip,
            gate.log_connections,
        );
        let stats = Arc::clone(app.stats());
        Ok((app, stats))
    }

    fn runs_on(_strategy: Strategy) -> bool {
        true
    }

    #[allow(private_interfaces)]
    fn run_worker(strategy: Strategy, ctx: WorkerCtx<Self>) -> io::Result<()> {
        run_worker(strategy, ctx)
    }

    #[allow(private_interfaces)]
    fn run_processes(strategy: Strategy, ctx: WorkerCtx<Self>) -> io::Result<()> {
        run_processes(strategy, ctx)
    }
}

/// A blocking-style connection handler, `fn(&mut Conn) -> io::Result<()>`, served by
/// `thread`, `fork`, `prefork` or `green` (see
/// [`ServerBuilder::handler`](crate::ServerBuilder::handler)). An `Err` it returns is
/// logged (debug) and counted as an I/O error; the connection is closed either way.
#[derive(Debug, Clone, Copy)]
pub struct Handler<F>(pub F);

/// The strategies that run a [`Handler`].
pub const HANDLER_STRATEGIES: [Strategy; 4] = [
    Strategy::Thread,
    Strategy::Fork,
    Strategy::Prefork,
    Strategy::Green,
];

impl<F> sealed::Sealed for Handler<F> {}

/// A handler serves a connection by being called; an `Err` is logged and counted.
impl<F> ServeConn for Handler<F>
where
    F: Fn(&mut Conn<'_>) -> io::Result<()> + Send + Sync + 'static,
{
    fn serve(&self, conn: &mut Conn<'_>, _peer: &Peer) {
        if let Err(e) = (self.0)(conn) {
            tracing::debug!("handler: {e}");
            WorkerStats::add(&conn.stats().io_errors, 1);
        }
    }
}

impl<F> Service for Handler<F>
where
    F: Fn(&mut Conn<'_>) -> io::Result<()> + Send + Sync + 'static,
{
    type Gated = Self;

    fn gated(self, gate: &GateSettings) -> Result<(Self::Gated, Arc<GateStats>), String> {
        if gate.proxy != c10k_proto::proxy::ProxyProtocol::Off || gate.max_conns_per_ip.is_some() {
            return Err(
                "--proxy-protocol and --max-conns-per-ip apply to sans-IO apps, not to a \
                 blocking-style handler"
                    .into(),
            );
        }
        Ok((self, Arc::new(GateStats::default())))
    }

    fn runs_on(strategy: Strategy) -> bool {
        HANDLER_STRATEGIES.contains(&strategy)
    }

    #[allow(private_interfaces)]
    fn run_worker(strategy: Strategy, ctx: WorkerCtx<Self>) -> io::Result<()> {
        match strategy.process_model() {
            ProcessModel::Threads => run_blocking(strategy, ctx),
            ProcessModel::Processes => Err(io::Error::other(format!(
                "strategy {strategy} does not run blocking-style handlers in worker threads"
            ))),
        }
    }

    #[allow(private_interfaces)]
    fn run_processes(strategy: Strategy, ctx: WorkerCtx<Self>) -> io::Result<()> {
        match strategy.process_model() {
            ProcessModel::Processes => run_blocking(strategy, ctx),
            ProcessModel::Threads => Err(io::Error::other(format!(
                "strategy {strategy} does not fork processes"
            ))),
        }
    }
}
