//! `c10k`: serve any app on any C10K strategy, list the strategies, load a server, and
//! compare the strategies.

mod compare_cmd;
mod load_cmd;
mod units;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use c10k_proto::App;
use c10k_proto::chat::ChatApp;
use c10k_proto::echo::EchoApp;
use c10k_proto::http::{HttpApp, HttpConfig};
use c10k_proto::resp::RespApp;
use c10k_server::{
    AcceptMode, Availability, RequestUnit, Server, ServerBuilder, Strategy, UringConfig, Work,
    WorkApp,
};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "c10k",
    version,
    about = "Every C10K server strategy behind one protocol interface"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an app on a strategy until SIGTERM/SIGINT (then drain and exit 0).
    Serve(ServeArgs),
    /// List the strategies: name, C10K item, and whether they run here.
    Strategies,
    /// Load a server: closed or open loop, latency percentiles, errors, own CPU.
    Load(load_cmd::LoadArgs),
    /// Run every strategy x concurrency and write a report with charts.
    Compare(compare_cmd::CompareArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum AppName {
    /// Every byte comes back.
    Echo,
    /// HTTP/1.1: GET / and POST /echo.
    Http,
    /// A Redis RESP2 subset, with pub/sub.
    Resp,
    /// A line chat room: the first line is a nickname, later lines go to the other
    /// members (one room per process: alone per connection with fork and prefork).
    Chat,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The strategy (see `c10k strategies`).
    #[arg(long, default_value = "epoll-et", value_parser = parse_strategy)]
    strategy: Strategy,
    /// The app to serve.
    #[arg(long, value_enum, default_value = "http")]
    app: AppName,
    /// Address to listen on (port 0: the kernel picks one).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Event loops (threads) for the event-loop strategies, accept loops for
    /// `thread`, the process pool size for `prefork` (its concurrency).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// How workers share the listener: reuseport (one SO_REUSEPORT listener each) or
    /// exclusive (one shared listener, EPOLLEXCLUSIVE; not with select or poll).
    #[arg(long, default_value = "reuseport")]
    accept: AcceptMode,
    /// Refuse connections beyond this many (accepted and closed at once, counted).
    #[arg(long, default_value_t = c10k_server::DEFAULT_MAX_CONNS)]
    max_conns: usize,
    /// Stop reading a connection while its unsent output exceeds this (backpressure).
    #[arg(long, default_value = "1MiB", value_parser = units::parse_size)]
    output_cap: usize,
    /// After SIGTERM/SIGINT, how long in-flight requests may take.
    #[arg(long, default_value = "5s", value_parser = units::parse_duration)]
    drain_timeout: Duration,
    /// Close connections where no byte moved for this long.
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    idle_timeout: Duration,
    /// Close connections whose request stays incomplete this long (slowloris); HTTP
    /// answers 408 first.
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    header_timeout: Duration,
    /// Stack size of each connection thread (`thread`) or green thread (`green`),
    /// 16KiB..=1GiB.
    #[arg(long, default_value = "64KiB", value_parser = units::parse_size)]
    stack_size: usize,
    /// uring: submission queue entries per worker, i.e. operations one io_uring_enter
    /// can submit (costs about 128 B of kernel memory each).
    #[arg(long, default_value_t = 1024)]
    uring_entries: u32,
    /// uring: a kernel thread polls each worker's submission queue, so submitting
    /// needs no syscall (costs a CPU kept busy while the ring is busy and 10 ms after).
    #[arg(long)]
    sqpoll: bool,
    /// uring: receive buffers per worker, COUNTxSIZE (COUNT a power of two up to
    /// 32768); costs COUNT x SIZE of memory per worker.
    #[arg(long, default_value = "1024x4KiB", value_parser = units::parse_count_x_size)]
    uring_buffers: (u16, u32),
    /// HTTP: largest request body accepted (larger gets 413).
    #[arg(long, default_value = "8MiB", value_parser = units::parse_size)]
    max_body: usize,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Serve Prometheus metrics (text format 0.0.4) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9100 (port 0: the kernel picks one; the address is logged).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Expect a PROXY protocol header (from HAProxy, a cloud load balancer...) at the
    /// start of every connection: off, v1, v2 or any. The header's client address is
    /// the one logs, limits and apps see; a connection without a valid header is closed.
    #[arg(long, default_value = "off")]
    proxy_protocol: c10k_server::ProxyProtocol,
    /// At most this many open connections per client address (from the PROXY header
    /// when enabled), over all workers; more are closed at once (counted, logged).
    /// Not with fork or prefork.
    #[arg(long)]
    max_conns_per_ip: Option<usize>,
    /// Log every connection's client address at info level.
    #[arg(long)]
    log_connections: bool,
    /// Work per request (one HTTP request, RESP command, chat line; for echo, what one
    /// read returned): cpu=200us (burn thread CPU time), wait=2ms,blocking (the
    /// thread sleeps), wait=2ms,async (the reply is deferred by a timer), combined
    /// with commas, or none.
    #[arg(long, default_value = "none")]
    work: Work,
    /// Serve from N processes (one per core, say), each running the strategy with its
    /// --workers, under a supervisor that restarts them; not with fork or prefork.
    #[arg(long)]
    processes: Option<usize>,
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Strategies => {
            strategies();
            Ok(())
        }
        Command::Load(args) => load_cmd::run(args),
        Command::Compare(args) => compare_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("c10k: error: {e:#}");
            // A server that ran and failed (children crash-looping) is not a usage
            // error.
            match e.downcast_ref::<c10k_server::ServerError>() {
                Some(c10k_server::ServerError::ChildrenCrashing(_)) => ExitCode::from(1),
                _ => ExitCode::from(2),
            }
        }
    }
}

