//! c10k strategies: one sans-IO [`App`] served by any C10K server architecture.
//!
//! A server is `strategy x app x config`. The app ([`c10k_proto::App`]) turns bytes
//! into replies and never sees a socket; the [`Strategy`] moves the bytes (select, poll,
//! epoll level- or edge-triggered, io_uring, a thread or process per connection, prefork,
//! a reactor with a worker pool, green threads: [`Strategy::ALL`]) and owns accepting,
//! buffering, backpressure, limits and graceful shutdown.
//!
//! Run your own protocol on any strategy:
//!
//! ```no_run
//! use c10k_proto::{App, Cx, Peer, ProtoError, Session};
//! use c10k_server::{Server, Strategy};
//!
//! /// Replies "ok\n" to every line.
//! struct Acks;
//! struct AckSession;
//! impl App for Acks {
//!     type Session = AckSession;
//!     fn open(&self, _peer: &Peer) -> AckSession { AckSession }
//! }
//! impl Session for AckSession {
//!     fn handle_input(&mut self, _cx: &Cx, input: &[u8], out: &mut Vec<u8>)
//!         -> Result<usize, ProtoError> {
//!         let mut used = 0;
//!         while let Some(nl) = input[used..].iter().position(|&b| b == b'\n') {
//!             out.extend_from_slice(b"ok\n");
//!             used += nl + 1;
//!         }
//!         Ok(used)
//!     }
//!     fn handle_eof(&mut self, _cx: &Cx, _out: &mut Vec<u8>) {}
//!     fn wants_close(&self) -> bool { false }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .strategy(Strategy::EpollEt)
//!     .workers(2)
//!     .listen("127.0.0.1:7000".parse()?)
//!     .app(Acks)
//!     .bind()?;
//! println!("listening on {}", server.local_addr());
//! server.run()?; // until SIGTERM or SIGINT, then drains
//! # Ok(())
//! # }
//! ```

mod accept;
pub mod activation;
mod blocking;
mod builder;
mod config;
mod conn;
mod gate;
mod handler;
mod lifecycle;
mod metrics;
mod panic_guard;
mod per_ip;
mod ratelog;
mod service;
mod shared_stats;
mod shutdown;
mod stats;
mod strategy;
mod supervisor;
mod timers;
pub mod work;

pub use builder::{Report, Server, ServerBuilder, ServerError, ServerHandle};
pub use c10k_proto::proxy::ProxyProtocol;
pub use c10k_proto::{App, Mailbox, Message, PostError, Session};
pub use config::{
    AcceptMode, Config, DEFAULT_BACKLOG, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNS, DEFAULT_OUTPUT_CAP, DEFAULT_STACK_SIZE, LINGER,
    MAX_PENDING_INPUT, MIN_STACK_SIZE, READ_CHUNK, UringConfig,
};
pub use gate::{GateApp, GateSession, GateStats};
pub use handler::{Conn, Event};
pub use service::{HANDLER_STRATEGIES, Handler, Service};
pub use shutdown::Shutdown;
pub use stats::{OpenConns, UringStats, WorkerStats};
pub use strategy::{Availability, ProcessModel, Strategy, StrategyInfo};
pub use work::{RequestUnit, Work, WorkApp};

/// Raise the soft limit on open files to the hard limit (a server holding ten thousand
/// connections needs more than the usual 1,024). Returns the new soft limit.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        setrlimit(Resource::Nofile, lim)?;
    }
    Ok(lim.current.unwrap_or(u64::MAX))
}
