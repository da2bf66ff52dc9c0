//! Server settings shared by every strategy.

use std::time::Duration;

/// How the workers of an event-loop strategy share the listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcceptMode {
    /// One `SO_REUSEPORT` listener per worker; the kernel spreads new connections
    /// over them by a hash of the 4-tuple.
    #[default]
    Reuseport,
    /// One listener shared by every worker, registered with `EPOLLEXCLUSIVE` so a new
    /// connection wakes one worker, not all of them.
    Exclusive,
}

impl AcceptMode {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            AcceptMode::Reuseport => "reuseport",
            AcceptMode::Exclusive => "exclusive",
        }
    }
}

impl std::str::FromStr for AcceptMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reuseport" => Ok(AcceptMode::Reuseport),
            "exclusive" => Ok(AcceptMode::Exclusive),
            _ => Err(format!(
                "unknown accept mode '{s}': use reuseport or exclusive"
            )),
        }
    }
}

/// Default cap on a connection's pending output (backpressure threshold).
pub const DEFAULT_OUTPUT_CAP: usize = 1024 * 1024;
/// Default time a draining server waits for in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default idle timeout: a connection where no byte moved for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default request (header) timeout: a request incomplete for this long is answered
/// with the protocol's timeout reply (HTTP 408) and closed.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connection limit (per process, over all workers).
pub const DEFAULT_MAX_CONNS: usize = 100_000;
/// Default listen backlog (the kernel clamps it to `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: i32 = 4096;
/// How long a connection closed by the server keeps reading (and discarding) so that
/// its last reply is not destroyed by a reset.
pub const LINGER: Duration = Duration::from_secs(2);
/// Input bytes a session may leave unconsumed before the driver gives up on it
/// (protects against an app that never consumes; the apps' own limits are lower).
pub const MAX_PENDING_INPUT: usize = 16 * 1024 * 1024;
/// At drain, how long an event loop keeps a connection open that has not received
/// its first byte yet (its request is most likely on the way; see
/// `Conn::start_drain_unless_fresh`). Connections that sent nothing by then close.
pub const DRAIN_FRESH_GRACE: Duration = Duration::from_millis(500);
/// A drained connection that went idle closes once no byte has arrived for this
/// long after a read found nothing waiting: bytes its peer sent just before the
/// drain, still on their way (a TCP window that just reopened), are served.
pub const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// Size of a worker's read buffer: one read takes at most this much.
pub const READ_CHUNK: usize = 64 * 1024;

/// Default stack size of a `thread` strategy connection thread (see the README for
/// how small it can go).
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;
/// Smallest `--stack-size` accepted.
pub const MIN_STACK_SIZE: usize = 16 * 1024;
/// Largest `--stack-size` accepted.
pub const MAX_STACK_SIZE: usize = 1024 * 1024 * 1024;

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of event loops (threads).
    pub workers: usize,
    /// How workers share the listening address.
    pub accept: AcceptMode,
    /// Connections beyond this are accepted and closed at once (counted).
    pub max_conns: usize,
    /// A connection whose pending output exceeds this stops being read until it drains.
    pub output_cap: usize,
    /// After SIGTERM/SIGINT, how long in-flight requests may take before a forced close.
    pub drain_timeout: Duration,
    /// Listen backlog.
    pub backlog: i32,
    /// Close connections where no byte moved for this long.
    pub idle_timeout: Duration,
    /// Close connections whose request stays incomplete this long (slowloris).
    pub header_timeout: Duration,
    /// Stack size of each connection thread (`thread` strategy).
    pub stack_size: usize,
    /// io_uring settings (the `uring` strategy only).
    pub uring: UringConfig,
    /// Serve Prometheus metrics on this address (`GET /metrics`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Which PROXY protocol header every connection must start with
    /// (`--proxy-protocol`; off: none).
    pub proxy_protocol: c10k_proto::proxy::ProxyProtocol,
    /// Connections one client address may hold open, over all workers
    /// (`--max-conns-per-ip`; `None`: no limit).
    pub max_conns_per_ip: Option<usize>,
    /// Log each connection's client address at info level (`--log-connections`).
    pub log_connections: bool,
    /// Run this many copies of the strategy in child processes under a supervisor
    /// (`--processes`; `None`: serve in this process).
    pub processes: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 1,
            accept: AcceptMode::default(),
            max_conns: DEFAULT_MAX_CONNS,
            output_cap: DEFAULT_OUTPUT_CAP,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            backlog: DEFAULT_BACKLOG,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            stack_size: DEFAULT_STACK_SIZE,
            uring: UringConfig::default(),
            metrics: None,
            proxy_protocol: c10k_proto::proxy::ProxyProtocol::Off,
            max_conns_per_ip: None,
            log_connections: false,
            processes: None,
        }
    }
}

/// Settings of the `uring` strategy, per worker (each worker has its own ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringConfig {
    /// Submission queue entries (`--uring-entries`): how many operations one
    /// `io_uring_enter` can submit; the completion queue gets four times as many.
    /// Costs about 128 bytes of kernel memory per entry (a 64-byte submission slot
    /// and four 16-byte completion slots).
    pub entries: u32,
    /// A kernel thread polls the submission queue (`--sqpoll`): submitting needs no
    /// syscall while it is awake, but it keeps a CPU busy while the ring is busy and
    /// for 10 ms after.
    pub sqpoll: bool,
    /// Receive buffers in the provided-buffer ring (`--uring-buffers COUNTxSIZE`): a
    /// power of two, at most 32768. Costs `count x size` bytes of memory.
    pub buf_count: u16,
    /// Bytes per receive buffer.
    pub buf_size: u32,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            entries: 1024,
            sqpoll: false,
            buf_count: 1024,
            buf_size: 4096,
        }
    }
}