/// Clap's errors are several lines long; the contract is one line that says what to do.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("c10k: error: {first}; see 'c10k --help' or 'c10k <command> --help'");
    ExitCode::from(2)
}

fn strategies() {
    let mut out = std::io::stdout().lock();
    for i in &Strategy::ALL {
        let status = match i.strategy.availability() {
            Availability::Available => "available".to_string(),
            Availability::NotBuilt { planned } => {
                format!("not built yet ({planned}); use {}", i.instead)
            }
            Availability::Unavailable { reason } => {
                format!("unavailable: {reason}; use {}", i.instead)
            }
        };
        let _ = writeln!(
            out,
            "{:<9} item {:<13} {}: {} (limits: {})",
            i.name, i.item, status, i.summary, i.limits
        );
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level)?;
    anyhow::ensure!(
        args.work.is_none() || args.strategy != Strategy::Kernel,
        "--work with --strategy kernel: its echo runs in the kernel, where no per-request \
         code of ours runs; use --strategy epoll-et"
    );
    match c10k_server::raise_fd_limit() {
        Ok(n) => tracing::debug!("open files limit: {n}"),
        Err(e) => tracing::warn!("cannot raise the open files limit: {e}"),
    }
    // Socket activation (LISTEN_FDS): taken before any thread exists.
    let inherited = c10k_server::activation::inherited_listener()
        .context("taking the inherited listening socket (LISTEN_FDS)")?;
    let builder = Server::builder()
        .strategy(args.strategy)
        .listen(args.listen)
        .workers(args.workers)
        .accept(args.accept)
        .max_conns(args.max_conns)
        .output_cap(args.output_cap)
        .drain_timeout(args.drain_timeout)
        .idle_timeout(args.idle_timeout + args.work.async_wait())
        .header_timeout(args.header_timeout + args.work.async_wait())
        .stack_size(args.stack_size)
        .uring(UringConfig {
            entries: args.uring_entries,
            sqpoll: args.sqpoll,
            buf_count: args.uring_buffers.0,
            buf_size: args.uring_buffers.1,
        })
        .proxy_protocol(args.proxy_protocol)
        .max_conns_per_ip(args.max_conns_per_ip)
        .log_connections(args.log_connections)
        .processes(args.processes);
    let builder = match args.metrics {
        Some(addr) => builder.metrics(addr),
        None => builder,
    };
    let builder = match inherited {
        Some(listener) => {
            tracing::info!(
                "serving the inherited socket; --listen {} is not used",
                args.listen
            );
            builder.listener(listener)
        }
        None => builder,
    };
    if !args.work.is_none() {
        tracing::info!(
            "work per request: {}{}",
            args.work,
            if args.work.async_wait().is_zero() {
                String::new()
            } else {
                format!(
                    " (the header and idle timeouts are {:?} longer to allow for the wait)",
                    args.work.async_wait()
                )
            }
        );
    }
    let work = args.work;
    match args.app {
        AppName::Echo => run(builder, EchoApp, "echo", work, RequestUnit::PerRead),
        AppName::Http => run(
            builder,
            HttpApp::new(HttpConfig {
                max_body: args.max_body,
            }),
            "http",
            work,
            RequestUnit::Counted,
        ),
        AppName::Resp => run(builder, RespApp::new(), "resp", work, RequestUnit::Counted),
        AppName::Chat => run(builder, ChatApp::new(), "chat", work, RequestUnit::Counted),
    }
}

fn run<A: App>(
    builder: ServerBuilder,
    app: A,
    app_name: &str,
    work: Work,
    unit: RequestUnit,
) -> anyhow::Result<()> {
    // Without work the app is served bare: a strategy made for one app type (kernel:
    // echo) is given that type, not the wrapper.
    if work.is_none() {
        serve_bound(builder.app(app).bind()?, app_name)
    } else {
        serve_bound(builder.app(WorkApp::new(app, work, unit)).bind()?, app_name)
    }
}

fn serve_bound<S: c10k_server::Service>(
    server: c10k_server::Server<S>,
    app_name: &str,
) -> anyhow::Result<()> {
    let addr = server.local_addr();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}").context("writing to stdout")?;
        out.flush().context("writing to stdout")?;
    }
    tracing::info!("serving {app_name} on {addr}");
    if let Some(m) = server.metrics_addr() {
        tracing::info!("metrics on http://{m}/metrics");
    }
    let report = server.run()?;
    tracing::info!(
        "drained; accepted per worker: {:?}",
        report.accepted_per_worker()
    );
    Ok(())
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| {
        anyhow::anyhow!("bad log level '{level}': {e}; use error, warn, info, debug or trace")
    })?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
    Ok(())
}
